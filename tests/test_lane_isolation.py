"""Lanes never poison each other: ops with a singular point at zero, and non-finite values outside the loss.

A batched call runs padding lanes (a batch of width W runs ``bucket(W)``
lanes) and lanes of nodes no loss reads; their cotangent is zero. Were they
computed on zeros, ``x / norm(x)``, ``sqrt`` and ``log`` would give them
NaN Jacobians and ``0 * NaN`` would reach the parameter gradients. The
engines run such lanes on a copy of a live lane's inputs instead, so values
and gradients equal unbatched execution, which never runs them.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.training import MiniBatch, Trainer, make_minibatch, unbatched_loss

D = 4
TOL = dict(rtol=1e-4, atol=1e-5)


def _unit(a):
    return a / jnp.linalg.norm(a)


OPS = {
    # h = tanh(W x): the payload's vector
    "leaf": eb.Op(lambda p, x: jnp.tanh(p["leaf"] @ x)),
    # normalisation: singular at zero
    "norm": eb.Op(lambda p, _, a: p["norm"] @ _unit(a) + 0.1),
    # square root of a squared norm and a log: both singular at zero
    "pair": eb.Op(lambda p, _, a, b: jnp.sqrt(jnp.sum(a * a) + jnp.sum(b * b)) * p["u"] + jnp.log(jnp.abs(a) + b * b)),
    # variable arity: the mean of the children, then normalised
    "pool": eb.Op(lambda p, _, s: jnp.tanh(p["pool"] @ _unit(s)), aggregate="mean"),
    # variable arity: the sum of the children, then a square root
    "top": eb.Op(lambda p, _, s: jnp.sqrt(jnp.sum(s * s)) * p["u"], aggregate="sum"),
    # variable arity with max (elements that are not the maximum get no cotangent), then normalised
    "peak": eb.Op(lambda p, _, s: _unit(s) * p["u"], aggregate="max"),
}


def _params(seed: int = 0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    return {
        "leaf": jax.random.normal(k[0], (D, D)),
        "norm": jax.random.normal(k[1], (D, D)) / 2,
        "pool": jax.random.normal(k[2], (D, D)) / 2,
        "u": jax.random.normal(k[3], (D,)),
    }


def _instance(
    rng: np.random.Generator, size: int, bad: float | None = None, loss: bool = False
) -> tuple[eb.Graph, int]:
    """One instance: ``size`` leaves folded by ``norm``/``pair``, pooled by ``pool``, ``peak`` and ``top``;
    returns the graph and its root. ``bad``: a value put in the second leaf's payload; ``loss``: a ``loss``
    node reads the root."""
    b = eb.GraphBuilder()
    xs = [rng.normal(size=D).astype(np.float32) + 0.5 for _ in range(size)]
    if bad is not None:
        xs[1][:2] = bad
    nodes = [b.add("leaf", payload=x) for x in xs]
    mids = []
    for i, v in enumerate(nodes):
        if i % 2:
            mids.append(b.add("pair", v, nodes[i - 1]))
        else:
            mids.append(b.add("norm", v))
    pooled = b.add("pool", *mids)
    peak = b.add("peak", *mids[-3:])
    root = b.add("top", pooled, peak, *mids[:2])
    if loss:
        b.add("loss", root)
    return b.build(), root


def _batch(sizes, seed: int = 0):
    rng = np.random.default_rng(seed)
    parts = [_instance(rng, s) for s in sizes]
    graph = eb.batch_graphs([g for g, _ in parts])
    offsets = np.cumsum([0] + [g.num_nodes for g, _ in parts])
    roots = np.array([o + r for o, (_, r) in zip(offsets, parts)], np.int32)
    return graph, roots


ENGINES = {
    "stepwise": lambda ops: eb.StepwiseEngine(ops),
    # max_lanes=4: few lane buckets, faster compilation; batches wider than 4 lanes run as chunks
    "fused": lambda ops: eb.FusedEngine(ops, max_lanes=4),
    "fused_recompute": lambda ops: eb.FusedEngine(ops, max_lanes=4, save_residuals=None),
}


@functools.cache
def _engine(name: str) -> eb.Engine:
    """One engine per kind for the whole module, so that the tests share its compiled programs."""
    return ENGINES[name](OPS)


def _loss(run):
    return lambda p: jnp.sum(run(p) ** 2)


def _value_and_grad(engine_name, graph, outputs, layout_kind="dynet", policy="agenda", params=None):
    params = _params() if params is None else params
    engine = _engine(engine_name)
    sched = eb.schedule(graph, policy)
    layout = eb.plan_layout(graph, sched) if layout_kind == "planned" else None
    batched = jax.value_and_grad(_loss(lambda p: engine.run(p, graph, sched, outputs, layout)))(params)
    reference = jax.value_and_grad(_loss(lambda p: eb.run_unbatched(OPS, p, graph, outputs)))(params)
    return batched, reference


def _assert_close(batched, reference):
    (v1, g1), (v0, g0) = batched, reference
    assert np.isfinite(v0) and all(np.isfinite(x).all() for x in jax.tree.leaves(g0)), "reference not finite"
    chex.assert_trees_all_equal_structs(g1, g0)
    np.testing.assert_allclose(v1, v0, **TOL)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path), **TOL)


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("layout_kind", ["dynet", "planned"])
def test_ops_singular_at_zero_match_unbatched(engine_name, layout_kind):
    # widths 3, 5, 6, 7: every batch has padding lanes, which once ran the ops on zeros
    graph, roots = _batch([3, 5, 6, 7, 2], seed=1)
    _assert_close(*_value_and_grad(engine_name, graph, roots, layout_kind))


def _poisoned(kind: str, seed: int):
    """A batch whose instance 1 has a NaN (or inf) leaf payload and instance 3 an inf one; the outputs are the
    roots of the other instances."""
    graph, roots = _batch([4, 3, 5, 3, 6], seed=seed)
    bad = {"nan": np.nan, "inf": np.inf}[kind]
    leaf = graph.type_id("leaf")
    x = np.array(graph.payloads[leaf])
    for inst, value in ((1, bad), (3, np.inf)):
        node = np.flatnonzero((graph.instance == inst) & (graph.node_type == leaf))[1]
        x[graph.payload_row[node], :2] = value
    payloads = tuple(x if t == leaf else p for t, p in enumerate(graph.payloads))
    return dataclasses.replace(graph, payloads=payloads), roots[[0, 2, 4]]


@pytest.mark.parametrize("engine_name", sorted(ENGINES))
@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_non_finite_instances_outside_the_loss_leave_the_others_exact(engine_name, kind):
    graph, outputs = _poisoned(kind, seed=2)
    batched, reference = _value_and_grad(engine_name, graph, outputs, "planned")
    _assert_close(batched, reference)


@pytest.mark.parametrize("engine_name", ["stepwise", "fused"])
def test_non_finite_values_inside_the_loss_still_reach_it(engine_name):
    # the guard must not hide a NaN the loss does read: unbatched execution gives NaN, and so must we
    graph, _ = _poisoned("nan", seed=3)
    inst1_root = np.flatnonzero(graph.instance == 1)[-1]
    (v1, g1), (v0, _) = _value_and_grad(engine_name, graph, np.array([inst1_root], np.int32))
    assert np.isnan(v0) and np.isnan(v1)
    assert any(np.isnan(x).any() for x in jax.tree.leaves(g1))


def test_every_lane_dead_in_a_batch_adds_exact_zeros():
    # outputs inside one instance only: whole batches (every other instance's nodes) have no cotangent
    graph, roots = _batch([3, 4, 5], seed=4)
    for engine_name in sorted(ENGINES):
        _assert_close(*_value_and_grad(engine_name, graph, roots[1:2]))


@pytest.mark.parametrize("engine_name", ["stepwise", "fused"])
def test_isolation_under_jit(engine_name):
    # under jax.jit the fused engine picks the isolating backward program with lax.cond, not on the host
    graph, outputs = _poisoned("nan", seed=5)
    engine = _engine(engine_name)
    sched = eb.schedule(graph, "agenda")
    batched = jax.jit(jax.value_and_grad(_loss(lambda p: engine.run(p, graph, sched, outputs))))(_params())
    reference = jax.value_and_grad(_loss(lambda p: eb.run_unbatched(OPS, p, graph, outputs)))(_params())
    _assert_close(batched, reference)


LOSS_OPS = {**OPS, "loss": eb.Op(lambda p, _, r: {"loss": jnp.sum(r * r)})}


def _training_batch(seed: int, bad: float) -> MiniBatch:
    """Five instances; instances 1 and 3 have a ``bad`` leaf payload and no loss node (no cotangent)."""
    rng = np.random.default_rng(seed)
    parts = [
        _instance(rng, size, bad if k in (1, 3) else None, k not in (1, 3)) for k, size in enumerate([4, 3, 5, 3, 6])
    ]
    return make_minibatch(eb.batch_graphs([g for g, _ in parts]), "agenda")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_trainer_steps_complete_with_the_isolating_program(bad):
    # the fused engine's Trainer applies a step's update on the device only if its gradients are finite and
    # reads that test before the next step: a step whose first try is not finite (a NaN lane outside the
    # loss) is completed with the isolating program's gradients, so every step equals unbatched SGD
    engine = eb.FusedEngine(LOSS_OPS, max_lanes=4)
    assert engine.defers_gradient_test and not eb.StepwiseEngine(LOSS_OPS).defers_gradient_test
    batches = [_training_batch(seed, bad) for seed in (6, 7)]
    trainer = Trainer(engine, _params(), optax.sgd(0.1))
    expected = _params()
    for k, batch in enumerate(batches):
        loss, grads = jax.value_and_grad(lambda p: unbatched_loss(LOSS_OPS, p, batch))(expected)
        assert np.isfinite(loss) and all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
        expected = jax.tree.map(lambda p, g: p - 0.1 * g, expected, grads)
        np.testing.assert_allclose(trainer.step(batch), loss, **TOL)
        assert trainer._pending is not None and not bool(trainer._pending.finite), "the first try was finite"
        if k == 0:
            continue  # the next step completes this one before it runs
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(trainer.params), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path), **TOL)
        assert trainer._pending is None  # reading the parameters completed the step
