"""Checks of a graph's invariants and of node ids given by a user.

Host-side NumPy; not jittable.
"""

from __future__ import annotations

import jax
import numpy as np

from edbatch_jax.graph.analysis import node_depth
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.graph.graph import Graph, GraphError

__all__ = ["check_node_ids", "validate_graph"]


def check_node_ids(graph: Graph, nodes, what: str = "output node") -> np.ndarray:
    """int64 ``[K]`` node ids (all nodes if ``None``); :class:`GraphError` naming one that does not exist."""
    nodes = np.arange(graph.num_nodes) if nodes is None else np.asarray(nodes, dtype=np.int64).reshape(-1)
    bad = nodes[(nodes < 0) | (nodes >= graph.num_nodes)]
    if bad.size:
        raise GraphError(f"{what} {bad[0]} does not exist (the graph has {graph.num_nodes} nodes)")
    return nodes


def validate_graph(graph: Graph) -> None:
    """Checks a graph's invariants; raises :class:`GraphError` naming the culprit.

    Checks array shapes, argument ids in range, payload rows, and acyclicity
    (a cycle is reported with the nodes on it).
    """
    n = graph.num_nodes
    if n == 0:
        raise GraphError("empty graph: it has no nodes")
    if graph.arg_ptr.shape != (n + 1,) or graph.arg_ptr[0] != 0 or graph.arg_ptr[-1] != graph.num_edges:
        raise GraphError(f"arg_ptr must have shape [{n + 1}], start at 0 and end at {graph.num_edges}")
    if np.any(np.diff(graph.arg_ptr) < 0):
        raise GraphError("arg_ptr must be non-decreasing")
    for name in ("instance", "payload_row"):
        if getattr(graph, name).shape != (n,):
            raise GraphError(f"{name} must have shape [{n}]")
    bad_type = np.flatnonzero((graph.node_type < 0) | (graph.node_type >= graph.num_types))
    if bad_type.size:
        v = bad_type[0]
        raise GraphError(f"node {v} has op type id {graph.node_type[v]}, outside 0..{graph.num_types - 1}")
    bad = np.flatnonzero((graph.arg_idx < 0) | (graph.arg_idx >= n))
    if bad.size:
        e = bad[0]
        v = int(np.searchsorted(graph.arg_ptr, e, side="right") - 1)
        raise GraphError(
            f"node {v} (op {graph.op_types[graph.node_type[v]]!r}): argument {graph.arg_idx[e]} does not exist "
            f"(the graph has {n} nodes)"
        )
    rows = payload_rows(graph.node_type, graph.num_types)
    if not np.array_equal(graph.payload_row, rows):
        v = int(np.flatnonzero(graph.payload_row != rows)[0])
        raise GraphError(
            f"node {v}: payload_row is {graph.payload_row[v]} but must be {rows[v]}, the node's rank among the "
            f"nodes of op type {graph.op_types[graph.node_type[v]]!r}"
        )
    if len(graph.payloads) != graph.num_types:
        raise GraphError(f"payloads must have one entry per op type ({graph.num_types}), got {len(graph.payloads)}")
    counts = np.bincount(graph.node_type, minlength=graph.num_types)
    for t, tree in enumerate(graph.payloads):
        if tree is None:
            continue
        for leaf in jax.tree.leaves(tree):
            if leaf.shape[0] != counts[t]:
                raise GraphError(
                    f"op type {graph.op_types[t]!r}: payload has {leaf.shape[0]} rows for {counts[t]} nodes"
                )
    node_depth(graph)
