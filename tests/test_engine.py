"""The batched engine against the unbatched reference: values and gradients."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edbatch_jax as eb
from edbatch_jax.zoo.data.sst import Vocabulary, read_sst, synthetic_sst
from edbatch_jax.zoo.models.treelstm import TreeLSTM

SST = Path(__file__).resolve().parents[2] / "shared" / "data" / "trees"
TOL = dict(rtol=2e-5, atol=2e-5)


def _assert_trees_close(a, b, **tol):
    chex.assert_trees_all_equal_structs(a, b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def _tree_setup(trees, hidden=32, seed=0):
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab), hidden=hidden, embed=hidden)
    params = model.init(jax.random.PRNGKey(seed))
    return model, params, model.batch_graph(trees, vocab)


def _loss_fn(run):
    def loss(params):
        out = run(params)
        return out["loss"].sum() + 0.1 * jnp.sum(out["logits"] ** 2)

    return loss


def _check_treelstm(trees, policy, make_engine=eb.StepwiseEngine, hidden=32):
    """Values and gradients of ``make_engine(ops)`` on a Tree-LSTM equal unbatched execution; returns the engine."""
    model, params, graph = _tree_setup(trees, hidden=hidden)
    sched = eb.schedule(graph, policy)
    eb.validate_schedule(graph, sched)
    loss_nodes = graph.nodes_of_type("loss")
    engine = make_engine(model.ops)
    batched = _loss_fn(lambda p: engine.run(p, graph, sched, outputs=loss_nodes))
    reference = _loss_fn(lambda p: eb.run_unbatched(model.ops, p, graph, outputs=loss_nodes))
    v1, g1 = jax.value_and_grad(batched)(params)
    v0, g0 = jax.value_and_grad(reference)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)
    # hidden states of every leaf and internal node, too
    nodes = np.flatnonzero(graph.node_type != graph.type_id("loss"))
    _assert_trees_close(
        engine.run(params, graph, sched, outputs=nodes),
        eb.run_unbatched(model.ops, params, graph, outputs=nodes),
        **TOL,
    )
    return engine, engine.plan(params, graph, sched)


def test_treelstm_values_and_grads_match_unbatched_on_synthetic_trees():
    _check_treelstm(synthetic_sst(4, seed=3), "agenda")


@pytest.mark.skipif(not SST.exists(), reason="SST data folder not present")
def test_treelstm_values_and_grads_match_unbatched_on_real_sst():
    _check_treelstm(read_sst(SST / "dev.txt", limit=3), "agenda")


def test_eb_run_function_equals_engine_and_works_under_jit():
    model, params, graph = _tree_setup(synthetic_sst(2, seed=1), hidden=8)
    sched = eb.schedule(graph, "agenda")
    nodes = graph.nodes_of_type("loss")
    eager = eb.run(model.ops, params, graph, sched, outputs=nodes)
    ref = eb.run_unbatched(model.ops, params, graph, outputs=nodes)
    _assert_trees_close(eager, ref, **TOL)
    grad_jit = jax.jit(jax.grad(lambda p: eb.run(model.ops, p, graph, sched, outputs=nodes)["loss"].sum()))(params)
    grad_ref = jax.grad(lambda p: eb.run_unbatched(model.ops, p, graph, outputs=nodes)["loss"].sum())(params)
    _assert_trees_close(grad_jit, grad_ref, **TOL)


# ----------------------------------------------------------------- generic ops
def _dag_ops():
    """Three state structures, a variadic sum/max/mean, a leaf without payload."""

    def source(p, x):
        return {"v": jnp.tanh(p["a"] * x)}

    def const(p, payload):
        del payload
        return {"v": p["b"]}

    def mix(p, payload, u, w):
        return {"v": jnp.sin(u["v"] * w["v"] + p["a"]), "s": jnp.sum(u["v"]) * payload}

    def pair_to_vec(p, payload, m):
        return {"v": m["v"] * m["s"] + p["b"]}

    def head(p, payload, x):
        return (x["v"] @ p["w"]) * payload

    ops = {
        "source": source,
        "const": const,
        "mix": mix,
        "fold": pair_to_vec,
        "sum": eb.Op(lambda p, payload, x: {"v": x["v"] * p["a"]}, aggregate="sum"),
        "max": eb.Op(lambda p, payload, x: {"v": jnp.cos(x["v"])}, aggregate="max"),
        "mean": eb.Op(lambda p, payload, x: {"v": x["v"] + payload}, aggregate="mean"),
        "head": head,
    }
    return ops


def _random_dag(rng, n_inst=4):
    graphs = []
    for _ in range(n_inst):
        b = eb.GraphBuilder()
        vecs = [b.add("source", payload=rng.normal(size=3).astype(np.float32)) for _ in range(rng.integers(1, 4))]
        vecs.append(b.add("const"))
        heads = []
        for _ in range(rng.integers(3, 9)):
            kind = rng.choice(["mix", "sum", "max", "mean"])
            if kind == "mix":
                u, w = rng.choice(vecs, 2)
                m = b.add("mix", int(u), int(w), payload=np.float32(rng.normal()))
                vecs.append(b.add("fold", m))
            else:
                k = int(rng.integers(1, min(4, len(vecs)) + 1))
                args = [int(a) for a in rng.choice(vecs, k, replace=False)]
                payload = np.float32(rng.normal()) if kind == "mean" else None
                vecs.append(b.add(kind, *args, payload=payload))
            heads.append(b.add("head", vecs[-1], payload=np.float32(rng.normal())))
        graphs.append(b.build())
    return eb.batch_graphs(graphs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("policy", ["agenda", "depth"])
def test_mixed_structures_and_variadic_ops_match_unbatched(seed, policy):
    rng = np.random.default_rng(seed)
    graph = _random_dag(rng)
    ops = _dag_ops()
    params = {"a": jnp.float32(0.7), "b": jnp.arange(3, dtype=jnp.float32) / 3, "w": jnp.ones(3) * 0.5}
    sched = eb.schedule(graph, policy)
    heads = graph.nodes_of_type("head")
    engine = eb.StepwiseEngine(ops)
    f1 = lambda p: jnp.sum(jnp.sin(engine.run(p, graph, sched, outputs=heads)))
    f0 = lambda p: jnp.sum(jnp.sin(eb.run_unbatched(ops, p, graph, outputs=heads)))
    v1, g1 = jax.value_and_grad(f1)(params)
    v0, g0 = jax.value_and_grad(f0)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)


def test_outputs_of_two_structures_are_rejected_with_names():
    graph = _random_dag(np.random.default_rng(0), 1)
    ops = _dag_ops()
    params = {"a": jnp.float32(0.7), "b": jnp.zeros(3), "w": jnp.ones(3)}
    sched = eb.schedule(graph, "agenda")
    nodes = np.r_[graph.nodes_of_type("head")[:1], graph.nodes_of_type("const")[:1]]
    with pytest.raises(eb.OpError, match="mix state structures.*'head'.*'const'|mix state structures.*'const'.*'head'"):
        eb.run(ops, params, graph, sched, outputs=nodes)


def test_operand_structure_clash_names_the_nodes():
    b = eb.GraphBuilder()
    x = b.add("vec", payload=np.float32(1))
    y = b.add("pair", payload=np.float32(2))
    b.add("use", x)
    b.add("use", y)
    graph = b.build()
    ops = {
        "vec": lambda p, s: jnp.ones(2) * s,
        "pair": lambda p, s: (s, s),
        "use": lambda p, payload, a: a,
    }
    with pytest.raises(eb.OpError, match=r"'use': operand 0 of node (2|3) has .* but node (2|3) passes"):
        eb.run(ops, None, graph, eb.schedule(graph, "depth"), outputs=[2])


def test_variadic_operand_structure_clash_names_the_nodes():
    """A variadic op's arguments all count as one operand position: a second structure among them is named."""
    b = eb.GraphBuilder()
    x = b.add("vec", payload=np.float32(1))
    y = b.add("pair", payload=np.float32(2))
    z = b.add("vec", payload=np.float32(3))
    b.add("total", x, z)
    b.add("total", z, y)
    graph = b.build()
    ops = {
        "vec": lambda p, s: jnp.ones(2) * s,
        "pair": lambda p, s: (s, s),
        "total": eb.Op(lambda p, payload, a: a, aggregate="sum"),
    }
    with pytest.raises(eb.OpError, match=r"'total': operand 0 of node 3 has .*\(2,\).* but node 4 passes"):
        eb.run(ops, None, graph, eb.schedule(graph, "depth"), outputs=[3])


def test_unbatchable_nodes_run_alone_and_match():
    b = eb.GraphBuilder(unbatchable=("log",))
    xs = [b.add("x", payload=np.float32(i)) for i in range(4)]
    logs = [b.add("log", v) for v in xs]
    graph = b.build()
    ops = {"x": lambda p, s: s * p, "log": lambda p, payload, v: jnp.log1p(v * v)}
    sched = eb.schedule(graph, "agenda")
    assert sched.num_batches == 1 + 4 == eb.lower_bound(graph)
    out = eb.run(ops, jnp.float32(2.0), graph, sched, outputs=logs)
    np.testing.assert_allclose(out, np.log1p((2.0 * np.arange(4)) ** 2), rtol=1e-6)


# ------------------------------------------------------------ compile budget
def test_recompile_budget_ten_minibatches_of_different_shapes():
    """10 mini-batches of different tree shapes compile one step per (op, width bucket, slice pattern)."""
    trees = synthetic_sst(10 * 16, seed=7)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab), hidden=8, embed=8)
    params = model.init(jax.random.PRNGKey(0))
    engine = eb.StepwiseEngine(model.ops, min_capacity=2048)  # one capacity for every mini-batch
    lanes_seen = set()
    for k in range(10):
        graph = model.batch_graph(trees[16 * k : 16 * (k + 1)], vocab)
        sched = eb.schedule(graph, "agenda")
        # each operand list is read with a slice (consecutive rows) or a gather: part of the step's shape
        plan = engine.plan(params, graph, sched)
        lanes_seen |= {(st.op, st.lanes, tuple(np.ndim(x) == 0 for x in st.operand_slots)) for st in plan.steps}
        nodes = graph.nodes_of_type("loss")
        jax.grad(lambda p: engine.run(p, graph, sched, outputs=nodes)["loss"].sum())(params)
    n_types, max_arity = 3, 2
    width_buckets = len({w for _, w, _ in lanes_seen})
    # forward and backward: one executable per (op type, width bucket, slice pattern) each
    assert engine.trace_count == 2 * len(lanes_seen)
    assert engine.trace_count <= 2 * n_types * width_buckets * 2**max_arity
    compiled = sum(f._cache_size() for f in (*engine._fwd.values(), *engine._bwd.values()))
    assert compiled == engine.trace_count
    # and an 11th mini-batch with known buckets compiles nothing
    before = engine.trace_count
    graph = model.batch_graph(trees[:16], vocab)
    engine.run(params, graph, eb.schedule(graph, "agenda"), outputs=graph.nodes_of_type("loss"))
    assert engine.trace_count == before


def test_buckets_are_powers_of_two():
    assert [eb.bucket(n) for n in (0, 1, 2, 3, 4, 5, 63, 64, 65)] == [1, 1, 2, 4, 4, 8, 64, 64, 128]


def test_empty_outputs_and_bad_output_ids():
    model, params, graph = _tree_setup(synthetic_sst(2, seed=0), hidden=4)
    sched = eb.schedule(graph, "depth")
    with pytest.raises(eb.GraphError, match="output node 9999 does not exist"):
        eb.run(model.ops, params, graph, sched, outputs=[9999])


def test_no_compilation_after_warm_up_across_100_minibatches_of_varying_shape(caplog):
    """Warm up on mini-batches covering the width buckets, then 100 shuffled ones compile nothing."""
    import logging

    import optax

    from edbatch_jax.training import Trainer, make_minibatch

    trees = synthetic_sst(400, seed=21)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab), hidden=4, embed=4)
    rng = np.random.default_rng(0)
    sizes = rng.integers(4, 9, 100)  # 4..8 trees: many shapes, few buckets
    starts = rng.integers(0, 390, 100)
    batches = [make_minibatch(model.batch_graph(trees[s : s + k], vocab), "typewise") for s, k in zip(starts, sizes)]
    engine = eb.StepwiseEngine(model.ops, min_capacity=1024)
    trainer = Trainer(engine, model.init(jax.random.PRNGKey(0)), optax.adam(1e-3))
    seen = set()
    for b in batches:  # warm-up: one mini-batch per new (op, bucket, slice pattern) set
        plan = engine.plan(trainer.params, b.graph, b.schedule)
        keys = {(st.op, st.lanes, tuple(np.ndim(x) == 0 for x in st.operand_slots)) for st in plan.steps}
        keys.add(("outputs", eb.bucket(b.loss_nodes.size), ()))
        if not keys <= seen:
            trainer.step(b)
            seen |= keys
    before = engine.trace_count
    caplog.set_level(logging.WARNING, logger="jax")
    with jax.log_compiles():
        for b in batches:
            trainer.step(b)
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Finished XLA compilation")]
    assert engine.trace_count == before
    assert compiles == []
    with jax.log_compiles():  # the probe sees a compilation when there is one
        jax.jit(lambda x: x * 3)(jnp.arange(13))
    assert any(r.getMessage().startswith("Finished XLA compilation") for r in caplog.records)


@pytest.mark.parametrize(
    "make_engine",
    [
        eb.StepwiseEngine,
        lambda ops: eb.FusedEngine(ops, max_lanes=4),
        lambda ops: eb.FusedEngine(ops, max_lanes=4, fine_lanes=True),
    ],
    ids=["stepwise", "fused", "fused_fine"],
)
def test_trainer_loss_and_grads_match_unbatched_and_autodiff(make_engine):
    """The trainer's direct path (forward program, loss cotangent, backward program) against unbatched
    execution and against ``jax.value_and_grad`` through the engine's custom VJP."""
    import optax

    from edbatch_jax.training import Trainer, batched_loss, make_minibatch, unbatched_loss

    # three trees of 23, 25 and 55 nodes: batches of several widths, at under half the nodes of five trees
    model, params, graph = _tree_setup(synthetic_sst(3, seed=2), hidden=8)
    batch = make_minibatch(graph, "agenda")
    engine = make_engine(model.ops)
    trainer = Trainer(engine, jax.tree.map(jnp.copy, params), optax.sgd(0.1))
    v1, g1 = trainer.loss_and_grads(params, batch)
    v0, g0 = jax.value_and_grad(lambda p: unbatched_loss(model.ops, p, batch))(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)
    v2, g2 = jax.value_and_grad(lambda p: batched_loss(engine, p, batch))(params)
    np.testing.assert_allclose(v1, v2, **TOL)
    _assert_trees_close(g1, g2, **TOL)
    plan = engine.plan(params, graph, batch.schedule)
    with pytest.raises(ValueError, match="2 buffers"):
        engine.value_and_grad(plan, params, lambda bufs: (jnp.float32(0), (None,)))


def _small_fused(ops):
    """A fused engine with few lane buckets (fewer branches: faster compilation)."""
    return eb.FusedEngine(ops, max_lanes=4)


@pytest.mark.parametrize("make_engine", [eb.StepwiseEngine, _small_fused], ids=["stepwise", "fused"])
def test_vjp_leaves_the_callers_cotangents_intact(make_engine):
    """Cotangents handed to the custom VJP are the caller's: the backward sweep must not update them in place."""
    model, params, graph = _tree_setup(synthetic_sst(3, seed=2), hidden=8)
    sched = eb.schedule(graph, "agenda")
    engine = make_engine(model.ops)
    plan = engine.plan(params, graph, sched)
    bufs, pullback = jax.vjp(lambda p: engine.execute(plan, p), params)
    cts = jax.tree.map(lambda b: jnp.full(b.shape, 0.5, b.dtype), bufs)
    kept = jax.tree.map(np.array, cts)
    (g1,) = pullback(cts)
    (g2,) = pullback(cts)  # the same arrays again: usable, unchanged
    _assert_trees_close(jax.tree.map(np.asarray, cts), kept, rtol=0, atol=0)
    _assert_trees_close(g1, g2, rtol=0, atol=0)


def test_symbolic_zero_cotangents_become_none_or_zeros():
    from jax.custom_derivatives import SymbolicZero

    from edbatch_jax.engine.common import instantiate_zeros

    z = SymbolicZero(jax.core.ShapedArray((3, 2), jnp.float32))
    assert instantiate_zeros({"h": z, "c": z}) is None
    mixed = instantiate_zeros({"h": z, "c": jnp.ones(4)})
    np.testing.assert_array_equal(mixed["h"], np.zeros((3, 2), np.float32))
    np.testing.assert_array_equal(mixed["c"], np.ones(4, np.float32))


def test_engine_is_the_abstract_base_and_constructing_it_still_builds_a_stepwise_engine():
    """``eb.Engine(ops)`` (the old spelling) warns and gives a working stepwise engine; both engines are Engines."""
    graph = _random_dag(np.random.default_rng(0), 1)
    ops = _dag_ops()
    params = {"a": jnp.float32(0.7), "b": jnp.arange(3, dtype=jnp.float32) / 3, "w": jnp.ones(3) * 0.5}
    sched = eb.schedule(graph, "agenda")
    heads = graph.nodes_of_type("head")
    with pytest.warns(DeprecationWarning, match="eb.StepwiseEngine"):
        engine = eb.Engine(ops, min_capacity=32)
    assert type(engine) is eb.StepwiseEngine and engine.min_capacity == 32
    _assert_trees_close(
        engine.run(params, graph, sched, outputs=heads), eb.run_unbatched(ops, params, graph, outputs=heads), **TOL
    )
    assert isinstance(eb.FusedEngine(ops), eb.Engine) and isinstance(eb.StepwiseEngine(ops), eb.Engine)


@pytest.mark.parametrize("make_engine", [eb.StepwiseEngine, _small_fused], ids=["stepwise", "fused"])
def test_concrete_params_skip_the_custom_vjp_with_equal_values(make_engine):
    model, params, graph = _tree_setup(synthetic_sst(3, seed=4), hidden=8)
    sched = eb.schedule(graph, "agenda")
    engine = make_engine(model.ops)
    plan = engine.plan(params, graph, sched)
    direct = engine.execute(plan, params)  # concrete: the forward program alone
    traced, _ = jax.vjp(lambda p: engine.execute(plan, p), params)  # traced: through the custom VJP
    _assert_trees_close(direct, traced, rtol=0, atol=0)
