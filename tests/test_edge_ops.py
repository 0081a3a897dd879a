"""Per-argument (edge) computations of variable-arity ops: batched == unbatched, values and gradients.

An ``eb.Op(fn, edge=g, aggregate=...)`` runs ``g`` once per (node, argument)
pair, then reduces per node; checked for every aggregate (softmax attention
included), both engines, the PQ-tree layout, lanes without a cotangent whose
edge function is singular, and the errors of a misdeclared op.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edbatch_jax as eb

H = 3


def leaf(p, word):
    return {"h": jnp.tanh(p["emb"][word])}


def message(p, word, child):
    """A payload-dependent message per child (the node's word shifts the gate)."""
    gate = jax.nn.sigmoid(p["U"] @ child["h"] + p["emb"][word])
    return {"h": gate * child["h"]}


def scored(p, word, child):
    return jnp.dot(p["a"], child["h"]) + p["emb"][word][0], {"h": jnp.tanh(p["U"] @ child["h"])}


def node(p, word, combined):
    return {"h": jnp.tanh(combined["h"] + p["emb"][word])}


def _params():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    return {
        "emb": jax.random.normal(k[0], (7, H)),
        "U": jax.random.normal(k[1], (H, H)),
        "a": jax.random.normal(k[2], (H,)),
    }


def _graph(seed: int, instances: int = 4):
    """Random forests: leaves, then nodes reading 1-5 earlier nodes of their instance (shared children too)."""
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(instances):
        b = eb.GraphBuilder()
        ids = [b.add("leaf", payload=np.int32(rng.integers(7))) for _ in range(int(rng.integers(1, 4)))]
        for _ in range(int(rng.integers(2, 6))):
            k = int(rng.integers(1, min(5, len(ids)) + 1))
            kids = rng.choice(len(ids), size=k, replace=False)
            ids.append(b.add("node", *[ids[j] for j in kids], payload=np.int32(rng.integers(7))))
        graphs.append(b.build())
    return eb.batch_graphs(graphs)


@pytest.mark.parametrize("aggregate", ["sum", "mean", "max", "softmax"])
@pytest.mark.parametrize("engine_cls", [eb.StepwiseEngine, eb.FusedEngine], ids=["stepwise", "fused"])
def test_edge_ops_match_unbatched(aggregate, engine_cls):
    edge = scored if aggregate == "softmax" else message
    ops = {"leaf": leaf, "node": eb.Op(node, aggregate=aggregate, edge=edge)}
    params = _params()
    engine = engine_cls(ops)
    for seed, layout in ((1, False), (2, True)):
        graph = _graph(seed)
        sched = eb.schedule(graph, "agenda")
        plan_layout = eb.plan_layout(graph, sched) if layout else None
        batched = lambda p: (engine.run(p, graph, sched, layout=plan_layout)["h"] ** 2).sum()
        unbatched = lambda p: (eb.run_unbatched(ops, p, graph)["h"] ** 2).sum()
        vb, gb = jax.value_and_grad(batched)(params)
        vu, gu = jax.value_and_grad(unbatched)(params)
        np.testing.assert_allclose(vb, vu, rtol=1e-5)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gb, gu)


def test_softmax_is_an_attention_over_each_nodes_own_children():
    """Independent of the reference executor: one node's result computed by hand."""
    ops = {"leaf": leaf, "node": eb.Op(node, aggregate="softmax", edge=scored)}
    params = _params()
    b = eb.GraphBuilder()
    kids = [b.add("leaf", payload=np.int32(w)) for w in (1, 2, 3)]
    other = b.add("leaf", payload=np.int32(4))
    top = b.add("node", *kids, payload=np.int32(5))
    b.add("node", other, kids[0], payload=np.int32(6))  # another node in the same batch
    graph = b.build()
    got = eb.FusedEngine(ops, max_lanes=4).run(params, graph, eb.schedule(graph, "agenda"), outputs=[top])["h"][0]
    hs = [jnp.tanh(params["emb"][w]) for w in (1, 2, 3)]
    scores = jnp.array([jnp.dot(params["a"], h) + params["emb"][5][0] for h in hs])
    values = [jnp.tanh(params["U"] @ h) for h in hs]
    weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    want = jnp.tanh(sum(w * v for w, v in zip(weights, values)) + params["emb"][5])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_singular_edge_function_on_lanes_without_cotangent_keeps_gradients_exact():
    """An edge function singular at zero (``x / |x|``) on nodes no loss reads and on padding edges."""

    def unit(p, payload, child):
        return {"h": child["h"] / jnp.linalg.norm(child["h"])}

    ops = {
        "leaf": lambda p, w: {"h": p["emb"][w] * (w > 0)},  # word 0: an all-zero state
        "node": eb.Op(lambda p, w, m: {"h": m["h"] * p["emb"][w]}, aggregate="sum", edge=unit),
    }
    params = _params()
    b = eb.GraphBuilder()
    zero = b.add("leaf", payload=np.int32(0))
    good = [b.add("leaf", payload=np.int32(w)) for w in (1, 2)]
    read = b.add("node", *good, payload=np.int32(3))
    b.add("node", zero, good[0], payload=np.int32(4))  # singular, and no loss reads it
    graph = b.build()
    sched = eb.schedule(graph, "agenda")
    want = jax.grad(lambda p: eb.run_unbatched(ops, p, graph, outputs=[read])["h"].sum())(params)
    for engine in (eb.StepwiseEngine(ops), eb.FusedEngine(ops, max_lanes=4)):  # few lane buckets: faster compilation
        got = jax.grad(lambda p: engine.run(p, graph, sched, outputs=[read])["h"].sum())(params)
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(got))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_misdeclared_edge_ops_are_refused():
    with pytest.raises(eb.OpError, match="variable number of operands"):
        eb.Op(node, arity=1, edge=message)
    with pytest.raises(eb.OpError, match="variable number of operands"):
        eb.Op(node, edge=message)
    with pytest.raises(eb.OpError, match="softmax"):
        eb.Op(node, aggregate="softmax")
    with pytest.raises(eb.OpError, match="must be a function"):
        eb.Op(node, aggregate="sum", edge=3)
    graph = _graph(3)
    sched = eb.schedule(graph, "agenda")
    not_scored = {"leaf": leaf, "node": eb.Op(node, aggregate="softmax", edge=message)}
    with pytest.raises(eb.OpError, match=r"returns \(score, value\)"):
        eb.StepwiseEngine(not_scored).run(_params(), graph, sched)
    vector_score = {
        "leaf": leaf,
        "node": eb.Op(node, aggregate="softmax", edge=lambda p, w, c: (c["h"], {"h": c["h"]})),
    }
    with pytest.raises(eb.OpError, match="float scalar"):
        eb.FusedEngine(vector_score).run(_params(), graph, sched)
    failing = {"leaf": leaf, "node": eb.Op(node, aggregate="sum", edge=lambda p, w, c: p["missing"] @ c["h"])}
    with pytest.raises(eb.OpError, match="edge function failed"):
        eb.StepwiseEngine(failing).run(_params(), graph, sched)


class _NoEdge(nn.Module):
    @nn.compact
    def __call__(self, payload, combined):
        return combined


def test_flax_cell_without_the_edge_method_is_refused():
    with pytest.raises(eb.OpError, match="no method 'edge'"):
        eb.linen_op(_NoEdge(), "cell", aggregate="sum", edge=True)
