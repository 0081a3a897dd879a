"""The op-call bound of a schedule: its batched op calls alone, timed one by one.

An engine's execution time per mini-batch is the op math of every batch plus
what the engine adds around it: dispatch, gathers, buffer writes and copies.
:func:`op_calls_ms` measures the first part. For every distinct batch of a
plan (op type, lane bucket, operand structures) it compiles the batched op
call alone, ``vmap(op)`` over the lanes on operand states that are already
gathered (``jax.vjp`` and the pullback too for training), times it in steady
state, and sums over the plan's batches. ``batch_size / op_calls_ms`` is then
the throughput of an engine that issues one call per batch and adds nothing
else (no gathers, no buffer writes) *with this schedule at these widths* on
this machine: a bound for per-batch-call engines (the stepwise engine). An
engine that runs the schedule as one program (the fused engine) can exceed
it, since it pays no per-call launch at all. The dispatch of each timed call
(a jitted no-op on the same arguments) is subtracted. Host-side timing; the
op calls run jitted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.engine.executor import Engine, ExecutionPlan, _combine, _struct

__all__ = ["op_calls_ms"]


def _zeros(struct):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct)


def _batched_call(engine: Engine, plan: ExecutionPlan, step, params, train: bool):
    """``(fn, args)``: the step's op call alone (and its pullback when ``train``), jitted."""
    op = engine.ops[step.op]
    rows = step.lanes if step.segments is None else int(step.segments.shape[0])
    gathered = tuple(_zeros(_struct(plan.signatures[b], (rows,))) for b in step.operand_buffers)
    payload = jax.tree.map(jnp.asarray, step.payload)
    segments = None if step.segments is None else jnp.asarray(step.segments)
    mask = jnp.asarray(step.mask)
    p = op.select_params(params)

    def forward(p, payload, gathered):
        return _combine(op, p, payload, gathered, segments, mask)

    if not train:
        return jax.jit(forward), (p, payload, gathered)

    def forward_backward(p, payload, gathered):
        y, pullback = jax.vjp(lambda p, g: forward(p, payload, g), p, gathered)
        return pullback(jax.tree.map(jnp.ones_like, y))

    return jax.jit(forward_backward), (p, payload, gathered)


def _median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def op_calls_ms(engine: Engine, plans: Sequence[ExecutionPlan], params, train: bool = False, repeats: int = 20) -> float:
    """Mean over ``plans`` of the summed time of their batched op calls alone (ms per mini-batch).

    Args:
      engine: the engine the plans are for (its ops are timed).
      plans: execution plans (``engine.plan(...)``), one per mini-batch.
      params: the parameters.
      train: time the forward call and its pullback (a training step's math).
      repeats: timed calls per distinct batch (the median is used).
    """
    noop = jax.jit(lambda p, payload, gathered: jnp.zeros(()))  # the same arguments, no math
    cost: dict[tuple, float] = {}
    totals = []
    for plan in plans:
        total = 0.0
        for step in plan.steps:
            key = (step.op, step.lanes, None if step.segments is None else int(step.segments.shape[0]),
                   tuple(plan.signatures[b] for b in step.operand_buffers))
            if key not in cost:
                fn, args = _batched_call(engine, plan, step, params, train)
                cost[key] = max(_median_ms(fn, args, repeats) - _median_ms(noop, args, repeats), 0.0)
            total += cost[key]
        totals.append(total)
    return float(np.mean(totals))
