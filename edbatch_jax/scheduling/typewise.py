"""Type-wise frontier and the type-wise ratio greedy policy (ED-Batch section 3, 5).

For an op type ``t``, node ``w`` is a *nearest type-t descendant* of type-``t``
node ``u`` when a path ``u -> ... -> w`` exists whose inner nodes are not of
type ``t``. The type-wise frontier ``TF_t`` holds the remaining type-``t``
nodes none of whose nearest type-``t`` ancestors remain. Always
``F_t ⊆ TF_t``; a batch with ``|F_t| = |TF_t|`` is *complete*, and a schedule
of complete batches meets the lower bound.
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.graph import Graph
from edbatch_jax.graph.analysis import topological_order
from edbatch_jax.graph.csr import csr_by_source
from edbatch_jax.scheduling.frontier import Frontier, release_wide
from edbatch_jax.scheduling.policies import FrontierPolicy, register_policy

__all__ = ["nearest_same_type_edges", "maximal_same_type_edges", "TypewiseFrontier", "TypewisePolicy"]


def nearest_same_type_edges(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (u, w): ``w`` is a nearest same-type descendant of ``u``.

    Returns ``(src int32 [M], dst int32 [M])``, each pair once. Computed in one
    topological sweep carrying, for every node, the set of nearest ancestors of
    each type.
    """
    reach: list[dict[int, frozenset]] = [dict() for _ in range(graph.num_nodes)]
    src, dst = [], []
    types = graph.node_type
    for v in topological_order(graph):
        v = int(v)
        acc: dict[int, set] = {}
        for a in graph.args(v):
            a = int(a)
            for t, us in reach[a].items():
                if t != types[a]:
                    acc.setdefault(t, set()).update(us)
            acc.setdefault(int(types[a]), set()).add(a)
        tv = int(types[v])
        for u in acc.get(tv, ()):
            src.append(u)
            dst.append(v)
        reach[v] = {t: frozenset(us) for t, us in acc.items()}
    return np.asarray(src, np.int32), np.asarray(dst, np.int32)


def _any_topological_order(graph: Graph):
    """Node ids with arguments first: the ids themselves when every argument precedes its reader
    (as :class:`~edbatch_jax.GraphBuilder` numbers them), else by depth."""
    if bool(np.all(graph.arg_idx < graph.edge_dst())):
        return range(graph.num_nodes)
    return topological_order(graph).tolist()


def maximal_same_type_edges(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """A reduced version of :func:`nearest_same_type_edges` with the same frontier.

    Executed sets are closed under ancestors, so ``v`` is in ``TF_t`` exactly
    when its *maximal* type-``t`` ancestors ran: a nearest ancestor that is
    itself an ancestor of another nearest ancestor adds no information. The
    pairs ``(u, w)`` returned are those with ``u`` a maximal same-type
    ancestor of ``w``; on lattices this turns ``O(L^2)`` pairs per word-arc
    chain into a handful per node. Ancestor sets are Python-int bitsets.

    Returns ``(src int32 [M], dst int32 [M])``.
    """
    types = graph.node_type.tolist()
    arg_ptr, arg_idx = graph.arg_ptr.tolist(), graph.arg_idx.tolist()
    maximal: list[dict[int, tuple[int, ...]]] = [dict() for _ in range(graph.num_nodes)]
    below = [0] * graph.num_nodes  # bitset of same-type ancestors of each node
    src, dst = [], []
    for v in _any_topological_order(graph):
        lo, hi = arg_ptr[v], arg_ptr[v + 1]
        if hi - lo == 1:  # one operand (most nodes): its sets, with itself as the nearest of its type
            a = arg_idx[lo]
            out = maximal[a].copy()
            out[types[a]] = (a,)
        else:
            acc: dict[int, set] = {}
            for a in arg_idx[lo:hi]:
                ta = types[a]
                for t, us in maximal[a].items():
                    if t != ta:
                        acc.setdefault(t, set()).update(us)
                acc.setdefault(ta, set()).add(a)
            out = {}
            for t, us in acc.items():
                if len(us) > 1:  # drop those below another (no node is below itself, so one union does)
                    under = 0
                    for w in us:
                        under |= below[w]
                    us = [u for u in us if not under >> u & 1]
                out[t] = tuple(us)
        bits = 0
        for u in out.get(types[v], ()):
            src.append(u)
            dst.append(v)
            bits |= below[u] | (1 << u)
        below[v] = bits
        maximal[v] = out
    return np.asarray(src, np.int32), np.asarray(dst, np.int32)


class TypewiseFrontier(Frontier):
    """A :class:`Frontier` that also tracks ``|TF_t|`` for every type.

    Attributes:
      typewise_counts: int64 ``[T]``, ``|TF_t|`` of the remaining graph.
    """

    def __init__(self, graph: Graph, edges: str = "maximal"):
        """``edges``: ``"maximal"`` (fewer pairs, same counts) or ``"nearest"`` (the definition)."""
        super().__init__(graph)
        if edges not in ("maximal", "nearest"):
            raise ValueError(f"edges must be 'maximal' or 'nearest', got {edges!r}")
        src, dst = (maximal_same_type_edges if edges == "maximal" else nearest_same_type_edges)(graph)
        near_ptr, near_dst = csr_by_source(src, dst, graph.num_nodes)
        near_indeg = np.bincount(dst, minlength=graph.num_nodes)
        self._near_ptr_np, self._near_dst_np, self._near_indeg_np = near_ptr, near_dst, near_indeg.astype(np.int32)
        self._near_ptr, self._near_dst = near_ptr.tolist(), near_dst.tolist()
        self._near_indeg = memoryview(self._near_indeg_np)
        top = near_indeg == 0
        self.typewise_counts = np.bincount(graph.node_type[top], minlength=graph.num_types).astype(np.int64)

    def _take(self, t: int, limit: int | None) -> list[int] | np.ndarray:
        nodes = super()._take(t, limit)
        ptr, dst, indeg = self._near_ptr, self._near_dst, self._near_indeg
        if isinstance(nodes, list):
            gained = 0
            for v in nodes:
                for w in dst[ptr[v] : ptr[v + 1]]:
                    left = indeg[w] - 1
                    indeg[w] = left
                    gained += left == 0  # its last maximal same-type ancestor ran: w joins TF_t
        else:
            gained = release_wide(nodes, self._near_ptr_np, self._near_dst_np, self._near_indeg_np).shape[0]
        self.typewise_counts[t] += gained - len(nodes)
        return nodes


class TypewisePolicy(FrontierPolicy):
    """Runs the ready type with the largest ``|F_t| / |TF_t|`` (ties: larger ``|F_t|``, then lower id)."""

    name = "typewise"
    frontier_class = TypewiseFrontier

    def choose(self, frontier: TypewiseFrontier, context) -> int:
        ready = frontier.ready_counts
        ratio = np.where(ready > 0, ready / np.maximum(frontier.typewise_counts, 1), -1.0)
        best = np.flatnonzero(ratio == ratio.max())
        return int(best[np.argmax(ready[best])])


register_policy("typewise", TypewisePolicy())
