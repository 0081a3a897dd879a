"""Flax NNX cells: every bundled model's NNX cells have the Linen cells' parameter tree, and with the
same weights the batched NNX model (planned layout) equals the unbatched Linen reference (values and gradients);
``nnx.Optimizer`` trains through the engine; :class:`~edbatch_jax.NNXCells` errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from test_engine import TOL, _assert_trees_close

import edbatch_jax as eb
from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
from edbatch_jax.zoo.data.synthetic_graphs import synthetic_dags
from edbatch_jax.zoo.models.treelstm import TreeLSTM


def _smallest_graph(work):
    """The batched graph of the workload's smallest training instance (a short DAG for ``random_dag``)."""
    items = synthetic_dags(1, seed=3, num_states=24) if work.name == "random_dag" else work.train
    sizes = [work.batch_graph([x]).num_nodes for x in items]
    return work.batch_graph([items[int(np.argmin(sizes))]])


# One workload per set of NNX cell classes; the others reuse these cells (checked in the next test).
RUN = ["treelstm", "treegru", "mvrnn", "lattice_lstm", "lattice_gru", "bilstm_tagger", "chain_lstm", "grid_2d"]


@pytest.mark.parametrize("name", sorted(set(eb.workloads.WORKLOADS) - set(RUN)))
def test_every_model_offers_nnx_cells_with_the_linen_parameter_tree(name):
    work = eb.workloads.load_workload(name, hidden=4, num_train=8, num_held_out=4)
    cells = work.model.nnx_cells(rngs=nnx.Rngs(0))
    linen_params = work.model.init(jax.random.PRNGKey(0))
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(cells, nnx.Param))) == jax.tree.map(
        jnp.shape, linen_params
    )
    for name, op in work.model.ops.items():
        assert (cells.ops[name].arity, cells.ops[name].aggregate) == (op.arity, op.aggregate)


@pytest.mark.parametrize("name", RUN)
def test_nnx_cells_match_the_linen_model(name):
    work = eb.workloads.load_workload(name, hidden=4, num_train=8, num_held_out=4)
    model = work.model
    graph = _smallest_graph(work)
    sched = eb.schedule(graph, "agenda")
    outputs = graph.nodes_of_type("loss")

    linen_params = model.init(jax.random.PRNGKey(0))
    cells = model.nnx_cells(rngs=nnx.Rngs(1))
    state = nnx.state(cells, nnx.Param)
    assert jax.tree.map(jnp.shape, nnx.to_pure_dict(state)) == jax.tree.map(jnp.shape, linen_params)
    nnx.replace_by_pure_dict(state, linen_params)  # the Linen weights, so both must compute the same
    nnx.update(cells, state)
    assert set(cells.ops) == set(model.ops)

    # the planned (PQ-tree) layout: these workloads' layout check with Linen ops lives here too
    layout = eb.plan_layout(graph, sched, {n for n, op in model.ops.items() if op.variadic})
    batched = lambda p: jnp.sum(eb.run(cells.ops, p, graph, sched, outputs=outputs, layout=layout)["loss"])
    reference = lambda p: jnp.sum(eb.run_unbatched(model.ops, p, graph, outputs=outputs)["loss"])
    v1, g1 = jax.value_and_grad(batched)(nnx.state(cells, nnx.Param))
    v0, g0 = jax.value_and_grad(reference)(linen_params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(nnx.to_pure_dict(g1), g0, **TOL)
    assert any(float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(g0))


def test_nnx_optimizer_trains_through_the_engine():
    trees = synthetic_sst(6, seed=8)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(len(vocab), hidden=8, embed=8)
    graph = model.batch_graph(trees, vocab)
    sched, losses = eb.schedule(graph, "typewise"), graph.nodes_of_type("loss")
    cells = model.nnx_cells(rngs=nnx.Rngs(1))
    optimizer = nnx.Optimizer(cells, optax.adam(0.05), wrt=nnx.Param)
    history = []
    for _ in range(8):
        loss_fn = lambda p: eb.run(cells.ops, p, graph, sched, outputs=losses)["loss"].mean()
        loss, grads = jax.value_and_grad(loss_fn)(nnx.state(cells, nnx.Param))
        optimizer.update(cells, grads)
        history.append(float(loss))
    assert history[-1] < 0.8 * history[0]


def test_nnx_cells_errors_name_the_culprit():
    class Cell(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.ones(2))

        def __call__(self, payload, *states):
            return self.w[...] * sum(states)

    with pytest.raises(eb.OpError, match="'node'.*both"):
        eb.NNXCells({"node": Cell()}, extra_ops={"node": eb.Op(lambda p, x, s: s, arity=1)})
    with pytest.raises(eb.OpError, match="'ops'"):
        eb.NNXCells({"ops": Cell()})
    with pytest.raises(eb.OpError, match=r"\['extra'\] have no op type"):
        eb.NNXCells.matching({"node": lambda p, x, s: s}, {"extra": Cell()})
    cells = eb.NNXCells({"node": Cell()}, arity={"node": 2})
    assert cells.ops["node"].arity == 2 and cells.ops["node"].params_key == "node"
