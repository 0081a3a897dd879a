"""The stepwise engine: one jitted, vmapped op call per batch.

A schedule runs as one jitted, vmapped op call per batch. Node states live in
concatenated *state buffers*, one per distinct state structure (pytree
structure, leaf shapes and dtypes); a node's state is one row of its buffer.
Rows are allocated in schedule order, so the outputs of every batch form one
contiguous range and are written with a single ``dynamic_update_slice``;
operands are read with a gather.

Shapes are bucketed: a batch of width ``W`` runs ``bucket(W)`` lanes (the
padding lanes compute on valid rows and their results are overwritten or
masked), and buffer capacities grow along the same power-of-two ladder, so the
number of compiled executables is bounded by op types x width buckets (x the
few capacities seen), whatever the graphs.

Differentiation: the whole schedule is a ``jax.custom_vjp`` from parameters to
state buffers (:meth:`~edbatch_jax.engine.base.Engine.execute`). Its backward
pass is a hand-written reverse sweep, one jitted step per batch: it recomputes
the batch's forward from the (write-once) state buffers, pulls the batch's
output cotangents back through ``jax.vjp``, accumulates parameter gradients
and scatter-adds operand cotangents. Buffers, cotangent buffers and the
gradient accumulator are donated. The engine works eagerly (one dispatch per
batch) and also under an outer ``jax.jit`` (the steps are then inlined into
one program, specialised to the schedule).

This module holds :class:`StepwiseEngine`, its plan :class:`ExecutionPlan`
(also the base of the fused engine's plan) with one :class:`BatchStep` per
batch, and :func:`run` / :func:`engine_for`, which keep one engine per ops.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.engine.base import BufferPlan, Engine
from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.common import (
    PyTree,
    add_rows,
    assemble_grads,
    buffer_structs,
    check_cotangents,
    combine,
    compile_once,
    lanes_with_cotangent,
    mask_rows,
    read_rows,
    scope,
    state_signature,
    write_rows,
    zero_buffer,
    zero_unless,
)
from edbatch_jax.engine.ops import Op, as_ops
from edbatch_jax.engine.rows import ScheduleRows
from edbatch_jax.graph import Graph
from edbatch_jax.layout.planner import LayoutPlan
from edbatch_jax.scheduling.schedule import Schedule

__all__ = ["BatchStep", "ExecutionPlan", "StepwiseEngine", "engine_for", "run", "state_signature"]


@dataclasses.dataclass(frozen=True)
class BatchStep:
    """Host-side arrays for one batch (all padded to the width bucket).

    Attributes:
      op: the op type's name.
      width: real lanes (nodes) of the batch.
      lanes: the bucketed width: lanes the call runs.
      out_buffer: the buffer the batch writes.
      out_offset: int32 scalar (on the device in a stepwise plan): first output row.
      payload: per-lane payloads, leaves ``[lanes, ...]``, or ``None``.
      operand_buffers: the buffer of each operand group.
      operand_slots: per operand group int32 ``[lanes]`` (variadic: ``[edge
        bucket]``) rows, or an int32 scalar: the start of a slice.
      segments: variadic ops: int32 ``[edge bucket]``, the lane of every
        gathered row (``lanes`` for padding rows); otherwise ``None``.
      mask: bool ``[lanes]``, the real (not padding) lanes.
    """

    op: str
    width: int
    lanes: int
    out_buffer: int
    out_offset: Any  # int32 scalar, a host or a device array
    payload: PyTree
    operand_buffers: tuple[int, ...]
    operand_slots: tuple[np.ndarray, ...]
    segments: np.ndarray | None
    mask: np.ndarray

    @property
    def index_args(self) -> tuple:
        """``(payload, operand_slots, segments, mask, out_offset)``: the data arguments of a step call."""
        return self.payload, self.operand_slots, self.segments, self.mask, self.out_offset


@dataclasses.dataclass(frozen=True, eq=False)
class ExecutionPlan:
    """Everything the device needs to run one schedule (host arrays).

    Attributes:
      signatures: state structure of every buffer.
      capacities: rows of every buffer (bucketed).
      node_buffer: int32 ``[N]``, the buffer holding each node's state.
      node_slot: int32 ``[N]``, the node's row in that buffer.
      rows: the whole schedule's lanes, operand rows and slice/gather
        decisions (:class:`~edbatch_jax.engine.rows.ScheduleRows`).
      num_operands: operand lists read per run.
      num_gathers: operand lists gathered row by row (the others are slices).
      gathered_bytes: bytes those gathers read (real lanes only).
      graph: the graph the plan was made for: what :attr:`steps` are cut from.
      steps_on_device: whether the steps' index arrays are put on the device
        when they are cut (an accelerator's calls then read them there) or
        kept as host arrays, which each call passes along. The stepwise
        engine keeps them on the host when it plans for a CPU, where device
        memory is host memory: a plan then costs no transfer of a few
        thousand small arrays (about 25 us each through ``jax.device_put``),
        and a call no more.
      steps: one :class:`BatchStep` per batch, in schedule order (the
        stepwise engine's calls; a fused plan cuts them only when asked).
    """

    signatures: tuple[tuple, ...]
    capacities: tuple[int, ...]
    node_buffer: np.ndarray
    node_slot: np.ndarray
    rows: ScheduleRows
    num_operands: int = 0
    num_gathers: int = 0
    gathered_bytes: int = 0
    graph: Graph | None = dataclasses.field(default=None, repr=False)
    steps_on_device: bool = dataclasses.field(default=True, repr=False)

    @classmethod
    def from_buffers(cls, buffers: BufferPlan, graph: Graph, **fields: Any):
        """A plan of ``graph`` from its planned buffers (:class:`~edbatch_jax.engine.base.BufferPlan`).

        Args:
          buffers: the buffers and rows, as the engine planned them.
          graph: the graph planned.
          **fields: further fields (``steps_on_device``, a subclass's own).

        Returns:
          A plan of class ``cls``, with the operand counts of ``buffers.rows``.
        """
        rows = buffers.rows
        return cls(*buffers, rows.num_operands, rows.num_gathers, rows.gathered_bytes, graph=graph, **fields)

    @property
    def num_steps(self) -> int:
        """Number of batches in the plan."""
        return self.rows.num_batches

    @functools.cached_property
    def steps(self) -> tuple[BatchStep, ...]:
        """One :class:`BatchStep` per batch, cut from :attr:`rows` on first use (then kept)."""
        if self.graph is None:
            raise ValueError("this plan was made without its graph: it has no steps to cut")
        return _cut_steps(self.rows, self.graph, self.steps_on_device)


def _default_platform() -> str:
    """The platform of the device JAX puts new arrays on (``jax.default_device`` honoured): ``"cpu"``, ``"gpu"``..."""
    device = jax.config.jax_default_device
    if device is None:
        return jax.default_backend()
    return device if isinstance(device, str) else device.platform


def _padded(rows: np.ndarray, length: int, fill: int = 0) -> np.ndarray:
    out = np.full(length, fill, np.int32)
    out[: rows.shape[0]] = rows
    return out


def _cut_steps(rows: ScheduleRows, graph: Graph, device: bool) -> tuple[BatchStep, ...]:
    """One :class:`BatchStep` per batch from the whole-schedule arrays (``device``: index arrays put on it)."""
    steps, args = [], []
    for b in range(rows.num_batches):
        t = int(rows.batch_type[b])
        s, e = rows.batch_ptr[b], rows.batch_ptr[b + 1]
        e0, e1 = rows.edge_ptr[b], rows.edge_ptr[b + 1]
        g0, g1 = rows.group_ptr[b], rows.group_ptr[b + 1]
        w, lanes = int(rows.width[b]), int(rows.lanes[b])
        nodes = rows.lane_nodes[s:e]
        tree = graph.payloads[t]
        payload = None
        if tree is not None:
            prow = graph.payload_row[nodes]
            prow = _padded(prow, lanes, prow[0])
            payload = jax.tree.map(lambda a: np.asarray(a)[prow], tree)
        edge_rows = rows.edge_rows[e0:e1]
        is_slice = rows.group_slice[g0:g1]
        if rows.variadic[t]:
            eb = bucket(e1 - e0)
            slots = (np.int32(edge_rows[0]) if is_slice[0] else _padded(edge_rows, eb),)
            segments = _padded(rows.edge_lane[e0:e1], eb, lanes)
        else:
            mat = edge_rows.reshape(w, int(rows.arity[t]))
            slots = tuple(
                np.int32(mat[0, j]) if is_slice[j] else _padded(mat[:, j], lanes) for j in range(mat.shape[1])
            )
            segments = None
        mask = np.arange(lanes) < w
        args.append((payload, slots, segments, mask, np.int32(rows.offset[b])))
        steps.append((graph.op_types[t], w, lanes, int(rows.out_buffer[b]), tuple(rows.group_buffer[g0:g1].tolist())))
    if device:
        args = jax.device_put(args)
    return tuple(
        BatchStep(name, w, lanes, out_b, offset, payload, bufs, slots, segments, mask)
        for (name, w, lanes, out_b, bufs), (payload, slots, segments, mask, offset) in zip(steps, args)
    )


class StepwiseEngine(Engine):
    """An :class:`~edbatch_jax.engine.base.Engine` that runs a schedule as one jitted, vmapped call per batch.

    Its step functions are compiled per (op type, lane bucket, operand
    sources) and buffer capacity, and reused across mini-batches. Works
    eagerly (one dispatch per batch) and under an outer ``jax.jit``.

    Args:
      ops, min_capacity, plan_cache_size, checks: as for :class:`~edbatch_jax.engine.base.Engine`.

    Attributes:
      Those of :class:`~edbatch_jax.engine.base.Engine`; ``trace_count``
      counts the step functions traced (one compiled executable each when
      running eagerly).
    """

    def __init__(
        self,
        ops: Mapping[str, Op | Any],
        *,
        min_capacity: int = 64,
        plan_cache_size: int = 16,
        checks: bool = False,
    ):
        super().__init__(ops, min_capacity=min_capacity, plan_cache_size=plan_cache_size, checks=checks)
        self._fwd: dict[tuple, Any] = {}
        self._bwd: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ planning
    def _build_plan(
        self,
        params: PyTree,
        params_sig: tuple,
        graph: Graph,
        schedule: Schedule,
        layout: LayoutPlan | Literal["gather"] | None,
    ) -> ExecutionPlan:
        buffers = self._plan_buffers(params, params_sig, graph, schedule, layout)
        plan = ExecutionPlan.from_buffers(buffers, graph, steps_on_device=_default_platform() != "cpu")
        plan.steps  # cut into steps now: on an accelerator their index arrays go to it once per plan, not per call
        return plan

    # ------------------------------------------------------------- step functions
    def _forward_step(self, step: BatchStep):
        """``(fn, read)``: the jitted forward step of ``step``'s kind and the buffers it reads besides its own."""
        read = tuple(dict.fromkeys(b for b in step.operand_buffers if b != step.out_buffer))
        src = tuple(-1 if b == step.out_buffer else read.index(b) for b in step.operand_buffers)
        key = (step.op, src, step.segments is not None)
        fn = self._fwd.get(key)
        if fn is None:
            op = self.ops[step.op]

            def forward(params, rng, out_buf, read_bufs, payload, slots, segments, mask, offset):
                self.trace_count += 1
                rows = mask.shape[0] if segments is None else segments.shape[0]
                gathered = [read_rows(out_buf if s < 0 else read_bufs[s], idx, rows) for s, idx in zip(src, slots)]
                y = combine(op, params, payload, gathered, segments, mask, rng=rng)
                return write_rows(out_buf, offset, y, mask)

            fn = self._fwd[key] = jax.jit(forward, donate_argnums=(2,))
        return fn, read

    def _backward_step(self, step: BatchStep):
        """``(fn, fwd_read, ct_touch)``: the jitted backward step of ``step``'s kind, the state buffers it reads and
        the cotangent buffers it updates (its output's first)."""
        fwd_read = tuple(dict.fromkeys(step.operand_buffers))
        ct_touch = tuple(dict.fromkeys((step.out_buffer,) + step.operand_buffers))
        fwd_src = tuple(fwd_read.index(b) for b in step.operand_buffers)
        ct_src = tuple(ct_touch.index(b) for b in step.operand_buffers)
        isolate = self._isolate_lanes
        key = (step.op, fwd_src, ct_src, step.segments is not None, isolate)
        fn = self._bwd.get(key)
        if fn is None:
            op = self.ops[step.op]

            def backward(params, rng, grad_acc, ct_bufs, fwd_bufs, payload, slots, segments, mask, offset):
                self.trace_count += 1
                lanes = mask.shape[0]
                rows = lanes if segments is None else segments.shape[0]
                gathered = [read_rows(fwd_bufs[s], idx, rows) for s, idx in zip(fwd_src, slots)]
                ct_out = mask_rows(read_rows(ct_bufs[0], offset, lanes), mask)
                live = lanes_with_cotangent(mask, ct_out) if isolate else None  # the others add exact zeros
                _, pullback = jax.vjp(
                    lambda p, g: combine(op, p, payload, g, segments, mask, live, rng), params, gathered
                )
                g_params, g_operands = pullback(ct_out)
                if live is not None:
                    g_params = zero_unless(jnp.any(live), g_params)
                with scope("accumulate"):
                    grad_acc = jax.tree.map(jnp.add, grad_acc, g_params)
                ct_bufs = list(ct_bufs)
                for s, idx, g in zip(ct_src, slots, g_operands):
                    ct_bufs[s] = add_rows(ct_bufs[s], idx, g)
                return grad_acc, tuple(ct_bufs)

            fn = self._bwd[key] = jax.jit(backward, donate_argnums=(2, 3))
        return fn, fwd_read, ct_touch

    # ------------------------------------------------------------------ execution
    def _forward(self, plan: ExecutionPlan, params: PyTree, rng: Any = None) -> tuple:
        bufs = [zero_buffer(sig, cap) for sig, cap in zip(plan.signatures, plan.capacities)]
        for step in plan.steps:
            fn, read = self._forward_step(step)
            op = self.ops[step.op]
            bufs[step.out_buffer] = fn(
                op.select_params(params),
                rng if op.stochastic else None,
                bufs[step.out_buffer],
                tuple(bufs[b] for b in read),
                *step.index_args,
            )
        return tuple(bufs)

    def _forward_saving(self, plan: ExecutionPlan, params: PyTree, rng: Any = None) -> tuple[tuple, Any]:
        """The buffers and what the backward pass may reuse (here nothing: it recomputes each batch)."""
        return self._forward(plan, params, rng), None

    def _backward(
        self,
        plan: ExecutionPlan,
        params: PyTree,
        bufs: tuple,
        ct_bufs: tuple,
        owned: bool = False,
        saved: Any = None,
        rng: Any = None,
    ) -> PyTree:
        """Gradient w.r.t. ``params`` of a plan's run, given one cotangent per buffer (``None``: zero).

        ``owned``: the cotangent arrays are the caller's to give up (donated, not copied).
        ``saved``: the second output of :meth:`_forward_saving` (unused here).
        """
        del saved
        ct_bufs = [
            zero_buffer(sig, cap) if c is None else (c if owned else jax.tree.map(jnp.copy, c))  # arrays we may donate
            for c, sig, cap in zip(ct_bufs, plan.signatures, plan.capacities)
        ]
        grads: dict = {}  # params_key -> gradient accumulator of that subtree
        for step in reversed(plan.steps):
            op = self.ops[step.op]
            sub = op.select_params(params)
            acc = grads.get(op.grad_key)
            if acc is None:
                acc = jax.tree.map(jnp.zeros_like, sub)
            fn, fwd_read, ct_touch = self._backward_step(step)
            grads[op.grad_key], touched = fn(
                sub,
                rng if op.stochastic else None,
                acc,
                tuple(ct_bufs[b] for b in ct_touch),
                tuple(bufs[b] for b in fwd_read),
                *step.index_args,
            )
            for b, c in zip(ct_touch, touched):
                ct_bufs[b] = c
        return assemble_grads(params, grads)

    def precompile(
        self,
        params: PyTree,
        plan: ExecutionPlan,
        cotangents: Sequence[bool] | None = None,
        rng: Any = None,
        *,
        context: PyTree = None,
        instance_context: PyTree = None,
    ) -> int:
        """:meth:`Engine.precompile <edbatch_jax.engine.base.Engine.precompile>`: every batch's forward step
        (and, for training, backward step) at the plan's capacities.

        The zero fills of the state buffers and gradient accumulators (small
        programs of their own when running eagerly) are run once too.
        Host-side; not jittable.

        Args:
          params: the parameter pytree the plan will run with (concrete arrays).
          plan: a plan of this engine.
          cotangents: ``None`` for inference, else one bool per state buffer.
          rng: a step key, for runs with one (stochastic ops), or ``None``.
          context, instance_context: the context of the runs (see :meth:`Engine.execute
            <edbatch_jax.engine.base.Engine.execute>`).

        Returns:
          The number of programs compiled by this call.
        """
        check_cotangents(plan, cotangents)
        rng = self._step_key(rng)
        params = self._inputs(params, context, instance_context, plan.graph.num_instances)
        bufs = buffer_structs(plan)
        for sig, cap in zip(plan.signatures, plan.capacities):  # the fills a run makes (eager: a program per shape)
            zero_buffer(sig, cap)
        compiled = 0
        for step in plan.steps:
            op = self.ops[step.op]
            sub, r = op.select_params(params), rng if op.stochastic else None
            fn, read = self._forward_step(step)
            compiled += compile_once(
                self._compiled, fn, sub, r, bufs[step.out_buffer], tuple(bufs[b] for b in read), *step.index_args
            )
            if cotangents is not None:
                fn, fwd_read, ct_touch = self._backward_step(step)
                compiled += compile_once(
                    self._compiled,
                    fn,
                    sub,
                    r,
                    sub,
                    tuple(bufs[b] for b in ct_touch),
                    tuple(bufs[b] for b in fwd_read),
                    *step.index_args,
                )
        if cotangents is not None:  # the accumulators' fills and their assembly into one gradient pytree
            ops = [self.ops[name] for name in dict.fromkeys(step.op for step in plan.steps)]
            assemble_grads(params, {op.grad_key: jax.tree.map(jnp.zeros_like, op.select_params(params)) for op in ops})
        return compiled


_ENGINES: collections.OrderedDict = collections.OrderedDict()


def engine_for(ops: Mapping[str, Any]) -> StepwiseEngine:
    """The shared :class:`StepwiseEngine` for a mapping of ops (memoised by its contents, 32 kept); host-side.

    Args:
      ops: op type name -> :class:`~edbatch_jax.engine.ops.Op` or per-node function.

    Returns:
      The same engine for equal ``ops``, so that compiled steps are reused.
    """
    normal = as_ops(ops)
    key = tuple(sorted(normal.items(), key=lambda kv: kv[0]))
    eng = _ENGINES.get(key)
    if eng is None:
        eng = _ENGINES[key] = StepwiseEngine(normal)
        if len(_ENGINES) > 32:
            _ENGINES.popitem(last=False)
    return eng


def run(
    ops: Mapping[str, Any],
    params: PyTree,
    graph: Graph,
    schedule: Schedule,
    outputs: Sequence[int] | np.ndarray | None = None,
    layout: LayoutPlan | Literal["gather"] | None = None,
    *,
    rng: Any = None,
    context: PyTree = None,
    instance_context: PyTree = None,
) -> PyTree:
    """Batched execution of ``schedule``; see :meth:`Engine.run <edbatch_jax.engine.base.Engine.run>`.

    ``ops`` maps op type names to per-node functions ``f(params, payload,
    *operand_states)`` or :class:`~edbatch_jax.engine.ops.Op`; an engine is
    kept per ``ops`` (:func:`engine_for`) so that compiled steps are reused
    across calls. Usable eagerly or under ``jax.jit``; differentiable w.r.t.
    ``params``.

    Args:
      ops: op type name -> op.
      params: the parameter pytree passed to every op.
      graph: the (batched) graph.
      schedule: a valid schedule of ``graph``.
      outputs: node ids (int ``[K]``) of one state structure; ``None``: every node.
      layout: ``None``, ``"gather"`` or a :class:`~edbatch_jax.layout.LayoutPlan`.
      rng: the step key of stochastic ops, or ``None`` (deterministic).
      context: the per-call context of ops reading context, or ``None``.
      instance_context: the per-instance context (leaves ``[I, ...]``), or ``None``.

    Returns:
      The states of ``outputs``, leaves ``[K, ...]``.
    """
    return engine_for(ops).run(
        params, graph, schedule, outputs, layout, rng=rng, context=context, instance_context=instance_context
    )
