"""The fused executor: a whole schedule as one XLA program.

The stepwise :class:`~edbatch_jax.engine.Engine` dispatches one jitted call
per batch; on a CPU each call costs a few hundred microseconds of runtime
overhead beyond its arithmetic, which dominates the many narrow batches of a
tree or lattice schedule. :class:`FusedEngine` runs the same plan as a single
program: a ``lax.while_loop`` over *chunks*, each a ``lax.switch`` over
*branches*, one branch per (op type, lane bucket). The schedule is data — an
int32 descriptor table and a flat index array — so mini-batches of any shape
reuse one executable:

* descriptor row (int32 ``[D]``): branch, first output row, valid lanes,
  payload offset, segment offset, one index offset per operand;
* ``flat_idx`` (int32 ``[M]``): the operand rows of every chunk (slices are
  expanded to rows), and the segment ids of variable-arity chunks;
* ``payloads``: per op type, the payload rows of every chunk, concatenated.

The tables are built from the plan's whole-schedule rows
(:class:`~edbatch_jax.engine.rows.ScheduleRows`) with array operations; no
per-batch object is made unless ``plan.steps`` is asked for.

A batch wider than ``max_lanes`` runs as several chunks of at most
``max_lanes`` lanes (the last one bucketed), so padding waste stays below one
bucket of the remainder instead of up to half of a power of two.
With ``fine_lanes=True`` chunks are padded to a ladder twice as dense (powers
of two and 1.5x powers of two), which halves the padding at the cost of twice
the branches.

Table lengths grow along the bucket ladder and are kept per engine, as buffer
capacities are; a program is compiled per set of branches, which grows only
when an op type (or, for variable arity, an edge bucket) is first seen: every
lane bucket of a new op type is registered at once. ``trace_count`` counts the
programs compiled (forward and backward).

Gradients: the same ``jax.custom_vjp`` as the stepwise engine, with the
reverse sweep as one program too (a reverse loop whose branches recompute
their chunk, pull its output cotangent back through ``jax.vjp``, accumulate
parameter gradients and scatter-add operand cotangents).

XLA's CPU copy insertion is asked to use region analysis
(``xla_cpu_copy_insertion_use_region_analysis``) so that branches update the
loop-carried buffers in place instead of copying them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.engine.buckets import bucket, bucket_array, fine_bucket_array, fine_ladder
from edbatch_jax.engine.executor import (
    Engine,
    ExecutionPlan,
    _assemble_grads,
    _combine,
    _mask_rows,
    _struct,
    _take_rows,
)
from edbatch_jax.engine.ops import Op

PyTree = Any

__all__ = ["FusedEngine"]

# descriptor columns
_BRANCH, _OUT, _VALID, _PAY, _SEG, _IDX = range(6)

_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


@dataclasses.dataclass(frozen=True)
class FusedTables:
    """Device arrays of one fused plan.

    Attributes:
      desc: int32 ``[S, D]`` descriptor rows (``S`` bucketed, rows past
        ``num_chunks`` unused).
      num_chunks: int32 scalar, the chunks to run.
      flat_idx: int32 ``[M]`` operand rows and segment ids (``M`` bucketed).
      payloads: op type name -> payload pytree, leaves ``[P, ...]``.
      branches: the engine's branch keys this plan uses (for inspection).
    """

    desc: jax.Array
    num_chunks: jax.Array
    flat_idx: jax.Array
    payloads: dict
    branches: tuple


def _ramp(counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(c) for c in counts])``, vectorised."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


class FusedEngine(Engine):
    """An :class:`Engine` that runs each schedule as one XLA program.

    Same interface and results as the stepwise engine (``plan``, ``execute``,
    ``run``; values and gradients equal to unbatched execution). Not
    jittable from outside in a useful way: the program is already compiled
    once per branch set and reused across mini-batches.

    Args:
      ops: op type name -> :class:`Op` or per-node function.
      max_lanes: widest chunk (a power of two); wider batches run as several
        chunks.
      min_capacity: smallest buffer capacity.
      fine_lanes: pad chunks to the ladder 1, 2, 3, 4, 6, 8, 12, ... (powers
        of two and 1.5x powers of two) instead of powers of two: about half the
        padding, almost twice the branches. Measured 1.13-1.19x faster on
        the Tree-LSTM at batch 64, inference and training, with 1.5-1.8x the
        compilation time; on lattices 1.11x in inference, none in training,
        with 2-2.6x the compilation time (see docs/benchmarks_engines.md).
    """

    def __init__(self, ops: Mapping[str, Op | Any], *, max_lanes: int = 512, min_capacity: int = 64,
                 plan_cache_size: int = 16, fine_lanes: bool = False):
        super().__init__(ops, min_capacity=min_capacity, plan_cache_size=plan_cache_size)
        if max_lanes < 1 or max_lanes & (max_lanes - 1):
            raise ValueError(f"max_lanes must be a power of two, got {max_lanes}")
        self.max_lanes = int(max_lanes)
        self.fine_lanes = bool(fine_lanes)
        self._branches: dict[tuple, int] = {}  # branch key -> index in the program's switch
        self._families: set[tuple] = set()
        self._lengths: dict[Any, int] = {}  # table name -> bucketed length (grows, kept)
        self._programs: dict[tuple, tuple] = {}
        self._payload_structs: dict[str, PyTree] = {}  # op -> ShapeDtypeStruct per payload leaf (no row axis)
        self._max_operands = max([1] + [o.arity or 0 for o in self.ops.values() if not o.variadic])

    @property
    def branch_keys(self) -> tuple:
        """``(op, out buffer, operand buffers, has payload, lanes, edge rows)`` of every branch, in switch order."""
        return tuple(sorted(self._branches, key=self._branches.get))

    # ------------------------------------------------------------------ planning
    def _register(self, family: tuple, lanes: int, erows: int | None) -> int:
        """Branch index of ``family`` (op, out buffer, operand buffers, payload?) at a lane bucket."""
        if family not in self._families and erows is None:  # a new op type: all its lane buckets at once
            self._families.add(family)
            for lane in (fine_ladder(self.max_lanes) if self.fine_lanes else
                         [1 << k for k in range(self.max_lanes.bit_length())]):
                self._branches.setdefault(family + (lane, None), len(self._branches))
        return self._branches.setdefault(family + (lanes, erows), len(self._branches))

    def _length(self, name: Any, n: int) -> int:
        """Bucketed table length, at least the widest slice any branch takes of it."""
        widest = max([self.max_lanes] + [k[5] for k in self._branches if k[5] is not None])
        size = max(self._lengths.get(name, 0), bucket(max(n, widest)))
        self._lengths[name] = size
        return size

    def _build_plan(self, params, params_sig, graph, schedule, layout=None) -> ExecutionPlan:
        plan = self._plan_rows(params, params_sig, graph, schedule, layout, device=False)
        rows = plan.rows
        var_c, chunk_ptr, chunk_batch, c0, valid, lanes, erows = self._chunk_arrays(rows)
        chunk_type = rows.batch_type[chunk_batch]

        # --- branch of every chunk: registered in order of first use (as the schedule meets them)
        operand_buffers = rows.type_operand_buffers()
        combo = (chunk_type.astype(np.int64) * (int(lanes.max()) + 1) + lanes) * (int(erows.max()) + 1) + erows
        _, first, inverse = np.unique(combo, return_index=True, return_inverse=True)
        branch_of = np.zeros(first.shape[0], np.int32)
        for u in np.argsort(first, kind="stable"):
            c = first[u]
            t, lane, er = int(chunk_type[c]), int(lanes[c]), int(erows[c])
            out_buffer = int(rows.out_buffer[chunk_batch[c]])
            family = (graph.op_types[t], out_buffer, operand_buffers[t], graph.payloads[t] is not None)
            branch_of[u] = self._register(family, lane, er if var_c[c] else None)
        branch = branch_of[inverse.reshape(-1)]

        # --- descriptor rows and the flat index array: per chunk its segment ids, then one run per operand
        k_ops = self._max_operands
        num_ops = np.where(var_c, 1, rows.arity[chunk_type])
        run = np.where(var_c, erows, lanes)
        seg_len = np.where(var_c, erows, 0)
        length = seg_len + num_ops * run
        start = np.cumsum(length) - length
        num_chunks = chunk_batch.shape[0]
        desc = np.zeros((self._length("desc", num_chunks), _IDX + k_ops), np.int32)
        desc[:num_chunks, _BRANCH] = branch
        desc[:num_chunks, _OUT] = rows.offset[chunk_batch] + c0
        desc[:num_chunks, _VALID] = valid
        desc[:num_chunks, _SEG] = np.where(var_c, start, 0)
        for j in range(k_ops):
            desc[:num_chunks, _IDX + j] = np.where(j < num_ops, start + seg_len + j * run, 0)
        flat_idx = np.zeros(self._length("flat", int(length.sum())), np.int32)
        vc = np.flatnonzero(var_c)  # segment ids past the real arguments: the out-of-range lane, dropped
        fill = np.repeat(start[vc], erows[vc]) + _ramp(erows[vc])
        flat_idx[fill] = np.repeat(lanes[vc], erows[vc])
        edge_batch = np.repeat(np.arange(rows.num_batches), np.diff(rows.edge_ptr))
        local = np.arange(rows.edge_rows.shape[0]) - rows.edge_ptr[edge_batch]
        e_var = rows.variadic[rows.batch_type[edge_batch]]
        a = np.maximum(rows.arity[rows.batch_type[edge_batch]], 1)
        lane, j = np.where(e_var, 0, local // a), np.where(e_var, 0, local % a)
        chunk = chunk_ptr[edge_batch] + lane // self.max_lanes
        pos = np.where(e_var, start[chunk] + erows[chunk] + local, start[chunk] + j * lanes[chunk] + lane % self.max_lanes)
        flat_idx[pos] = rows.edge_rows
        ve = np.flatnonzero(e_var)
        flat_idx[start[chunk[ve]] + local[ve]] = rows.edge_lane[ve]

        # --- payload rows per op type, chunk after chunk (padding lanes repeat the batch's first lane)
        payloads = {}
        for t in np.unique(chunk_type).tolist():
            tree = graph.payloads[t]
            if tree is None:
                continue
            name = graph.op_types[t]
            sel = np.flatnonzero(chunk_type == t)
            at = np.cumsum(lanes[sel]) - lanes[sel]
            desc[sel, _PAY] = at
            ramp = _ramp(lanes[sel])
            lane = np.where(ramp < np.repeat(valid[sel], lanes[sel]), np.repeat(c0[sel], lanes[sel]) + ramp, 0)
            nodes = rows.lane_nodes[np.repeat(rows.batch_ptr[chunk_batch[sel]], lanes[sel]) + lane]
            prow = np.zeros(self._length(("payload", name), int(lanes[sel].sum())), np.int64)
            prow[: nodes.shape[0]] = graph.payload_row[nodes]
            payloads[name] = jax.tree.map(lambda x: np.asarray(x)[prow], tree)
            self._payload_structs[name] = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
        tables = FusedTables(
            *jax.device_put((desc, np.int32(num_chunks), flat_idx, payloads)),
            branches=tuple(np.unique(branch).tolist()),
        )
        return dataclasses.replace(plan, tables=tables)

    def _chunk_arrays(self, rows) -> tuple[np.ndarray, ...]:
        """Chunks of every batch: ``(variable arity?, batch's first chunk, batch, first lane, valid lanes, lanes,
        edge rows)``; all int64 ``[chunks]`` but the batch's first chunk, ``[B]``.

        A fixed-arity batch runs as chunks of at most ``max_lanes`` lanes (each
        bucketed); a variable-arity batch as one chunk whose operand rows are
        its arguments (bucketed: ``edge rows``, 0 for fixed arity).
        """
        var_b = rows.variadic[rows.batch_type]
        per = np.where(var_b, 1, -(-rows.width // self.max_lanes))
        chunk_batch = np.repeat(np.arange(rows.num_batches), per)
        var_c = var_b[chunk_batch]
        c0 = np.where(var_c, 0, _ramp(per) * self.max_lanes)
        width = rows.width[chunk_batch]
        valid = np.where(var_c, width, np.minimum(self.max_lanes, width - c0))
        lanes = fine_bucket_array(valid) if self.fine_lanes else bucket_array(valid)
        erows = np.where(var_c, bucket_array(np.diff(rows.edge_ptr)[chunk_batch]), 0)
        return var_c, np.cumsum(per) - per, chunk_batch, c0, valid, lanes, erows

    def _full_payloads(self, payloads: dict) -> dict:
        """``payloads`` plus zero tables for registered op types this plan does not run."""
        out = {}
        for name, structs in self._payload_structs.items():
            p_len = self._lengths[("payload", name)]
            if name not in payloads:
                out[name] = jax.tree.map(lambda sd: jnp.zeros((p_len,) + sd.shape, sd.dtype), structs)
            else:
                out[name] = jax.tree.map(
                    lambda a: a if a.shape[0] == p_len else jnp.concatenate([a, jnp.zeros((p_len - a.shape[0],) + a.shape[1:], a.dtype)]),
                    payloads[name],
                )
        return out

    def _pad_tables(self, tables: FusedTables):
        """Tables padded to the engine's current lengths (they only grow)."""
        desc, flat_idx = tables.desc, tables.flat_idx
        if desc.shape[0] < self._lengths["desc"]:
            desc = jnp.concatenate([desc, jnp.zeros((self._lengths["desc"] - desc.shape[0], desc.shape[1]), desc.dtype)])
        if flat_idx.shape[0] < self._lengths["flat"]:
            flat_idx = jnp.concatenate([flat_idx, jnp.zeros(self._lengths["flat"] - flat_idx.shape[0], flat_idx.dtype)])
        return desc, tables.num_chunks, flat_idx, self._full_payloads(tables.payloads)

    # ------------------------------------------------------------------ programs
    def _program(self, plan: ExecutionPlan):
        keys = self.branch_keys
        pkey = (keys, plan.signatures, plan.capacities)
        prog = self._programs.get(pkey)
        if prog is None:
            prog = self._programs[pkey] = (self._make_forward(keys, plan), self._make_backward(keys, plan))
        return prog

    def _branch_inputs(self, key, d, bufs, flat_idx, payloads):
        name, out_b, in_bufs, has_payload, lanes, erows = key
        rows = lanes if erows is None else erows
        mask = jnp.arange(lanes) < d[_VALID]
        payload = None
        if has_payload:
            payload = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, d[_PAY], lanes, 0), payloads[name])
        segments = None if erows is None else jax.lax.dynamic_slice_in_dim(flat_idx, d[_SEG], erows, 0)
        gathered = [
            _take_rows(bufs[b], jax.lax.dynamic_slice_in_dim(flat_idx, d[_IDX + j], rows, 0))
            for j, b in enumerate(in_bufs)
        ]
        return mask, payload, segments, gathered

    def _make_forward(self, keys: tuple, plan: ExecutionPlan):
        signatures, capacities = plan.signatures, plan.capacities

        def branch(key):
            op = self.ops[key[0]]
            if key[4] > capacities[key[1]]:  # wider than its output buffer: no chunk can select it
                return lambda params, d, bufs, flat_idx, payloads: bufs

            def run(params, d, bufs, flat_idx, payloads):
                mask, payload, segments, gathered = self._branch_inputs(key, d, bufs, flat_idx, payloads)
                y = _combine(op, op.select_params(params), payload, gathered, segments, mask)

                def write(b, v):
                    old = jax.lax.dynamic_slice_in_dim(b, d[_OUT], v.shape[0], 0)
                    keep = mask.reshape((-1,) + (1,) * (v.ndim - 1))
                    return jax.lax.dynamic_update_slice_in_dim(b, jnp.where(keep, v.astype(b.dtype), old), d[_OUT], 0)

                bufs = list(bufs)
                bufs[key[1]] = jax.tree.map(write, bufs[key[1]], y)
                return tuple(bufs)

            return run

        branches = [branch(k) for k in keys]

        def forward(params, desc, num_chunks, flat_idx, payloads):
            self.trace_count += 1
            bufs = tuple(
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _struct(sig, (cap,)))
                for sig, cap in zip(signatures, capacities)
            )

            def body(i, bufs):
                d = desc[i]
                return jax.lax.switch(d[_BRANCH], branches, params, d, bufs, flat_idx, payloads)

            return jax.lax.fori_loop(0, num_chunks, body, bufs)

        return jax.jit(forward, compiler_options=_COMPILER_OPTIONS)

    def _make_backward(self, keys: tuple, plan: ExecutionPlan):
        grad_keys = tuple(dict.fromkeys(self.ops[k[0]].params_key for k in keys))
        owner = {self.ops[k[0]].params_key: self.ops[k[0]] for k in keys}

        def branch(key):
            op = self.ops[key[0]]
            slot = grad_keys.index(op.params_key)
            if key[4] > plan.capacities[key[1]]:  # wider than its output buffer: no chunk can select it
                return lambda params, d, carry, bufs, flat_idx, payloads: carry

            def run(params, d, carry, bufs, flat_idx, payloads):
                ct_bufs, accs = carry
                mask, payload, segments, gathered = self._branch_inputs(key, d, bufs, flat_idx, payloads)
                lanes = mask.shape[0]
                out_b, in_bufs = key[1], key[2]
                ct_out = jax.tree.map(lambda c: jax.lax.dynamic_slice_in_dim(c, d[_OUT], lanes, 0), ct_bufs[out_b])
                ct_out = _mask_rows(ct_out, mask)
                _, pullback = jax.vjp(
                    lambda p, g: _combine(op, p, payload, g, segments, mask), op.select_params(params), gathered
                )
                g_params, g_operands = pullback(ct_out)
                accs = list(accs)
                accs[slot] = jax.tree.map(jnp.add, accs[slot], g_params)
                ct_bufs = list(ct_bufs)
                rows = lanes if key[5] is None else key[5]
                for j, (b, g) in enumerate(zip(in_bufs, g_operands)):
                    idx = jax.lax.dynamic_slice_in_dim(flat_idx, d[_IDX + j], rows, 0)
                    ct_bufs[b] = jax.tree.map(lambda c, x: c.at[idx].add(x.astype(c.dtype)), ct_bufs[b], g)
                return tuple(ct_bufs), tuple(accs)

            return run

        branches = [branch(k) for k in keys]

        def backward(params, bufs, ct_bufs, desc, num_chunks, flat_idx, payloads):
            self.trace_count += 1
            ct_bufs = tuple(  # a buffer no loss reads: its zero cotangents are made here, not passed in
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _struct(sig, (cap,))) if c is None else c
                for c, sig, cap in zip(ct_bufs, plan.signatures, plan.capacities)
            )
            accs = tuple(jax.tree.map(jnp.zeros_like, owner[k].select_params(params)) for k in grad_keys)

            def body(j, carry):
                d = desc[num_chunks - 1 - j]
                fns = [lambda d, c, f=f: f(params, d, c, bufs, flat_idx, payloads) for f in branches]
                return jax.lax.switch(d[_BRANCH], fns, d, carry)

            _, accs = jax.lax.fori_loop(0, num_chunks, body, (tuple(ct_bufs), accs))
            return _assemble_grads(params, dict(zip(grad_keys, accs)))  # in the program: no eager adds

        return jax.jit(backward, compiler_options=_COMPILER_OPTIONS)

    # ------------------------------------------------------------------ execution
    def _forward(self, plan: ExecutionPlan, params) -> tuple:
        forward = self._program(plan)[0]
        return forward(params, *self._pad_tables(plan.tables))

    def _backward(self, plan: ExecutionPlan, params, bufs: tuple, ct_bufs: tuple, owned: bool = False):
        del owned  # the program copies the cotangents it updates (an XLA copy); none is donated
        backward = self._program(plan)[1]
        return backward(params, tuple(bufs), tuple(ct_bufs), *self._pad_tables(plan.tables))
