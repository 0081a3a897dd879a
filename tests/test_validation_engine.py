"""Misuse at the schedule / layout / op / engine boundary raises the library's own errors, naming the culprit."""

import dataclasses
import itertools
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import chain

import edbatch_jax as eb

H = 4
VOCAB = 10
PARAMS = {
    "E": jnp.linspace(-1.0, 1.0, VOCAB * H).reshape(VOCAB, H),
    "W": jnp.linspace(-0.5, 0.5, H * 2 * H).reshape(H, 2 * H),
}
OPS = {
    "leaf": lambda p, x: jnp.tanh(p["E"][x]),
    "node": lambda p, payload, a, b: jnp.tanh(p["W"] @ jnp.concatenate([a, b])),
}
ENGINES = [eb.StepwiseEngine, eb.FusedEngine]


def _tree(shape, tokens=None) -> eb.Graph:
    """A binary tree from nested pairs of leaf tokens, e.g. ``((1, 2), 3)``."""
    b = eb.GraphBuilder()

    def add(s):
        if isinstance(s, tuple):
            return b.add("node", add(s[0]), add(s[1]))
        return b.add("leaf", payload=np.int32(s))

    add(shape)
    return b.build()


LEFT = _tree((((1, 2), 3), 4))  # two graphs of the same op types and size, different shapes
RIGHT = _tree((1, (2, (3, 4))))
BATCH = eb.batch_graphs([_tree(((1, 2), (3, 4))), _tree((5, (6, 7))), _tree(8)])


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6), a, b)


def _by_hand(graph, sched) -> eb.Schedule:
    """The same batches as a schedule made by hand (no fingerprint: the engine validates it in full)."""
    return eb.Schedule(sched.batch_type.copy(), sched.batch_ptr.copy(), sched.node_order.copy(), graph.op_types)


# =========================================================================== 1. schedules and layouts
@pytest.mark.parametrize("make", ENGINES)
def test_schedule_omitting_a_node_is_refused(make):
    sched = eb.schedule(BATCH, "agenda")
    batches = [(BATCH.type_id(t), n) for t, n in sched.batches]
    t, nodes = batches[0]
    batches[0] = (t, nodes[1:])  # drop the first node of the first batch
    bad = eb.Schedule.from_batches(BATCH.op_types, [b[0] for b in batches], [b[1] for b in batches])
    with pytest.raises(eb.ScheduleError, match=f"node {nodes[0]} runs 0 times"):
        make(OPS).run(PARAMS, BATCH, bad)
    with pytest.raises(eb.ScheduleError, match=f"node {nodes[0]} runs 0 times"):
        eb.run(OPS, PARAMS, BATCH, bad)


@pytest.mark.parametrize("make", ENGINES)
def test_schedule_of_another_graph_is_refused(make):
    engine = make(OPS)
    with pytest.raises(eb.ScheduleError, match="made for another graph"):
        engine.run(PARAMS, LEFT, eb.schedule(RIGHT, "agenda"))
    with pytest.raises(eb.ScheduleError, match="made for another graph"):
        engine.plan(PARAMS, LEFT, eb.schedule(RIGHT, "depth"))
    # by hand (no fingerprint): validated in full, the late argument named
    with pytest.raises(eb.ScheduleError, match=r"batch \d+ is of type .* but holds node \d+"):
        engine.run(PARAMS, LEFT, _by_hand(LEFT, eb.schedule(RIGHT, "depth")))


@pytest.mark.parametrize("make", ENGINES)
def test_schedule_node_out_of_range_and_bad_type_id(make):
    engine = make(OPS)
    n = BATCH.num_nodes
    sched = eb.schedule(BATCH, "depth")
    order = sched.node_order.copy()
    order[-1] = n + 3
    bad = eb.Schedule(sched.batch_type, sched.batch_ptr, order, BATCH.op_types)
    with pytest.raises(eb.ScheduleError, match=f"runs node {n + 3}, which is not in the graph"):
        engine.run(PARAMS, BATCH, bad)
    types = sched.batch_type.copy()
    types[0] = 7
    with pytest.raises(eb.ScheduleError, match="batch 0 has op type id 7"):
        engine.run(PARAMS, BATCH, eb.Schedule(types, sched.batch_ptr, sched.node_order, BATCH.op_types))
    sched.node_order[[0, -1]] = sched.node_order[[-1, 0]]  # a certified schedule edited in place: validated again
    with pytest.raises(eb.ScheduleError, match="batch 0 is of type"):
        engine.run(PARAMS, BATCH, sched)


@pytest.mark.parametrize("make", ENGINES)
def test_layout_of_another_schedule_is_refused(make):
    depth = eb.schedule(BATCH, "depth")
    (t, first), rest = depth.batches[0], depth.batches[1:]  # the first batch split in two: another valid schedule
    batches = [(t, first[:1]), (t, first[1:])] + rest
    split = eb.Schedule.from_batches(BATCH.op_types, [BATCH.type_id(t) for t, _ in batches], [n for _, n in batches])
    eb.validate_schedule(BATCH, split)
    with pytest.raises(eb.ScheduleError, match="layout was planned for another schedule"):
        make(OPS).run(PARAMS, BATCH, split, layout=eb.plan_layout(BATCH, depth))


# =========================================================================== 2. payloads written in place
@pytest.mark.parametrize("make", ENGINES)
def test_payloads_written_in_place_are_never_run_stale(make):
    graph = eb.batch_graphs([_tree(((1, 2), (3, 4))), _tree((5, 6))])
    sched = eb.schedule(graph, "agenda")
    engine = make(OPS)
    before = engine.run(PARAMS, graph, sched)
    _close(before, eb.run_unbatched(OPS, PARAMS, graph))
    graph.payloads[graph.type_id("leaf")][:] = [9, 8, 7, 6, 5, 4]  # new token ids, same arrays
    after = engine.run(PARAMS, graph, sched)
    _close(after, eb.run_unbatched(OPS, PARAMS, graph))
    assert not np.allclose(np.asarray(before), np.asarray(after))
    assert engine.plans_built == 2
    engine.run(PARAMS, graph, sched)
    assert engine.plans_built == 2  # unchanged payloads: the cached plan


# =========================================================================== 3. what ops return
@pytest.mark.parametrize("make", ENGINES)
def test_op_returning_none_is_refused(make):
    ops = dict(OPS, node=lambda p, payload, a, b: None)
    with pytest.raises(eb.OpError, match="op 'node' returned None"):
        make(ops).run(PARAMS, LEFT, eb.schedule(LEFT, "agenda"))


@pytest.mark.parametrize("make", ENGINES)
def test_op_whose_structure_differs_between_traces_is_refused(make):
    calls = itertools.count()

    def fickle(p, x):  # a dict at planning (jax.eval_shape), a bare array when the engine traces it
        h = jnp.tanh(p["E"][x])
        return {"h": h} if next(calls) == 0 else h

    ops = dict(OPS, leaf=fickle, node=lambda p, payload, a, b: {"h": p["W"] @ jnp.concatenate([a["h"], b["h"]])})
    with pytest.raises(eb.OpError, match=r"op 'leaf' returned .* when the engine traced it, but .*\{'h'"):
        make(ops).run(PARAMS, LEFT, eb.schedule(LEFT, "agenda"))


@pytest.mark.parametrize("make", ENGINES)
def test_plan_with_other_params_is_refused_by_the_op_check(make):
    engine = make(OPS)
    plan = engine.plan(PARAMS, LEFT, eb.schedule(LEFT, "agenda"))
    wider = {"E": jnp.ones((VOCAB, 2 * H)), "W": jnp.ones((2 * H, 4 * H))}
    with pytest.raises(eb.OpError, match="op '(leaf|node)' is run with params"):
        engine.execute(plan, wider)


# =========================================================================== 4. payload bounds
@pytest.mark.parametrize("make", ENGINES)
def test_payload_id_outside_its_bound_is_refused(make):
    graph = eb.batch_graphs([_tree((1, 2)), _tree((3, (4, 12)))])  # token 12 >= VOCAB
    ops = dict(OPS, leaf=eb.Op(OPS["leaf"], payload_bounds=VOCAB))
    node = int(graph.nodes_of_type("leaf")[-1])
    msg = rf"op 'leaf': node {node} \(instance 1\) has payload id 12 .*outside \[0, {VOCAB}\)"
    with pytest.raises(eb.OpError, match=msg):
        make(ops).run(PARAMS, graph, eb.schedule(graph, "agenda"))
    with pytest.raises(eb.OpError, match=msg):  # unbatched execution refuses it too, instead of clamping
        eb.run_unbatched(ops, PARAMS, graph)
    graph = eb.GraphBuilder()
    a = graph.add("leaf", payload={"tok": np.int32(3), "w": np.float32(0.5)})
    b = graph.add("leaf", payload={"tok": np.int32(-1), "w": np.float32(0.5)})
    graph.add("node", a, b)
    graph = graph.build()
    ops = {"leaf": eb.Op(lambda p, x: x["w"] * p["E"][x["tok"]], payload_bounds={"tok": VOCAB, "w": None})}
    ops["node"] = OPS["node"]
    with pytest.raises(eb.OpError, match=r"node 1 \(instance 0\) has payload id -1 at \['tok'\]"):
        make(ops).run(PARAMS, graph, eb.schedule(graph, "agenda"))
    with pytest.raises(eb.OpError, match="payload_bounds must hold positive ints"):
        eb.Op(OPS["leaf"], payload_bounds=0)


# =========================================================================== 5. unbatchable names
def test_misspelt_unbatchable_name_is_refused_with_a_suggestion():
    graph = dataclasses.replace(LEFT, unbatchable=("nodd",))
    for make in ENGINES:
        with pytest.raises(eb.OpError, match=r"unbatchable op type 'nodd' is not an op.*did you mean 'node'"):
            make(OPS).run(PARAMS, graph, eb.schedule(graph, "agenda"))
    with pytest.raises(eb.OpError, match="unbatchable op type 'nodd'"):
        eb.run_unbatched(OPS, PARAMS, graph)


# =========================================================================== 6. user policies
class _Choose(eb.FrontierPolicy):
    def __init__(self, answer):
        self.answer = answer

    def choose(self, frontier, context):
        return self.answer(frontier)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda f: 1.5, r"1.5 \(a float, not an int\) at step 0"),
        (lambda f: None, r"None \(a NoneType, not an int\) at step 0"),
        (lambda f: 5, r"op type id 5, which is not an op type of the graph"),
        (lambda f: -1, r"op type id -1"),
        (lambda f: int(np.argmin(f.ready_counts)), r"no ready node of type 'node'"),
    ],
)
def test_policy_returning_garbage_is_named(answer, message):
    with pytest.raises(eb.ScheduleError, match=r"_Choose\.choose .*" + message):
        eb.schedule(LEFT, _Choose(answer))


def test_policy_returning_an_invalid_schedule_is_named():
    class Sloppy(eb.Policy):
        def schedule(self, graph):
            s = eb.schedule(graph, "depth")
            return eb.Schedule(s.batch_type[::-1].copy(), s.batch_ptr, s.node_order[::-1].copy(), graph.op_types)

    class NotASchedule(eb.Policy):
        def schedule(self, graph):
            return [0, 1, 2]

    with pytest.raises(eb.ScheduleError, match="Sloppy.schedule returned an invalid schedule"):
        eb.schedule(LEFT, Sloppy())
    with pytest.raises(eb.ScheduleError, match="NotASchedule.schedule returned list"):
        eb.schedule(LEFT, NotASchedule())


# =========================================================================== 7. a list of graphs
@pytest.mark.parametrize("make", ENGINES)
def test_list_of_graphs_names_batch_graphs(make):
    graphs = [LEFT, RIGHT]
    sched = eb.schedule(LEFT, "agenda")
    with pytest.raises(eb.GraphError, match=r"list of 2 graphs.*eb\.batch_graphs"):
        make(OPS).run(PARAMS, graphs, sched)
    with pytest.raises(eb.GraphError, match=r"eb\.batch_graphs"):
        eb.run(OPS, PARAMS, graphs, sched)
    with pytest.raises(eb.GraphError, match=r"eb\.batch_graphs"):
        eb.schedule(graphs, "agenda")
    with pytest.raises(eb.GraphError, match=r"eb\.batch_graphs"):
        eb.plan_layout(tuple(graphs), sched)


# =========================================================================== no half-built state
@pytest.mark.parametrize("make", ENGINES)
def test_failed_plan_leaves_the_engine_as_it_was(make):
    ops = dict(OPS, leaf=eb.Op(OPS["leaf"], payload_bounds=VOCAB), bad=lambda p, payload, h: None)
    sched = eb.schedule(BATCH, "agenda")
    fresh = make(ops)
    want = fresh.run(PARAMS, BATCH, sched)

    b = eb.GraphBuilder()
    b.add("bad", b.add("node", b.add("leaf", payload=np.int32(1)), b.add("leaf", payload=np.int32(2))))
    with_bad = eb.batch_graphs([b.build()] * 40)  # wider than any batch of BATCH: would grow capacities
    engine = make(ops)
    with pytest.raises(eb.OpError, match="op 'bad' returned None"):
        engine.run(PARAMS, with_bad, eb.schedule(with_bad, "agenda"))  # after leaf and node were derived
    with pytest.raises(eb.ScheduleError):
        engine.run(PARAMS, LEFT, eb.schedule(RIGHT, "agenda"))
    with pytest.raises(eb.OpError, match="payload id 12"):
        engine.run(PARAMS, _tree((1, 12)), eb.schedule(_tree((1, 12)), "agenda"), outputs=[0])
    assert engine.plans_built == 0
    _close(engine.run(PARAMS, BATCH, sched), want)
    assert engine.trace_count == fresh.trace_count
    assert engine.plans_built == fresh.plans_built == 1
    plan, fresh_plan = engine.plan(PARAMS, BATCH, sched), fresh.plan(PARAMS, BATCH, sched)
    assert plan.capacities == fresh_plan.capacities


# =========================================================================== correct runs still agree
@pytest.mark.parametrize("make", ENGINES)
def test_checked_runs_equal_unbatched(make):
    engine = make(OPS)
    want = eb.run_unbatched(OPS, PARAMS, BATCH)
    for policy in ("agenda", "depth", "typewise"):
        sched = eb.schedule(BATCH, policy)
        _close(engine.run(PARAMS, BATCH, sched), want)
        _close(engine.run(PARAMS, BATCH, _by_hand(BATCH, sched)), want)
        _close(engine.run(PARAMS, BATCH, sched, layout=eb.plan_layout(BATCH, sched)), want)
    bounded = dict(OPS, leaf=eb.Op(OPS["leaf"], payload_bounds=VOCAB))
    _close(make(bounded).run(PARAMS, BATCH, eb.schedule(BATCH, "agenda")), want)


# =========================================================================== random corruptions
CORRUPTIONS = ("drop", "duplicate", "swap", "retype", "out_of_range", "other_graph", "in_place", "none")
_HYPO_ENGINES = {make: make(OPS) for make in ENGINES}
_OTHER = {  # same op types and size as BATCH, other shapes
    policy: eb.schedule(eb.batch_graphs([_tree((1, (2, (3, 4)))), _tree(((5, 6), 7)), _tree(8)]), policy)
    for policy in ("agenda", "depth")
}
_WANT = eb.run_unbatched(OPS, PARAMS, BATCH)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(CORRUPTIONS),
    st.sampled_from(("agenda", "depth")),
    st.sampled_from(ENGINES),
    st.integers(0, 10**6),
)
def test_corrupted_schedules_raise_or_run_right(corruption, policy, make, seed):
    rng = np.random.default_rng(seed)
    n = BATCH.num_nodes
    sched = eb.schedule(BATCH, policy)
    types = [BATCH.type_id(t) for t, _ in sched.batches]
    nodes = [x.copy() for _, x in sched.batches]
    b = int(rng.integers(len(nodes)))
    if corruption == "drop":
        nodes[b] = np.delete(nodes[b], rng.integers(nodes[b].size))
    elif corruption == "duplicate":
        k = int(rng.integers(len(nodes)))
        nodes[k] = np.append(nodes[k], nodes[b][0])
    elif corruption == "swap":
        c = int(rng.integers(len(nodes)))
        types[b], types[c], nodes[b], nodes[c] = types[c], types[b], nodes[c], nodes[b]
    elif corruption == "retype":
        types[b] = int(rng.integers(-1, BATCH.num_types + 1))
    elif corruption == "out_of_range":
        nodes[b][rng.integers(nodes[b].size)] = rng.choice([-1, n, n + 5])
    sched_bad = eb.Schedule.from_batches(BATCH.op_types, types, nodes)
    if corruption == "other_graph":
        sched_bad = _OTHER[policy]
    elif corruption == "in_place":
        sched_bad = sched
        i, j = rng.integers(n, size=2)
        sched.node_order[[i, j]] = sched.node_order[[j, i]]
    elif corruption == "none":
        sched_bad = sched
    try:
        got = _HYPO_ENGINES[make].run(PARAMS, BATCH, sched_bad)
    except eb.ScheduleError:
        assert corruption != "none"
        return
    assert corruption not in ("other_graph", "out_of_range", "drop", "duplicate")
    _close(got, _WANT)


@pytest.mark.parametrize("make", ENGINES)
def test_integer_state_leaves_under_grad_name_the_op(make):
    ops = {
        "leaf": lambda p, x: {"h": jnp.tanh(p["E"][x]), "n": jnp.int32(1)},
        "node": lambda p, payload, a, b: {"h": p["W"] @ jnp.concatenate([a["h"], b["h"]]), "n": a["n"] + b["n"]},
    }
    engine, sched = make(ops), eb.schedule(LEFT, "agenda")
    root = [LEFT.num_nodes - 1]
    assert int(engine.run(PARAMS, LEFT, sched, outputs=root)["n"][0]) == 4  # fine without gradients
    with pytest.raises(eb.OpError, match=r"op\(s\) \['leaf', 'node'\] return a state with int32 leaves"):
        jax.grad(lambda p: engine.run(p, LEFT, sched, outputs=root)["h"].sum())(PARAMS)


def test_a_policy_returning_another_graphs_certified_schedule_is_refused():
    """eb.schedule skips re-hashing only the graph object its policy certified: a schedule certified for
    another graph (a stale cache, say) is validated, and refused, there; one whose graph was changed in place
    after scheduling is refused by the engine."""
    other = eb.batch_graphs([chain(3), chain(5)])
    stale = eb.schedule(other, "depth")

    class Stale(eb.Policy):
        def schedule(self, graph):
            return stale

    with pytest.raises(eb.ScheduleError, match="Stale.schedule returned an invalid schedule"):
        eb.schedule(BATCH, Stale())
    assert eb.schedule(other, Stale()) is stale  # its own graph: accepted as certified
    graph = eb.batch_graphs([chain(3), chain(5)])
    sched = eb.schedule(graph, "depth")
    graph.arg_idx[-1] = 0  # edited in place after scheduling
    with pytest.raises(eb.ScheduleError, match="made for another graph"):
        eb.StepwiseEngine({"f": eb.Op(lambda p, x, a: a, aggregate="sum")}).run(None, graph, sched)


def test_a_certified_schedule_pickles_with_its_fingerprint():
    sched = eb.schedule(BATCH, "depth")
    back = pickle.loads(pickle.dumps(sched))
    assert back.fingerprint == sched.fingerprint and back._certified_for is None
    np.testing.assert_array_equal(back.node_order, sched.node_order)
    assert eb.schedule(BATCH, _Returning(back)) is back  # still certified: accepted by its fingerprint
    for make in ENGINES:
        np.testing.assert_allclose(make(OPS).run(PARAMS, BATCH, back), make(OPS).run(PARAMS, BATCH, sched))


class _Returning(eb.Policy):
    def __init__(self, sched):
        self.sched = sched

    def schedule(self, graph):
        return self.sched
