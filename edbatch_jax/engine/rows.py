"""Whole-schedule row arrays: the host side of an execution plan, vectorised.

An execution plan gives every node's state a row of its buffer; a batch reads
its operands' rows and writes one contiguous range of rows. This module
computes, for a whole schedule at once (NumPy, and one compiled pass over the batches:
:func:`~edbatch_jax.engine.kernels.operand_rows`):
each batch's lanes in row order and its first output row, the rows of every
operand, which operand lists are consecutive (read as one slice) and which are
gathered, and the rows each buffer needs. The stepwise engine cuts these
arrays into one step per batch; the fused engine turns them into its
descriptor tables directly.

Terms: a batch of width ``w`` has ``w`` *lanes* (its nodes, ordered by row),
bucketed to ``lanes`` (a power of two). An *operand group* is what one
argument position reads across the lanes of a batch: ``w`` rows for a
fixed-arity op (one group per position), or the rows of all the batch's
arguments for a variable-arity op (one group).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from edbatch_jax.engine.kernels import batch_lanes, operand_rows
from edbatch_jax.graph import Graph
from edbatch_jax.scheduling.schedule import Schedule, ScheduleError

__all__ = ["ScheduleRows", "schedule_rows"]


@dataclasses.dataclass(frozen=True, eq=False)
class ScheduleRows:
    """Rows of every batch of a schedule (host NumPy arrays; ``B`` batches, ``G`` operand groups).

    Attributes:
      batch_type: int ``[B]``, op type of each batch.
      batch_ptr: int64 ``[B+1]``, batch ``b``'s lanes are ``lane_nodes[batch_ptr[b]:batch_ptr[b+1]]``.
      width: int64 ``[B]``, nodes per batch; ``lanes``: int64 ``[B]``, the width bucketed.
      lane_nodes: int32 ``[K]``, the scheduled nodes, each batch's in row order.
      offset: int64 ``[B]``, first output row; ``out_buffer``: int64 ``[B]``, the buffer written.
      edge_ptr: int64 ``[B+1]``, batch ``b``'s operand rows are ``edge_rows[edge_ptr[b]:edge_ptr[b+1]]``:
        lane by lane, each lane's arguments in order (for a fixed-arity op of
        arity ``a`` that is a row-major ``[width, a]`` matrix).
      edge_rows: int32 ``[E]``, the row of each argument (in its own buffer).
      edge_lane: int32 ``[E]``, the lane (within its batch) that reads it.
      group_ptr: int64 ``[B+1]``, batch ``b``'s operand groups are ``group_ptr[b]:group_ptr[b+1]``.
      group_buffer: int64 ``[G]``, the buffer a group reads.
      group_slice: bool ``[G]``, whether a group is read as one slice (its rows
        consecutive and increasing, and slices allowed).
      variadic: bool ``[T]``, per op type; ``arity``: int64 ``[T]``, operands
        per node of a fixed-arity type.
      need: int64 ``[num buffers]``, rows each buffer must have (padded
        writes and slice reads included).
      num_operands, num_gathers, gathered_bytes: operand groups, those
        gathered, and the bytes those gathers read (real rows only).
    """

    batch_type: np.ndarray
    batch_ptr: np.ndarray
    width: np.ndarray
    lanes: np.ndarray
    lane_nodes: np.ndarray
    offset: np.ndarray
    out_buffer: np.ndarray
    edge_ptr: np.ndarray
    edge_rows: np.ndarray
    edge_lane: np.ndarray
    group_ptr: np.ndarray
    group_buffer: np.ndarray
    group_slice: np.ndarray
    variadic: np.ndarray
    arity: np.ndarray
    need: np.ndarray
    num_operands: int
    num_gathers: int
    gathered_bytes: int

    @property
    def num_batches(self) -> int:
        """``B``."""
        return int(self.width.shape[0])

    def type_operand_buffers(self) -> dict[int, tuple[int, ...]]:
        """Op type -> the buffer each of its operand groups reads (from its first batch)."""
        out: dict[int, tuple[int, ...]] = {}
        types, first = np.unique(self.batch_type, return_index=True)
        for t, b in zip(types.tolist(), first.tolist()):
            out[t] = tuple(self.group_buffer[self.group_ptr[b] : self.group_ptr[b + 1]].tolist())
        return out


def schedule_rows(
    graph: Graph,
    schedule: Schedule,
    node_slot: np.ndarray,
    node_buffer: np.ndarray,
    num_buffers: int,
    variadic: np.ndarray,
    arity: np.ndarray,
    row_bytes: np.ndarray,
    allow_slices: bool = True,
) -> ScheduleRows:
    """Computes :class:`ScheduleRows` with whole-schedule array operations.

    Args:
      graph: the graph (its op arities already checked against the ops).
      schedule: a schedule of ``graph``.
      node_slot: int ``[N]``, each node's row (distinct within a buffer); each batch's rows must be
        consecutive (they are, in schedule order or in a layout plan's order).
      node_buffer: int ``[N]``, each node's buffer.
      num_buffers: number of buffers.
      variadic: bool ``[T]``; arity: int ``[T]`` (fixed-arity operand count).
      row_bytes: int ``[num_buffers]``, bytes of one row of each buffer.
      allow_slices: ``False`` gathers every operand group.

    Raises:
      ValueError: a batch's rows are not consecutive (naming the batch).

    Not jittable (host NumPy).
    """
    order = np.asarray(schedule.node_order)
    ptr = np.asarray(schedule.batch_ptr, np.int64)
    batch_type = np.asarray(schedule.batch_type)
    width = np.diff(ptr)
    # each batch's lanes in row order, first row, bucketed width and buffer, and the rows its writes need
    broken, offset, lanes, lane_nodes, out_buffer, need = batch_lanes(order, ptr, node_slot, node_buffer, num_buffers)
    if broken >= 0:
        nodes = order[ptr[broken] : ptr[broken + 1]]
        raise ScheduleError(
            f"the layout does not keep batch {broken} ({graph.op_types[batch_type[broken]]!r}) in consecutive rows "
            f"(its nodes {nodes[:8].tolist()}{' ...' if nodes.size > 8 else ''}): it was not planned for this "
            "schedule (plan it with eb.plan_layout(graph, schedule))"
        )
    # operand rows lane by lane, and operand groups: one per argument position (fixed arity), one per batch
    # (variable arity), each read as a slice when its rows are consecutive and increasing
    edge_ptr, edge_rows, edge_lane, group_ptr, group_buffer, group_slice, num_gathers, gathered_bytes = operand_rows(
        graph.arg_ptr,
        graph.arg_idx,
        lane_nodes,
        ptr,
        batch_type,
        node_slot,
        node_buffer,
        np.asarray(variadic, np.bool_),
        np.asarray(arity, np.int64),
        lanes,
        bool(allow_slices),
        np.asarray(row_bytes, np.int64),
        need,
    )
    return ScheduleRows(
        batch_type=batch_type,
        batch_ptr=ptr,
        width=width,
        lanes=lanes,
        lane_nodes=lane_nodes,
        offset=offset,
        out_buffer=out_buffer,
        edge_ptr=edge_ptr,
        edge_rows=edge_rows,
        edge_lane=edge_lane,
        group_ptr=group_ptr,
        group_buffer=group_buffer,
        group_slice=group_slice,
        variadic=np.asarray(variadic, bool),
        arity=np.asarray(arity, np.int64),
        need=need,
        num_operands=int(group_ptr[-1]),
        num_gathers=int(num_gathers),
        gathered_bytes=int(gathered_bytes),
    )
