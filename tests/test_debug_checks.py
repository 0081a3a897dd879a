"""Opt-in debug checks (``checks=True``): where a NaN or an inf first appears, and rows out of range."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edbatch_jax as eb
from edbatch_jax.engine.checks import NonFiniteError, RowRangeError, check_plan_rows

D = 3

OPS = {
    "leaf": eb.Op(lambda p, x: p["w"] * x),
    # log of the sum: NaN when the sum is negative, which only some nodes' values make
    "log": eb.Op(lambda p, _, a, b: jnp.log(a + b) * p["w"]),
    "root": eb.Op(lambda p, _, s: jnp.sqrt(p["s"]) * s, aggregate="sum"),
}
ENGINES = [eb.StepwiseEngine, eb.FusedEngine]


def _graph(values: list[list[float]]):
    """One instance per row of ``values``: leaves with those payloads, folded pairwise by ``log``, then ``root``."""
    parts = []
    for row in values:
        b = eb.GraphBuilder()
        leaves = [b.add("leaf", payload=np.full(D, v, np.float32)) for v in row]
        mids = [b.add("log", leaves[i], leaves[i + 1]) for i in range(len(leaves) - 1)]
        b.add("root", *mids)
        parts.append(b.build())
    return eb.batch_graphs(parts)


def _params(s: float = 1.0):
    return {"w": jnp.ones(D), "s": jnp.asarray(s)}


@pytest.mark.parametrize("make", ENGINES)
def test_the_first_non_finite_node_is_named_with_its_op_and_instance(make):
    graph = _graph([[1.0, 2.0, 3.0], [1.0, -3.0, 1.0]])  # instance 1: log(1 - 3) is NaN
    sched = eb.schedule(graph, "agenda")
    quiet = make(OPS).run(_params(), graph, sched)  # the default: no check, NaN states returned as they are
    assert np.isnan(np.asarray(quiet)).any()
    culprit = int(np.flatnonzero((graph.instance == 1) & (graph.node_type == graph.type_id("log")))[0])
    with pytest.raises(NonFiniteError, match=rf"node {culprit} \(op 'log', instance 1\).*so the op computed it"):
        make(OPS, checks=True).run(_params(), graph, sched)


@pytest.mark.parametrize("make", ENGINES)
def test_a_non_finite_payload_is_named_as_the_cause(make):
    graph = _graph([[1.0, np.nan, 3.0], [1.0, 2.0]])
    sched = eb.schedule(graph, "depth")
    with pytest.raises(NonFiniteError, match=r"node 1 \(op 'leaf', instance 0\).*its payload holds a NaN"):
        make(OPS, checks=True).run(_params(), graph, sched)


@pytest.mark.parametrize("make", ENGINES)
def test_non_finite_gradients_are_named_by_parameter(make):
    graph = _graph([[1.0, 2.0, 3.0], [2.0, 2.0]])
    sched = eb.schedule(graph, "agenda")
    roots = graph.nodes_of_type("root")
    engine = make(OPS, checks=True)
    params = _params(0.0)  # d sqrt(s) / ds at 0 is inf: finite states, non-finite gradient
    loss = lambda p: jnp.sum(engine.run(p, graph, sched, roots))
    with pytest.raises(NonFiniteError, match=r"gradient of parameter \['s'\]"):
        jax.grad(loss)(params)
    plan = engine.plan(params, graph, sched)

    def loss_grad(bufs):
        return jax.value_and_grad(lambda b: jnp.sum(b[plan.node_buffer[roots[0]]]))(bufs)

    with pytest.raises(NonFiniteError, match=r"gradient of parameter \['s'\]"):
        engine.value_and_grad(plan, params, loss_grad)
    # finite everywhere: the checks pass and change nothing
    g = jax.grad(loss)(_params(1.0))
    ref = jax.grad(lambda p: jnp.sum(eb.run_unbatched(OPS, p, graph, roots)))(_params(1.0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), g, ref)


def test_under_jit_the_check_runs_with_the_program():
    graph = _graph([[1.0, 2.0], [1.0, -3.0, 1.0]])
    sched = eb.schedule(graph, "agenda")
    engine = eb.StepwiseEngine(OPS, checks=True)
    run = jax.jit(lambda p: engine.run(p, graph, sched))
    with pytest.raises(Exception, match=r"op 'log', instance 1"):
        jax.block_until_ready(run(_params()))


def test_plan_rows_outside_their_buffer_are_refused():
    graph = _graph([[1.0, 2.0, 3.0], [2.0, 2.0]])
    sched = eb.schedule(graph, "agenda")
    plan = eb.StepwiseEngine(OPS, checks=True).plan(_params(), graph, sched)
    check_plan_rows(plan)  # a plan the engine made is in range
    small = dataclasses.replace(plan, capacities=tuple(1 for _ in plan.capacities))
    with pytest.raises(RowRangeError, match=r"outside buffer|of buffer \d+, which has 1 rows"):
        check_plan_rows(small)
