"""Batching graphs: the disjoint union of instances and its inverse (as ``jraph.batch`` / ``unbatch``).

Host-side, vectorised NumPy; not jittable (the result's sizes depend on the inputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from edbatch_jax.errors import input_checks_enabled
from edbatch_jax.graph.csr import csr_rows, payload_rows
from edbatch_jax.graph.graph import Graph, GraphError, unbatchable_order
from edbatch_jax.graph.validate import ensure_valid, mark_valid, validate_graph

__all__ = ["batch_graphs", "unbatch_graph"]


def batch_graphs(graphs: Sequence[Graph]) -> Graph:
    """Disjoint union of graphs (like ``jraph.batch``).

    Node ids of graph ``k`` are offset by the total number of nodes before it,
    instance ids by the total number of instances before it. Op types are
    merged by name in order of first appearance (the graphs may list them in
    different orders). ``unbatchable`` is the union of the graphs' names:
    those of op types present in op-type order, then the others in order of
    first appearance.

    Args:
      graphs: a list (or other sequence) of :class:`Graph`.

    Raises:
      GraphError: ``graphs`` is a single graph or not a sequence of graphs
        (naming the first element that is not a graph), the list is empty,
        or two graphs disagree on the payload structure of an op type.
    """
    if isinstance(graphs, Graph):
        raise GraphError(f"batch_graphs takes a list of graphs, got a single {graphs!r}; pass [graph]")
    if isinstance(graphs, (str, bytes)) or not hasattr(graphs, "__iter__"):
        raise GraphError(f"batch_graphs takes a list of graphs, got {type(graphs).__name__}")
    graphs = list(graphs)
    if not graphs:
        raise GraphError("batch_graphs got an empty batch: no graphs to batch")
    for k, g in enumerate(graphs):  # over graphs, not nodes
        if not isinstance(g, Graph):
            nested = " (a nested list: pass one flat list of graphs)" if isinstance(g, (list, tuple)) else ""
            raise GraphError(f"batch_graphs: element {k} is a {type(g).__name__}, not a Graph{nested}")
        try:
            ensure_valid(g)  # a graph made by hand is checked before its arrays are concatenated
        except GraphError as e:
            raise GraphError(f"batch_graphs: graph {k}: {e}") from None
    types: list[str] = []
    index: dict[str, int] = {}
    for g in graphs:
        for t in g.op_types:
            if t not in index:
                index[t] = len(types)
                types.append(t)
    node_offsets = np.cumsum([0] + [g.num_nodes for g in graphs])
    inst_offsets = np.cumsum([0] + [g.num_instances for g in graphs])
    node_type = np.concatenate(
        [np.asarray([index[t] for t in g.op_types], dtype=np.int32)[g.node_type] for g in graphs]
    )
    arg_idx = np.concatenate([g.arg_idx + o for g, o in zip(graphs, node_offsets)]).astype(np.int32)
    arity = np.concatenate([g.arity for g in graphs])
    instance = np.concatenate([g.instance + o for g, o in zip(graphs, inst_offsets)]).astype(np.int32)

    payloads = []
    for t in types:
        parts, spec, owner = [], None, None
        for k, g in enumerate(graphs):
            if t not in g.op_types:
                continue
            tree = g.payloads[g.op_types.index(t)]
            if not np.any(g.node_type == g.op_types.index(t)):
                continue
            s = (
                None
                if tree is None
                else (jax.tree.structure(tree), tuple((x.shape[1:], x.dtype) for x in jax.tree.leaves(tree)))
            )
            if owner is None:
                spec, owner = s, k
            elif s != spec:
                raise GraphError(
                    f"batch_graphs: op type {t!r} has payload {s} in graph {k} but {spec} in graph {owner}"
                )
            if tree is not None:
                parts.append(tree)
        payloads.append(jax.tree.map(lambda *xs: np.concatenate(xs), *parts) if parts else None)

    batched = Graph(
        node_type=node_type,
        arg_ptr=np.concatenate([[0], np.cumsum(arity, dtype=np.int64)]).astype(np.int32),
        arg_idx=arg_idx,
        instance=instance,
        payload_row=payload_rows(node_type, len(types)),
        payloads=tuple(payloads),
        op_types=tuple(types),
        num_instances=int(inst_offsets[-1]),
        unbatchable=unbatchable_order(types, [u for g in graphs for u in g.unbatchable]),
    )
    return mark_valid(batched) if input_checks_enabled() else batched  # a union of valid graphs is valid


def unbatch_graph(graph: Graph) -> list[Graph]:
    """Splits a batched graph into one graph per instance (inverse of :func:`batch_graphs`).

    Each returned graph keeps the full ``op_types`` tuple, so that
    ``batch_graphs(unbatch_graph(g))`` reproduces ``g`` exactly when the nodes of
    every instance are contiguous (as :func:`batch_graphs` makes them).

    Raises:
      GraphError: an argument edge crosses two instances.
    """
    validate_graph(graph)
    dst = graph.edge_dst()
    cross = np.flatnonzero(graph.instance[graph.arg_idx] != graph.instance[dst])
    if cross.size:
        e = cross[0]
        raise GraphError(
            f"cannot unbatch: node {dst[e]} (instance {graph.instance[dst[e]]}) reads node "
            f"{graph.arg_idx[e]} of instance {graph.instance[graph.arg_idx[e]]}"
        )
    order = np.argsort(graph.instance, kind="stable")
    counts = np.bincount(graph.instance, minlength=graph.num_instances)
    if counts.shape[0] != graph.num_instances or np.any(counts == 0):
        empty = np.flatnonzero(counts == 0)
        which = f"instance {empty[0]} has no nodes" if empty.size else "instance ids exceed num_instances"
        raise GraphError(f"cannot unbatch: {which} (num_instances={graph.num_instances})")
    local = np.empty(graph.num_nodes, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    local[order] = np.arange(graph.num_nodes) - np.repeat(starts, counts)
    out = []
    for i, (s, c) in enumerate(zip(starts, counts)):
        nodes = order[s : s + c]
        arity = graph.arity[nodes]
        flat = csr_rows(graph.arg_ptr, graph.arg_idx, nodes)[0]
        node_type = graph.node_type[nodes]
        payloads = []
        for t, tree in enumerate(graph.payloads):
            rows = graph.payload_row[nodes[node_type == t]]
            payloads.append(None if tree is None else jax.tree.map(lambda a: a[rows], tree))
        out.append(
            Graph(
                node_type=node_type.astype(np.int32),
                arg_ptr=np.concatenate([[0], np.cumsum(arity, dtype=np.int64)]).astype(np.int32),
                arg_idx=local[flat].astype(np.int32),
                instance=np.zeros(c, dtype=np.int32),
                payload_row=payload_rows(node_type.astype(np.int32), graph.num_types),
                payloads=tuple(payloads),
                op_types=graph.op_types,
                num_instances=1,
                unbatchable=graph.unbatchable,
            )
        )
    return out
