"""Stochastic ops: per-node PRNG keys from a step key and the node's identity.

Batched == unbatched for the same step key (values and gradients), whatever
the engine, policy or layout; two keys differ; no key is deterministic; the
bundled models' dropout; a training run with dropout is reproducible from
its seed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.engine.randomness import node_identity
from edbatch_jax.training import Trainer, make_minibatch
from edbatch_jax.zoo.workloads import load_workload

H = 4


def leaf(p, word, key=None):
    h = jnp.tanh(p["emb"][word])
    if key is not None:
        h = h * jax.random.uniform(key, h.shape, minval=0.5, maxval=1.5)
    return {"h": h}


def node(p, payload, a, b, key=None):
    h = jnp.tanh(p["U"] @ (a["h"] + b["h"]))
    if key is not None:
        h = jnp.where(jax.random.bernoulli(key, 0.6, h.shape), h / 0.6, 0.0)
    return {"h": h}


OPS = {"leaf": eb.Op(leaf, stochastic=True), "node": eb.Op(node, stochastic=True)}


def _params():
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {"emb": jax.random.normal(k1, (9, H)), "U": jax.random.normal(k2, (H, H))}


def _graph(seed=0, instances=4):
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(instances):
        b = eb.GraphBuilder()
        ids = [b.add("leaf", payload=np.int32(rng.integers(9))) for _ in range(3)]
        for _ in range(int(rng.integers(2, 5))):
            i, j = rng.choice(len(ids), size=2, replace=False)
            ids.append(b.add("node", ids[i], ids[j]))
        graphs.append(b.build())
    return eb.batch_graphs(graphs)


@pytest.fixture(scope="module")
def graph():
    return _graph()


@pytest.fixture(scope="module")
def reference(graph):
    key = jax.random.PRNGKey(7)
    fn = lambda p: (eb.run_unbatched(OPS, p, graph, rng=key)["h"] ** 2).sum()
    return key, jax.value_and_grad(fn)(_params())


@pytest.mark.parametrize(
    "engine_cls, policy, layout",
    [
        (eb.StepwiseEngine, "agenda", False),
        (eb.StepwiseEngine, "depth", True),
        (eb.FusedEngine, "depth", False),
        (eb.FusedEngine, "agenda", True),
    ],
)
def test_batched_equals_unbatched_for_the_same_step_key(graph, reference, engine_cls, policy, layout):
    key, (want, want_grads) = reference
    sched = eb.schedule(graph, policy)
    plan_layout = eb.plan_layout(graph, sched) if layout else None
    engine = engine_cls(OPS)
    fn = lambda p: (engine.run(p, graph, sched, layout=plan_layout, rng=key)["h"] ** 2).sum()
    got, grads = jax.value_and_grad(fn)(_params())
    np.testing.assert_allclose(got, want, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grads, want_grads)
    # under jax.jit, the key a traced argument: the same numbers
    jitted = jax.jit(lambda p, k: (engine.run(p, graph, sched, layout=plan_layout, rng=k)["h"] ** 2).sum())
    np.testing.assert_allclose(jitted(_params(), key), want, rtol=1e-5)


def test_keys_differ_and_no_key_is_deterministic(graph):
    sched = eb.schedule(graph, "agenda")
    engine = eb.FusedEngine(OPS, max_lanes=4)  # few lane buckets: faster compilation
    run = lambda rng: np.asarray(engine.run(_params(), graph, sched, rng=rng)["h"])
    a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, run(jax.random.PRNGKey(1)))
    plain = {"leaf": lambda p, w: leaf(p, w), "node": lambda p, x, a, b: node(p, x, a, b)}
    np.testing.assert_allclose(run(None), eb.run_unbatched(plain, _params(), graph)["h"], rtol=1e-5, atol=1e-6)
    typed = run(jax.random.key(1))  # a typed key works too
    assert typed.shape == a.shape and np.isfinite(typed).all()


def test_a_nodes_key_depends_on_its_instance_and_position_not_its_batch():
    """The same instance alone and inside a larger mini-batch (as instance 0): the same draws."""
    g = _graph(seed=3, instances=3)
    alone = eb.batch_graphs([eb.unbatch_graph(g)[0], eb.unbatch_graph(g)[0]])
    key = jax.random.PRNGKey(11)
    first = lambda graph: np.asarray(
        eb.FusedEngine(OPS, max_lanes=4).run(_params(), graph, eb.schedule(graph, "agenda"), rng=key)["h"]
    )
    n0 = int((g.instance == 0).sum())
    np.testing.assert_allclose(first(g)[:n0], first(alone)[:n0], rtol=1e-6)


def test_node_identity_of_interleaved_instances():
    b = eb.GraphBuilder()
    b.add("leaf", payload=np.int32(0))
    g = b.build()
    mixed = eb.Graph(
        node_type=np.zeros(4, np.int32),
        arg_ptr=np.zeros(5, np.int32),
        arg_idx=np.zeros(0, np.int32),
        instance=np.array([1, 0, 1, 0], np.int32),
        payload_row=np.arange(4, dtype=np.int32),
        payloads=(np.arange(4, dtype=np.int32),),
        op_types=g.op_types,
        num_instances=2,
    )
    assert node_identity(mixed).tolist() == [[1, 0], [0, 0], [1, 1], [0, 1]]


def test_bad_step_keys_are_refused(graph):
    sched = eb.schedule(graph, "agenda")
    with pytest.raises(eb.OpError, match="one PRNG key"):
        eb.StepwiseEngine(OPS).run(_params(), graph, sched, rng=np.array([1, 2, 3], np.uint32))
    with pytest.raises(eb.OpError, match="one PRNG key"):
        eb.run_unbatched(OPS, _params(), graph, rng=3)


def test_model_dropout_matches_unbatched_and_training_is_reproducible():
    work = load_workload("childsum_treelstm", hidden=8, num_train=16, num_held_out=4, dropout=0.5)
    trees = sorted(work.train, key=lambda t: t.num_nodes)[:3]  # small trees: the unbatched gradient is eager
    graph = work.batch_graph(trees)
    sched = eb.schedule(graph, "agenda")
    params = work.model.init(jax.random.PRNGKey(0))
    losses = np.flatnonzero(graph.node_type == graph.op_types.index("loss"))
    key = jax.random.PRNGKey(3)
    engine = eb.StepwiseEngine(work.model.ops)
    batched = lambda p, k: engine.run(p, graph, sched, outputs=losses, rng=k)["loss"].sum()
    unbatched = lambda p, k: eb.run_unbatched(work.model.ops, p, graph, outputs=losses, rng=k)["loss"].sum()
    np.testing.assert_allclose(batched(params, key), unbatched(params, key), rtol=1e-5)
    ga, gb = jax.grad(batched)(params, key), jax.grad(unbatched)(params, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), ga, gb)
    assert abs(float(batched(params, key)) - float(batched(params, None))) > 1e-3  # dropout does something

    batch = make_minibatch(graph, "agenda")

    def run(seed):  # one engine for the three runs: its compiled steps are reused
        trainer = Trainer(
            engine, work.model.init(jax.random.PRNGKey(0)), optax.adam(1e-2), rng=jax.random.PRNGKey(seed)
        )
        return [trainer.step(batch) for _ in range(3)]

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    assert len(set(first)) == 3  # each step draws its own masks

    # the trainer's step keys are fold_in(rng, step), as its docs say (computed by one compiled call)
    trainer = Trainer(engine, params, optax.sgd(0.1), rng=jax.random.PRNGKey(5))
    for step in (0, 1, 7):
        np.testing.assert_array_equal(trainer.step_key(step), jax.random.fold_in(jax.random.PRNGKey(5), step))
    assert trainer._next_key() is not None  # dropout draws: every step gets its key
    assert Trainer(eb.StepwiseEngine({"f": lambda p, x: x}), params, optax.sgd(0.1), rng=key)._next_key() is None
