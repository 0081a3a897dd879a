"""Context: ops that read a per-call and a per-instance pytree given to the engine beside ``params``.

Batched == unbatched == an independent plain-JAX recursion, values and
gradients w.r.t. params and both contexts, on both engines, several policies
and both layouts (pairwise), with fixed-arity, variadic and per-argument
(attention) ops and a stochastic op that reads context; a new context runs
the same plan and programs (no rebuilt graph, no new plan, no retrace); the
Trainer and Flax cells take it; bad context is refused by name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.engine.randomness import node_identity
from edbatch_jax.training import Trainer, make_minibatch

H, V = 4, 7


# ---------------------------------------------------------------- the model (one node at a time)
def leaf(p, word, *, context):
    return {"h": jnp.tanh(p["emb"][word] + context.call["t"] * context.instance["u"])}


def node(p, payload, a, b, *, context):
    return {"h": jnp.tanh(p["U"] @ (a["h"] + b["h"]) + context.instance["u"])}


def att_edge(p, payload, child, *, context):
    score = context.call["t"] * jnp.dot(child["h"], context.instance["u"])
    return score, p["A"] @ child["h"]


def att(p, payload, message, *, context):
    return {"h": jnp.tanh(message + context.call["b"])}


def noisy(p, payload, a, *, key, context):
    h = a["h"] * context.call["t"]
    if key is not None:
        h = h * jax.random.uniform(key, h.shape, minval=0.5, maxval=1.5)
    return {"h": h}


OPS = {
    "leaf": eb.Op(leaf, context=True),
    "node": eb.Op(node, context=True),
    "att": eb.Op(att, aggregate="softmax", edge=att_edge, context=True),
    "noisy": eb.Op(noisy, stochastic=True, context=True),
}


def _params(seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {
        "emb": jax.random.normal(k[0], (V, H)),
        "U": 0.5 * jax.random.normal(k[1], (H, H)),
        "A": 0.5 * jax.random.normal(k[2], (H, H)),
    }


def _contexts(instances, seed=1):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    call = {"t": jnp.float32(0.8), "b": 0.1 * jax.random.normal(k1, (H,))}
    return call, {"u": jax.random.normal(k2, (instances, H))}


def _random_tree(rng, leaves):
    """A random binary tree over ``leaves`` word ids: nested pairs."""
    trees = list(leaves)
    while len(trees) > 1:
        i = int(rng.integers(len(trees) - 1))
        trees[i : i + 2] = [(trees[i], trees[i + 1])]
    return trees[0]


def _instances(seed, count=5):
    rng = np.random.default_rng(seed)
    return [[int(w) for w in rng.integers(V, size=int(rng.integers(2, 6)))] for _ in range(count)]


def _build(words, rng):
    """One instance's graph: a binary tree over ``words``, a noisy copy of its root, attention over its leaves."""
    b = eb.GraphBuilder()
    leaves = [b.add("leaf", payload=np.int32(w)) for w in words]
    it = iter(leaves)

    def add(t):
        if isinstance(t, tuple):
            return b.add("node", add(t[0]), add(t[1]))
        return next(it)

    root = add(_random_tree(rng, words))
    top = b.add("noisy", root)
    b.add("att", top, *leaves)
    return b.build()


def _graph(seed=0, count=5):
    rng = np.random.default_rng(seed + 100)
    graphs = [_build(w, np.random.default_rng(seed * 31 + i)) for i, w in enumerate(_instances(seed, count))]
    del rng
    return eb.batch_graphs(graphs)


def _roots(graph):
    return graph.nodes_of_type("att")


# ---------------------------------------------------------------- an independent plain-JAX recursion
def _plain(params, call, inst, seed, count=5, rng_key=None, graph=None):
    """Sum of the attention outputs of every instance, computed instance by instance with jnp only."""
    total = 0.0
    ident = None if graph is None else node_identity(graph)
    for i, words in enumerate(_instances(seed, count)):
        u = inst["u"][i]
        tree = _random_tree(np.random.default_rng(seed * 31 + i), words)
        hs = [jnp.tanh(params["emb"][w] + call["t"] * u) for w in words]
        it = iter(hs)

        def h_of(t, it=it, u=u):
            if isinstance(t, tuple):
                return jnp.tanh(params["U"] @ (h_of(t[0]) + h_of(t[1])) + u)
            return next(it)

        root = h_of(tree)
        top = root * call["t"]
        if rng_key is not None:  # the noisy node: position = its index among the instance's nodes
            position = len(words) + (len(words) - 1)
            assert graph is None or tuple(ident[graph.nodes_of_type("noisy")[i]]) == (i, position)
            k = jax.random.fold_in(jax.random.fold_in(rng_key, i), position)
            top = top * jax.random.uniform(k, top.shape, minval=0.5, maxval=1.5)
        args = [top] + hs
        scores = jnp.stack([call["t"] * jnp.dot(h, u) for h in args])
        w = jax.nn.softmax(scores)
        message = sum(wk * (params["A"] @ h) for wk, h in zip(w, args))
        total = total + jnp.tanh(message + call["b"]).sum()
    return total


CASES = [  # every engine, policy, layout and step key, each pair of engine, layout and key
    ("stepwise", "agenda", None, False),
    ("stepwise", "depth", "pq", True),
    ("fused", "agenda", "pq", False),
    ("fused", "typewise", None, True),
]


def _engine(name):
    return (
        eb.StepwiseEngine(OPS) if name == "stepwise" else eb.FusedEngine(OPS, max_lanes=4)
    )  # few lane buckets: faster compilation


@pytest.mark.parametrize("engine_name,policy,layout,keyed", CASES)
def test_batched_equals_unbatched_and_plain_jax(engine_name, policy, layout, keyed):
    seed = 3
    graph = _graph(seed)
    params = _params()
    call, inst = _contexts(graph.num_instances)
    key = jax.random.PRNGKey(5) if keyed else None
    sched = eb.schedule(graph, policy)
    lay = eb.plan_layout(graph, sched) if layout == "pq" else None
    engine = _engine(engine_name)
    roots = _roots(graph)

    def batched(p, c, u):
        return engine.run(p, graph, sched, roots, lay, rng=key, context=c, instance_context=u)["h"].sum()

    def unbatched(p, c, u):
        return eb.run_unbatched(OPS, p, graph, roots, rng=key, context=c, instance_context=u)["h"].sum()

    def plain(p, c, u):
        return _plain(p, c, u, seed, rng_key=key, graph=graph)

    vb, gb = jax.value_and_grad(batched, argnums=(0, 1, 2))(params, call, inst)
    vu, gu = jax.value_and_grad(unbatched, argnums=(0, 1, 2))(params, call, inst)
    vp, gp = jax.value_and_grad(plain, argnums=(0, 1, 2))(params, call, inst)
    np.testing.assert_allclose(vb, vu, rtol=1e-5)
    np.testing.assert_allclose(vb, vp, rtol=1e-5)
    for want in (gu, gp):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), gb, want)
    assert float(jnp.abs(gb[2]["u"]).min()) > 0  # every instance's row gets a gradient

    # the engine's own value_and_grad (no autodiff tracing) gives the same, context gradients included
    plan = engine.plan(params, graph, sched, lay, context=call, instance_context=inst)
    buf, rows = int(plan.node_buffer[roots[0]]), jnp.asarray(plan.node_slot[roots])

    def loss_grad(bufs):
        loss, ct = jax.value_and_grad(lambda b: b["h"][rows].sum())(bufs[buf])
        return loss, tuple(ct if i == buf else None for i in range(len(bufs)))

    loss, (g_params, g_context) = engine.value_and_grad(
        plan, params, loss_grad, rng=key, context=call, instance_context=inst, context_grads=True
    )
    np.testing.assert_allclose(loss, vu, rtol=1e-5)
    got = (g_params, g_context.call, g_context.instance)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), got, gu)


def test_new_context_reuses_the_plan_and_programs():
    graph = _graph(1)
    params = _params()
    sched = eb.schedule(graph, "agenda")
    roots = _roots(graph)
    for engine in (eb.StepwiseEngine(OPS), eb.FusedEngine(OPS, max_lanes=4)):
        outs = []
        for seed in (1, 2, 3):
            call, inst = _contexts(graph.num_instances, seed)
            outs.append(engine.run(params, graph, sched, roots, context=call, instance_context=inst)["h"])
            if seed == 1:
                plans, traces = engine.plans_built, engine.trace_count
        assert (engine.plans_built, engine.trace_count) == (plans, traces)  # same graph, plan and programs
        assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])
        call, inst = _contexts(graph.num_instances, 2)
        ref = eb.run_unbatched(OPS, params, graph, roots, context=call, instance_context=inst)["h"]
        np.testing.assert_allclose(outs[1], ref, rtol=1e-5, atol=1e-6)


def test_jit_of_grad_through_the_context():
    graph = _graph(2)
    params = _params()
    sched = eb.schedule(graph, "agenda")
    roots = _roots(graph)
    engine = eb.FusedEngine(OPS, max_lanes=4)  # few lane buckets: faster compilation
    call, inst = _contexts(graph.num_instances)

    @jax.jit
    def grad_u(p, c, u):
        return jax.grad(lambda u: engine.run(p, graph, sched, roots, context=c, instance_context=u)["h"].sum())(u)

    want = jax.grad(lambda u: _plain(params, call, u, 2))(inst)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad_u(params, call, inst), want)


def test_missing_context_parts_reach_the_op_as_none():
    seen = []

    def probe(p, x, *, context):
        seen.append(context)
        return jnp.ones(2) * (1.0 if context.call is None else context.call)

    ops = {"probe": eb.Op(probe, arity=0, context=True)}
    b = eb.GraphBuilder()
    b.add("probe")
    g = eb.batch_graphs([b.build()] * 3)
    out = eb.run(ops, {}, g, eb.schedule(g, "agenda"))
    np.testing.assert_allclose(out, 1.0)
    assert all(isinstance(c, eb.Context) and c.instance is None for c in seen)
    out = eb.run(ops, {}, g, eb.schedule(g, "agenda"), context=jnp.float32(2.0))
    np.testing.assert_allclose(out, 2.0)


def test_trainer_steps_with_a_context():
    def leaf_cls(p, word, *, context):
        return {"h": jnp.tanh(p["emb"][word] + context.instance["u"])}

    def loss(p, label, a, *, context):
        logits = p["W"] @ a["h"] * context.call["scale"]
        return {"loss": -jax.nn.log_softmax(logits)[label], "logits": logits}

    ops = {"leaf": eb.Op(leaf_cls, context=True), "node": eb.Op(node, context=True), "loss": eb.Op(loss, context=True)}
    rng = np.random.default_rng(0)
    graphs = []
    for words in _instances(4, 8):
        b = eb.GraphBuilder()
        hs = [b.add("leaf", payload=np.int32(w)) for w in words]
        while len(hs) > 1:
            hs = [b.add("node", hs[0], hs[1])] + hs[2:]
        b.add("loss", hs[0], payload=np.int32(rng.integers(2)))
        graphs.append(b.build())
    batch = make_minibatch(eb.batch_graphs(graphs))
    params = {**_params(), "W": jnp.zeros((2, H))}
    call = {"scale": jnp.float32(1.0)}
    inst = {"u": jax.random.normal(jax.random.PRNGKey(3), (8, H))}
    trainer = Trainer(
        eb.FusedEngine(ops, max_lanes=4), params, optax.adam(0.05)
    )  # few lane buckets: faster compilation
    first = trainer.step(batch, context=call, instance_context=inst)
    for _ in range(15):
        last = trainer.step(batch, context=call, instance_context=inst)
    assert last < first
    stats = trainer.evaluate([batch], context=call, instance_contexts=[inst])
    ref = eb.run_unbatched(ops, trainer.params, batch.graph, batch.loss_nodes, context=call, instance_context=inst)
    assert stats["loss"] == pytest.approx(float(ref["loss"].mean()), rel=1e-5)
    with pytest.raises(eb.OpError, match="instance_context leaf"):
        trainer.step(batch, context=call, instance_context={"u": inst["u"][:3]})


class _LinenLeaf(nn.Module):
    @nn.compact
    def __call__(self, word, *, context):
        return {"h": jnp.tanh(nn.Embed(V, H)(word) + context.instance["u"])}


def test_linen_cell_reads_context():
    cell = _LinenLeaf()
    op = eb.linen_op(cell, "leaf", context=True)
    assert op.context and op.arity == 0
    p = {
        "leaf": cell.init(jax.random.PRNGKey(0), jnp.int32(0), context=eb.Context(None, {"u": jnp.zeros(H)}))["params"]
    }
    graphs = []
    for w in (1, 4, 6):
        b = eb.GraphBuilder()
        b.add("leaf", payload=np.int32(w))
        graphs.append(b.build())
    g = eb.batch_graphs(graphs)
    inst = {"u": jnp.arange(3 * H, dtype=jnp.float32).reshape(3, H) / 10}
    out = eb.run({"leaf": op}, p, g, eb.schedule(g, "agenda"), instance_context=inst)["h"]
    emb = p["leaf"]["Embed_0"]["embedding"]
    np.testing.assert_allclose(out, jnp.tanh(emb[jnp.array([1, 4, 6])] + inst["u"]), rtol=1e-6)


def test_bad_context_is_refused_by_name():
    graph = _graph(0)
    params = _params()
    sched = eb.schedule(graph, "agenda")
    engine = eb.StepwiseEngine(OPS)
    call, inst = _contexts(graph.num_instances)
    with pytest.raises(eb.OpError, match=r"instance_context leaf \['u'\] has shape \(3, 4\).*\(5\)"):
        engine.run(params, graph, sched, context=call, instance_context={"u": inst["u"][:3]})
    with pytest.raises(eb.OpError, match=r"context leaf \['t'\] has dtype int32"):
        engine.run(params, graph, sched, context={**call, "t": jnp.int32(1)}, instance_context=inst)
    with pytest.raises(eb.OpError, match=r"context leaf \['t'\] is a str"):
        engine.run(params, graph, sched, context={**call, "t": "warm"}, instance_context=inst)
    with pytest.raises(eb.OpError, match="give the context's parts separately"):
        engine.run(params, graph, sched, context=eb.Context(call, inst))
    plain = eb.StepwiseEngine({"leaf": lambda p, w: p["emb"][w]})
    b = eb.GraphBuilder()
    b.add("leaf", payload=np.int32(1))
    g = b.build()
    with pytest.raises(eb.OpError, match="no op of this engine reads it"):
        plain.run(params, g, eb.schedule(g, "agenda"), context=call)
    with pytest.raises(eb.OpError, match="no op reads it"):
        eb.run_unbatched({"leaf": lambda p, w: p["emb"][w]}, params, g, instance_context=inst)
