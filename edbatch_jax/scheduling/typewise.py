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
from edbatch_jax.graph.analysis import children, topological_order
from edbatch_jax.graph.csr import csr_by_source
from edbatch_jax.graph.kernels import kahn_order
from edbatch_jax.scheduling.frontier import Frontier
from edbatch_jax.scheduling.kernels import clear_type, closure_counters, release_pairs
from edbatch_jax.scheduling.policies import FrontierPolicy, register_policy
from edbatch_jax.scheduling.schedule import Schedule

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


def _any_topological_order(graph: Graph, consumers: tuple[np.ndarray, np.ndarray] | None = None):
    """Node ids with arguments first: the ids themselves when every argument precedes its reader
    (as :class:`~edbatch_jax.GraphBuilder` numbers them), else Kahn's order over ``consumers`` (the
    reverse adjacency, :func:`~edbatch_jax.graph.analysis.children`, if the caller has it); a cycle
    is named (:func:`~edbatch_jax.graph.analysis.topological_order`)."""
    if bool(np.all(graph.arg_idx < graph.edge_dst())):
        return np.arange(graph.num_nodes, dtype=np.int32)
    ptr, child = children(graph) if consumers is None else consumers
    order = kahn_order(ptr, child, graph.arity)
    return order if order.shape[0] == graph.num_nodes else topological_order(graph)


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
    for v in _any_topological_order(graph).tolist():
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


def _closure_counters(graph: Graph, consumers: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """int32 ``[T, N]``: per type ``t`` and node ``x``, its arguments with a type-``t`` node at or above them.

    These are the arguments that still have to *clear* type ``t`` before
    every type-``t`` ancestor of ``x`` has run: a type-``t`` argument clears
    when it runs, any other argument when its own counter for ``t`` reaches
    0. A node of type ``t`` is in ``TF_t`` exactly when its counter for ``t``
    is 0. One compiled sweep over the edges in topological order
    (:func:`~edbatch_jax.scheduling.kernels.closure_counters`).
    """
    order = _any_topological_order(graph, consumers)
    return closure_counters(order, graph.arg_ptr, graph.arg_idx, graph.node_type.astype(np.int32), graph.num_types)


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
            self._clear_np = _closure_counters(graph, (self._child_ptr, self._child_idx))
            self._stack = np.empty(graph.num_nodes, np.int32)
            top = self._clear_np[graph.node_type, np.arange(graph.num_nodes)] == 0
        else:
            src, dst = (maximal_same_type_edges if edges == "maximal" else nearest_same_type_edges)(graph)
            near_ptr, near_dst = csr_by_source(src, dst, graph.num_nodes)
            near_indeg = np.bincount(dst, minlength=graph.num_nodes)
            self._near_ptr_np, self._near_dst_np = near_ptr, near_dst
            self._near_indeg_np = near_indeg.astype(np.int32)
            top = near_indeg == 0
        self.typewise_counts = np.bincount(graph.node_type[top], minlength=graph.num_types).astype(np.int64)

    def _typewise_arrays(self) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray]:
        if not self._closure:
            raise NotImplementedError("the compiled schedule tracks |TF_t| with the 'closure' counters only")
        return True, self._clear_np, self._stack, self.typewise_counts

    def take(self, t: int, limit: int | None = None) -> np.ndarray:
        nodes = super().take(t, limit)
        if self._closure:
            gained = clear_type(
                t, nodes, self._child_ptr, self._child_idx, self._node_type, self._clear_np[t], self._stack
            )
        else:
            gained = release_pairs(nodes, self._near_ptr_np, self._near_dst_np, self._near_indeg_np)
        self.typewise_counts[t] += gained - nodes.shape[0]
        return nodes


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

    def _schedule(self, graph: Graph) -> Schedule:
        """The whole schedule in one compiled call (the same as :meth:`choose` step by step); a subclass
        that overrides :meth:`choose` is run step by step."""
        if type(self).choose is not TypewisePolicy.choose:
            return super()._schedule(graph)
        frontier = self.frontier_class(graph)
        no_table = np.zeros(0, np.int64)
        batch_type, batch_ptr, order, _, _ = frontier.run_by_rule(no_table, -1, no_table, no_table, 2)
        return self._compiled_schedule(graph, frontier, batch_type, batch_ptr, order)


register_policy("typewise", TypewisePolicy())
