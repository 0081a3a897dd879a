"""Frontier simulation: which nodes are ready, per op type, as batches run.

:class:`Frontier` is the host-side execution model that every dynamic policy
drives: it answers "how many nodes of each type are ready" and performs "run
all ready nodes of type t". One call of :meth:`Frontier.take` costs work
proportional to the batch and its consumers, not to the graph.

The simulation is inherently sequential (each decision depends on the last).
Most batches are a few dozen nodes, where the fixed cost of a NumPy call
exceeds the per-node work, so a narrow batch walks plain Python lists
(adjacency in CSR form, ready lists) and reads and writes the
pending-argument counters, an int32 array, per element through a
``memoryview``. A wide batch (``WIDE`` nodes or more: a tree's leaves or
losses, in the thousands) is released with array operations on the same
counters (:func:`release_wide`), its newly ready nodes kept as arrays.
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.graph import Graph
from edbatch_jax.graph.analysis import children

__all__ = ["Frontier", "release_wide"]

WIDE = 128  # from this many nodes on, a batch is released with array operations (measured crossover)


def release_wide(nodes: np.ndarray, ptr: np.ndarray, idx: np.ndarray, left: np.ndarray) -> np.ndarray:
    """Fires the edges out of ``nodes``; returns the targets whose count reached 0, each once.

    Args:
      nodes: int ``[K]`` source ids.
      ptr, idx: the edges in CSR form: those out of ``v`` are ``idx[ptr[v]:ptr[v + 1]]``.
      left: int32 ``[N]``, per node the edges into it not fired yet; decremented in place.

    Returns:
      int32 ``[R]``, order unspecified. Host-side, not jittable.
    """
    lo = ptr[nodes]
    n = ptr[nodes + 1] - lo
    ends = n.cumsum()
    total = int(ends[-1]) if ends.shape[0] else 0
    if not total:
        return idx[:0]
    targets = idx[np.repeat(lo - ends + n, n) + np.arange(total)]
    if total * 8 >= left.shape[0]:  # dense: one pass over the counters
        left -= np.bincount(targets, minlength=left.shape[0]).astype(left.dtype)
    elif total > 4 * WIDE:  # sparse: the counters fed only (a pass over all would make a schedule O(N * batches))
        fed, times = np.unique(targets, return_counts=True)
        left[fed] -= times.astype(left.dtype)
    else:  # ufunc.at's per-element cost is lowest on a few targets
        np.subtract.at(left, targets, 1)
    done = targets[left[targets] == 0]  # a target fed twice by the batch is listed twice
    if done.shape[0] > 1:  # keep one occurrence (each in turn numbers its counter, the last one written wins)
        pos = np.arange(done.shape[0], dtype=left.dtype)
        left[done] = pos
        done = done[left[done] == pos]
        left[done] = 0
    return done


class Frontier:
    """The ready set of a graph under execution.

    Attributes:
      ready_counts: int64 ``[T]``, ready nodes per op type (read-only view).
      remaining: number of nodes not yet run.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self._child_ptr_np, self._child_idx_np = children(graph)
        self._child_ptr, self._child_idx = self._child_ptr_np.tolist(), self._child_idx_np.tolist()
        self._types = graph.node_type.tolist()
        # arguments not run yet, per node: an array, read and written per element through a memoryview
        self._indeg_np = graph.arity.astype(np.int32)
        self._indeg = memoryview(self._indeg_np)
        self._pending: list[list[int]] = [[] for _ in range(graph.num_types)]
        self._pending_wide: list[list[np.ndarray]] = [[] for _ in range(graph.num_types)]  # released by arrays
        self._counts = np.zeros(graph.num_types, dtype=np.int64)
        self.remaining = graph.num_nodes
        self._count_list = [0] * graph.num_types
        self._add_ready_array(np.flatnonzero(graph.arity == 0))
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
        return np.sort(np.concatenate([np.asarray(self._pending[t], np.int32)] + self._pending_wide[t]))

    def _add_ready_array(self, nodes: np.ndarray) -> None:
        """Adds nodes that became ready, given as an int array, to their types' ready sets (kept as arrays)."""
        if nodes.shape[0]:
            types = self.graph.node_type[nodes]
            per_type = np.bincount(types, minlength=len(self._count_list))
            for t in np.flatnonzero(per_type).tolist():
                self._pending_wide[t].append(nodes[types == t].astype(np.int32))
                self._count_list[t] += int(per_type[t])

    def _take(self, t: int, limit: int | None) -> list[int] | np.ndarray:
        """:meth:`take`: the ids run, ascending; a list below ``WIDE`` nodes, else an int32 array."""
        counts = self._count_list
        if counts[t] == 0:
            raise ValueError(f"no ready node of type {self.graph.op_types[t]!r}")
        if self._pending_wide[t]:
            nodes = self.ready(t)
            self._pending_wide[t] = []
            if limit is not None and limit < nodes.shape[0]:
                nodes, self._pending[t] = nodes[:limit], nodes[limit:].tolist()
            else:
                self._pending[t] = []
            if nodes.shape[0] < WIDE:
                nodes = nodes.tolist()
        else:
            nodes = sorted(self._pending[t])
            if limit is not None and limit < len(nodes):
                nodes, self._pending[t] = nodes[:limit], nodes[limit:]
            else:
                self._pending[t] = []
            if len(nodes) >= WIDE:
                nodes = np.asarray(nodes, np.int32)
        counts[t] -= len(nodes)
        self.remaining -= len(nodes)
        if isinstance(nodes, list):
            ptr, idx, indeg, types, pending = self._child_ptr, self._child_idx, self._indeg, self._types, self._pending
            for v in nodes:
                for c in idx[ptr[v] : ptr[v + 1]]:
                    left = indeg[c] - 1
                    indeg[c] = left
                    if left == 0:  # its last argument ran
                        pending[types[c]].append(c)
                        counts[types[c]] += 1
        else:
            self._add_ready_array(release_wide(nodes, self._child_ptr_np, self._child_idx_np, self._indeg_np))
        self._counts[:] = counts
        return nodes

    def take(self, t: int, limit: int | None = None) -> np.ndarray:
        """Runs the ready nodes of type ``t`` (the ``limit`` lowest ids if given).

        Returns their ids (int32, ascending) and updates the frontier.
        """
        return np.asarray(self._take(t, limit), dtype=np.int32)
