"""Frontier simulation: which nodes are ready, per op type, as batches run.

:class:`Frontier` is the host-side execution model that every dynamic policy
drives: it answers "how many nodes of each type are ready" and performs "run
all ready nodes of type t". One call of :meth:`Frontier.take` costs work
proportional to the batch and its consumers, not to the graph.

The simulation is inherently sequential (each decision depends on the last),
so a batch is run by a compiled kernel
(:func:`~edbatch_jax.scheduling.kernels.take_ready`) over the ready nodes kept
per type in one array; a policy whose choice is a fixed priority per type
(:class:`~edbatch_jax.scheduling.policies.AgendaPolicy`), the type-wise
rule, and a learned table (:class:`~edbatch_jax.FSMPolicy`) run their whole
schedule in one kernel call.
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.graph import Graph
from edbatch_jax.graph.analysis import children
from edbatch_jax.scheduling.kernels import priority_schedule, ready_slots, rule_schedule, take_ready

__all__ = ["Frontier"]


class Frontier:
    """The ready set of a graph under execution.

    Attributes:
      ready_counts: int64 ``[T]``, ready nodes per op type (read-only view).
      remaining: number of nodes not yet run.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self._child_ptr, self._child_idx = children(graph)
        self._node_type = graph.node_type.astype(np.int32)
        self._left = graph.arity.astype(np.int32)  # per node, the arguments not run yet
        # the ready nodes of type t are slots[head[t]:tail[t]] (type t's segment starts at head[t])
        self._slots, self._head, self._tail, self._counts = ready_slots(self._node_type, self._left, graph.num_types)
        self.remaining = graph.num_nodes
        self._out = np.empty(graph.num_nodes, np.int32)

    @property
    def _state(self) -> tuple[np.ndarray, ...]:
        """The arrays the kernels read and update, in their argument order: the consumers (CSR), node types,
        arguments not run yet, the ready slots with each type's head and tail, and the ready counts."""
        return (
            self._child_ptr,
            self._child_idx,
            self._node_type,
            self._left,
            self._slots,
            self._head,
            self._tail,
            self._counts,
        )

    @property
    def ready_counts(self) -> np.ndarray:
        """int64 ``[T]``: ready nodes per op type (|F_t|)."""
        return self._counts

    @property
    def done(self) -> bool:
        """Whether every node has run."""
        return self.remaining == 0

    def ready(self, t: int) -> np.ndarray:
        """int32 ids of the ready nodes of type ``t``, ascending."""
        return np.sort(self._slots[self._head[t] : self._tail[t]])

    def take(self, t: int, limit: int | None = None) -> np.ndarray:
        """Runs the ready nodes of type ``t`` (the ``limit`` lowest ids if given).

        Returns their ids (int32, ascending) and updates the frontier.

        Raises:
          ValueError: no node of type ``t`` is ready.
        """
        if self._counts[t] == 0:
            raise ValueError(f"no ready node of type {self.graph.op_types[t]!r}")
        k = take_ready(
            t,
            -1 if limit is None else limit,
            *self._state,
            self._out,
        )
        self.remaining -= k
        return self._out[:k].copy()

    def run_by_priority(self, priority: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs every remaining node: at each step the ready type with the lowest ``priority`` (float ``[T]``;
        ties to the lower id) runs all its ready nodes; a ready unbatchable type runs first, its lowest id alone.

        Returns ``(batch_type int32 [B], batch_ptr int32 [B + 1], node_order int32 [N])`` of the nodes run,
        in one compiled call (:func:`~edbatch_jax.scheduling.kernels.priority_schedule`).
        """
        n = self.remaining
        batch_type = np.empty(n, np.int32)
        batch_ptr = np.empty(n + 1, np.int32)
        order = np.empty(n, np.int32)
        b = priority_schedule(
            np.asarray(priority, np.float64),
            self.graph.type_is_unbatchable.astype(np.bool_),
            *self._state,
            batch_type,
            batch_ptr,
            order,
        )
        self.remaining -= int(batch_ptr[b])
        return batch_type[:b], batch_ptr[: b + 1], order[: batch_ptr[b]]

    def _typewise_arrays(self) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
        """``(track, clear, stack, typewise_counts)`` for :func:`~edbatch_jax.scheduling.kernels.rule_schedule`:
        a plain frontier tracks no type-wise counts (placeholders)."""
        return False, np.zeros((1, 1), np.int32), np.zeros(1, np.int32), np.zeros(self.graph.num_types, np.int64)

    def run_by_rule(
        self,
        perm: np.ndarray,
        encoding: int,
        keys: np.ndarray,
        actions: np.ndarray,
        fallback: int,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
        """Runs every remaining node by a table from encoded states to op types, or by the type-wise rule
        (``encoding`` -1), in one compiled call (:func:`~edbatch_jax.scheduling.kernels.rule_schedule`, which
        documents the arguments). The type-wise rule and ``sort_complete`` need a
        :class:`~edbatch_jax.scheduling.typewise.TypewiseFrontier`.

        Returns ``(batch_type int32 [B], batch_ptr int32 [B + 1], node_order int32 [N], hits, decisions)``.
        """
        n = self.remaining
        batch_type = np.empty(n, np.int32)
        batch_ptr = np.empty(n + 1, np.int32)
        order = np.empty(n, np.int32)
        b, hits, decisions = rule_schedule(
            self.graph.type_is_unbatchable.astype(np.bool_),
            np.asarray(perm, np.int64),
            encoding,
            np.asarray(keys, np.int64),
            np.asarray(actions, np.int64),
            fallback,
            *self._typewise_arrays(),
            *self._state,
            batch_type,
            batch_ptr,
            order,
        )
        self.remaining -= int(batch_ptr[b])
        return batch_type[:b], batch_ptr[: b + 1], order[: batch_ptr[b]], int(hits), int(decisions)
