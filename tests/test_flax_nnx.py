"""Flax NNX cells through the engine: values and gradients equal the unbatched reference; nnx.Optimizer trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import edbatch_jax as eb
from edbatch_jax.data.sst import Vocabulary, synthetic_sst
from edbatch_jax.nn.nnx_treelstm import TreeLSTMCells
from edbatch_jax.nn.treelstm import TreeLSTM

TOL = dict(rtol=2e-5, atol=2e-5)


@pytest.fixture(scope="module")
def batch():
    trees = synthetic_sst(6, seed=8)
    vocab = Vocabulary.build(trees)
    graph = TreeLSTM(len(vocab)).batch_graph(trees, vocab)
    return len(vocab), graph, eb.schedule(graph, "typewise"), graph.nodes_of_type("loss")


def _compare(ops, params, graph, sched, losses):
    f1 = lambda p: eb.run(ops, p, graph, sched, outputs=losses)["loss"].sum()
    f0 = lambda p: eb.run_unbatched(ops, p, graph, outputs=losses)["loss"].sum()
    v1, g1 = jax.value_and_grad(f1)(params)
    v0, g0 = jax.value_and_grad(f0)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, **TOL)
    assert all(float(jnp.abs(a).sum()) > 0 for a in jax.tree.leaves(g1))


def test_nnx_tree_lstm_matches_unbatched(batch):
    vocab_size, graph, sched, losses = batch
    cells = TreeLSTMCells(vocab_size, hidden=8, embed=8, rngs=nnx.Rngs(0))
    _, params = nnx.split(cells, nnx.Param)
    _compare(cells.ops(), params, graph, sched, losses)


def test_linen_tree_lstm_matches_unbatched(batch):
    vocab_size, graph, sched, losses = batch
    model = TreeLSTM(vocab_size, hidden=8, embed=8)
    _compare(model.ops, model.init(jax.random.PRNGKey(0)), graph, sched, losses)


def test_nnx_optimizer_trains_through_the_engine(batch):
    vocab_size, graph, sched, losses = batch
    cells = TreeLSTMCells(vocab_size, hidden=8, embed=8, rngs=nnx.Rngs(1))
    ops = cells.ops()
    optimizer = nnx.Optimizer(cells, optax.adam(0.05), wrt=nnx.Param)
    history = []
    for _ in range(8):
        _, params = nnx.split(cells, nnx.Param)
        loss, grads = jax.value_and_grad(lambda p: eb.run(ops, p, graph, sched, outputs=losses)["loss"].mean())(params)
        optimizer.update(cells, grads)
        history.append(float(loss))
    assert history[-1] < 0.8 * history[0]
