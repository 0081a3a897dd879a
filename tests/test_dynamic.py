"""Programs whose graph depends on computed values (edbatch_jax.dynamic): rounds, values, gradients, errors."""

import re
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edbatch_jax as eb
import edbatch_jax.dynamic as ebd
from edbatch_jax.dynamic import examples as ex

ROOT = Path(__file__).resolve().parents[1]


def _close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module", params=["direct", "graph"])
def decoder(request):
    """A decoder runtime and 10 greedy instances of several lengths, run once (so warm): rounds run as direct
    batched calls (the default) or as graphs on the engine."""
    params = ex.decode_params(jax.random.PRNGKey(0))
    instances = ex.decode_instances(10, seed=0)
    runtime = ebd.DynamicRuntime(ex.decode_ops(), direct_rounds=request.param == "direct")
    result = runtime.run(ex.greedy_decode, instances, params)
    return runtime, params, instances, result


def _traces(runtime) -> int:
    return runtime.engine.trace_count + runtime.direct_traces


def test_greedy_decoding_matches_one_at_a_time(decoder):
    runtime, params, instances, result = decoder
    assert result.ok and result.failures == ()
    lengths = []
    for inst, out in zip(instances, result.outputs):
        chosen, logits = ex.decode_reference(params, inst)
        assert out.chosen == chosen
        assert out.tokens == tuple(t for t in chosen if t != ex.EOS)
        assert len(out.logits) == len(logits)
        _close([result.value(h) for h in out.logits], logits)
        lengths.append(len(chosen))
    assert len(set(lengths)) > 1  # the values decided different lengths
    stats = result.stats
    # one round per step of the longest instance, and one for the last step's cross-entropy node
    assert stats.num_rounds == max(lengths) + 1
    assert stats.batches_per_round[0] == 3  # encode, step, logits
    assert all(b <= 5 for b in stats.batches_per_round)  # value leaves, xent, step, logits (+ a second value type)
    assert stats.rounds[0].instances == len(instances) and stats.rounds[0].value_nodes == 0
    assert stats.rounds[-1].instances == sum(n == max(lengths) for n in lengths)
    if runtime.direct_rounds:  # every round as batched calls: (level, op type) batches, no graph
        assert stats.direct_rounds == stats.num_rounds and stats.plans_built == 0
        assert all(b <= 3 for b in stats.batches_per_round)  # xent and step, then logits
    else:
        assert stats.rounds[1].value_nodes == 2 * len(instances)  # h and logits of every instance carried over
        assert stats.direct_rounds == 0 and stats.plans_built == stats.num_rounds
    assert stats.total_s >= stats.advance_s + stats.build_s + stats.execute_s - 1e-6


def test_rounds_compile_nothing_once_warm(decoder):
    runtime, params, instances, first = decoder
    traces = _traces(runtime)
    assert first.stats.traces == traces > 0  # the first run compiled everything it used
    again = runtime.run(ex.greedy_decode, instances, params)
    assert again.stats.traces == 0 and _traces(runtime) == traces
    assert [o.chosen for o in again.outputs] == [o.chosen for o in first.outputs]
    subset = runtime.run(ex.greedy_decode, instances[::-1], params)  # another order: same buckets
    assert _traces(runtime) == traces
    assert [o.chosen for o in subset.outputs] == [o.chosen for o in first.outputs][::-1]


def test_recorded_graph_reproduces_the_values_and_gradients(decoder):
    runtime, params, instances, result = decoder
    rec = result.recorded()
    assert rec.instances == tuple(range(len(instances)))
    assert rec.graph.num_instances == len(instances)
    assert rec.graph.num_nodes == sum(2 + 3 * len(o.chosen) - 1 for o in result.outputs)
    sched = eb.schedule(rec.graph, "agenda")
    logits = [h for o in result.outputs for h in o.logits]
    seen = np.stack([result.value(h) for h in logits])
    _close(runtime.engine.run(params, rec.graph, sched, outputs=rec.nodes(logits)), seen, rtol=1e-5)
    losses = rec.nodes([h for o in result.outputs for h in o.losses])

    def loss(p):
        return runtime.engine.run(p, rec.graph, sched, outputs=losses).sum()

    def loss_ref(p):
        return sum(ex.decode_loss_reference(p, i, o.chosen) for i, o in zip(instances, result.outputs))

    value, grads = jax.value_and_grad(loss)(params)
    value_ref, grads_ref = jax.value_and_grad(loss_ref)(params)
    np.testing.assert_allclose(value, value_ref, rtol=1e-5)
    _close(grads, grads_ref, rtol=1e-4, atol=1e-5)


def test_teacher_forcing_is_program_logic(decoder):
    runtime, params, _, _ = decoder
    instances = ex.decode_instances(6, seed=3, teacher=True, max_len=5)
    result = runtime.run(ex.greedy_decode, instances, params)
    assert result.stats.num_rounds == 1  # nothing waits: every instance records its whole graph at once
    for inst, out in zip(instances, result.outputs):
        assert out.chosen == tuple(inst.target.tolist())
        chosen, logits = ex.decode_reference(params, inst)
        assert chosen == out.chosen
        _close([result.value(h) for h in out.logits], logits)
        loss = sum(float(result.value(h)) for h in out.losses)
        np.testing.assert_allclose(loss, ex.decode_loss_reference(params, inst, out.chosen), rtol=1e-5)


def test_adaptive_computation_halts_per_instance():
    params = ex.act_params(jax.random.PRNGKey(1))
    instances = ex.act_instances(6, seed=0)
    runtime = ebd.DynamicRuntime(ex.act_ops())
    result = runtime.run(ex.act_program, instances, params)
    steps = []
    for inst, out in zip(instances, result.outputs):
        ref_steps, ref_total, ref_out = ex.act_reference(params, inst)
        assert out.steps == ref_steps
        np.testing.assert_allclose(out.halting, ref_total, rtol=1e-5)
        _close(out.output, ref_out)
        steps.append(out.steps)
    assert len(set(steps)) > 1
    rec = result.recorded()
    sched = eb.schedule(rec.graph, "agenda")
    outs = rec.nodes([o.readout for o in result.outputs])
    grads = jax.grad(lambda p: (runtime.engine.run(p, rec.graph, sched, outputs=outs) ** 2).sum())(params)
    ref = jax.grad(lambda p: sum(ex.act_loss_reference(p, i, o.steps) for i, o in zip(instances, result.outputs)))(
        params
    )
    _close(grads, ref, rtol=1e-4, atol=1e-5)


def test_tree_generation_decides_children_from_states():
    params = ex.tree_params(jax.random.PRNGKey(2))
    instances = ex.tree_instances(5, seed=1, max_depth=2)
    runtime = ebd.DynamicRuntime(ex.tree_ops())
    result = runtime.run(ex.generate_tree, instances, params)
    for inst, out in zip(instances, result.outputs):
        shape, scores = ex.tree_reference(params, inst)
        assert out.shape == shape
        _close([result.value(h) for h in out.scores], scores)
    assert len({o.shape for o in result.outputs}) > 1
    assert result.stats.num_rounds == 1 + max(_depth(o.shape) for o in result.outputs)  # one round per level
    rec = result.recorded()
    sched = eb.schedule(rec.graph, "agenda")
    handles = [h for o in result.outputs for h in o.scores]
    picked = np.asarray([n for o in result.outputs for n in o.shape])

    def loss(p):
        s = runtime.engine.run(p, rec.graph, sched, outputs=rec.nodes(handles))
        return jnp.take_along_axis(s, picked[:, None], axis=1).sum()

    ref = jax.grad(lambda p: sum(ex.tree_loss_reference(p, i, o.shape) for i, o in zip(instances, result.outputs)))
    _close(jax.grad(loss)(params), ref(params), rtol=1e-4, atol=1e-5)


def _depth(shape):
    """Levels below the root of a breadth-first children list."""
    level, depth, i = 1, 0, 0
    while True:
        nxt = sum(shape[i : i + level])
        i += level
        if not nxt:
            return depth
        depth, level = depth + 1, nxt


# --------------------------------------------------------------------------- errors
def _tiny_ops():
    return {
        "leaf": lambda p, x: jnp.tanh(p["w"] * x),
        "add": lambda p, payload, a, b: a + b,
        "twice": lambda p, payload, a: 2.0 * a,
    }


PARAMS = {"w": jnp.float32(0.5)}


def _fine(inst):
    a = ebd.call("leaf", payload=np.float32(inst))
    b = ebd.call("twice", a)
    v = yield b
    if float(v) > 0:
        b = ebd.call("add", a, b)
    return float((yield b))


@pytest.fixture(scope="module")
def tiny():
    return ebd.DynamicRuntime(_tiny_ops(), max_rounds=4)


def _program(fail):
    """A program whose instance 1 fails by ``fail(inst, own_handle)`` after its first round."""

    def program(inst):
        a = ebd.call("leaf", payload=np.float32(inst))
        yield a
        if inst == 1:
            yield from fail(inst, a)
        return (yield from _fine(inst))

    return program


def _raises(inst, a):
    raise RuntimeError("boom")
    yield


def _yields_value(inst, a):
    yield 3.0


def _unknown_op(inst, a):
    yield ebd.call("twise", a)


def _wrong_arity(inst, a):
    yield ebd.call("add", a)


def _payload_changes(inst, a):
    yield ebd.call("leaf", payload=np.zeros(2, np.float32))


def _loops(inst, a):
    while True:
        a = ebd.call("twice", a)
        yield a


@pytest.mark.parametrize(
    "fail, match, round_",
    [
        (_raises, r"instance 1, round 1: the program raised RuntimeError: boom", 1),
        (_yields_value, r"instance 1, round 1: the program yielded a float; yield a Handle", 1),
        (_unknown_op, r"instance 1, round 1: call\('twise'\): unknown op type; .* did you mean 'twice'", 1),
        (_wrong_arity, r"instance 1, round 1: call\('add'\): the op takes 2 argument\(s\), got 1", 1),
        (_payload_changes, r"call\('leaf'\): payload .*float32\[2\].* before", 1),
        (_loops, r"instance 1, round 4: did not finish within max_rounds=4", 4),
    ],
)
def test_a_failing_instance_is_named_and_the_others_keep_their_results(tiny, fail, match, round_):
    program = _program(fail)
    with pytest.raises(ebd.DynamicRunError, match=match) as err:
        tiny.run(program, [0, 1, 2], PARAMS)
    result = err.value.result
    assert isinstance(err.value, eb.EdbatchError)
    assert [(f.instance, f.round) for f in result.failures] == [(1, round_)]
    assert re.search(match, result.failures[0].message)
    assert result.outputs[1] is None
    good = tiny.run(_fine, [0, 2], PARAMS).outputs
    np.testing.assert_allclose([result.outputs[0], result.outputs[2]], good, rtol=1e-6)
    # the recorded graph holds the finished instances; the failed one on request
    rec = result.recorded()
    assert rec.instances == (0, 2)
    assert result.recorded([1]).graph.num_instances == 1
    returned = tiny.run(program, [0, 1, 2], PARAMS, on_error="return")
    assert not returned.ok and [f.instance for f in returned.failures] == [1]


def test_handles_of_another_instance_or_run_are_refused(tiny):
    shared = {}

    def program(inst):
        a = ebd.call("leaf", payload=np.float32(inst))
        shared.setdefault(inst, a)
        yield a
        if inst == 1:
            yield ebd.call("twice", shared[0])
        return float((yield a))

    with pytest.raises(ebd.DynamicRunError, match=r"instance 1, round 1: call\('twice'\): argument 0 is Handle\("):
        tiny.run(program, [0, 1], PARAMS)

    def stale(inst):
        yield ebd.call("twice", shared[0])

    with pytest.raises(ebd.DynamicRunError, match="of another run"):
        tiny.run(stale, [0], PARAMS)

    def yields_other(inst):
        a = ebd.call("leaf", payload=np.float32(inst))
        shared[("y", inst)] = a
        yield a
        yield shared[("y", 0)]

    with pytest.raises(ebd.DynamicRunError, match=r"instance 1, round 1: the program yielded Handle\(.* of instance 0"):
        tiny.run(yields_other, [0, 1], PARAMS)


def test_misuse_outside_programs_is_refused():
    with pytest.raises(ebd.DynamicError, match="outside a program"):
        ebd.call("leaf", payload=np.float32(1))
    with pytest.raises(ebd.DynamicError, match="stochastic"):
        ebd.DynamicRuntime({"drop": eb.Op(lambda p, x, key=None: x, arity=0, stochastic=True)})
    with pytest.raises(ebd.DynamicError, match="value ops"):
        ebd.DynamicRuntime({"value#0": lambda p, x: x})
    runtime = ebd.DynamicRuntime(_tiny_ops())
    with pytest.raises(ebd.DynamicError, match="no instances"):
        runtime.run(_fine, [], PARAMS)
    with pytest.raises(ebd.DynamicError, match="concrete params"):
        jax.grad(lambda p: runtime.run(_fine, [1], p).outputs[0])(PARAMS)


def test_a_round_whose_graph_fails_names_the_round_and_keeps_finished_instances():
    ops = {**_tiny_ops(), "bad": lambda p, payload, a: a @ jnp.ones((3, 3))}

    def program(inst):
        a = ebd.call("leaf", payload=np.float32(inst))
        v = yield a
        if inst == 1:
            yield ebd.call("bad", a)
        return float(v)

    result = ebd.run_dynamic(program, [0, 1], ops, PARAMS, on_error="return", direct_rounds=False)
    assert result.outputs[0] == pytest.approx(0.0)
    (failure,) = result.failures
    assert (failure.instance, failure.round) == (1, 1)
    assert "round 1: running the round's graph failed (OpError" in failure.message
    assert "instance 0 is instance 1" in failure.message
    direct = ebd.run_dynamic(program, [0, 1], ops, PARAMS, on_error="return")  # the same as a direct round
    assert direct.outputs[0] == pytest.approx(0.0)
    (failure,) = direct.failures
    assert (failure.instance, failure.round) == (1, 1)
    assert "round 1: running the round's calls failed (OpError: op 'bad' failed on its 1 call(s)" in failure.message
    assert "instance 1's node 1 among them; operands ['float32[]']" in failure.message


def test_the_documented_example_runs():
    text = (ROOT / "docs" / "dynamic.md").read_text()
    code = re.search(r"## The programming model\n.*?```python\n(.*?)```", text, re.S).group(1)
    env: dict = {}
    exec(compile(code, "docs/dynamic.md", "exec"), env)
    result = env["result"]
    assert result.ok and len(result.outputs) == 5
    assert len({len(o) for o in result.outputs}) > 1  # lengths decided by the values
    assert result.stats.num_rounds == max(len(o) for o in result.outputs) + 1 or result.stats.num_rounds == 10
    # direct rounds, level by level: encode, step, logits, then step and logits
    assert result.stats.direct_rounds == result.stats.num_rounds
    assert result.stats.batches_per_round[0] == 3 and all(b == 2 for b in result.stats.batches_per_round[1:])


def test_benchmark_implementations_choose_the_same_tokens():
    from edbatch_jax.apps import bench_dynamic as bd

    params = ex.decode_params(jax.random.PRNGKey(4), vocab=12, hidden=8)
    lengths = bd.sample_lengths("high", 12, seed=1)
    instances = ex.sized_decode_instances(lengths, seed=1, vocab=12)
    result = ebd.DynamicRuntime(ex.sized_decode_ops()).run(ex.decode_to_length, instances, params)
    chosen = list(result.outputs)
    assert [len(c) for c in chosen] == lengths.tolist() and all(c[-1] == ex.EOS for c in chosen)
    assert chosen == [ex.decode_to_length_reference(params, i) for i in instances]
    assert chosen == bd.one_at_a_time()(params, instances)
    prompts = np.stack([i.prompt for i in instances])
    padded = bd.padded_decoder(int(lengths.max()))(params, prompts, lengths.astype(np.int32))
    assert chosen == [tuple(int(t) for t in row[row >= 0]) for row in np.asarray(padded)]
    assert result.stats.num_rounds == lengths.max()
    rows = bd.run_dynamic_benchmarks(instances=(4,), lengths=("low",), hidden=8, vocab=12, repeats=1)
    assert rows[0].same_tokens and rows[0].compiles == 0 and rows[0].runtime_traces == 0
    assert "| 4 | low:" in bd.format_dynamic_table(rows)


def test_the_fused_engine_runs_the_rounds_too():
    """Rounds run as fused programs: the same tokens and values as one at a time; warm runs compile nothing."""
    params = ex.decode_params(jax.random.PRNGKey(0))
    instances = ex.decode_instances(4, seed=1)
    runtime = ebd.DynamicRuntime(
        ex.decode_ops(), engine=lambda ops: eb.FusedEngine(ops, max_lanes=4), direct_rounds=False
    )
    for _ in range(2):  # the second run meets the capacities the first one grew
        result = runtime.run(ex.greedy_decode, instances, params)
    for inst, out in zip(instances, result.outputs):
        chosen, logits = ex.decode_reference(params, inst)
        assert out.chosen == chosen
        _close([result.value(h) for h in out.logits], logits)
    again = runtime.run(ex.greedy_decode, instances[::-1], params)
    assert again.stats.traces == 0 and [o.chosen for o in again.outputs] == [o.chosen for o in result.outputs][::-1]


def test_rounds_with_variadic_ops_run_directly_as_graph_rounds_do():
    attend = eb.Op(  # an attention over the arguments: a score and a value per argument
        lambda p, payload, s: jnp.tanh(s),
        aggregate="softmax",
        edge=lambda p, payload, x: (p["w"] * x, 2.0 * x + payload),
    )
    ops = {**_tiny_ops(), "total": eb.Op(lambda p, payload, s: s, aggregate="sum"), "attend": attend}

    def program(inst):
        a = ebd.call("leaf", payload=np.float32(inst))
        yield a
        t = ebd.call("total", a, ebd.call("twice", a))  # 3a
        v = yield t
        args = (t, a, ebd.call("twice", t))[: 1 + inst % 3]  # one to three arguments
        c = ebd.call("attend", *args, payload=np.float32(v))
        return float((yield c))

    direct = ebd.DynamicRuntime(ops).run(program, [0, 1, 2, 3, 4], PARAMS)
    graph = ebd.DynamicRuntime(ops, direct_rounds=False).run(program, [0, 1, 2, 3, 4], PARAMS)
    expected = []
    for x in range(5):
        a = np.tanh(0.5 * x)
        t = 3.0 * a
        xs = np.array([t, a, 2.0 * t][: 1 + x % 3])
        w = np.exp(0.5 * xs - (0.5 * xs).max())
        expected.append(np.tanh(np.sum(w / w.sum() * (2.0 * xs + t))))
    np.testing.assert_allclose(direct.outputs, expected, rtol=1e-5)
    np.testing.assert_allclose(graph.outputs, expected, rtol=1e-5)
    assert direct.stats.direct_rounds == direct.stats.num_rounds == 3 and graph.stats.direct_rounds == 0
    # level by level: twice, total; then twice and the one-argument attends, then the attend reading twice
    assert direct.stats.batches_per_round == (1, 2, 3)


def test_a_direct_round_names_an_operand_of_two_structures():
    ops = {**_tiny_ops(), "pair": lambda p, x: jnp.stack([x, x])}

    def program(inst):
        a = ebd.call("pair" if inst == 1 else "leaf", payload=np.float32(inst))
        yield a
        return (yield ebd.call("twice", a))

    result = ebd.DynamicRuntime(ops).run(program, [0, 1], PARAMS, on_error="return")
    assert [f.instance for f in result.failures] == [0, 1]
    assert (
        "round 1: running the round's calls failed (DynamicError: op 'twice': argument 0 of a call of instance 1 "
        "has state structure PyTreeDef(*) with leaves ['float32[2]'], but a call of instance 0 passes "
        "PyTreeDef(*) with leaves ['float32[]']" in result.failures[0].message
    )


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(st.data())
def test_round_levels_are_one_more_than_the_highest_argument_of_the_round(data):
    from edbatch_jax.dynamic.runtime import _round_levels

    count = np.asarray(data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=5)), np.int64)
    first = np.asarray(data.draw(st.lists(st.integers(0, 4), min_size=len(count), max_size=len(count))), np.int64)
    args, expected = [], []
    for k, c in enumerate(count.tolist()):  # instance k's pending nodes first[k] .. first[k] + c - 1
        levels = {}
        for node in range(first[k], first[k] + c):
            a = tuple(data.draw(st.lists(st.integers(0, node - 1), max_size=3))) if node else ()
            args.append(a)
            levels[node] = max([levels[x] + 1 for x in a if x >= first[k]], default=0)
            expected.append(levels[node])
    np.testing.assert_array_equal(_round_levels(count, first, args), np.asarray(expected, np.int64))


def test_a_direct_round_checks_payload_bounds_as_the_engines_do():
    ops = {**_tiny_ops(), "embed": eb.Op(lambda p, i: p["w"] * i.astype(jnp.float32), payload_bounds=4)}

    def program(inst):
        return float((yield ebd.call("twice", ebd.call("embed", payload=np.int32(inst)))))

    for direct in (True, False):
        runtime = ebd.DynamicRuntime(ops, direct_rounds=direct)
        np.testing.assert_allclose(runtime.run(program, [0, 3], PARAMS).outputs, [0.0, 3.0])
        result = runtime.run(program, [1, 7, 2], PARAMS, on_error="return")
        assert [f.instance for f in result.failures] == [0, 1, 2]  # the round fails, as a graph's does
        assert "has payload id 7 at payload, outside [0, 4) (the op's payload_bounds)" in result.failures[0].message
        assert result.stats.direct_rounds == (1 if direct else 0)
