"""Frontier simulation: which nodes are ready, per op type, as batches run.

:class:`Frontier` is the host-side (NumPy) execution model that every dynamic
policy drives: it answers "how many nodes of each type are ready" and performs
"run all ready nodes of type t". One call of :meth:`Frontier.take` costs work
proportional to the batch and its consumers, not to the graph.
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.analysis import children
from edbatch_jax.graph import Graph, _csr_rows

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
        self._indeg = graph.arity.astype(np.int64)
        self._pending: list[list[np.ndarray]] = [[] for _ in range(graph.num_types)]
        self._counts = np.zeros(graph.num_types, dtype=np.int64)
        self.remaining = graph.num_nodes
        self._push(np.flatnonzero(self._indeg == 0))

    @property
    def ready_counts(self) -> np.ndarray:
        """int64 ``[T]``: ready nodes per op type (|F_t|)."""
        return self._counts

    @property
    def done(self) -> bool:
        """Whether every node has run."""
        return self.remaining == 0

    def _push(self, nodes: np.ndarray) -> None:
        if nodes.size == 0:
            return
        types = self.graph.node_type[nodes]
        order = np.argsort(types, kind="stable")
        nodes, types = nodes[order], types[order]
        cuts = np.flatnonzero(np.r_[True, types[1:] != types[:-1]])
        for chunk, t in zip(np.split(nodes, cuts[1:]), types[cuts]):
            self._pending[t].append(chunk)
            self._counts[t] += chunk.size

    def ready(self, t: int) -> np.ndarray:
        """int32 ids of the ready nodes of type ``t``, ascending."""
        parts = self._pending[t]
        if len(parts) > 1:
            parts[:] = [np.sort(np.concatenate(parts))]
        return parts[0].astype(np.int32) if parts else np.zeros(0, np.int32)

    def take(self, t: int, limit: int | None = None) -> np.ndarray:
        """Runs the ready nodes of type ``t`` (the ``limit`` lowest ids if given).

        Returns their ids (int32, ascending) and updates the frontier.
        """
        nodes = self.ready(t)
        if nodes.size == 0:
            raise ValueError(f"no ready node of type {self.graph.op_types[t]!r}")
        if limit is not None and limit < nodes.size:
            nodes, rest = nodes[:limit], nodes[limit:]
            self._pending[t] = [rest]
        else:
            self._pending[t] = []
        self._counts[t] -= nodes.size
        self.remaining -= nodes.size
        ch, _ = _csr_rows(self._child_ptr, self._child_idx, nodes)
        if ch.size:
            uniq, cnt = np.unique(ch, return_counts=True)
            self._indeg[uniq] -= cnt
            self._push(uniq[self._indeg[uniq] == 0])
        return nodes
