"""The fused engine (one XLA program per schedule) against unbatched execution."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.data.sst import Vocabulary, synthetic_sst
from edbatch_jax.nn.treelstm import TreeLSTM
from edbatch_jax.training import Trainer, make_minibatch
from test_engine import TOL, _assert_trees_close, _check_treelstm, _dag_ops, _random_dag


@pytest.mark.parametrize("fine_lanes, lane_buckets", [(False, (1, 2, 4)), (True, (1, 2, 3, 4))])
def test_treelstm_values_and_grads_match_unbatched_with_chunks(fine_lanes, lane_buckets):
    # max_lanes=4: leaf and loss batches run as several chunks
    engine, plan = _check_treelstm(synthetic_sst(4, seed=3), "agenda",
                                   lambda ops: eb.FusedEngine(ops, max_lanes=4, fine_lanes=fine_lanes), hidden=8)
    assert max(s.width for s in plan.steps) > 4
    # one forward and one backward program: every lane bucket of every op type registered up front
    assert engine.trace_count == 2
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


@pytest.mark.parametrize("seed, max_lanes, fine_lanes", [(0, 2, False), (1, 512, False), (2, 8, True)])
def test_mixed_structures_and_variadic_ops_match_unbatched(seed, max_lanes, fine_lanes):  # 512: branches wider than the buffers
    graph = _random_dag(np.random.default_rng(seed))
    ops = _dag_ops()
    params = {"a": jnp.float32(0.7), "b": jnp.arange(3, dtype=jnp.float32) / 3, "w": jnp.ones(3) * 0.5}
    sched = eb.schedule(graph, "agenda")
    heads = graph.nodes_of_type("head")
    engine = eb.FusedEngine(ops, max_lanes=max_lanes, fine_lanes=fine_lanes)
    f1 = lambda p: jnp.sum(jnp.sin(engine.run(p, graph, sched, outputs=heads)))
    f0 = lambda p: jnp.sum(jnp.sin(eb.run_unbatched(ops, p, graph, outputs=heads)))
    v1, g1 = jax.value_and_grad(f1)(params)
    v0, g0 = jax.value_and_grad(f0)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)


def test_planned_layout_gives_the_same_values():
    trees = synthetic_sst(3, seed=5)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab), hidden=4, embed=4)
    params = model.init(jax.random.PRNGKey(1))
    graph = model.batch_graph(trees, vocab)
    sched = eb.schedule(graph, "typewise")
    engine = eb.FusedEngine(model.ops, max_lanes=8)
    nodes = graph.nodes_of_type("loss")
    planned = engine.run(params, graph, sched, outputs=nodes, layout=eb.plan_layout(graph, sched))
    _assert_trees_close(planned, eb.run_unbatched(model.ops, params, graph, outputs=nodes), **TOL)


def test_max_lanes_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        eb.FusedEngine({"x": lambda p, s: s}, max_lanes=6)


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
