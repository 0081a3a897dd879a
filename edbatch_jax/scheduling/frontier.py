"""Frontier simulation: which nodes are ready, per op type, as batches run.

:class:`Frontier` is the host-side execution model that every dynamic policy
drives: it answers "how many nodes of each type are ready" and performs "run
all ready nodes of type t". One call of :meth:`Frontier.take` costs work
proportional to the batch and its consumers, not to the graph.

The simulation is inherently sequential (each decision depends on the last),
and a typical batch is a few dozen nodes, where the fixed cost of a NumPy call
exceeds the per-node work. So the per-step bookkeeping walks plain Python
lists (adjacency in CSR form, pending-argument counters, ready lists);
construction and the returned batches are NumPy.
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.analysis import children
from edbatch_jax.graph import Graph

__all__ = ["Frontier"]


class Frontier:
    """The ready set of a graph under execution.

    Attributes:
      ready_counts: int64 ``[T]``, ready nodes per op type (read-only view).
      remaining: number of nodes not yet run.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        child_ptr, child_idx = children(graph)
        self._child_ptr, self._child_idx = child_ptr.tolist(), child_idx.tolist()
        self._types = graph.node_type.tolist()
        self._indeg = graph.arity.tolist()
        self._pending: list[list[int]] = [[] for _ in range(graph.num_types)]
        self._counts = np.zeros(graph.num_types, dtype=np.int64)
        self.remaining = graph.num_nodes
        for v in np.flatnonzero(graph.arity == 0).tolist():
            self._pending[self._types[v]].append(v)
        self._count_list = [len(p) for p in self._pending]
        self._counts[:] = self._count_list

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
        return np.asarray(sorted(self._pending[t]), dtype=np.int32)

    def _take(self, t: int, limit: int | None) -> list[int]:
        """:meth:`take` on plain lists: the ids run, ascending."""
        nodes = sorted(self._pending[t])
        if not nodes:
            raise ValueError(f"no ready node of type {self.graph.op_types[t]!r}")
        if limit is not None and limit < len(nodes):
            nodes, self._pending[t] = nodes[:limit], nodes[limit:]
        else:
            self._pending[t] = []
        counts = self._count_list
        counts[t] -= len(nodes)
        self.remaining -= len(nodes)
        ptr, idx, indeg, types, pending = self._child_ptr, self._child_idx, self._indeg, self._types, self._pending
        for v in nodes:
            for c in idx[ptr[v] : ptr[v + 1]]:
                left = indeg[c] - 1
                indeg[c] = left
                if left == 0:  # its last argument ran
                    pending[types[c]].append(c)
                    counts[types[c]] += 1
        self._counts[:] = counts
        return nodes

    def take(self, t: int, limit: int | None = None) -> np.ndarray:
        """Runs the ready nodes of type ``t`` (the ``limit`` lowest ids if given).

        Returns their ids (int32, ascending) and updates the frontier.
        """
        return np.asarray(self._take(t, limit), dtype=np.int32)
