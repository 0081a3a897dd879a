"""The stepwise batched executor.

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
state buffers. Its backward pass is a hand-written reverse sweep, one jitted
step per batch: it recomputes the batch's forward from the (write-once) state
buffers, pulls the batch's output cotangents back through ``jax.vjp``,
accumulates parameter gradients and scatter-adds operand cotangents. Buffers,
cotangent buffers and the gradient accumulator are donated. The executor works
eagerly (one dispatch per batch) and also under an outer ``jax.jit`` (the steps
are then inlined into one program, specialised to the schedule).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.ops import Op, OpError, as_ops, check_graph_ops
from edbatch_jax.engine.rows import ScheduleRows, schedule_rows
from edbatch_jax.graph import Graph, GraphError, check_node_ids
from edbatch_jax.scheduling.schedule import Schedule

PyTree = Any

__all__ = ["Engine", "ExecutionPlan", "StepwiseEngine", "run", "state_signature"]


def state_signature(tree: PyTree) -> tuple:
    """Hashable (treedef, ((shape, dtype), ...)) of a state or its ShapeDtypeStruct."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), np.dtype(x.dtype)) for x in leaves)


def _struct(sig: tuple, lead: tuple = ()) -> PyTree:
    treedef, leaves = sig
    return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(lead + s, d) for s, d in leaves])


@dataclasses.dataclass(frozen=True)
class BatchStep:
    """Host-side arrays for one batch (all padded to the width bucket)."""

    op: str
    width: int
    lanes: int  # bucketed width
    out_buffer: int
    out_offset: Any  # int32 scalar (on device): first output row
    payload: PyTree  # leaves [lanes, ...] or None
    operand_buffers: tuple[int, ...]  # buffer of each operand group
    operand_slots: tuple[np.ndarray, ...]  # int32 [lanes] / [edge bucket] rows, or an int32 scalar: slice start
    segments: np.ndarray | None  # variadic: int32 [edge bucket], lane of every gathered row
    mask: np.ndarray  # bool [lanes]: real (not padding) lanes

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
      tables: the device arrays of a :class:`~edbatch_jax.engine.fused.FusedEngine`
        plan (``None`` for the stepwise engine).
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
    tables: Any = None
    step_source: Any = dataclasses.field(default=None, repr=False)  # (graph, device): what steps are cut from

    @property
    def num_steps(self) -> int:
        """Number of batches in the plan."""
        return self.rows.num_batches

    @functools.cached_property
    def steps(self) -> tuple[BatchStep, ...]:
        """One :class:`BatchStep` per batch, cut from :attr:`rows` on first use (then kept)."""
        graph, device = self.step_source
        return _cut_steps(self.rows, graph, device)


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


def _take_rows(tree: PyTree, idx) -> PyTree:
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


@jax.jit
def _sum_rows(tree: PyTree, idx, mask) -> PyTree:
    """Sum of rows ``idx`` where ``mask`` (bucketed shapes: one executable per bucket)."""

    def one(a):
        rows = jnp.take(a, idx, axis=0)
        return jnp.sum(jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), rows, jnp.zeros_like(rows)), axis=0)

    return jax.tree.map(one, tree)


def _read_rows(tree: PyTree, idx, length: int) -> PyTree:
    """Rows ``idx`` (int32 ``[M]``: a gather) or ``idx .. idx + length`` (int32 scalar: a slice)."""
    if jnp.ndim(idx) == 0:
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, idx, length, 0), tree)
    return _take_rows(tree, idx)


def _add_rows(tree: PyTree, idx, values: PyTree) -> PyTree:
    """Scatter-adds ``values`` into rows ``idx`` (gather) or the slice starting at ``idx``."""
    if jnp.ndim(idx) == 0:

        def add(c, x):
            cur = jax.lax.dynamic_slice_in_dim(c, idx, x.shape[0], 0)
            return jax.lax.dynamic_update_slice_in_dim(c, cur + x.astype(c.dtype), idx, 0)

        return jax.tree.map(add, tree, values)
    return jax.tree.map(lambda c, x: c.at[idx].add(x.astype(c.dtype)), tree, values)


@functools.lru_cache(maxsize=256)
def _sig_bytes(sig: tuple) -> int:
    """Bytes of one row of a state structure."""
    return int(sum(np.prod(shape, dtype=np.int64) * np.dtype(dtype).itemsize for shape, dtype in sig[1]))


def _combine(op: Op, params, payload, gathered: Sequence[PyTree], segments, mask):
    """The batched op: ``vmap(op.fn)`` over lanes, after aggregation for variadic ops."""
    lanes = mask.shape[0]
    if op.variadic:
        x = gathered[0]
        count = jax.ops.segment_sum(jnp.ones(segments.shape, jnp.float32), segments, num_segments=lanes)
        if op.aggregate == "max":
            agg = jax.tree.map(lambda a: jax.ops.segment_max(a, segments, num_segments=lanes), x)
        else:
            agg = jax.tree.map(lambda a: jax.ops.segment_sum(a, segments, num_segments=lanes), x)
            if op.aggregate == "mean":
                agg = jax.tree.map(
                    lambda a: a / jnp.maximum(count, 1).reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype), agg
                )
        # empty (padding) lanes: keep them finite so that masked gradients stay exact
        agg = jax.tree.map(
            lambda a: jnp.where((count > 0).reshape((-1,) + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a)), agg
        )
        gathered = (agg,)
    mapped = [payload, *gathered]
    if not jax.tree.leaves(mapped):  # nothing varies across lanes: compute once, broadcast
        y = op.fn(params, payload, *gathered)
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (lanes,) + a.shape), y)
    return jax.vmap(lambda p, *xs: op.fn(params, p, *xs), in_axes=(0,) + (0,) * len(gathered))(payload, *gathered)


def _mask_rows(tree: PyTree, mask) -> PyTree:
    return jax.tree.map(lambda a: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a)), tree)


def _compile_once(done: set, fn, *args, tag: Any = None) -> int:
    """Compiles jitted ``fn`` for ``args`` (arrays or ``jax.ShapeDtypeStruct`` leaves) without running it, unless
    ``done`` holds that (function, argument types, placement, ``tag``: the values of static arguments) already;
    returns the number compiled (0 or 1). The compiled program is the one a later call with such arguments runs
    (jit keeps it)."""
    leaves, treedef = jax.tree.flatten(args)
    key = (id(fn), tag, treedef, tuple((np.shape(x), jnp.result_type(x), _placement(x)) for x in leaves))
    if key in done:
        return 0
    fn.lower(*args).compile()
    done.add(key)
    return 1


def _placement(tree) -> tuple | None:
    """``(committed, devices)`` of the first array of ``tree`` (``None`` for a tracer, a ``ShapeDtypeStruct`` or no
    array): arrays placed otherwise (another device, or committed where these are not) are another kind of program
    input, for which XLA would compile the program again."""
    leaf = next(iter(jax.tree.leaves(tree)), None)
    if not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer):
        return None
    return leaf.committed, tuple(leaf.devices())


def _zeros(sig: tuple, capacity: int) -> PyTree:
    """A zero buffer of state structure ``sig`` with ``capacity`` rows."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _struct(sig, (capacity,)))


def _buffer_structs(plan) -> tuple:
    """The state buffers of an :class:`ExecutionPlan` as pytrees of ``jax.ShapeDtypeStruct`` (capacity rows)."""
    return tuple(_struct(sig, (cap,)) for sig, cap in zip(plan.signatures, plan.capacities))


def _check_cotangents(plan, cotangents: Sequence[bool] | None) -> None:
    """Refuses a cotangent mask (one bool per state buffer, for precompilation) of the wrong length."""
    if cotangents is not None and len(cotangents) != len(plan.signatures):
        raise ValueError(f"cotangents has {len(cotangents)} entries for a plan of {len(plan.signatures)} state buffers")


def _instantiate(ct: PyTree) -> PyTree | None:
    """A custom-VJP cotangent with symbolic zeros: ``None`` if all of it is zero, else arrays."""
    is_zero = lambda x: isinstance(x, SymbolicZero)
    leaves = jax.tree.leaves(ct, is_leaf=is_zero)
    if all(is_zero(x) for x in leaves):
        return None
    return jax.tree.map(lambda x: jnp.zeros(x.aval.shape, x.aval.dtype) if is_zero(x) else x, ct, is_leaf=is_zero)


def _path_head(path) -> Any:
    """The first key of a pytree path (dict key, attribute name or index)."""
    k = path[0]
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def _assemble_grads(params: PyTree, grads: dict) -> PyTree:
    """The gradient pytree of ``params`` from per-``params_key`` accumulators.

    ``grads[None]`` (ops reading all of ``params``) has the structure of
    ``params``; ``grads[key]`` that of ``params[key]``. Leaves are matched by
    path, so any mapping container works (dicts, ``flax.nnx.State``).
    """
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    total = grads.pop(None, None)
    out = jax.tree.leaves(total) if total is not None else [jnp.zeros_like(x) for _, x in with_path]
    heads = [_path_head(p) if p else None for p, _ in with_path]
    for key, g in grads.items():
        idx = [i for i, h in enumerate(heads) if h == key]
        leaves = jax.tree.leaves(g)
        if len(idx) != len(leaves):
            raise OpError(f"gradient of params[{key!r}] has {len(leaves)} leaves, the parameters {len(idx)}")
        for i, leaf in zip(idx, leaves):
            out[i] = out[i] + leaf
    return jax.tree.unflatten(treedef, out)


class Engine:
    """Runs schedules of graphs whose op types are implemented by ``ops``.

    An engine owns the compiled step functions and the buffer capacities, so
    reusing one engine across mini-batches reuses its executables.

    Attributes:
      ops: op type name -> :class:`Op`.
      trace_count: number of step functions traced (each trace is one
        compiled executable when running eagerly).
      plans_built: number of execution plans built (host-side work per new
        mini-batch; a mini-batch whose plan is still cached costs none).
    """

    def __init__(self, ops: Mapping[str, Op | Any], *, min_capacity: int = 64, plan_cache_size: int = 16):
        self.ops = as_ops(ops)
        self.min_capacity = int(min_capacity)
        self.trace_count = 0
        self.plans_built = 0
        self._capacity: dict[tuple, int] = {}
        self._signature_cache: dict[tuple, tuple] = {}
        self._fwd: dict[tuple, Any] = {}
        self._bwd: dict[tuple, Any] = {}
        self._compiled: set = set()  # programs compiled ahead of time (precompile)
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self._plan_cache_size = plan_cache_size

    # ------------------------------------------------------------------ planning
    def _output_signature(self, name: str, params_sig: tuple, payload_sig, operand_sigs: tuple, params) -> tuple:
        key = (name, params_sig, payload_sig, operand_sigs)
        sig = self._signature_cache.get(key)
        if sig is None:
            op = self.ops[name]
            payload = None if payload_sig is None else _struct(payload_sig)
            operands = [_struct(s) for s in operand_sigs]
            try:
                out = jax.eval_shape(lambda p, x, *o: op.fn(p, x, *o), op.select_params(params), payload, *operands)
            except Exception as e:  # re-raised with the op named
                raise OpError(
                    f"op {name!r} failed on one node's shapes (payload {payload_sig}, operands {operand_sigs}): {e}"
                ) from e
            sig = self._signature_cache[key] = state_signature(out)
        return sig

    def plan(self, params: PyTree, graph: Graph, schedule: Schedule, layout: Any = None) -> ExecutionPlan:
        """Host-side plan of one schedule: buffers, rows, padded index arrays.

        Args:
          layout: ``None`` (rows in schedule order, as DyNet allocates them;
            operands that happen to be consecutive are read as slices),
            ``"gather"`` (the same rows, every operand gathered), or a
            :class:`~edbatch_jax.layout.LayoutPlan` (rows in its order).

        Cached per (graph, schedule, layout) object; not jittable.
        """
        if not (layout is None or layout == "gather" or hasattr(layout, "position")):
            raise ValueError(f"layout must be None, 'gather' or a LayoutPlan, got {layout!r}")
        key = (id(graph), id(schedule), layout if isinstance(layout, str) else id(layout))
        hit = self._plans.get(key)
        params_sig = state_signature(params)
        if hit is not None and hit[0] is graph and hit[1] is schedule and hit[2] == params_sig and hit[3] is layout:
            self._plans.move_to_end(key)
            return hit[4]
        plan = self._build_plan(params, params_sig, graph, schedule, layout)
        self.plans_built += 1
        self._plans[key] = (graph, schedule, params_sig, layout, plan)
        if len(self._plans) > self._plan_cache_size:
            self._plans.popitem(last=False)
        return plan

    def _build_plan(self, params, params_sig, graph: Graph, schedule: Schedule, layout: Any = None) -> ExecutionPlan:
        plan = self._plan_rows(params, params_sig, graph, schedule, layout)
        plan.steps  # cut into steps now: their index arrays go to the device once per plan, not once per call
        return plan

    def _plan_rows(
        self, params, params_sig, graph: Graph, schedule: Schedule, layout: Any = None, device: bool = True
    ) -> ExecutionPlan:
        """The plan's buffers and whole-schedule rows (:class:`~edbatch_jax.engine.rows.ScheduleRows`);
        its steps are cut on first use (``device``: their index arrays put on the device)."""
        if graph.num_nodes == 0:
            raise GraphError("empty graph: nothing to run")
        if schedule.op_types != graph.op_types:
            raise OpError("the schedule was made for another graph (op types differ)")
        check_graph_ops(graph, self.ops)
        n, T = graph.num_nodes, graph.num_types
        order = schedule.node_order
        first_node = order[schedule.batch_ptr[:-1]]

        # --- state structure of every op type, found at its first batch (in schedule order)
        type_sig: list[tuple | None] = [None] * T
        types, first_batch = np.unique(schedule.batch_type, return_index=True)
        for t, b in sorted(zip(types.tolist(), first_batch.tolist()), key=lambda tb: tb[1]):
            v = first_node[b]
            name = graph.op_types[t]
            args = graph.args(v)
            if self.ops[name].variadic:
                args = args[:1]
            operand_sigs = tuple(type_sig[graph.node_type[a]] for a in args)
            if any(s is None for s in operand_sigs):
                raise OpError(f"node {v} (op {name!r}) runs before one of its arguments; validate the schedule")
            tree = graph.payloads[t]
            payload_sig = None if tree is None else state_signature(jax.tree.map(lambda a: a[0], tree))
            type_sig[t] = self._output_signature(name, params_sig, payload_sig, operand_sigs, params)
        signatures = tuple(dict.fromkeys(s for s in type_sig if s is not None))
        type_buffer = np.array([-1 if s is None else signatures.index(s) for s in type_sig], dtype=np.int32)

        # --- every operand position of a type must read one state structure
        dst = graph.edge_dst()
        pos = np.arange(graph.num_edges) - graph.arg_ptr[dst]
        variadic = np.array([graph.op_types[t] in self.ops and self.ops[graph.op_types[t]].variadic for t in range(T)])
        arity = np.array(
            [
                0 if variadic[t] or graph.op_types[t] not in self.ops else self.ops[graph.op_types[t]].arity
                for t in range(T)
            ],
            np.int64,
        )
        pos = np.where(variadic[graph.node_type[dst]], 0, pos)
        src_buf = type_buffer[graph.node_type[graph.arg_idx]]
        if graph.num_edges:  # distinct (type, position, buffer) triples, counted without a sort
            group = graph.node_type[dst].astype(np.int64) * (int(pos.max()) + 1) + pos
            seen = np.bincount(group * len(signatures) + src_buf, minlength=(int(group.max()) + 1) * len(signatures))
            clash = np.flatnonzero((seen.reshape(-1, len(signatures)) > 0).sum(axis=1) > 1)
            if clash.size:
                e1 = int(np.flatnonzero(group == clash[0])[0])
                e2 = int(np.flatnonzero((group == clash[0]) & (src_buf != src_buf[e1]))[0])
                raise OpError(
                    f"op {graph.op_types[graph.node_type[dst[e1]]]!r}: operand {pos[e1]} of node {dst[e1]} "
                    f"has state structure {signatures[src_buf[e1]]} but node {dst[e2]} passes "
                    f"{signatures[src_buf[e2]]}; one operand position must always read one structure"
                )

        # --- rows: per buffer in schedule order (each batch contiguous), or in the layout's order
        node_buffer = type_buffer[graph.node_type]
        if hasattr(layout, "position"):
            position = np.asarray(layout.position)
            if position.shape != (n,):
                raise ValueError(f"the layout plan has {position.shape[0]} positions for a graph of {n} nodes")
            if np.array_equal(np.bincount(np.clip(position, 0, n), minlength=n + 1)[:n], np.ones(n)):
                by_row = np.empty(n, np.int64)  # a permutation of 0..n-1 (as plan_layout gives): invert it
                by_row[position] = np.arange(n)
            else:
                by_row = np.argsort(position, kind="stable")
        else:
            by_row = order
        buf_in_order = node_buffer[by_row]
        node_slot = np.empty(n, dtype=np.int32)
        for b in range(len(signatures)):
            sel = buf_in_order == b
            node_slot[by_row[sel]] = np.arange(int(sel.sum()), dtype=np.int32)
        row_bytes = np.array([_sig_bytes(sig) for sig in signatures], np.int64)
        rows = schedule_rows(
            graph,
            schedule,
            node_slot,
            node_buffer,
            len(signatures),
            variadic,
            arity,
            row_bytes,
            allow_slices=layout != "gather",
        )

        capacities = []
        for b, sig in enumerate(signatures):
            cap = max(self._capacity.get(sig, 0), bucket(int(rows.need[b]), self.min_capacity))
            self._capacity[sig] = cap
            capacities.append(cap)
        return ExecutionPlan(
            signatures,
            tuple(capacities),
            node_buffer,
            node_slot,
            rows,
            rows.num_operands,
            rows.num_gathers,
            rows.gathered_bytes,
            step_source=(graph, device),
        )

    # ------------------------------------------------------------- step functions
    def _forward_step(self, step: BatchStep):
        read = tuple(dict.fromkeys(b for b in step.operand_buffers if b != step.out_buffer))
        src = tuple(-1 if b == step.out_buffer else read.index(b) for b in step.operand_buffers)
        key = (step.op, src, step.segments is not None)
        fn = self._fwd.get(key)
        if fn is None:
            op = self.ops[step.op]

            def forward(params, out_buf, read_bufs, payload, slots, segments, mask, offset):
                self.trace_count += 1
                rows = mask.shape[0] if segments is None else segments.shape[0]
                gathered = [_read_rows(out_buf if s < 0 else read_bufs[s], idx, rows) for s, idx in zip(src, slots)]
                y = _combine(op, params, payload, gathered, segments, mask)

                def write(b, v):  # padding lanes keep the rows they cover (another batch's, in a planned layout)
                    old = jax.lax.dynamic_slice_in_dim(b, offset, v.shape[0], 0)
                    keep = mask.reshape((-1,) + (1,) * (v.ndim - 1))
                    return jax.lax.dynamic_update_slice_in_dim(b, jnp.where(keep, v.astype(b.dtype), old), offset, 0)

                return jax.tree.map(write, out_buf, y)

            fn = self._fwd[key] = jax.jit(forward, donate_argnums=(1,))
        return fn, read

    def _backward_step(self, step: BatchStep):
        fwd_read = tuple(dict.fromkeys(step.operand_buffers))
        ct_touch = tuple(dict.fromkeys((step.out_buffer,) + step.operand_buffers))
        fwd_src = tuple(fwd_read.index(b) for b in step.operand_buffers)
        ct_src = tuple(ct_touch.index(b) for b in step.operand_buffers)
        key = (step.op, fwd_src, ct_src, step.segments is not None)
        fn = self._bwd.get(key)
        if fn is None:
            op = self.ops[step.op]

            def backward(params, grad_acc, ct_bufs, fwd_bufs, payload, slots, segments, mask, offset):
                self.trace_count += 1
                lanes = mask.shape[0]
                rows = lanes if segments is None else segments.shape[0]
                gathered = [_read_rows(fwd_bufs[s], idx, rows) for s, idx in zip(fwd_src, slots)]
                ct_out = jax.tree.map(lambda c: jax.lax.dynamic_slice_in_dim(c, offset, lanes, 0), ct_bufs[0])
                ct_out = _mask_rows(ct_out, mask)
                _, pullback = jax.vjp(lambda p, g: _combine(op, p, payload, g, segments, mask), params, gathered)
                g_params, g_operands = pullback(ct_out)
                grad_acc = jax.tree.map(jnp.add, grad_acc, g_params)
                ct_bufs = list(ct_bufs)
                for s, idx, g in zip(ct_src, slots, g_operands):
                    ct_bufs[s] = _add_rows(ct_bufs[s], idx, g)
                return grad_acc, tuple(ct_bufs)

            fn = self._bwd[key] = jax.jit(backward, donate_argnums=(1, 2))
        return fn, fwd_read, ct_touch

    # ------------------------------------------------------------------ execution
    def _forward(self, plan: ExecutionPlan, params) -> tuple:
        bufs = [_zeros(sig, cap) for sig, cap in zip(plan.signatures, plan.capacities)]
        for step in plan.steps:
            fn, read = self._forward_step(step)
            bufs[step.out_buffer] = fn(
                self.ops[step.op].select_params(params),
                bufs[step.out_buffer],
                tuple(bufs[b] for b in read),
                *step.index_args,
            )
        return tuple(bufs)

    def _forward_saving(self, plan: ExecutionPlan, params) -> tuple[tuple, Any]:
        """The buffers and what the backward pass may reuse (here nothing: it recomputes each batch)."""
        return self._forward(plan, params), None

    def _backward(
        self, plan: ExecutionPlan, params, bufs: tuple, ct_bufs: tuple, owned: bool = False, saved: Any = None
    ):
        """Gradient w.r.t. ``params`` of a plan's run, given one cotangent per buffer (``None``: zero).

        ``owned``: the cotangent arrays (and ``saved``) are the caller's to give up (donated or reused, not copied).
        ``saved``: the second output of :meth:`_forward_saving` (unused here).
        """
        del saved
        ct_bufs = [
            _zeros(sig, cap) if c is None else (c if owned else jax.tree.map(jnp.copy, c))  # arrays we may donate
            for c, sig, cap in zip(ct_bufs, plan.signatures, plan.capacities)
        ]
        grads: dict = {}  # params_key -> gradient accumulator of that subtree
        for step in reversed(plan.steps):
            op = self.ops[step.op]
            sub = op.select_params(params)
            acc = grads.get(op.params_key)
            if acc is None:
                acc = jax.tree.map(jnp.zeros_like, sub)
            fn, fwd_read, ct_touch = self._backward_step(step)
            grads[op.params_key], touched = fn(
                sub,
                acc,
                tuple(ct_bufs[b] for b in ct_touch),
                tuple(bufs[b] for b in fwd_read),
                *step.index_args,
            )
            for b, c in zip(ct_touch, touched):
                ct_bufs[b] = c
        return _assemble_grads(params, grads)

    def precompile(self, params: PyTree, plan: ExecutionPlan, cotangents: Sequence[bool] | None = None) -> int:
        """Compiles, ahead of time and without running them, the programs that running ``plan`` needs.

        Plan every mini-batch first (:meth:`plan`: buffer capacities and the
        fused engine's table lengths only grow), then precompile each plan:
        the programs are then compiled once, at their final shapes, before
        the first step, instead of during the first steps and again whenever
        a larger mini-batch grows a capacity. Programs already compiled are
        not compiled again. The zero fills of the state buffers and
        gradient accumulators (small programs of their own) are run once
        too. Host-side; not jittable.

        Args:
          params: the parameter pytree the plan will run with (concrete
            arrays; only their shapes, dtypes and placement matter).
          plan: a plan of this engine (:meth:`plan`).
          cotangents: ``None`` for inference (the forward programs);
            otherwise one bool per state buffer of ``plan``, ``True`` where
            the loss gives that buffer a cotangent, for training through
            :meth:`value_and_grad` (the forward programs that keep what the
            backward pass reuses, and the backward programs).

        Returns:
          The number of programs compiled by this call.
        """
        _check_cotangents(plan, cotangents)
        bufs = _buffer_structs(plan)
        for sig, cap in zip(plan.signatures, plan.capacities):  # the fills a run makes (eager: a program per shape)
            _zeros(sig, cap)
        compiled = 0
        for step in plan.steps:
            sub = self.ops[step.op].select_params(params)
            fn, read = self._forward_step(step)
            compiled += _compile_once(
                self._compiled, fn, sub, bufs[step.out_buffer], tuple(bufs[b] for b in read), *step.index_args
            )
            if cotangents is not None:
                fn, fwd_read, ct_touch = self._backward_step(step)
                compiled += _compile_once(
                    self._compiled,
                    fn,
                    sub,
                    sub,
                    tuple(bufs[b] for b in ct_touch),
                    tuple(bufs[b] for b in fwd_read),
                    *step.index_args,
                )
        if cotangents is not None:  # the accumulators' fills and their assembly into one gradient pytree
            ops = [self.ops[name] for name in dict.fromkeys(step.op for step in plan.steps)]
            _assemble_grads(
                params, {op.params_key: jax.tree.map(jnp.zeros_like, op.select_params(params)) for op in ops}
            )
        return compiled

    def execute(self, plan: ExecutionPlan, params: PyTree) -> tuple:
        """All state buffers after running ``plan``; differentiable w.r.t. ``params``.

        With concrete ``params`` (nothing traces them: no ``jax.grad``, no
        ``jax.jit`` around the call) the forward program runs directly;
        otherwise through a ``jax.custom_vjp`` whose backward pass is the
        reverse sweep (buffers nothing reads get no cotangent work: zero
        cotangents stay symbolic until the sweep makes them).
        """
        if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params)):
            return self._forward(plan, params)  # nothing to differentiate: skip the custom_vjp machinery

        @jax.custom_vjp
        def buffers(p):
            return self._forward(plan, p)

        def fwd(p):
            p = jax.tree.map(lambda x: x.value, p, is_leaf=lambda x: isinstance(x, CustomVJPPrimal))
            bufs, saved = self._forward_saving(plan, p)
            return bufs, (p, bufs, saved)

        def bwd(res, ct):
            p, bufs, saved = res
            return (self._backward(plan, p, bufs, tuple(_instantiate(c) for c in ct), saved=saved),)

        buffers.defvjp(fwd, bwd, symbolic_zeros=True)
        return buffers(params)

    def value_and_grad(self, plan: ExecutionPlan, params: PyTree, loss_grad) -> tuple[jax.Array, PyTree]:
        """A loss of the state buffers and its gradient w.r.t. ``params``, without tracing the schedule.

        The same result as ``jax.value_and_grad`` of ``loss(execute(plan, p))``
        for concrete ``params``, without autodiff's per-call tracing and zero
        cotangents: the forward program, ``loss_grad``, then the backward
        program. Not jittable (use ``jax.value_and_grad`` over :meth:`run`
        under ``jax.jit``).

        Args:
          plan: a plan of this engine (:meth:`plan`).
          params: the parameter pytree (concrete arrays).
          loss_grad: ``buffers -> (loss, cotangents)``, with one cotangent
            pytree per buffer or ``None`` for a buffer the loss does not read
            (e.g. a jitted ``jax.value_and_grad``). The cotangent arrays are
            handed over: the stepwise engine updates them in place (donated),
            so they must be fresh (the outputs of a jitted function are).

        Returns:
          ``(loss, grads)``, ``grads`` with the structure of ``params``.
        """
        bufs, saved = self._forward_saving(plan, params)
        loss, ct = loss_grad(bufs)
        if len(ct) != len(bufs):
            raise ValueError(f"loss_grad returned {len(ct)} cotangents for {len(bufs)} buffers")
        return loss, self._backward(plan, params, bufs, tuple(ct), owned=True, saved=saved)

    def run(
        self,
        params: PyTree,
        graph: Graph,
        schedule: Schedule,
        outputs: Sequence[int] | np.ndarray | None = None,
        layout: Any = None,
        reduce: str | None = None,
    ) -> PyTree:
        """Runs ``schedule`` and returns the stacked states of ``outputs``.

        Args:
          params: the parameter pytree passed to every op.
          graph: the (batched) graph.
          schedule: a valid schedule of ``graph``.
          outputs: node ids (int ``[K]``), all of one state structure; ``None``
            means every node (then all op types must share one structure).
          layout: buffer layout (see :meth:`plan`): ``None``, ``"gather"`` or
            a :class:`~edbatch_jax.layout.LayoutPlan`.
          reduce: ``"sum"`` returns the sum over the outputs instead (no
            leading axis), computed on a bucketed index so that mini-batches
            with different output counts share one executable.

        Returns:
          The state pytree with a leading axis ``[K]`` (or summed). Differentiable with
          ``jax.grad`` w.r.t. ``params``; usable eagerly or under ``jax.jit``.
        """
        if reduce not in (None, "sum"):
            raise ValueError(f"reduce must be None or 'sum', got {reduce!r}")
        plan = self.plan(params, graph, schedule, layout)
        nodes = output_nodes(plan, graph, outputs)
        bufs = self.execute(plan, params)
        buf = bufs[int(plan.node_buffer[nodes[0]]) if nodes.size else 0]
        if reduce == "sum":
            k = bucket(nodes.size)
            idx = np.zeros(k, np.int32)
            idx[: nodes.size] = plan.node_slot[nodes]
            return _sum_rows(buf, idx, np.arange(k) < nodes.size)
        return _take_rows(buf, plan.node_slot[nodes])


def output_nodes(plan: ExecutionPlan, graph: Graph, outputs) -> np.ndarray:
    """Checks requested output node ids (int ``[K]``) against a plan: they exist and share one buffer."""
    nodes = check_node_ids(graph, outputs)
    which = np.unique(plan.node_buffer[nodes])
    if which.size > 1:
        v1 = nodes[plan.node_buffer[nodes] == which[0]][0]
        v2 = nodes[plan.node_buffer[nodes] == which[1]][0]
        raise OpError(
            f"outputs mix state structures: node {v1} ({graph.op_types[graph.node_type[v1]]!r}) and node {v2} "
            f"({graph.op_types[graph.node_type[v2]]!r}); request them separately"
        )
    return nodes


_ENGINES: collections.OrderedDict = collections.OrderedDict()


def engine_for(ops: Mapping[str, Any]) -> Engine:
    """The shared :class:`Engine` for a mapping of ops (memoised by its contents)."""
    normal = as_ops(ops)
    key = tuple(sorted(normal.items(), key=lambda kv: kv[0]))
    eng = _ENGINES.get(key)
    if eng is None:
        eng = _ENGINES[key] = Engine(normal)
        if len(_ENGINES) > 32:
            _ENGINES.popitem(last=False)
    return eng


def run(
    ops: Mapping[str, Any],
    params: PyTree,
    graph: Graph,
    schedule: Schedule,
    outputs: Sequence[int] | np.ndarray | None = None,
    layout: Any = None,
) -> PyTree:
    """Batched execution of ``schedule``; see :meth:`Engine.run`.

    ``ops`` maps op type names to per-node functions ``f(params, payload,
    *operand_states)`` or :class:`Op`; an engine is kept per ``ops`` so that
    compiled steps are reused across calls.
    """
    return engine_for(ops).run(params, graph, schedule, outputs, layout)


StepwiseEngine = Engine
"""The stepwise engine (one jitted, vmapped call per batch)."""
