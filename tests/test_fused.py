"""The fused engine (one XLA program per schedule) against unbatched execution."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_engine import TOL, _assert_trees_close, _check_treelstm, _dag_ops, _random_dag, _tree_setup

import edbatch_jax as eb
from edbatch_jax.training import Trainer, make_minibatch
from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
from edbatch_jax.zoo.models.treelstm import TreeLSTM


@pytest.mark.parametrize("fine_lanes, lane_buckets", [(False, (1, 2, 4)), (True, (1, 2, 3, 4))])
def test_treelstm_values_and_grads_match_unbatched_with_chunks(fine_lanes, lane_buckets):
    # max_lanes=4: leaf and loss batches run as several chunks
    engine, plan = _check_treelstm(
        synthetic_sst(4, seed=3),
        "agenda",
        lambda ops: eb.FusedEngine(ops, max_lanes=4, fine_lanes=fine_lanes),
        hidden=8,
    )
    assert max(s.width for s in plan.steps) > 4
    # every lane bucket of every op type registered up front: one forward program (values), one forward program
    # that also stores residuals and one backward program (gradients)
    assert engine.trace_count == 3
    assert sorted(k[4] for k in engine.branch_keys) == sorted(lane_buckets * 3)  # leaf, internal, loss


def test_fine_lane_ladder_is_the_smallest_rung_that_fits():
    from edbatch_jax.engine.buckets import fine_bucket_array, fine_ladder

    ladder = fine_ladder(512)
    assert ladder == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
    n = np.arange(1, 513)
    got = fine_bucket_array(n)
    want = np.array([min(r for r in ladder if r >= k) for k in n])
    np.testing.assert_array_equal(got, want)
    assert np.all(got <= np.array([eb.bucket(k) for k in n]))  # never wider than the power-of-two bucket


@pytest.mark.parametrize(
    "seed, max_lanes, fine_lanes, policy",
    [
        (0, 2, False, "dots"),
        (1, 512, False, "dots"),
        (2, 8, True, "dots"),
        (3, 4, False, "everything"),
        (4, 4, True, None),
    ],
)
def test_mixed_structures_and_variadic_ops_match_unbatched(
    seed, max_lanes, fine_lanes, policy
):  # 512: branches wider than the buffers
    graph = _random_dag(np.random.default_rng(seed))
    ops = _dag_ops()
    params = {"a": jnp.float32(0.7), "b": jnp.arange(3, dtype=jnp.float32) / 3, "w": jnp.ones(3) * 0.5}
    sched = eb.schedule(graph, "agenda")
    heads = graph.nodes_of_type("head")
    engine = eb.FusedEngine(ops, max_lanes=max_lanes, fine_lanes=fine_lanes, save_residuals=_POLICIES[policy])
    f1 = lambda p: jnp.sum(jnp.sin(engine.run(p, graph, sched, outputs=heads)))
    f0 = lambda p: jnp.sum(jnp.sin(eb.run_unbatched(ops, p, graph, outputs=heads)))
    v1, g1 = jax.value_and_grad(f1)(params)
    v0, g0 = jax.value_and_grad(f0)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)


def test_int32_payloads_travel_in_the_packed_tables_and_others_beside_them():
    """Payloads whose leaves are all int32 (here a dict: a vector and a scalar) are packed with the int32 tables,
    a float payload goes beside them; values and gradients match unbatched execution either way."""
    ops = {
        "embed": lambda p, payload: {"v": jnp.sum(p["table"][payload["ids"]], 0) * payload["k"]},
        "scale": lambda p, payload, x: {"v": jnp.tanh(x["v"] * payload + p["b"])},
        "head": lambda p, payload, x, y: jnp.sum(x["v"] * y["v"]),
    }
    rng = np.random.default_rng(0)
    graphs = []
    for _ in range(5):
        b = eb.GraphBuilder()
        leaves = [
            b.add("embed", payload={"ids": rng.integers(0, 6, 2).astype(np.int32), "k": np.int32(rng.integers(1, 4))})
            for _ in range(int(rng.integers(2, 5)))
        ]
        scaled = [b.add("scale", v, payload=np.float32(rng.normal())) for v in leaves]
        b.add("head", leaves[0], scaled[-1])
        graphs.append(b.build())
    graph = eb.batch_graphs(graphs)
    params = {"table": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "b": jnp.float32(0.3)}
    heads = graph.nodes_of_type("head")
    engine = eb.FusedEngine(ops, max_lanes=4)
    sched = eb.schedule(graph, "agenda")
    f1 = lambda p: jnp.sum(engine.run(p, graph, sched, outputs=heads))
    f0 = lambda p: jnp.sum(eb.run_unbatched(ops, p, graph, outputs=heads))
    v1, g1 = jax.value_and_grad(f1)(params)
    v0, g0 = jax.value_and_grad(f0)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)
    packed, separate = engine._layout
    assert [e for e, _ in packed if isinstance(e, tuple) and e[0] == "payload"] == [
        ("payload", "embed", 0),
        ("payload", "embed", 1),
    ]
    assert [name for name, _ in separate] == ["scale"]
    ints, others = engine.plan(params, graph, sched).tables.packed[engine._layout]
    assert list(others) == ["scale"] and ints.dtype == jnp.int32


def test_a_payload_structure_change_is_named_and_leaves_the_engine_as_it_was():
    """The engine's programs and packed tables are made for one payload structure per op type: a graph whose
    payloads of that type have other leaf shapes or dtypes is refused, naming the op type, before anything is
    registered; the first graph then runs again without a new trace."""
    ops = {"leaf": lambda p, payload: {"v": p["w"] * jnp.sum(payload)}, "head": lambda p, payload, x: jnp.sum(x["v"])}
    params = {"w": jnp.ones(3)}

    def graph(payload):
        b = eb.GraphBuilder()
        b.add("head", b.add("leaf", payload=payload))
        return b.build()

    first = graph(np.int32(2))
    engine = eb.FusedEngine(ops, max_lanes=4)
    run = lambda g: engine.run(params, g, eb.schedule(g, "agenda"), outputs=g.nodes_of_type("head"))
    np.testing.assert_allclose(run(first), [6.0])
    keys, traces = engine.branch_keys, engine.trace_count
    for other in (np.array([1, 2], np.int32), np.float32(2.0)):
        with pytest.raises(eb.OpError, match="op 'leaf': this graph's payloads are"):
            run(graph(other))
    assert engine.branch_keys == keys
    np.testing.assert_allclose(run(first), [6.0])
    assert engine.trace_count == traces


_POLICIES = {
    "dots": jax.checkpoint_policies.dots_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
    None: None,
}


def test_saved_residuals_are_the_matrix_products_and_the_backward_program_reads_them():
    hidden = 8
    model, params, graph = _tree_setup(synthetic_sst(6, seed=2), hidden=hidden, seed=3)
    batch = make_minibatch(graph, "agenda")
    saving = eb.FusedEngine(model.ops, max_lanes=4)
    recomputing = eb.FusedEngine(model.ops, max_lanes=4, save_residuals=None)
    plan = saving.plan(params, batch.graph, batch.schedule)
    bufs, saved = saving._forward_saving(plan, params)
    # one row per lane of each op type's matrix products: leaf W x, internal W [h_l; h_r], U_l h_l, U_r h_r, loss W_o h
    stored = {name: sorted(sd.shape for _, _, sd in layout) for (name, *_), layout in saving._saved_layouts.items()}
    assert stored == {"leaf": [(3 * hidden,)], "internal": [(hidden,), (hidden,), (3 * hidden,)], "loss": [(5,)]}
    for name, arrays in zip(dict.fromkeys(k[0] for k in saving.branch_keys), saved):
        rows = saving._lengths[("rows", name)]
        assert [a.shape[0] for a in arrays] == [rows] * len(arrays)
    ct = tuple(jax.tree.map(jnp.ones_like, b) for b in bufs)
    with_saved = saving._backward(plan, params, bufs, ct, saved=saved)
    # the same gradients as recomputing every product, in this engine and in one that never stores
    _assert_trees_close(with_saved, saving._backward(plan, params, bufs, ct, saved=None), **TOL)
    _assert_trees_close(
        with_saved,
        recomputing.value_and_grad(
            recomputing.plan(params, batch.graph, batch.schedule), params, lambda b: (jnp.float32(0), ct)
        )[1],
        **TOL,
    )
    # and the stored values are what the backward program uses: scaled ones change the gradients
    scaled = saving._backward(plan, params, bufs, ct, saved=jax.tree.map(lambda a: a * 2, saved))
    assert not np.allclose(scaled["internal"]["iou"]["kernel"], with_saved["internal"]["iou"]["kernel"])
    assert recomputing._forward_saving(recomputing.plan(params, batch.graph, batch.schedule), params)[1] is None
    # a training step hands its residual tables to the next one; rows the next forward pass does not write keep
    # old values, which must not reach the gradients: poisoned with NaN, the step still matches
    ones = lambda b: (jnp.float32(0), tuple(jax.tree.map(jnp.ones_like, x) for x in b))
    saving.value_and_grad(plan, params, ones)
    saving._spare_saved = {
        k: jax.tree.map(lambda a: jnp.full_like(a, jnp.nan), v) for k, v in saving._spare_saved.items()
    }
    poisoned = jax.tree.leaves(saving._spare_saved)
    _assert_trees_close(saving.value_and_grad(plan, params, ones)[1], with_saved, **TOL)
    assert poisoned and all(a.is_deleted() for a in poisoned)  # they were the tables filled (donated)


def test_gradients_under_an_outer_jit_store_residuals_as_traced_values():
    model, params, graph = _tree_setup(synthetic_sst(3, seed=4), hidden=4, seed=2)
    sched = eb.schedule(graph, "agenda")
    nodes = graph.nodes_of_type("loss")
    engine = eb.FusedEngine(model.ops, max_lanes=2)  # few branches: the whole program compiles inlined
    loss = lambda p: jnp.sum(engine.run(p, graph, sched, outputs=nodes)["loss"])
    reference = lambda p: jnp.sum(eb.run_unbatched(model.ops, p, graph, outputs=nodes)["loss"])
    _assert_trees_close(jax.jit(jax.grad(loss))(params), jax.grad(reference)(params), **TOL)
    assert engine._saved_layouts[("internal", False, None)]  # the traced forward stored its products


def test_planned_layout_gives_the_same_values():
    model, params, graph = _tree_setup(synthetic_sst(3, seed=5), hidden=4, seed=1)
    sched = eb.schedule(graph, "typewise")
    engine = eb.FusedEngine(model.ops, max_lanes=8)
    nodes = graph.nodes_of_type("loss")
    planned = engine.run(params, graph, sched, outputs=nodes, layout=eb.plan_layout(graph, sched))
    _assert_trees_close(planned, eb.run_unbatched(model.ops, params, graph, outputs=nodes), **TOL)


def test_max_lanes_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        eb.FusedEngine({"x": lambda p, s: s}, max_lanes=6)


def test_save_residuals_must_be_a_checkpoint_policy():
    with pytest.raises(TypeError, match="save_residuals must be a jax.checkpoint policy.*'dots'"):
        eb.FusedEngine({"x": lambda p, s: s}, save_residuals="dots")


@pytest.mark.parametrize("fine_lanes", [False, True])
def test_one_program_serves_mini_batches_of_every_shape(fine_lanes):
    """After the largest mini-batches ran once, 30 others of varying shape compile nothing."""
    trees = synthetic_sst(300, seed=11)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab), hidden=4, embed=4)
    rng = np.random.default_rng(0)
    sizes = rng.integers(3, 9, 36)
    starts = rng.integers(0, 290, 36)
    batches = [make_minibatch(model.batch_graph(trees[s : s + k], vocab), "typewise") for s, k in zip(starts, sizes)]
    batches.sort(key=lambda b: -b.graph.num_nodes)
    engine = eb.FusedEngine(model.ops, max_lanes=16, min_capacity=512, fine_lanes=fine_lanes)
    trainer = Trainer(engine, model.init(jax.random.PRNGKey(0)), optax.adam(1e-3))
    for b in batches[:6]:  # the largest: table lengths reach their buckets
        trainer.step(b)
    before = engine.trace_count
    assert before == 2  # forward and backward programs
    for b in np.random.default_rng(1).permutation(len(batches) - 6) + 6:
        trainer.step(batches[b])
    assert engine.trace_count == before


def test_plans_that_lack_a_registered_op_type_match_unbatched():
    """Trees with internal nodes register every op type; one-word trees (leaves and losses only) then run through the
    same programs, their packed tables holding no lanes for the internal op type."""
    from edbatch_jax.training import loss_and_grads, unbatched_loss
    from edbatch_jax.zoo.data.sst import parse_tree

    trees = synthetic_sst(2, seed=5)
    model, params, graph = _tree_setup(trees, hidden=8)
    engine = eb.FusedEngine(model.ops, max_lanes=4)
    full = make_minibatch(graph, "agenda")
    words = make_minibatch(
        model.batch_graph([parse_tree(f"({k} w{k})") for k in range(3)], Vocabulary.build(trees)), "agenda"
    )
    assert "internal" not in {words.graph.op_types[t] for t in np.unique(words.graph.node_type)}
    loss_and_grads(engine, params, full)
    loss, grads = loss_and_grads(engine, params, words)
    want, want_grads = jax.value_and_grad(lambda p: unbatched_loss(model.ops, p, words))(params)
    np.testing.assert_allclose(loss, want, **TOL)
    _assert_trees_close(grads, want_grads, **TOL)
    assert engine.trace_count == 2  # forward (storing residuals) and backward: shared by both


def test_a_plan_made_before_the_tables_grew_runs_without_compiling_again():
    """A larger mini-batch grows the engine's table lengths; a plan made before is packed again, as the same kind of
    program input as before (device, commitment): running it compiles nothing, neither a trace nor in XLA."""
    from edbatch_jax.apps.bench import xla_compiles  # programs compiled, or loaded from the persistent cache
    from edbatch_jax.training import batched_loss

    trees = synthetic_sst(12, seed=7)
    model, params, _ = _tree_setup(trees, hidden=4)
    vocab = Vocabulary.build(trees)
    small = make_minibatch(model.batch_graph(trees[:1], vocab), "agenda")
    large = make_minibatch(model.batch_graph(trees, vocab), "agenda")
    engine = eb.FusedEngine(model.ops, max_lanes=4, min_capacity=4096)  # one buffer size for both mini-batches
    jax.block_until_ready(batched_loss(engine, params, small))
    packed = engine.plan(params, small.graph, small.schedule).tables.packed
    first_layout = next(iter(packed))
    jax.block_until_ready(batched_loss(engine, params, large))
    assert engine._layout != first_layout  # the large mini-batch grew the tables: the small plan's packing is stale
    before, compiled = engine.trace_count, xla_compiles()
    jax.block_until_ready(batched_loss(engine, params, small))
    assert list(packed) == [engine._layout]  # packed again
    assert engine.trace_count == before and xla_compiles() == compiled


def test_plans_with_buffers_in_another_order_share_the_engine():
    """A later plan whose state buffers are numbered otherwise (another op type met first) runs its own
    branches; those registered for the first plan's buffers do not apply to it (values and gradients)."""
    ops = {
        "a": lambda p, x: jnp.tanh(p["E"][x]),
        "b": lambda p, x: jnp.sin(p["F"][x]),
        "ua": lambda p, payload, h: p["Wa"] @ h,
        "ub": lambda p, payload, h: p["Wb"] @ h,
    }
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {
        "E": jax.random.normal(k[0], (5, 4)),
        "F": jax.random.normal(k[1], (5, 3)),
        "Wa": jax.random.normal(k[2], (4, 4)),
        "Wb": jax.random.normal(k[3], (3, 3)),
    }

    def graph(order):
        b = eb.GraphBuilder()
        for i, t in enumerate(order):
            b.add("u" + t, b.add(t, payload=np.int32(i + 1)))
        return b.build()

    engine = eb.FusedEngine(ops, max_lanes=4)  # few lane buckets: faster compilation
    for order in (["a"], ["b", "a"], ["a", "b"]):
        g = graph(order)
        sched = eb.schedule(g, "agenda")
        outs = g.nodes_of_type("ua")

        batched = lambda p: engine.run(p, g, sched, outputs=outs).sum()
        plain = lambda p: eb.run_unbatched(ops, p, g, outputs=outs).sum()
        vb, gb = jax.value_and_grad(batched)(params)
        vp, gp = jax.value_and_grad(plain)(params)
        np.testing.assert_allclose(vb, vp, rtol=1e-5)
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), gb, gp)
