"""Lattice-LSTM / Lattice-GRU graphs and cells: batched values and gradients equal unbatched ones."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

import edbatch_jax as eb
from edbatch_jax.zoo.data.lattice import read_lattices, synthetic_lattices
from edbatch_jax.zoo.models.lattice import LATTICE_OP_TYPES, LatticeTagger

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lattice"


def _check_against_unbatched(model, lattices, policy):
    graph = model.batch_graph(lattices)
    eb.validate_graph(graph)
    params = model.init(jax.random.PRNGKey(0))
    losses = graph.nodes_of_type("loss")
    sched = eb.schedule(graph, policy)
    eb.validate_schedule(graph, sched)

    def batched(p):
        return eb.run(model.ops, p, graph, sched, outputs=losses)["loss"].sum()

    def unbatched(p):
        return eb.run_unbatched(model.ops, p, graph, outputs=losses)["loss"].sum()

    v1, g1 = jax.value_and_grad(batched)(params)
    v2, g2 = jax.value_and_grad(unbatched)(params)
    np.testing.assert_allclose(v1, v2, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
    return graph


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_synthetic_lattices_batched_equal_unbatched(cell):
    model = LatticeTagger(vocab_size=64, hidden=8, embed=8, cell=cell)
    graph = _check_against_unbatched(model, synthetic_lattices(4, seed=2, max_nodes=20), "typewise")
    assert graph.op_types == LATTICE_OP_TYPES


@pytest.mark.skipif(not DATA.exists(), reason="real lattice data not present")
def test_real_lattices_batched_equal_unbatched():
    lattices = [x for x in read_lattices(DATA / "dev.txt") if x.num_nodes <= 25][:3]
    _check_against_unbatched(LatticeTagger(vocab_size=128, hidden=8, embed=8), lattices, "agenda")


def test_graph_structure_follows_the_lattice():
    lat = synthetic_lattices(1, seed=4, max_nodes=30)[0]
    graph = LatticeTagger().batch_graph([lat])
    n, a = lat.num_nodes, lat.num_arcs
    assert graph.num_nodes == 2 * n + a
    types = [graph.op_types[t] for t in graph.node_type]
    assert types[0] == "init" and types[1:n] == ["node"] * (n - 1) and types[n + a :] == ["loss"] * n
    for j in range(a):  # every arc reads its source node's state
        assert list(graph.args(n + j)) == [lat.arc_src[j]]
        assert types[n + j] == ("char" if lat.is_char[j] else "word")
    for i in range(1, n):  # a node sums exactly its incoming arcs
        assert sorted(graph.args(i)) == sorted(n + np.flatnonzero(lat.arc_dst == i))
    with pytest.raises(eb.GraphError, match="empty batch"):
        LatticeTagger().batch_graph([])
