"""The layout planner and the engine's slices: exact values and gradients, gather counts."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import edbatch_jax as eb
import strategies
from test_engine import TOL, _assert_trees_close, _dag_ops, _random_dag

LAYOUTS = ["planned", "dynet", "gather"]


def _layout(name, graph, sched, variadic=None):
    return {"planned": lambda: eb.plan_layout(graph, sched, variadic), "dynet": lambda: None, "gather": lambda: "gather"}[name]()


def chain_graph(lengths, seed=0):
    """Variable-length chains: init -> cell -> cell ..., an embed per step, a loss per step."""
    rng = np.random.default_rng(seed)
    graphs = []
    for length in lengths:
        b = eb.GraphBuilder()
        h = b.add("init")
        for _ in range(length):
            x = b.add("embed", payload=np.float32(rng.normal()))
            h = b.add("cell", h, x)
            b.add("loss", h)
        graphs.append(b.build())
    return eb.batch_graphs(graphs)


CHAIN_OPS = {
    "init": lambda p, payload: p["h0"],
    "embed": lambda p, x: jnp.tanh(p["e"] * x),
    "cell": lambda p, payload, h, x: jnp.tanh(p["W"] @ h + x),
    "loss": lambda p, payload, h: jnp.sum(h * h),
}
CHAIN_PARAMS = {"h0": jnp.linspace(-1, 1, 4), "e": jnp.linspace(0.5, 1.5, 4), "W": jnp.eye(4) * 0.6 + 0.1}


def _check(ops, params, graph, sched, outputs, layout, reduce=jnp.sum):
    engine = eb.Engine(ops)
    f1 = lambda p: reduce(engine.run(p, graph, sched, outputs, layout))
    f0 = lambda p: reduce(eb.run_unbatched(ops, p, graph, outputs=outputs))
    v1, g1 = jax.value_and_grad(f1)(params)
    v0, g0 = jax.value_and_grad(f0)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)
    return engine.plan(params, graph, sched, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", ["agenda", "typewise"])
def test_chains_match_unbatched_and_planned_layout_gathers_nothing(layout, policy):
    graph = chain_graph([3, 9, 5, 12, 1, 7, 7, 10], seed=1)
    sched = eb.schedule(graph, policy)
    plan = _check(CHAIN_OPS, CHAIN_PARAMS, graph, sched, graph.nodes_of_type("loss"), _layout(layout, graph, sched))
    if layout == "planned":
        assert plan.num_gathers == 0 and plan.gathered_bytes == 0
        assert eb.plan_layout(graph, sched).num_gathers == 0
    elif layout == "gather":
        assert plan.num_gathers == plan.num_operands > 0
    else:
        assert 0 < plan.num_gathers < plan.num_operands  # schedule order is contiguous only by chance


@pytest.mark.parametrize("layout", LAYOUTS)
def test_treelstm_matches_unbatched_with_every_layout(layout):
    from edbatch_jax.data.sst import Vocabulary, synthetic_sst
    from edbatch_jax.nn.treelstm import TreeLSTM

    trees = synthetic_sst(5, seed=3)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(len(vocab), hidden=8, embed=8)
    graph = model.batch_graph(trees, vocab)
    sched = eb.schedule(graph, "typewise")
    _check(model.ops, model.init(jax.random.PRNGKey(0)), graph, sched, graph.nodes_of_type("loss"),
           _layout(layout, graph, sched), reduce=lambda s: jnp.sum(s["loss"]))


@pytest.mark.parametrize("layout", ["planned", "dynet"])
def test_lattice_lstm_matches_unbatched_with_planned_layout(layout):
    from edbatch_jax.data.lattice import synthetic_lattices
    from edbatch_jax.nn.lattice import LatticeTagger

    model = LatticeTagger(vocab_size=64, hidden=8, embed=8)
    graph = model.batch_graph(synthetic_lattices(3, seed=1, max_nodes=10))
    sched = eb.schedule(graph, "typewise")
    _check(model.ops, model.init(jax.random.PRNGKey(1)), graph, sched, graph.nodes_of_type("loss"),
           _layout(layout, graph, sched, {"node"}), reduce=lambda s: jnp.sum(s["loss"]))


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_structures_and_variadic_ops_match_with_planned_layout(seed):
    graph = _random_dag(np.random.default_rng(seed))
    params = {"a": jnp.float32(0.7), "b": jnp.arange(3, dtype=jnp.float32) / 3, "w": jnp.ones(3) * 0.5}
    sched = eb.schedule(graph, "typewise")
    layout = eb.plan_layout(graph, sched, variadic={"sum", "max", "mean"})
    _check(_dag_ops(), params, graph, sched, graph.nodes_of_type("head"), layout, reduce=lambda s: jnp.sum(jnp.sin(s)))


def test_planned_layout_gathers_fewer_bytes_than_schedule_order_on_trees_and_lattices():
    from edbatch_jax.data.lattice import synthetic_lattices
    from edbatch_jax.data.sst import Vocabulary, synthetic_sst
    from edbatch_jax.nn.lattice import LatticeTagger
    from edbatch_jax.nn.treelstm import TreeLSTM

    trees = synthetic_sst(32, seed=0)
    vocab = Vocabulary.build(trees)
    tree_model = TreeLSTM(len(vocab), hidden=8, embed=8)
    lat_model = LatticeTagger(hidden=8, embed=8)
    cases = [(tree_model, tree_model.batch_graph(trees, vocab), None),
             (lat_model, lat_model.batch_graph(synthetic_lattices(16, seed=0)), {"node"})]
    for model, graph, variadic in cases:
        sched = eb.schedule(graph, "typewise")
        engine = eb.Engine(model.ops)
        params = model.init(jax.random.PRNGKey(0))
        planned = engine.plan(params, graph, sched, eb.plan_layout(graph, sched, variadic))
        dynet = engine.plan(params, graph, sched, None)
        gather = engine.plan(params, graph, sched, "gather")
        assert planned.gathered_bytes < dynet.gathered_bytes < gather.gathered_bytes


def test_layout_errors_name_the_problem():
    graph = chain_graph([2, 3])
    sched = eb.schedule(graph, "agenda")
    engine = eb.Engine(CHAIN_OPS)
    plan = eb.plan_layout(graph, sched)
    other = eb.plan_layout(chain_graph([2]), eb.schedule(chain_graph([2]), "agenda"))
    with pytest.raises(ValueError, match="positions for a graph of"):
        engine.plan(CHAIN_PARAMS, graph, sched, other)
    broken = eb.LayoutPlan(np.random.default_rng(0).permutation(graph.num_nodes).astype(np.int32), 0, 0, 0, 0, 0, 0.0)
    with pytest.raises(ValueError, match="consecutive rows"):
        engine.plan(CHAIN_PARAMS, graph, sched, broken)
    with pytest.raises(ValueError, match="layout must be"):
        engine.plan(CHAIN_PARAMS, graph, sched, "sideways")
    assert plan.num_operands > 0 and "gathers" in repr(plan)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies.batched_graphs(max_graphs=4), st.sampled_from(["agenda", "depth", "typewise"]))
def test_every_plan_is_a_permutation_keeping_batches_consecutive(graph, policy):
    sched = eb.schedule(graph, policy)
    plan = eb.plan_layout(graph, sched)
    assert sorted(plan.position.tolist()) == list(range(graph.num_nodes))
    for _, nodes in sched.batches:
        pos = np.sort(plan.position[nodes])
        assert pos[-1] - pos[0] == nodes.size - 1
    assert 0 <= plan.num_gathers <= plan.num_operands


# treegru, mvrnn, bilstm_tagger, chain_lstm, grid_2d and lattice_gru run with the planned layout in
# test_nnx_cells (their NNX cells, the Linen weights, against the unbatched Linen model)
@pytest.mark.parametrize("name", ["double_treelstm", "grid_3d", "random_dag", "binary_tree"])
def test_every_bundled_workload_matches_unbatched_with_the_planned_layout(name):
    from edbatch_jax.workloads import load_workload

    work = load_workload(name, hidden=4, num_train=16, num_held_out=8)
    small = {"random_dag": 1, "grid_3d": 1, "binary_tree": 1}.get(name, 2)
    items = work.train[:small]
    if name == "random_dag":  # a 200-state DAG is slow node by node: keep its first states
        from edbatch_jax.data.synthetic_graphs import synthetic_dags

        items = synthetic_dags(1, seed=3, num_states=24)
    graph = work.batch_graph(items)
    sched = eb.schedule(graph, "typewise")
    variadic = {n for n, op in work.model.ops.items() if op.variadic}
    plan = _check(work.model.ops, work.model.init(jax.random.PRNGKey(0)), graph, sched, graph.nodes_of_type("loss"),
                  eb.plan_layout(graph, sched, variadic), reduce=lambda s: jnp.sum(s["loss"]))
    assert plan.num_gathers <= plan.num_operands
