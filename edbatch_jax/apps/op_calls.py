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

from edbatch_jax.engine.base import Engine
from edbatch_jax.engine.common import combine, signature_struct
from edbatch_jax.engine.stepwise import ExecutionPlan

__all__ = ["op_calls_ms", "plan_flops", "matmul_gflops"]


def _zeros(struct):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), struct)


def _batched_call(engine: Engine, plan: ExecutionPlan, step, params, train: bool):
    """``(fn, args)``: the step's op call alone (and its pullback when ``train``), jitted."""
    op = engine.ops[step.op]
    rows = step.lanes if step.segments is None else int(step.segments.shape[0])
    gathered = tuple(_zeros(signature_struct(plan.signatures[b], (rows,))) for b in step.operand_buffers)
    payload = jax.tree.map(jnp.asarray, step.payload)
    segments = None if step.segments is None else jnp.asarray(step.segments)
    mask = jnp.asarray(step.mask)
    p = op.select_params(params)

    def forward(p, payload, gathered):
        return combine(op, p, payload, gathered, segments, mask)

    if not train:
        return jax.jit(forward), (p, payload, gathered)

    # the cotangent is an argument and the output is returned too, so that XLA neither folds a constant
    # cotangent into the pullback nor drops the forward products the pullback does not read
    def forward_backward(p, payload, gathered, ct):
        y, pullback = jax.vjp(lambda p, g: forward(p, payload, g), p, gathered)
        return y, pullback(ct)

    ct = _zeros(jax.eval_shape(forward, p, payload, gathered))
    return jax.jit(forward_backward), (p, payload, gathered, ct)


def _median_ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def op_calls_ms(
    engine: Engine, plans: Sequence[ExecutionPlan], params, train: bool = False, repeats: int = 20
) -> float:
    """Mean over ``plans`` of the summed time of their batched op calls alone (ms per mini-batch).

    Args:
      engine: the engine the plans are for (its ops are timed).
      plans: execution plans (``engine.plan(...)``), one per mini-batch.
      params: the parameters.
      train: time the forward call and its pullback (a training step's math).
      repeats: timed calls per distinct batch (the median is used).
    """
    noop = jax.jit(lambda *args: jnp.zeros(()))  # the same arguments, no math

    def call_ms(fn, args, step):
        return max(_median_ms(fn, args, repeats) - _median_ms(noop, args, repeats), 0.0)

    return _mean_over_plans(engine, plans, params, train, call_ms, lambda step: 1)


def _mean_over_plans(engine, plans, params, train, per_call, weight) -> float:
    """Mean over ``plans`` of the sum over their steps of ``per_call(fn, args, step) * weight(step)``.

    ``per_call`` runs once per distinct batched op call (op type, lanes, edge
    rows, operand structures) on the call :func:`_batched_call` builds.
    """
    cost: dict[tuple, float] = {}
    totals = []
    for plan in plans:
        total = 0.0
        for step in plan.steps:
            key = (
                step.op,
                step.lanes,
                None if step.segments is None else int(step.segments.shape[0]),
                tuple(plan.signatures[b] for b in step.operand_buffers),
            )
            if key not in cost:
                fn, args = _batched_call(engine, plan, step, params, train)
                cost[key] = per_call(fn, args, step)
            total += cost[key] * weight(step)
        totals.append(total)
    return float(np.mean(totals))


def _flops(fn, args) -> float:
    cost = fn.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def plan_flops(engine: Engine, plans: Sequence[ExecutionPlan], params, train: bool = False) -> float:
    """Mean over ``plans`` of the FLOPs of their real nodes (per mini-batch), by XLA's cost analysis.

    Every distinct batched op call (as :func:`op_calls_ms` builds it; with
    ``train``, the forward call and its pullback) is compiled and its FLOPs
    scaled to the batch's real lanes (padding lanes are not counted), so the
    figure does not depend on the policy, the layout or the lane ladder.
    Together with :func:`matmul_gflops` it gives the compute floor of a
    workload on a machine: the throughput if every FLOP ran at the machine's
    matmul rate. Host-side; compiles.
    """
    return _mean_over_plans(
        engine,
        plans,
        params,
        train,
        lambda fn, args, step: _flops(fn, args) / step.lanes,
        lambda step: int(np.count_nonzero(step.mask)),
    )


def matmul_gflops(m: int = 256, k: int = 256, n: int = 384, repeats: int = 50) -> float:
    """GFLOP/s of a jitted float32 ``[m, k] @ [k, n]`` matmul on the default device (best of ``repeats``).

    The default shape is the Tree-LSTM's internal-cell gates (``[h_l; h_r]``,
    hidden 128, to ``i, o, u``) over 256 lanes: the rate the bulk of a
    tree model's FLOPs can reach on this machine.
    """
    a = jnp.ones((m, k), jnp.float32)
    b = jnp.ones((k, n), jnp.float32)
    fn = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(fn(a, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(a, b))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9
