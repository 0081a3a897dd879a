"""The fused engine: a whole schedule as one XLA program.

The stepwise :class:`~edbatch_jax.engine.stepwise.StepwiseEngine` dispatches one jitted call
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

The int32 tables of a plan, int32 payloads (word ids, labels) among them, go to
the device packed into one array (other payloads beside it, one transfer per
plan instead of one per table), at the engine's current table lengths; the
programs unpack it with static slices.

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
reverse sweep as one program too (a reverse loop whose branches pull their
chunk's output cotangent back through ``jax.vjp`` and scatter-add operand
cotangents). For training, the forward program also stores, per op type and
lane, the intermediate values a ``jax.checkpoint`` policy names
(``save_residuals``; by default the outputs of matrix products), so that the
backward program does not recompute them; what is not stored is recomputed
there. The parameter gradients of a fixed-arity op type with stored residuals
are computed after the loop, in one pass over all its lanes (blocks of
``max_lanes``), so that the weight-gradient matrix products contract over many
lanes; variable-arity op types accumulate them chunk by chunk.

XLA's CPU copy insertion is asked to use region analysis
(``xla_cpu_copy_insertion_use_region_analysis``) so that branches update the
loop-carried buffers in place instead of copying them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from edbatch_jax.engine.base import Engine, PendingGrads
from edbatch_jax.engine.buckets import bucket, fine_ladder
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
    placement,
    read_rows,
    scope,
    signature_struct,
    state_signature,
    take_rows,
    write_rows,
    zero_buffer,
    zero_unless,
    zeros_of,
)
from edbatch_jax.engine.kernels import chunks, fill_operand_index, fill_type_lanes
from edbatch_jax.engine.ops import Op, OpError
from edbatch_jax.engine.stepwise import ExecutionPlan
from edbatch_jax.graph import Graph
from edbatch_jax.layout.planner import LayoutPlan
from edbatch_jax.scheduling.schedule import Schedule

__all__ = ["FusedEngine", "FusedPlan", "FusedTables"]

# descriptor columns
_BRANCH, _OUT, _VALID, _PAY, _SEG, _IDX = range(6)

_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


@dataclasses.dataclass(frozen=True)
class FusedTables:
    """The tables of one fused plan (host NumPy arrays) and their device copy.

    Attributes:
      desc: int32 ``[S, D]`` descriptor rows (``S`` bucketed, rows past
        ``num_chunks`` unused).
      num_chunks: the chunks to run.
      flat_idx: int32 ``[M]`` operand rows and segment ids (``M`` bucketed).
      payloads: op type name -> payload pytree, leaves ``[P, ...]``.
      branches: the engine's branch keys this plan uses (for inspection).
      lane_rows: fixed-arity op type name -> ``(count, rows)``: lanes used,
        int32 ``[P, 2 + arity]`` per lane (in payload row order) valid (0/1),
        output row, operand rows; the backward program's parameter-gradient
        pass reads them.
      packed: table layout -> ``(ints, payloads)`` on the device: every int32
        table in one array (see ``FusedEngine._table_layout``) and the
        payloads, padded to the engine's lengths when they were put there
        (the current layout only; made again if the engine's tables grew).
    """

    desc: np.ndarray
    num_chunks: int
    flat_idx: np.ndarray
    payloads: dict
    branches: tuple
    lane_rows: dict = dataclasses.field(default_factory=dict)
    packed: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def ints(self) -> jax.Array:
        """The packed int32 tables on the device (int32 ``[I]``)."""
        return next(iter(self.packed.values()))[0]


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
class FusedPlan(ExecutionPlan):
    """The plan of a :class:`FusedEngine`: an :class:`~edbatch_jax.engine.stepwise.ExecutionPlan` and its tables.

    Its :attr:`steps` are cut only when asked for (their index arrays stay
    on the host: the fused programs read :attr:`tables`).

    Attributes:
      tables: the descriptor, index and payload tables the fused programs
        run (:class:`FusedTables`, with their device copy).
    """

    tables: FusedTables


class FusedEngine(Engine):
    """An :class:`~edbatch_jax.engine.base.Engine` that runs each schedule as one XLA program.

    Same interface and results as the stepwise engine (``plan``, ``execute``,
    ``run``; values and gradients equal to unbatched execution). Works under
    an outer ``jax.jit`` (its programs are then inlined into the caller's,
    which compiles once per schedule), but gains nothing from it: the
    programs are already compiled once per branch set and reused across
    mini-batches.

    Args:
      ops: op type name -> :class:`Op` or per-node function.
      max_lanes: widest chunk (a power of two); wider batches run as several
        chunks.
      min_capacity: smallest buffer capacity.
      save_residuals: a ``jax.checkpoint`` policy (``jax.checkpoint_policies``)
        naming the intermediate values of each batched op call that the
        training forward program stores for the backward program (one row per
        lane, per op type); the rest is recomputed in the backward program.
        ``None`` stores nothing: the backward program recomputes each chunk's
        forward, as the stepwise engine does. Values and gradients are the
        same either way.
      fine_lanes: pad chunks to the ladder 1, 2, 3, 4, 6, 8, 12, ... (powers
        of two and 1.5x powers of two) instead of powers of two: about half the
        padding, almost twice the branches. Measured 1.13-1.19x faster on
        the Tree-LSTM at batch 64, inference and training, with 1.5-1.8x the
        compilation time; on lattices 1.11x in inference, none in training,
        with 2-2.6x the compilation time (see docs/benchmarks_engines.md).
    """

    def __init__(
        self,
        ops: Mapping[str, Op | Any],
        *,
        max_lanes: int = 512,
        min_capacity: int = 64,
        plan_cache_size: int = 16,
        fine_lanes: bool = False,
        save_residuals: Any = jax.checkpoint_policies.dots_saveable,
        checks: bool = False,
    ):
        super().__init__(ops, min_capacity=min_capacity, plan_cache_size=plan_cache_size, checks=checks)
        if max_lanes < 1 or max_lanes & (max_lanes - 1):
            raise ValueError(f"max_lanes must be a power of two, got {max_lanes}")
        self.max_lanes = int(max_lanes)
        self.fine_lanes = bool(fine_lanes)
        if save_residuals is not None and not callable(save_residuals):
            raise TypeError(
                f"save_residuals must be a jax.checkpoint policy (e.g. jax.checkpoint_policies.dots_saveable)"
                f" or None, got {save_residuals!r}"
            )
        self.save_residuals = save_residuals
        self._saved_layouts: dict[
            tuple, tuple
        ] = {}  # (op, draws) -> ((residual index, lane axis, one lane's struct), ...)
        self._spare_saved: dict = {}  # residual tables handed back after a backward pass, by shapes
        self._branches: dict[tuple, int] = {}  # branch key -> index in the program's switch
        self._branch_keys: tuple = ()  # the keys in switch order (branch_keys)
        self._lengths: dict[Any, int] = {}  # table name -> bucketed length (grows, kept)
        self._programs: dict[tuple, tuple] = {}
        self._payload_structs: dict[str, PyTree] = {}  # op -> ShapeDtypeStruct per payload leaf (no row axis)
        self._layout: tuple = ((), ())  # the packed tables' layout at the current lengths (_table_layout)
        self._max_operands = max([1] + [o.arity or 0 for o in self.ops.values() if not o.variadic])
        self._widest = self.max_lanes  # the widest slice any branch takes of a table: lanes, or edge rows
        self._entry_sizes: dict[tuple, list[int]] = {}  # table layout -> int32 entries of each of its tables
        self._layout_key: tuple | None = None  # what self._layout was made for (_build_plan)
        self._family_ids: dict[tuple, int] = {}  # (op, out buffer, operand buffers, payload?, signatures) -> id
        self._branch_ids: dict[tuple, int] = {}  # (family id, lanes, edge rows) -> branch index (_register's)
        self._laddered: set[int] = set()  # family ids whose fixed-arity lane buckets are all registered

    @property
    def branch_keys(self) -> tuple:
        """``(op, out buffer, operand buffers, has payload, lanes, edge rows, buffer signatures)`` of every branch,
        in switch order (the signatures: of the out buffer and of each operand buffer when it was registered)."""
        if len(self._branch_keys) != len(self._branches):  # branches registered since: sort again
            self._branch_keys = tuple(sorted(self._branches, key=self._branches.get))
        return self._branch_keys

    # ------------------------------------------------------------------ planning
    def _register(self, fid: int, family: tuple, lanes: int, erows: int | None, sigs: tuple) -> int:
        """Branch index of ``family`` (op, out buffer, operand buffers, payload?) at a lane bucket; ``sigs``: the
        signatures of its out buffer and operand buffers in the plan registering it; ``fid``: the id of
        ``family + (sigs,)`` in ``_family_ids``."""
        if erows is None and fid not in self._laddered:  # a new op type: all its lane buckets at once
            self._laddered.add(fid)
            for lane in (
                fine_ladder(self.max_lanes) if self.fine_lanes else [1 << k for k in range(self.max_lanes.bit_length())]
            ):
                self._branches.setdefault(family + (lane, None, sigs), len(self._branches))
        if erows is not None:
            self._widest = max(self._widest, erows)
        return self._branches.setdefault(family + (lanes, erows, sigs), len(self._branches))

    def _length(self, name: Any, n: int) -> int:
        """Bucketed table length, at least the widest slice any branch takes of it."""
        size = max(self._lengths.get(name, 0), bucket(max(n, self._widest)))
        self._lengths[name] = size
        return size

    def _build_plan(
        self,
        params: PyTree,
        params_sig: tuple,
        graph: Graph,
        schedule: Schedule,
        layout: LayoutPlan | Literal["gather"] | None,
    ) -> FusedPlan:
        for name, tree in zip(graph.op_types, graph.payloads):  # checked before anything is registered
            known = self._payload_structs.get(name)
            if tree is None or known is None:
                continue
            struct = _row_struct(tree)
            if not _same_structs(known, struct):
                raise OpError(
                    f"op {name!r}: this graph's payloads are {struct}, but this engine's programs were "
                    f"made for {known}; one op type keeps one payload structure (leaf shapes and dtypes)"
                )
        buffers = self._plan_buffers(params, params_sig, graph, schedule, layout)
        rows = buffers.rows
        var_c, chunk_ptr, chunk_batch, c0, valid, lanes, erows = self._chunk_arrays(rows)
        chunk_type = rows.batch_type[chunk_batch]

        # --- branch of every chunk: registered in order of first use (as the schedule meets them)
        operand_buffers = rows.type_operand_buffers()
        combo = (chunk_type.astype(np.int64) * (int(lanes.max()) + 1) + lanes) * (int(erows.max()) + 1) + erows
        _, first, inverse = np.unique(combo, return_index=True, return_inverse=True)
        branch_of = np.zeros(first.shape[0], np.int32)
        seen = np.argsort(first, kind="stable")
        c = first[seen]
        families: dict[int, tuple] = {}  # op type -> (family, signatures, family id), once per plan
        for u, t, lane, er, var, out_buffer in zip(
            seen.tolist(),
            chunk_type[c].tolist(),
            lanes[c].tolist(),
            erows[c].tolist(),
            var_c[c].tolist(),
            rows.out_buffer[chunk_batch[c]].tolist(),
        ):
            fam = families.get(t)
            if fam is None:  # (a type writes one buffer: the family depends on the type alone)
                family = (graph.op_types[t], out_buffer, operand_buffers[t], graph.payloads[t] is not None)
                sigs = (buffers.signatures[out_buffer], tuple(buffers.signatures[b] for b in operand_buffers[t]))
                fid = self._family_ids.setdefault(family + (sigs,), len(self._family_ids))
                fam = families[t] = (family, sigs, fid)
            key = (fam[2], lane, er if var else None)  # small ints: hashed without the nested signatures
            b = self._branch_ids.get(key)
            if b is None:
                b = self._branch_ids[key] = self._register(fam[2], fam[0], lane, key[2], fam[1])
            branch_of[u] = b
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
        fill_operand_index(
            flat_idx,
            start,
            erows,
            lanes,
            chunk_ptr,
            rows.edge_ptr,
            rows.edge_rows,
            rows.edge_lane,
            rows.batch_type,
            np.asarray(rows.variadic, np.bool_),
            np.asarray(rows.arity, np.int64),
            self.max_lanes,
        )

        # --- rows of every chunk within its op type, chunk after chunk: its payload rows (padding lanes repeat
        # the batch's first lane), the rows of the residuals it stores for the backward program and, for fixed
        # arity, every lane's validity, output row and operand rows (the backward program's parameter pass)
        payloads, lane_rows = {}, {}
        no_table, no_prow = np.zeros((0, 2), np.int32), np.zeros(0, np.int64)
        for t in np.unique(chunk_type).tolist():
            name = graph.op_types[t]
            sel = np.flatnonzero(chunk_type == t)
            used = int(lanes[sel].sum())
            type_rows = self._length(("rows", name), used)
            fixed, tree = not rows.variadic[t], graph.payloads[t]
            arity = int(rows.arity[t]) if fixed else 0
            table = np.zeros((type_rows, 2 + arity), np.int32) if fixed else no_table
            prow = np.zeros(type_rows, np.int64) if tree is not None else no_prow
            fill_type_lanes(
                sel,
                lanes,
                valid,
                c0,
                start,
                chunk_batch,
                desc,
                _OUT,
                _PAY,
                flat_idx,
                rows.batch_ptr,
                rows.lane_nodes,
                graph.payload_row,
                arity,
                table,
                prow,
            )
            if fixed:
                lane_rows[name] = (np.int32(used), table)
            if tree is None:
                continue
            payloads[name] = jax.tree.map(lambda x: np.asarray(x)[prow], tree)
            if name not in self._payload_structs:  # (a known structure was checked above)
                self._payload_structs[name] = _row_struct(tree)
        tables = FusedTables(desc, num_chunks, flat_idx, payloads, tuple(np.unique(branch).tolist()), lane_rows)
        # (what the layout depends on only grows: branches, payload structures and table lengths)
        key = (len(self._branches), len(self._payload_structs), tuple(self._lengths.items()))
        if key != self._layout_key:
            self._layout, self._layout_key = self._table_layout(), key
        self._device_tables(tables)  # on the (default) device now: a plan is made ahead of its execution
        return FusedPlan.from_buffers(buffers, graph, steps_on_device=False, tables=tables)

    def _chunk_arrays(self, rows) -> tuple[np.ndarray, ...]:
        """Chunks of every batch: ``(variable arity?, batch's first chunk, batch, first lane, valid lanes, lanes,
        edge rows)``; all int64 ``[chunks]`` but the batch's first chunk, ``[B]``.

        A fixed-arity batch runs as chunks of at most ``max_lanes`` lanes (each
        bucketed); a variable-arity batch as one chunk whose operand rows are
        its arguments (bucketed: ``edge rows``, 0 for fixed arity).
        """
        return chunks(
            rows.batch_type, rows.width, rows.edge_ptr, rows.variadic, self.max_lanes, bool(self.fine_lanes)
        )  # (one compiled pass)

    def _table_layout(self) -> tuple[tuple, tuple]:
        """``(((entry, shape), ...), ((name, rows), ...))``: the int32 tables at the engine's current lengths, in
        packing order (descriptor rows, chunk count, flat index, then per registered fixed-arity op type its lane
        count and lane rows, then the leaves of every payload whose leaves are all int32: entry
        ``("payload", name, leaf index)``), and the payload rows of every other registered op type with payloads."""
        names = dict.fromkeys(k[0] for k in self.branch_keys)
        entries = [
            ("desc", (self._lengths["desc"], _IDX + self._max_operands)),
            ("num_chunks", ()),
            ("flat", (self._lengths["flat"],)),
        ]
        for name in names:
            if not self.ops[name].variadic:
                entries += [
                    (("count", name), ()),
                    (("lanes", name), (self._lengths[("rows", name)], 2 + self.ops[name].arity)),
                ]
        separate = []
        for name, struct in self._payload_structs.items():
            rows, leaves = self._lengths[("rows", name)], jax.tree.leaves(struct)
            if all(sd.dtype == np.int32 for sd in leaves):
                entries += [(("payload", name, i), (rows,) + sd.shape) for i, sd in enumerate(leaves)]
            else:
                separate.append((name, rows))
        return tuple(entries), tuple(separate)

    def _packed_payloads(self, tables: dict, payloads: dict) -> dict:
        """``payloads`` with the payloads packed among the int32 tables (``tables``, as ``_unpack`` gives them)
        rebuilt as their pytrees (jittable)."""
        leaves: dict[str, list] = {}
        for entry in tables:
            if isinstance(entry, tuple) and entry[0] == "payload":
                leaves.setdefault(entry[1], []).append(tables[entry])
        return {
            **payloads,
            **{
                name: jax.tree.unflatten(jax.tree.structure(self._payload_structs[name]), ls)
                for name, ls in leaves.items()
            },
        }

    def _device_tables(self, tables: FusedTables) -> tuple[jax.Array, dict]:
        """``(ints, payloads)`` of ``tables`` at the engine's current lengths, on the plan's device: the int32
        tables and int32 payloads packed into one array (int32 ``[I]``), the other payloads of every registered op
        type (zeros for those the plan does not run). Packed once per layout; not jittable."""
        layout = self._layout
        hit = tables.packed.get(layout)
        if hit is None:
            before = next(iter(tables.packed.values()), (None,))[0]
            host = {"desc": tables.desc, "num_chunks": tables.num_chunks, "flat": tables.flat_idx}
            for name, (count, rows) in tables.lane_rows.items():
                host[("count", name)], host[("lanes", name)] = count, rows
            for name, tree in tables.payloads.items():
                host.update({("payload", name, i): leaf for i, leaf in enumerate(jax.tree.leaves(tree))})
            sizes = self._entry_sizes.get(layout)
            if sizes is None:
                sizes = self._entry_sizes[layout] = [math.prod(shape) for _, shape in layout[0]]
            packed = _aligned_zeros(sum(sizes))  # 64-byte aligned: the device can take it without a copy
            at = 0
            for (entry, shape), size in zip(layout[0], sizes):
                a = host.get(entry)
                if a is not None:  # (an op type this plan does not run has no lanes: zeros)
                    a = np.asarray(a, np.int32).reshape(-1)
                    packed[at : at + a.shape[0]] = a  # rows past the array's own stay zero (padding)
                at += size
            payloads = {}
            for name, rows in layout[1]:
                payloads[name] = (
                    jax.tree.map(lambda a: _pad_host(a, rows), tables.payloads[name])
                    if name in tables.payloads
                    else jax.tree.map(lambda sd: np.zeros((rows,) + sd.shape, sd.dtype), self._payload_structs[name])
                )
            hit = _put_like((packed, payloads), before)
            tables.packed.clear()
            tables.packed[layout] = hit
        return hit

    # ------------------------------------------------------------------ programs
    def _program(self, plan: FusedPlan, kind: str):
        """The jitted ``"forward"``, ``"forward_saving"``, ``"backward"`` or ``"backward_isolated"`` program of the
        current branch set."""
        keys = self.branch_keys
        pkey = (kind, keys, plan.signatures, plan.capacities, self._layout)
        prog = self._programs.get(pkey)
        if prog is None:
            if kind.startswith("backward"):
                make = functools.partial(self._make_backward, isolate=kind == "backward_isolated")
            else:
                make = functools.partial(self._make_forward, store=kind == "forward_saving")
            prog = self._programs[pkey] = make(keys, plan, self._layout[0])
        return prog

    def _branch_inputs(self, key, d, bufs, flat_idx, payloads):
        name, out_b, in_bufs, has_payload, lanes, erows = key[:6]
        rows = lanes if erows is None else erows
        mask = jnp.arange(lanes) < d[_VALID]
        payload = None
        if has_payload:
            payload = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, d[_PAY], lanes, 0), payloads[name])
        segments = None if erows is None else jax.lax.dynamic_slice_in_dim(flat_idx, d[_SEG], erows, 0)
        gathered = [
            take_rows(bufs[b], jax.lax.dynamic_slice_in_dim(flat_idx, d[_IDX + j], rows, 0))
            for j, b in enumerate(in_bufs)
        ]
        return mask, payload, segments, gathered

    def _pullback(self, op: Op, params, payload, gathered, segments, mask, rng=None):
        """``(outputs, pullback)`` of one chunk's batched op call, by ``jax.vjp``; under ``save_residuals`` the
        pullback's residuals (its pytree leaves) are the values the policy saves, the rest recomputed when it runs.
        ``rng``: the step key of a stochastic op (or ``None``)."""
        fn = lambda p, g: combine(op, p, payload, g, segments, mask, rng=rng)
        if self.save_residuals is not None:
            fn = jax.checkpoint(fn, policy=self.save_residuals)
        return jax.vjp(fn, params, gathered)

    def _saved_layout(self, key: tuple, params, signatures: tuple, rng=None) -> tuple:
        """``((residual index, lane axis, one lane's ShapeDtypeStruct), ...)``: the residuals of op ``key[0]``'s
        pullback that the training forward program stores, one row per lane (cached per op type).

        Found by tracing the pullback at two lane counts (and, for variable arity, two edge counts): a residual
        is stored if it is computed (not an input passed through: parameters, payloads and operands are at hand
        in the backward program) and exactly one of its axes follows the lane count, none the edge count.
        Whatever is not stored is recomputed by the backward program, so the layout decides speed, not values.
        A stochastic op's layout depends on whether runs draw (``rng``: a step key or ``None``).
        """
        name, _, in_bufs, has_payload, _, erows = key[:6]
        in_sigs = key[6][1]
        op, variadic = self.ops[name], erows is not None
        draws = op.stochastic and rng is not None
        cache = (name, draws, state_signature(op.select_params(params)) if op.context else None)
        if cache in self._saved_layouts:
            return self._saved_layouts[cache]
        rng_struct = jax.ShapeDtypeStruct(jnp.shape(rng), jnp.result_type(rng)) if draws else None
        sub = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), op.select_params(params))

        def trace(lanes: int, rows: int) -> list:
            payload = None
            if has_payload:
                payload = jax.tree.map(
                    lambda sd: jax.ShapeDtypeStruct((lanes,) + sd.shape, sd.dtype), self._payload_structs[name]
                )
            args = (
                sub,
                payload,
                [signature_struct(sig, (rows,)) for sig in in_sigs],
                jax.ShapeDtypeStruct((rows,), jnp.int32) if variadic else None,
                jax.ShapeDtypeStruct((lanes,), jnp.bool_),
                rng_struct,
            )
            closed = jax.make_jaxpr(lambda *a: jax.tree.leaves(self._pullback(op, *a)[1]))(*args)
            inputs = set(closed.jaxpr.invars)
            return [(isinstance(v, jax.extend.core.Var) and v in inputs, v.aval) for v in closed.jaxpr.outvars]

        base = trace(2, 4 if variadic else 2)
        wider = trace(3, 4 if variadic else 3)
        more_rows = trace(2, 6) if variadic else base
        layout = []
        if len(base) == len(wider) == len(more_rows):
            for i, ((passed, a), (_, b), (_, c)) in enumerate(zip(base, wider, more_rows)):
                if passed or a.ndim != b.ndim or a.dtype != b.dtype or a.shape != c.shape:
                    continue
                axes = [k for k, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
                if len(axes) == 1 and (a.shape[axes[0]], b.shape[axes[0]]) == (2, 3):
                    k = axes[0]
                    layout.append((i, k, jax.ShapeDtypeStruct(a.shape[:k] + a.shape[k + 1 :], a.dtype)))
        self._saved_layouts[cache] = tuple(layout)
        return self._saved_layouts[cache]

    def _make_forward(self, keys: tuple, plan: FusedPlan, layout: tuple, store: bool):
        """The forward program; with ``store`` it also fills and returns ``saved``, the residual tables of every
        op type (:meth:`_saved_layout`; donated: their contents are overwritten where read, never read first)."""
        signatures, capacities = plan.signatures, plan.capacities
        names = tuple(dict.fromkeys(k[0] for k in keys))

        def branch(key):
            op, slot = self.ops[key[0]], names.index(key[0])
            if not _fits(key, signatures) or key[4] > capacities[key[1]]:  # no chunk of this plan can select it
                return lambda params, rng, d, carry, flat_idx, payloads: carry

            def run(params, rng, d, carry, flat_idx, payloads):
                bufs, saved = carry
                mask, payload, segments, gathered = self._branch_inputs(key, d, bufs, flat_idx, payloads)
                sub = op.select_params(params)
                if store:
                    # padding lanes compute on a real lane's inputs, so that their stored residuals are finite
                    y, pullback = self._pullback(op, sub, payload, gathered, segments, mask, rng)
                    leaves, kept = jax.tree.leaves(pullback), list(saved[slot])
                    for s, i, k in _stored(self._saved_layout(key, params, signatures, rng), leaves, mask.shape[0]):
                        with scope("store"):
                            kept[s] = jax.lax.dynamic_update_slice_in_dim(
                                kept[s], jnp.moveaxis(leaves[i], k, 0), d[_PAY], 0
                            )
                    saved = saved[:slot] + (tuple(kept),) + saved[slot + 1 :]
                else:
                    y = combine(op, sub, payload, gathered, segments, mask, rng=rng)

                bufs = list(bufs)
                bufs[key[1]] = write_rows(bufs[key[1]], d[_OUT], y, mask)
                return tuple(bufs), saved

            return run

        branches = [branch(k) for k in keys]

        def forward(params, rng, ints, payloads, saved):
            self.trace_count += 1
            t = _unpack(ints, layout)
            desc, num_chunks, flat_idx = t["desc"], t["num_chunks"], t["flat"]
            payloads = self._packed_payloads(t, payloads)
            bufs = tuple(zero_buffer(sig, cap) for sig, cap in zip(signatures, capacities))

            def body(i, carry):
                d = desc[i]
                return jax.lax.switch(d[_BRANCH], branches, params, rng, d, carry, flat_idx, payloads)

            return jax.lax.fori_loop(0, num_chunks, body, (bufs, saved))

        return _jit(forward, donate_argnums=4)

    def _make_backward(self, keys: tuple, plan: FusedPlan, layout: tuple, isolate: bool = False):
        """The backward program. With ``isolate`` (:meth:`_isolate_if_needed`'s second try) every chunk
        recomputes its op call with its lanes isolated (:func:`~edbatch_jax.engine.common.combine`'s ``live``)
        and reads no stored residuals."""
        grad_keys = tuple(dict.fromkeys(self.ops[k[0]].grad_key for k in keys))
        owner = {self.ops[k[0]].grad_key: self.ops[k[0]] for k in keys}
        names = tuple(dict.fromkeys(k[0] for k in keys))
        first_key = {k[0]: k for k in reversed(keys) if _fits(k, plan.signatures)}  # of this plan's buffers

        def branch(key, deferred: frozenset, loop_keys: tuple):
            op = self.ops[key[0]]
            res_slot, defer = names.index(key[0]), key[0] in deferred
            if not _fits(key, plan.signatures) or key[4] > plan.capacities[key[1]]:  # no chunk can select it
                return lambda params, rng, d, carry, bufs, saved, flat_idx, payloads: carry

            def run(params, rng, d, carry, bufs, saved, flat_idx, payloads):
                ct_bufs, accs = carry
                mask, payload, segments, gathered = self._branch_inputs(key, d, bufs, flat_idx, payloads)
                lanes = mask.shape[0]
                out_b, in_bufs = key[1], key[2]
                ct_out = mask_rows(read_rows(ct_bufs[out_b], d[_OUT], lanes), mask)
                if isolate:  # lanes without a cotangent compute on a live lane's inputs: they add exact zeros
                    live = lanes_with_cotangent(mask, ct_out)
                    sub = op.select_params(params)
                    _, pullback = jax.vjp(
                        lambda p, g: combine(op, p, payload, g, segments, mask, live, rng), sub, gathered
                    )
                    g_params, g_operands = pullback(ct_out)
                    g_params = zero_unless(jnp.any(live), g_params)
                else:
                    pullback = self._stored_pullback(
                        key, params, payload, gathered, segments, mask, saved[res_slot], d[_PAY], plan.signatures, rng
                    )
                    g_params, g_operands = pullback(ct_out)
                if not defer:  # a deferred op's parameter gradients are left to one pass after the loop
                    accs = list(accs)
                    slot = loop_keys.index(op.grad_key)
                    with scope("accumulate"):
                        accs[slot] = jax.tree.map(jnp.add, accs[slot], g_params)
                ct_bufs = list(ct_bufs)
                rows = lanes if key[5] is None else key[5]
                for j, (b, g) in enumerate(zip(in_bufs, g_operands)):
                    idx = jax.lax.dynamic_slice_in_dim(flat_idx, d[_IDX + j], rows, 0)
                    ct_bufs[b] = add_rows(ct_bufs[b], idx, g)
                return tuple(ct_bufs), tuple(accs)

            return run

        def backward(params, rng, bufs, ct_bufs, saved, ints, payloads):
            self.trace_count += 1
            t = _unpack(ints, layout)
            desc, num_chunks, flat_idx = t["desc"], t["num_chunks"], t["flat"]
            payloads = self._packed_payloads(t, payloads)
            lane_rows = {
                e[1]: (t[("count", e[1])], t[e]) for e, _ in layout if isinstance(e, tuple) and e[0] == "lanes"
            }
            ct_bufs = tuple(  # a buffer no loss reads: its zero cotangents are made here, not passed in
                zero_buffer(sig, cap) if c is None else c
                for c, sig, cap in zip(ct_bufs, plan.signatures, plan.capacities)
            )
            saved = saved if saved is not None else tuple(() for _ in names)
            # op types whose parameter gradients wait for the end of the loop: fixed arity, with stored residuals
            deferred = frozenset(
                n
                for n, res in zip(names, saved)
                if res and n in lane_rows and n in first_key and jax.tree.leaves(self.ops[n].select_params(params))
            )
            loop_keys = tuple(
                k for k in grad_keys if any(self.ops[n].grad_key == k for n in names if n not in deferred)
            )
            accs = tuple(jax.tree.map(jnp.zeros_like, owner[k].select_params(params)) for k in loop_keys)
            branches = [branch(k, deferred, loop_keys) for k in keys]

            def body(j, carry):
                d = desc[num_chunks - 1 - j]
                fns = [lambda d, c, f=f: f(params, rng, d, c, bufs, saved, flat_idx, payloads) for f in branches]
                return jax.lax.switch(d[_BRANCH], fns, d, carry)

            ct_bufs, accs = jax.lax.fori_loop(0, num_chunks, body, (tuple(ct_bufs), accs))
            grads = dict(zip(loop_keys, accs))
            for n in names:
                if n in deferred:
                    g = self._param_grads(
                        first_key[n],
                        params,
                        bufs,
                        ct_bufs,
                        saved[names.index(n)],
                        lane_rows[n],
                        payloads,
                        plan.signatures,
                        rng,
                    )
                    key = self.ops[n].grad_key
                    grads[key] = g if key not in grads else jax.tree.map(jnp.add, grads[key], g)
            return assemble_grads(params, grads)  # in the program: no eager adds

        return _jit(backward)

    def _stored_pullback(
        self, key, params, payload, gathered, segments, mask, saved: tuple, at, signatures, rng=None, masked=False
    ):
        """The pullback of a chunk's batched op call, its stored residuals (rows ``at``, ``at + 1``, ... of
        ``saved``) put in place of their recomputation, which XLA then drops. ``masked``: rows of lanes outside
        ``mask`` read as zeros (rows this step's forward pass did not write hold an earlier step's values)."""
        op = self.ops[key[0]]
        _, pullback = self._pullback(op, op.select_params(params), payload, gathered, segments, mask, rng)
        if not saved:
            return pullback
        leaves, treedef = jax.tree.flatten(pullback)
        lanes = mask.shape[0]
        for s, i, k in _stored(self._saved_layout(key, params, signatures, rng), leaves, lanes):
            with scope("store"):
                rows = jax.lax.dynamic_slice_in_dim(saved[s], at, lanes, 0)
                if masked:
                    rows = mask_rows(rows, mask)
                leaves[i] = jnp.moveaxis(rows, 0, k)
        return jax.tree.unflatten(treedef, leaves)

    def _param_grads(self, key, params, bufs, ct_bufs, saved: tuple, lane_rows: tuple, payloads, signatures, rng):
        """Gradient of op ``key[0]``'s parameters over every lane it ran, after the reverse loop: blocks of
        ``max_lanes`` lanes, each one pullback with the stored residuals in place, so that the weight-gradient
        matrix products contract over hundreds of lanes instead of one chunk's few."""
        name, out_b, in_bufs, has_payload, _, _ = key[:6]
        count, table = lane_rows
        block = self.max_lanes

        def body(b, acc):
            at = b * block
            rows = jax.lax.dynamic_slice_in_dim(table, at, block, 0)
            mask = rows[:, 0] > 0
            payload = None
            if has_payload:
                payload = jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, at, block, 0), payloads[name])
            gathered = [take_rows(bufs[buf], rows[:, 2 + j]) for j, buf in enumerate(in_bufs)]
            ct_out = mask_rows(take_rows(ct_bufs[out_b], rows[:, 1]), mask)
            pullback = self._stored_pullback(
                key, params, payload, gathered, None, mask, saved, at, signatures, rng, masked=True
            )
            g_params, _ = pullback(ct_out)
            return jax.tree.map(jnp.add, acc, g_params)

        zeros = jax.tree.map(jnp.zeros_like, self.ops[name].select_params(params))
        return jax.lax.fori_loop(0, (count + block - 1) // block, body, zeros)

    def precompile(
        self, params, plan: FusedPlan, cotangents=None, rng=None, *, context=None, instance_context=None
    ) -> int:
        """:meth:`Engine.precompile`: the forward program (inference), or the forward program that stores
        residuals and the backward program (training), at the engine's current table lengths; the plan's tables
        are packed and put on the device now, and the zeroed residual tables of the first step allocated."""
        check_cotangents(plan, cotangents)
        rng = self._step_key(rng)
        params = self._inputs(params, context, instance_context, plan.graph.num_instances)
        ints, payloads = self._device_tables(plan.tables)
        if cotangents is None or self.save_residuals is None:
            forward = self._program(plan, "forward")
            compiled = compile_once(self._compiled, forward, params, rng, ints, payloads, self._no_saved())
            saved = None
        else:
            structs = self._saved_structs(params, plan, rng)
            spare = (structs, placement(params))
            if spare not in self._spare_saved:  # what the first forward pass would allocate
                self._spare_saved[spare] = zeros_of(structs)
            forward = self._program(plan, "forward_saving")
            compiled = compile_once(self._compiled, forward, params, rng, ints, payloads, structs)
            saved = structs
        if cotangents is None:
            return compiled
        bufs = buffer_structs(plan)
        ct_bufs = tuple(b if c else None for b, c in zip(bufs, cotangents))
        backward = self._program(plan, "backward")
        compiled += compile_once(self._compiled, backward, params, rng, bufs, ct_bufs, saved, ints, payloads)
        if self._isolate_lanes:  # the finiteness test of the gradients (same structure as params)
            compiled += compile_once(self._compiled, _all_finite, params)
        return compiled

    # ------------------------------------------------------------------ execution
    def _no_saved(self) -> tuple:
        """The forward program's residual tables when it keeps none: one empty tuple per op type."""
        return tuple(() for _ in dict.fromkeys(k[0] for k in self.branch_keys))

    def _forward(self, plan: FusedPlan, params, rng=None) -> tuple:
        forward = self._program(plan, "forward")
        return forward(params, rng, *self._device_tables(plan.tables), self._no_saved())[0]

    def _saved_structs(self, params, plan: FusedPlan, rng=None) -> tuple:
        """The residual tables at the engine's current row counts, per op type in the programs' order
        (``jax.ShapeDtypeStruct`` leaves)."""
        first_key = {k[0]: k for k in reversed(self.branch_keys)}
        return tuple(
            tuple(
                jax.ShapeDtypeStruct((self._lengths[("rows", n)],) + sd.shape, sd.dtype)
                for _, _, sd in self._saved_layout(first_key[n], params, plan.signatures, rng)
            )
            for n in dict.fromkeys(k[0] for k in self.branch_keys)
        )

    def _forward_saving(self, plan: FusedPlan, params, rng=None) -> tuple[tuple, Any]:
        if self.save_residuals is None:
            return self._forward(plan, params, rng), None
        structs = self._saved_structs(params, plan, rng)
        # the last step's tables, handed back by _backward for parameters of the same placement
        saved = self._spare_saved.pop((structs, placement(params)), None)
        if saved is None:
            saved = zeros_of(structs)
        forward = self._program(plan, "forward_saving")
        return forward(params, rng, *self._device_tables(plan.tables), saved)

    def _backward(
        self, plan: FusedPlan, params, bufs: tuple, ct_bufs: tuple, owned: bool = False, saved: Any = None, rng=None
    ):
        grads = self._backward_pending(plan, params, bufs, ct_bufs, owned, saved, rng)
        return grads.resolve(params) if isinstance(grads, PendingGrads) else grads

    @property
    def defers_gradient_test(self) -> bool:
        """:attr:`Engine.defers_gradient_test`: with lane isolation (always), the finiteness test of the
        gradients stays on the device until they are resolved."""
        return self._isolate_lanes

    def _backward_pending(
        self, plan: FusedPlan, params, bufs: tuple, ct_bufs: tuple, owned: bool = False, saved: Any = None, rng=None
    ):
        """The backward program's gradients; with concrete arrays, as :class:`PendingGrads` whose finiteness
        test is still on the device (see :meth:`_isolate_if_needed`)."""
        backward = self._program(plan, "backward")
        tables = self._device_tables(plan.tables)
        grads = backward(params, rng, tuple(bufs), tuple(ct_bufs), saved, *tables)
        if self._isolate_lanes:
            grads = self._isolate_if_needed(plan, params, bufs, ct_bufs, tables, grads, rng)
        if owned and saved:  # handed over: the next forward pass fills these tables instead of new zeroed ones
            structs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), saved)
            self._spare_saved = {(structs, placement(params)): saved}  # (it waits for this program's reads)
        return grads

    def _isolate_if_needed(self, plan: FusedPlan, params, bufs, ct_bufs, tables, grads, rng=None):
        """``grads``, or, when they are not all finite, the gradients of the backward program with every chunk's
        lanes isolated: lanes without a cotangent (padding, nodes no loss reads) add ``0 * x``, zero unless
        ``x`` is not finite (an op singular at their inputs, NaN values of an instance outside the loss); only
        then is the slower, isolating program run (compiled when first needed), so that gradients equal
        unbatched execution's. A NaN the loss does read stays NaN, as it does unbatched. Under a trace the
        choice is made by ``lax.cond``; with concrete arrays the result is a :class:`PendingGrads` (the test
        runs on the device; the host reads it when the gradients are resolved)."""
        finite = _all_finite(grads)
        bufs, ct_bufs = tuple(bufs), tuple(ct_bufs)
        if isinstance(finite, jax.core.Tracer):
            isolated = self._program(plan, "backward_isolated")
            return jax.lax.cond(finite, lambda: grads, lambda: isolated(params, rng, bufs, ct_bufs, None, *tables))

        def again(p):  # (the tables and the program at the engine's table lengths when it runs: they may grow)
            return self._program(plan, "backward_isolated")(
                p, rng, bufs, ct_bufs, None, *self._device_tables(plan.tables)
            )

        return PendingGrads(grads, finite, again)


@jax.jit
def _all_finite(tree) -> jax.Array:
    """bool scalar: whether every float leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _row_struct(tree):
    """One row of a stacked payload pytree as ``jax.ShapeDtypeStruct`` leaves."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)


def _same_structs(a, b) -> bool:
    """Whether two pytrees of ``jax.ShapeDtypeStruct`` have one structure, shapes and dtypes."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    return ta == tb and all(x.shape == y.shape and x.dtype == y.dtype for x, y in zip(la, lb))


def _aligned_zeros(size: int) -> np.ndarray:
    """int32 ``[size]`` zeros whose data starts on a 64-byte boundary."""
    raw = np.zeros(size + 16, np.int32)
    skip = (-raw.ctypes.data % 64) // 4
    return raw[skip : skip + size]


def _pad_host(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` (host, at least 1-D) with zero rows appended up to ``rows``."""
    a = np.asarray(a)
    if a.shape[0] < rows:
        a = np.concatenate([a, np.zeros((rows - a.shape[0],) + a.shape[1:], a.dtype)])
    return a


def _put_like(host, like: jax.Array | None):
    """``jax.device_put(host)`` where ``like`` is (on the default device if ``None``), committed to it only if
    ``like`` is: a re-packed plan's tables are then the same kind of program input as before (a committed input in
    place of an uncommitted one would make XLA compile the program again)."""
    if like is None:
        return jax.device_put(host)
    if like.committed:
        return jax.device_put(host, like.sharding)
    with jax.default_device(next(iter(like.devices()))):
        return jax.device_put(host)


def _fits(key: tuple, signatures: tuple) -> bool:
    """Whether branch ``key`` reads and writes buffers of a plan with buffer signatures ``signatures`` as it was
    registered to (buffers are numbered per plan: another plan's buffer ``k`` may hold another state)."""
    _, out_b, in_bufs = key[:3]
    out_sig, in_sigs = key[6]
    n = len(signatures)
    return (
        out_b < n
        and signatures[out_b] == out_sig
        and all(b < n and signatures[b] == sig for b, sig in zip(in_bufs, in_sigs))
    )


def _unpack(ints: jax.Array, layout: tuple) -> dict:
    """The int32 tables packed by ``FusedEngine._device_tables``: entry -> array of its layout shape (static
    slices of ``ints``; jittable)."""
    out, at = {}, 0
    for entry, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        out[entry] = ints[at : at + size].reshape(shape)
        at += size
    return out


def _jit(fn, **kwargs):
    """``jax.jit(fn)``: with this module's compiler options as a program of its own; inside another trace (an
    outer ``jax.jit`` or ``grad``), where compiler options are not allowed, without them."""
    top, nested = jax.jit(fn, compiler_options=_COMPILER_OPTIONS, **kwargs), jax.jit(fn, **kwargs)

    def call(*args):
        traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args))
        return (nested if traced else top)(*args)

    call.lower = top.lower  # as a jitted function has it (to inspect the compiled program)
    return call


def _stored(layout: tuple, leaves: list, lanes: int) -> list:
    """``(slot, residual index, lane axis)`` of the entries of ``layout`` that fit a chunk's residuals."""
    return [
        (s, i, k)
        for s, (i, k, sd) in enumerate(layout)
        if i < len(leaves) and leaves[i].dtype == sd.dtype and leaves[i].shape == sd.shape[:k] + (lanes,) + sd.shape[k:]
    ]
