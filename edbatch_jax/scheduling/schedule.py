"""The :class:`Schedule`: an ordered sequence of batches, and its validity check."""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np

from edbatch_jax.errors import EdbatchError
from edbatch_jax.graph import Graph

__all__ = ["Schedule", "ScheduleError", "validate_schedule"]


class ScheduleError(EdbatchError):
    """A schedule does not execute its graph correctly."""


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["batch_type", "batch_ptr", "node_order"],
    meta_fields=["op_types"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """Batches in execution order, stored flat.

    Attributes:
      batch_type: int32 ``[B]``, the op type id of every batch.
      batch_ptr: int32 ``[B + 1]``: batch ``b`` runs nodes
        ``node_order[batch_ptr[b]:batch_ptr[b + 1]]``.
      node_order: int32 ``[N]``, every node once, grouped by batch.
      op_types: static op type names (those of the graph).
    """

    batch_type: np.ndarray
    batch_ptr: np.ndarray
    node_order: np.ndarray
    op_types: tuple[str, ...]

    @classmethod
    def from_batches(cls, op_types: tuple[str, ...], types, node_lists) -> Schedule:
        """Builds a schedule from per-batch type ids and node id arrays."""
        sizes = [len(x) for x in node_lists]
        return cls(
            batch_type=np.asarray(types, dtype=np.int32).reshape(-1),
            batch_ptr=np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int32),
            node_order=(np.concatenate(node_lists) if node_lists else np.zeros(0)).astype(np.int32),
            op_types=tuple(op_types),
        )

    @property
    def num_batches(self) -> int:
        """Number of batches (kernel launches of a stepwise run)."""
        return int(self.batch_type.shape[0])

    @property
    def widths(self) -> np.ndarray:
        """int32 ``[B]``: number of nodes in every batch."""
        return np.diff(self.batch_ptr).astype(np.int32)

    @property
    def batches(self) -> list[tuple[str, np.ndarray]]:
        """``[(op_type_name, node_ids int32 [width]), ...]`` in execution order."""
        return [
            (self.op_types[t], self.node_order[s:e])
            for t, s, e in zip(self.batch_type, self.batch_ptr[:-1], self.batch_ptr[1:])
        ]

    def batch_of_node(self, num_nodes: int) -> np.ndarray:
        """int32 ``[N]``: index of the batch that runs each node."""
        out = np.full(num_nodes, -1, dtype=np.int32)
        out[self.node_order] = np.repeat(np.arange(self.num_batches, dtype=np.int32), self.widths)
        return out

    def __repr__(self) -> str:
        return f"Schedule(batches={self.num_batches}, nodes={self.node_order.shape[0]})"


def validate_schedule(graph: Graph, schedule: Schedule) -> None:
    """Raises :class:`ScheduleError` unless ``schedule`` executes ``graph``.

    Valid means: every node runs exactly once; every batch holds nodes of its
    one op type (and a single node if that type is unbatchable); every
    argument is computed in an earlier batch.
    """
    n = graph.num_nodes
    if schedule.op_types != graph.op_types:
        raise ScheduleError(
            f"schedule op types {list(schedule.op_types)} differ from the graph's {list(graph.op_types)}"
        )
    order = schedule.node_order
    if schedule.batch_ptr.shape != (schedule.num_batches + 1,) or schedule.batch_ptr[0] != 0:
        raise ScheduleError(
            f"malformed schedule: batch_ptr must have {schedule.num_batches + 1} entries starting at 0 "
            f"(one more than batch_type), got {schedule.batch_ptr.shape[0]}"
        )
    if schedule.batch_ptr[-1] != order.shape[0] or np.any(schedule.widths <= 0):
        raise ScheduleError("malformed schedule: empty batch or batch_ptr does not cover node_order")
    if order.size and (order.min() < 0 or order.max() >= n):
        bad = order[(order < 0) | (order >= n)][0]
        raise ScheduleError(f"schedule runs node {bad}, which is not in the graph ({n} nodes)")
    runs = np.bincount(order, minlength=n)
    if np.any(runs != 1):
        v = int(np.flatnonzero(runs != 1)[0])
        raise ScheduleError(f"node {v} runs {runs[v]} times (every node must run exactly once)")
    batch_types = np.repeat(schedule.batch_type, schedule.widths)
    wrong = np.flatnonzero(graph.node_type[order] != batch_types)
    if wrong.size:
        k = wrong[0]
        b = int(np.searchsorted(schedule.batch_ptr, k, side="right") - 1)
        raise ScheduleError(
            f"batch {b} is of type {graph.op_types[schedule.batch_type[b]]!r} but holds node {order[k]} "
            f"of type {graph.op_types[graph.node_type[order[k]]]!r}"
        )
    unb = graph.type_is_unbatchable[schedule.batch_type] & (schedule.widths > 1)
    if np.any(unb):
        b = int(np.flatnonzero(unb)[0])
        raise ScheduleError(
            f"batch {b} holds {schedule.widths[b]} nodes of unbatchable type {graph.op_types[schedule.batch_type[b]]!r}"
        )
    batch_of = schedule.batch_of_node(n)
    dst = graph.edge_dst()
    late = np.flatnonzero(batch_of[graph.arg_idx] >= batch_of[dst])
    if late.size:
        e = late[0]
        raise ScheduleError(
            f"node {dst[e]} (batch {batch_of[dst[e]]}) reads node {graph.arg_idx[e]}, "
            f"which is computed in batch {batch_of[graph.arg_idx[e]]}, not earlier"
        )
