"""Host-side graph analysis: topological levels, depth, type-wise depth, lower bound.

Vectorised NumPy over the CSR arrays of a :class:`~edbatch_jax.graph.Graph`
(the type-wise depths: one NumPy step per topological level); the depth
itself, a sequential walk, is a compiled kernel (:mod:`edbatch_jax.graph.kernels`).
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.graph.csr import csr_rows
from edbatch_jax.graph.graph import Graph, GraphError
from edbatch_jax.graph.kernels import consumers, kahn_depth

__all__ = [
    "children",
    "node_depth",
    "topological_order",
    "typewise_depth",
    "type_depths",
    "lower_bound",
]


def children(graph: Graph) -> tuple[np.ndarray, np.ndarray]:
    """Reverse adjacency in CSR form: ``(child_ptr int32 [N+1], child_idx int32 [E])``.

    The consumers of node ``u`` are ``child_idx[child_ptr[u]:child_ptr[u+1]]``
    (a node that reads ``u`` twice appears twice).
    """
    return consumers(graph.arg_ptr, graph.arg_idx, graph.num_nodes)  # one compiled pass


def _find_cycle(graph: Graph, remaining: np.ndarray) -> list[int]:
    """Walks argument edges inside the unfinished nodes until a node repeats."""
    left = np.zeros(graph.num_nodes, dtype=bool)
    left[remaining] = True
    v = int(remaining[0])
    seen: dict[int, int] = {}
    path: list[int] = []
    while v not in seen:
        seen[v] = len(path)
        path.append(v)
        args = graph.args(v)
        v = int(args[left[args]][0])
    return path[seen[v] :] + [v]


def node_depth(graph: Graph) -> np.ndarray:
    """int32 ``[N]``: longest path (in edges) from a node without arguments.

    Kahn's algorithm in one compiled pass over the reverse adjacency
    (:func:`~edbatch_jax.graph.kernels.kahn_depth`), O(N + E).

    Raises:
      GraphError: the graph has a cycle; the message lists the nodes on it.
    """
    ptr, child_idx = children(graph)
    depth = kahn_depth(ptr, child_idx, graph.arity.astype(np.int32))
    remaining = np.flatnonzero(depth < 0)
    if remaining.size:
        cycle = _find_cycle(graph, remaining)
        names = " -> ".join(f"{v} ({graph.op_types[graph.node_type[v]]})" for v in reversed(cycle))
        raise GraphError(f"the graph has a cycle: {names}")
    return depth


def topological_order(graph: Graph, depth: np.ndarray | None = None) -> np.ndarray:
    """int32 ``[N]``: node ids sorted by depth (ties by id); arguments come first."""
    depth = node_depth(graph) if depth is None else depth
    return np.argsort(depth, kind="stable").astype(np.int32)


def typewise_depth(graph: Graph, depth: np.ndarray | None = None) -> np.ndarray:
    """int32 ``[N, T]``: ``d_t(v)``, the most type-``t`` nodes on a path ending at ``v``.

    ``d_t(v) = [type(v) = t] + max over arguments u of d_t(u)``, computed one
    topological level at a time.
    """
    depth = node_depth(graph) if depth is None else depth
    n, t = graph.num_nodes, graph.num_types
    d = np.zeros((n, t), dtype=np.int32)
    d[np.arange(n), graph.node_type] = 1
    order = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[order], np.arange(1, depth.max() + 1 if n else 1))
    for level_nodes in np.split(order, bounds)[1:]:
        flat, seg = csr_rows(graph.arg_ptr, graph.arg_idx, level_nodes)
        starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
        d[level_nodes] += np.maximum.reduceat(d[flat], starts, axis=0)
    return d


def type_depths(graph: Graph, depth: np.ndarray | None = None) -> np.ndarray:
    """int32 ``[T]``: ``D_t(G)``, the most type-``t`` nodes on any directed path."""
    return typewise_depth(graph, depth).max(axis=0)


def lower_bound(graph: Graph) -> int:
    """Lower bound on the number of batches of any valid schedule.

    ``LB = #unbatchable nodes + sum over batchable types t of D_t(G)``: two nodes
    on one path can never share a batch, and unbatchable nodes run alone.
    """
    d = type_depths(graph)
    unbatchable = graph.type_is_unbatchable
    counts = np.bincount(graph.node_type, minlength=graph.num_types)
    return int(d[~unbatchable].sum() + counts[unbatchable].sum())
