"""The :class:`Schedule`: an ordered sequence of batches, and its validity check."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import weakref

import jax
import numpy as np

from edbatch_jax.errors import EdbatchError
from edbatch_jax.graph import Graph
from edbatch_jax.graph.kernels import hash_bytes

__all__ = [
    "Schedule",
    "ScheduleError",
    "check_schedule",
    "graph_fingerprint",
    "schedule_fingerprint",
    "validate_schedule",
]


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
      fingerprint: ``(graph fingerprint, schedule fingerprint)`` recorded by
        :meth:`certify` when a policy made the schedule for a graph (then the
        engine checks the graph against it instead of validating the whole
        schedule), or ``None`` for a schedule made by hand (validated in
        full by the engine). Not a pytree field: a schedule rebuilt from its
        leaves, or by ``dataclasses.replace``, has none.
    """

    batch_type: np.ndarray
    batch_ptr: np.ndarray
    node_order: np.ndarray
    op_types: tuple[str, ...]
    fingerprint: tuple[bytes, bytes] | None = dataclasses.field(default=None, init=False, repr=False, compare=False)
    # a weak reference to the Graph object certify() last hashed: eb.schedule() then need not hash that same
    # object again (the engine and the layout planner still compare the graph they are given with the fingerprint)
    _certified_for: weakref.ref | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

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

    def certify(self, graph: Graph) -> Schedule:
        """Records that this schedule is a valid schedule of ``graph`` (its fingerprint); returns ``self``.

        Policies call it on the schedules they build (valid by construction);
        the engine then checks a graph against the fingerprint (a hash, a few
        microseconds) rather than validating the schedule, and refuses a
        schedule made for another graph. A schedule certified for a graph
        that it does not execute is the caller's bug, so
        :func:`~edbatch_jax.scheduling.schedule` validates the schedules of
        user-written policies before certifying them.
        """
        object.__setattr__(self, "fingerprint", (graph_fingerprint(graph), schedule_fingerprint(self)))
        object.__setattr__(self, "_certified_for", weakref.ref(graph))
        return self

    def __repr__(self) -> str:
        return f"Schedule(batches={self.num_batches}, nodes={self.node_order.shape[0]})"

    def __getstate__(self) -> dict:
        """Pickled without the weak reference to the graph it was certified for (the fingerprint stays)."""
        return {**self.__dict__, "_certified_for": None}


def _digest(parts) -> bytes:
    """16 bytes naming ``parts``: every array by its dtype, shape and 128-bit content hash (a compiled pass,
    :func:`~edbatch_jax.graph.kernels.hash_bytes`), everything else by its ``repr``."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            lo, hi = hash_bytes(a.reshape(-1).view(np.uint8))
            h.update(f"{a.dtype.str}{a.shape}:{lo:x}.{hi:x}".encode())
        else:
            h.update(repr(part).encode())
        h.update(b"|")
    return h.digest()[:16]


def graph_fingerprint(graph: Graph) -> bytes:
    """A 16-byte hash of a graph's structure: op types, unbatchable types, node types and arguments.

    Two graphs with the same fingerprint have the same valid schedules
    (payloads do not enter it). Host-side; tens of microseconds for thousands of nodes.
    """
    return _digest(
        (graph.op_types, tuple(graph.unbatchable), np.asarray(graph.node_type), graph.arg_ptr, graph.arg_idx)
    )


def schedule_fingerprint(schedule: Schedule) -> bytes:
    """A 16-byte hash of a schedule's arrays and op types (host-side)."""
    return _digest((schedule.op_types, schedule.batch_type, schedule.batch_ptr, schedule.node_order))


def check_schedule(graph: Graph, schedule: Schedule) -> bytes:
    """Raises :class:`ScheduleError` unless ``schedule`` executes ``graph``; returns the graph's fingerprint.

    A certified schedule (one a policy made, :meth:`Schedule.certify`) is
    checked by its fingerprint: another graph's schedule is refused; a
    schedule whose arrays changed since it was certified, or one made by
    hand, is validated in full (:func:`validate_schedule`, vectorised).
    Host-side, once per execution plan.
    """
    if not isinstance(schedule, Schedule):
        raise ScheduleError(f"expected an eb.Schedule (from eb.schedule(graph, policy)), got {type(schedule).__name__}")
    fingerprint = graph_fingerprint(graph)
    made = schedule.fingerprint
    if made is not None and made[0] != fingerprint:
        raise ScheduleError(
            f"this schedule was made for another graph ({schedule.node_order.shape[0]} nodes scheduled, this graph "
            f"has {graph.num_nodes}, op types {list(graph.op_types)}, different node types or arguments); "
            "schedule this graph with eb.schedule(graph, policy)"
        )
    if made is None or made[1] != schedule_fingerprint(schedule):
        validate_schedule(graph, schedule)
    return fingerprint


def validate_schedule(graph: Graph, schedule: Schedule) -> None:
    """Raises :class:`ScheduleError` unless ``schedule`` executes ``graph``.

    Valid means: every node runs exactly once; every batch holds nodes of its
    one op type (and a single node if that type is unbatchable); every
    argument is computed in an earlier batch. Vectorised NumPy; every error
    names the batch, node or op type at fault.
    """
    n = graph.num_nodes
    if schedule.op_types != graph.op_types:
        raise ScheduleError(
            f"schedule op types {list(schedule.op_types)} differ from the graph's {list(graph.op_types)}"
        )
    arrays = {}
    for name in ("batch_type", "batch_ptr", "node_order"):
        a = np.asarray(getattr(schedule, name))
        if a.ndim != 1 or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
            raise ScheduleError(
                f"malformed schedule: {name} must be a 1-D integer array, got {a.dtype} of shape {a.shape}"
            )
        arrays[name] = a.astype(np.int64)
    types, ptr, order = arrays["batch_type"], arrays["batch_ptr"], arrays["node_order"]
    num_batches = types.shape[0]
    if ptr.shape != (num_batches + 1,) or ptr[0] != 0:
        raise ScheduleError(
            f"malformed schedule: batch_ptr must have {num_batches + 1} entries starting at 0 "
            f"(one more than batch_type), got {ptr.shape[0]}"
        )
    widths = np.diff(ptr)
    if np.any(widths <= 0):
        b = int(np.flatnonzero(widths <= 0)[0])
        raise ScheduleError(f"malformed schedule: empty batch {b} ({widths[b]} nodes; every batch needs at least one)")
    if ptr[-1] != order.shape[0]:
        raise ScheduleError(
            f"malformed schedule: batch_ptr ends at {ptr[-1]} but node_order has {order.shape[0]} entries"
        )
    bad_type = (types < 0) | (types >= graph.num_types)
    if np.any(bad_type):
        b = int(np.flatnonzero(bad_type)[0])
        raise ScheduleError(
            f"batch {b} has op type id {types[b]}, but the graph has {graph.num_types} op types "
            f"{list(graph.op_types)} (ids 0..{graph.num_types - 1})"
        )
    outside = (order < 0) | (order >= n)
    if np.any(outside):
        k = int(np.flatnonzero(outside)[0])
        b = int(np.searchsorted(ptr, k, side="right") - 1)
        raise ScheduleError(f"batch {b} runs node {order[k]}, which is not in the graph ({n} nodes, ids 0..{n - 1})")
    runs = np.bincount(order, minlength=n)
    if np.any(runs != 1):
        v = int(np.flatnonzero(runs != 1)[0])
        raise ScheduleError(
            f"node {v} runs {runs[v]} times (op {graph.op_types[graph.node_type[v]]!r}; "
            "every node must run exactly once)"
        )
    batch_types = np.repeat(types, widths)
    wrong = np.flatnonzero(graph.node_type[order] != batch_types)
    if wrong.size:
        k = wrong[0]
        b = int(np.searchsorted(ptr, k, side="right") - 1)
        raise ScheduleError(
            f"batch {b} is of type {graph.op_types[types[b]]!r} but holds node {order[k]} "
            f"of type {graph.op_types[graph.node_type[order[k]]]!r}"
        )
    unb = graph.type_is_unbatchable[types] & (widths > 1)
    if np.any(unb):
        b = int(np.flatnonzero(unb)[0])
        raise ScheduleError(f"batch {b} holds {widths[b]} nodes of unbatchable type {graph.op_types[types[b]]!r}")
    batch_of = np.empty(n, np.int64)
    batch_of[order] = np.repeat(np.arange(num_batches), widths)
    dst = graph.edge_dst()
    late = np.flatnonzero(batch_of[graph.arg_idx] >= batch_of[dst])
    if late.size:
        e = late[0]
        raise ScheduleError(
            f"node {dst[e]} (batch {batch_of[dst[e]]}) reads node {graph.arg_idx[e]}, "
            f"which is computed in batch {batch_of[graph.arg_idx[e]]}, not earlier"
        )
