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
from edbatch_jax.scheduling import frontier as frontier_module
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


def _types_at_or_above(graph: Graph) -> list[int]:
    """Per node, the op types of it and its ancestors, as a bitset (a Python int; bit ``t``: type ``t``)."""
    types = graph.node_type.tolist()
    arg_ptr, arg_idx = graph.arg_ptr.tolist(), graph.arg_idx.tolist()
    above = [1 << t for t in types]
    for v in _any_topological_order(graph):
        lo, hi = arg_ptr[v], arg_ptr[v + 1]
        if lo == hi:
            continue
        bits = above[v]
        for a in arg_idx[lo:hi]:
            bits |= above[a]
        above[v] = bits
    return above


def _closure_counters(graph: Graph) -> np.ndarray:
    """int32 ``[T, N]``: per type ``t`` and node ``x``, its arguments with a type-``t`` node at or above them.

    These are the arguments that still have to *clear* type ``t`` before
    every type-``t`` ancestor of ``x`` has run: a type-``t`` argument clears
    when it runs, any other argument when its own counter for ``t`` reaches
    0. A node of type ``t`` is in ``TF_t`` exactly when its counter for ``t``
    is 0. One sweep over the edges in topological order (type bitsets), then
    one array pass per type.
    """
    n, num_types = graph.num_nodes, graph.num_types
    above = _types_at_or_above(graph)
    dst = graph.edge_dst()
    counters = np.zeros((num_types, n), np.int32)
    for first in range(0, num_types, 62):  # 62 type bits per int64 word
        if num_types <= 62:
            word = np.asarray(above, np.int64)
        else:
            word = np.asarray([bits >> first & (1 << 62) - 1 for bits in above], np.int64)
        word = word[graph.arg_idx]
        for t in range(first, min(first + 62, num_types)):
            counters[t] = np.bincount(dst, weights=(word >> (t - first)) & 1, minlength=n)
    return counters


class TypewiseFrontier(Frontier):
    """A :class:`Frontier` that also tracks ``|TF_t|`` for every type.

    Attributes:
      typewise_counts: int64 ``[T]``, ``|TF_t|`` of the remaining graph.
    """

    def __init__(self, graph: Graph, edges: str = "closure"):
        """``edges``: ``"closure"`` (per node and type, a counter of the arguments that have not cleared
        the type; time and memory linear in the graph), ``"maximal"`` (pairs of a node and its maximal
        same-type ancestors) or ``"nearest"`` (the definition). All three give the same counts."""
        super().__init__(graph)
        if edges not in ("closure", "maximal", "nearest"):
            raise ValueError(f"edges must be 'closure', 'maximal' or 'nearest', got {edges!r}")
        self._closure = edges == "closure"
        if self._closure:
            self._clear_np = _closure_counters(graph)
            self._clear = memoryview(self._clear_np.reshape(-1))
            top = self._clear_np[graph.node_type, np.arange(graph.num_nodes)] == 0
        else:
            src, dst = (maximal_same_type_edges if edges == "maximal" else nearest_same_type_edges)(graph)
            near_ptr, near_dst = csr_by_source(src, dst, graph.num_nodes)
            near_indeg = np.bincount(dst, minlength=graph.num_nodes)
            self._near_ptr_np, self._near_dst_np = near_ptr, near_dst
            self._near_indeg_np = near_indeg.astype(np.int32)
            self._near_ptr, self._near_dst = near_ptr.tolist(), near_dst.tolist()
            self._near_indeg = memoryview(self._near_indeg_np)
            top = near_indeg == 0
        self.typewise_counts = np.bincount(graph.node_type[top], minlength=graph.num_types).astype(np.int64)

    def _take(self, t: int, limit: int | None) -> list[int] | np.ndarray:
        nodes = super()._take(t, limit)
        gained = self._clear_type(t, nodes) if self._closure else self._release_pairs(nodes)
        self.typewise_counts[t] += gained - len(nodes)
        return nodes

    def _release_pairs(self, nodes: list[int] | np.ndarray) -> int:
        """Fires the same-type pairs out of ``nodes``; returns the nodes that joined their ``TF_t``."""
        if not isinstance(nodes, list):
            return release_wide(nodes, self._near_ptr_np, self._near_dst_np, self._near_indeg_np).shape[0]
        ptr, dst, indeg = self._near_ptr, self._near_dst, self._near_indeg
        gained = 0
        for v in nodes:
            for w in dst[ptr[v] : ptr[v + 1]]:
                left = indeg[w] - 1
                indeg[w] = left
                gained += left == 0  # its last maximal same-type ancestor ran: w joins TF_t
        return gained

    def _clear_type(self, t: int, nodes: list[int] | np.ndarray) -> int:
        """Type ``t`` clears from the nodes of type ``t`` that ran, down through the nodes of other types
        whose arguments all cleared it; returns the type-``t`` nodes whose arguments all cleared it (they
        joined ``TF_t``). Each (node, type) clears once, so a whole schedule costs ``O(T * E)``."""
        types, ptr, idx = self._types, self._child_ptr, self._child_idx
        if not isinstance(nodes, list):  # wide: array steps while the cleared set stays wide
            counters = self._clear_np[t]
            gained = 0
            while nodes.shape[0] >= frontier_module.WIDE:
                done = release_wide(nodes, self._child_ptr_np, self._child_idx_np, counters)
                same = self.graph.node_type[done] == t
                gained += int(np.count_nonzero(same))
                nodes = done[~same]
            stack = nodes.tolist()
        else:
            gained, stack = 0, list(nodes)
        clear, base = self._clear, t * len(types)
        while stack:
            v = stack.pop()
            for c in idx[ptr[v] : ptr[v + 1]]:
                k = base + c
                left = clear[k] - 1
                clear[k] = left
                if not left:
                    if types[c] == t:
                        gained += 1  # its type-t ancestors all ran: c joins TF_t
                    else:
                        stack.append(c)  # every type-t node at or above c ran
        return gained


class TypewisePolicy(FrontierPolicy):
    """Runs the ready type with the largest ``|F_t| / |TF_t|`` (ties: larger ``|F_t|``, then lower id)."""

    name = "typewise"
    frontier_class = TypewiseFrontier

    def choose(self, frontier: TypewiseFrontier, context) -> int:
        # on plain lists: a step's few types cost less than NumPy calls (float64 ratios, as NumPy's)
        best, best_ratio, best_ready = -1, -1.0, 0
        for t, (ready, typewise) in enumerate(zip(frontier.ready_counts.tolist(), frontier.typewise_counts.tolist())):
            if ready > 0:
                ratio = ready / max(typewise, 1)
                if ratio > best_ratio or (ratio == best_ratio and ready > best_ready):
                    best, best_ratio, best_ready = t, ratio, ready
        return best


register_policy("typewise", TypewisePolicy())
