"""Synthetic workloads (N-d LSTM grids, random DAGs, perfect binary trees): generators, graphs,
batched = unbatched values and gradients, training."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.engine import engine_for
from edbatch_jax.training import Trainer, make_minibatch, root_loss_nodes
from edbatch_jax.zoo.data.synthetic_graphs import (
    GRID_SIZES,
    Grid,
    PerfectTree,
    RandomDAG,
    perfect_tree_structure,
    synthetic_binary_trees,
    synthetic_dags,
    synthetic_grids,
)
from edbatch_jax.zoo.models.synthetic import BinaryTreeLSTM, DagLSTM, GridLSTM

TOL = dict(rtol=2e-5, atol=2e-5)

# One model object per workload (its ops, and so its compiled steps, are shared by the tests),
# with small instances: the equality and training tests of a workload run on the same graph.
SMALL = {
    "grid1": (GridLSTM(1, hidden=16, embed=16), lambda: synthetic_grids(2, seed=0, ndim=1, sizes=[(5, 9)])),
    "grid2": (GridLSTM(2, hidden=16, embed=16), lambda: synthetic_grids(2, seed=0, ndim=2, sizes=[(2, 2), (3, 3)])),
    "grid3": (
        GridLSTM(3, hidden=16, embed=16),
        lambda: synthetic_grids(2, seed=0, ndim=3, sizes=[(2, 2), (2, 2), (2, 3)]),
    ),
    "dag": (DagLSTM(hidden=16, embed=16), lambda: synthetic_dags(2, seed=0, num_states=12)),
    "tree": (BinaryTreeLSTM(hidden=16, embed=16), lambda: synthetic_binary_trees(2, seed=0, min_depth=2, max_depth=3)),
}


def _assert_same_graph(a: eb.Graph, b: eb.Graph):
    """Same nodes (op type names), operands, instances and payloads."""
    np.testing.assert_array_equal(np.array(a.op_types)[a.node_type], np.array(b.op_types)[b.node_type])
    np.testing.assert_array_equal(a.arg_ptr, b.arg_ptr)
    np.testing.assert_array_equal(a.arg_idx, b.arg_idx)
    np.testing.assert_array_equal(a.instance, b.instance)
    assert a.num_instances == b.num_instances
    for name in b.op_types:
        pa, pb = a.payloads[a.type_id(name)], b.payloads[b.type_id(name)]
        assert (pa is None) == (pb is None), name
        if pa is not None:
            np.testing.assert_array_equal(pa, pb)
            assert pa.dtype == pb.dtype == np.int32


# ----------------------------------------------------------------------------- naive builders
def _naive_grid(grid: Grid, vocab_size: int) -> eb.Graph:
    b = eb.GraphBuilder()
    init = b.add("init")
    node = {}
    for k, coord in enumerate(np.ndindex(*grid.shape)):  # row-major
        preds = []
        for d in range(grid.ndim):
            back = coord[:d] + (coord[d] - 1,) + coord[d + 1 :]
            preds.append(node[back] if coord[d] > 0 else init)
        node[coord] = b.add("cell", *preds, payload=np.int32(grid.tokens[k] % vocab_size))
    for k, coord in enumerate(np.ndindex(*grid.shape)):
        b.add("loss", node[coord], payload=np.int32(grid.labels[k]))
    return b.build()


def _naive_dag(dag: RandomDAG, vocab_size: int) -> eb.Graph:
    b = eb.GraphBuilder()
    state = [b.add("init")]
    b.add("loss", state[0], payload=np.int32(dag.labels[0]))
    for i in range(1, dag.num_states):
        arcs = [
            b.add(
                ("arc_a", "arc_b")[dag.arc_type[k]],
                state[dag.arc_src[k]],
                payload=np.int32(dag.arc_token[k] % vocab_size),
            )
            for k in np.flatnonzero(dag.arc_dst == i)
        ]
        state.append(b.add("state", *arcs, payload=np.int32(len(arcs))))
        b.add("loss", state[i], payload=np.int32(dag.labels[i]))
    return b.build()


def _naive_tree(tree: PerfectTree, vocab_size: int) -> eb.Graph:
    b = eb.GraphBuilder()
    node, leaf = [], 0
    for k in range(tree.num_nodes):
        if tree.left[k] < 0:
            node.append(b.add("leaf", payload=np.int32(tree.tokens[leaf] % vocab_size)))
            leaf += 1
        else:
            node.append(b.add("internal", node[tree.left[k]], node[tree.right[k]]))
        b.add("loss", node[k], payload=np.int32(tree.labels[k]))
    return b.build()


NAIVE = {"grid1": _naive_grid, "grid2": _naive_grid, "grid3": _naive_grid, "dag": _naive_dag, "tree": _naive_tree}


# ----------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("name", sorted(SMALL))
def test_graph_layout_matches_a_node_by_node_construction(name):
    model, make = SMALL[name]
    instances = make()
    graph = model.batch_graph(instances)
    eb.validate_graph(graph)
    assert graph.op_types == model.op_types
    _assert_same_graph(graph, eb.batch_graphs([NAIVE[name](x, model.vocab_size) for x in instances]))
    assert np.all(graph.arg_idx < graph.edge_dst())  # ids are a topological order
    roots = root_loss_nodes(graph)  # every instance ends with a loss node
    assert np.all(graph.node_type[roots] == graph.type_id("loss"))
    eb.validate_schedule(graph, eb.schedule(graph, "typewise"))
    with pytest.raises(eb.GraphError, match="empty batch"):
        model.batch_graph([])


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_reference_size_grid_graphs(ndim):
    grids = synthetic_grids(8, seed=ndim, ndim=ndim)
    for g in grids:
        assert g.ndim == ndim and all(lo <= s <= hi for s, (lo, hi) in zip(g.shape, GRID_SIZES[ndim]))
        np.testing.assert_array_equal(g.labels, g.tokens % 5)
    model = GridLSTM(ndim)
    graph = model.batch_graph(grids)
    eb.validate_graph(graph)
    cells = np.array([g.num_cells for g in grids])
    assert graph.num_nodes == (1 + 2 * cells).sum()
    assert np.all(graph.arity[graph.nodes_of_type("cell")] == ndim)
    # the longest path runs through every cell of the longest diagonal walk
    assert eb.type_depths(graph)[graph.type_id("cell")] == max(sum(s - 1 for s in g.shape) + 1 for g in grids)
    eb.validate_schedule(graph, eb.schedule(graph, "typewise"))
    with pytest.raises(eb.GraphError, match="takes 3-d grids"):
        GridLSTM(3).batch_graph(synthetic_grids(1, ndim=2))


def test_reference_size_dag_graphs():
    dags = synthetic_dags(4, seed=5)
    for d in dags:
        assert d.num_states == 200 and d.num_arcs == 4 * 199 - (3 + 2 + 1)
        assert np.all(d.arc_dst - d.arc_src <= 30) and np.all(d.arc_src < d.arc_dst)
        pairs = d.arc_src.astype(np.int64) * 1000 + d.arc_dst
        assert np.unique(pairs).size == pairs.size  # distinct sources per state
    kinds = np.concatenate([d.arc_type for d in dags])
    assert 0.06 < kinds.mean() < 0.14  # 10% type b
    graph = DagLSTM().batch_graph(dags)
    eb.validate_graph(graph)
    assert graph.num_nodes == sum(2 * d.num_states + d.num_arcs for d in dags)
    state_arity = graph.arity[graph.nodes_of_type("state")]
    assert state_arity.min() == 1 and state_arity.max() == 4
    np.testing.assert_array_equal(graph.payloads[graph.type_id("state")], state_arity)
    eb.validate_schedule(graph, eb.schedule(graph, "typewise"))
    # labels: the most frequent class of the incoming arcs' tokens (ties: the smallest class)
    d = dags[0]
    for i in (1, 2, 50, 199):
        counts = np.bincount(d.arc_token[d.arc_dst == i] % 5, minlength=5)
        assert d.labels[i] == counts.argmax()
    assert d.labels[0] == 0


def test_reference_size_binary_trees():
    trees = synthetic_binary_trees(16, seed=2)
    assert {t.depth for t in trees} <= {5, 6, 7} and len({t.depth for t in trees}) > 1
    left, right = perfect_tree_structure(2)
    assert left.tolist() == [-1, -1, 0, -1, -1, 3, 2] and right.tolist() == [-1, -1, 1, -1, -1, 4, 5]
    graph = BinaryTreeLSTM().batch_graph(trees)
    eb.validate_graph(graph)
    assert graph.num_nodes == sum(2 * (2 ** (t.depth + 1) - 1) for t in trees)
    assert eb.type_depths(graph)[graph.type_id("internal")] == max(t.depth for t in trees)
    eb.validate_schedule(graph, eb.schedule(graph, "typewise"))
    labels = np.concatenate([t.labels for t in trees])
    assert np.bincount(labels, minlength=5).min() > 0  # every class occurs


def test_generators_are_deterministic_and_validate():
    a, b = synthetic_dags(2, seed=9, num_states=30), synthetic_dags(2, seed=9, num_states=30)
    assert all(np.array_equal(x.arc_src, y.arc_src) and np.array_equal(x.labels, y.labels) for x, y in zip(a, b))
    g1, g2 = synthetic_grids(3, seed=4, ndim=2), synthetic_grids(3, seed=4, ndim=2)
    assert [g.shape for g in g1] == [g.shape for g in g2] and all(
        np.array_equal(x.tokens, y.tokens) for x, y in zip(g1, g2)
    )
    t1, t2 = synthetic_binary_trees(3, seed=4), synthetic_binary_trees(3, seed=4)
    assert all(np.array_equal(x.tokens, y.tokens) for x, y in zip(t1, t2))
    with pytest.raises(ValueError, match="no reference sizes"):
        synthetic_grids(1, ndim=4)
    with pytest.raises(ValueError, match="arcs_per_state <= window"):
        synthetic_dags(1, arcs_per_state=5, window=4)
    with pytest.raises(ValueError, match="needs an incoming arc; state 2"):
        RandomDAG(labels=[0, 0, 0], arc_src=[0], arc_dst=[1], arc_type=[0], arc_token=[0])
    with pytest.raises(ValueError, match="arcs must go forward"):
        RandomDAG(labels=[0, 0], arc_src=[1], arc_dst=[1], arc_type=[0], arc_token=[0])
    with pytest.raises(ValueError, match="needs 4 tokens and 7 labels"):
        PerfectTree(2, tokens=[1, 2, 3], labels=[0] * 7)
    with pytest.raises(ValueError, match="needs 6 tokens"):
        Grid((2, 3), tokens=[0] * 5, labels=[0] * 6)


# ----------------------------------------------------------------------------- numerics and training
def _graph(name):
    model, make = SMALL[name]
    return model, model.batch_graph(make())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_batched_equals_unbatched(name):
    model, graph = _graph(name)
    eb.validate_graph(graph)
    params = model.init(jax.random.PRNGKey(0))
    losses = graph.nodes_of_type("loss")
    ops = model.ops

    def summed(run):
        def f(p):
            out = run(p)
            return out["loss"].sum(), out

        return jax.value_and_grad(f, has_aux=True)

    (v0, out0), g0 = summed(lambda p: eb.run_unbatched(ops, p, graph, outputs=losses))(params)
    for policy in ("agenda", "typewise"):
        sched = eb.schedule(graph, policy)
        eb.validate_schedule(graph, sched)
        (v1, out1), g1 = summed(lambda p: eb.run(ops, p, graph, sched, outputs=losses))(params)
        np.testing.assert_allclose(v1, v0, **TOL)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), out1, out0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g1, g0)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_training_lowers_the_loss(name):
    model, graph = _graph(name)
    batch = make_minibatch(graph, "agenda")
    trainer = Trainer(engine_for(model.ops), model.init(jax.random.PRNGKey(1)), optax.adam(0.01))
    losses = [trainer.step(batch) for _ in range(30)]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
