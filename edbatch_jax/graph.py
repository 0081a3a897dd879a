"""Dataflow graphs of dynamic networks as pure pytrees.

A :class:`Graph` holds the dataflow graph of one input instance, or the
disjoint union of many (a *batched* graph, see :func:`batch_graphs`). Nodes are
numbered ``0 .. N-1``; every node has an op type, an ordered list of argument
nodes (any arity, including zero and variable arity) and an optional payload
(a pytree of arrays, e.g. a token id or a label). Arguments are stored in CSR
form (``arg_ptr``/``arg_idx``), payloads are stacked per op type.

All arrays are host NumPy arrays: graphs are planned on the host, and only the
states computed by the engine live on the accelerator. ``Graph`` is registered
as a pytree whose static (meta) fields are the op type names, the unbatchable
op types and the number of instances.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

PyTree = Any

__all__ = [
    "Graph",
    "GraphBuilder",
    "GraphError",
    "batch_graphs",
    "unbatch_graph",
    "validate_graph",
]


class GraphError(ValueError):
    """A graph is malformed: a cycle, a dangling argument, a bad payload."""


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["node_type", "arg_ptr", "arg_idx", "instance", "payload_row", "payloads"],
    meta_fields=["op_types", "num_instances", "unbatchable"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """A dataflow graph (one instance, or the disjoint union of many).

    Attributes:
      node_type: int32 ``[N]``, index into ``op_types``.
      arg_ptr: int32 ``[N + 1]``, CSR offsets: the arguments of node ``v`` are
        ``arg_idx[arg_ptr[v]:arg_ptr[v + 1]]``, in order.
      arg_idx: int32 ``[E]``, argument node ids.
      instance: int32 ``[N]``, which instance each node belongs to.
      payload_row: int32 ``[N]``, row of node ``v`` in ``payloads[node_type[v]]``.
      payloads: tuple with one entry per op type: a pytree of arrays whose
        leading dimension is the number of nodes of that type, or ``None``.
      op_types: static tuple of op type names.
      num_instances: static number of instances.
      unbatchable: static tuple of op type names whose nodes must run alone.
    """

    node_type: np.ndarray
    arg_ptr: np.ndarray
    arg_idx: np.ndarray
    instance: np.ndarray
    payload_row: np.ndarray
    payloads: tuple
    op_types: tuple[str, ...]
    num_instances: int
    unbatchable: tuple[str, ...] = ()

    # ----------------------------------------------------------------- sizes
    @property
    def num_nodes(self) -> int:
        """Number of nodes ``N``."""
        return int(self.node_type.shape[0])

    @property
    def num_edges(self) -> int:
        """Number of argument edges ``E``."""
        return int(self.arg_idx.shape[0])

    @property
    def num_types(self) -> int:
        """Number of op types ``T``."""
        return len(self.op_types)

    @property
    def arity(self) -> np.ndarray:
        """int32 ``[N]``: number of arguments of every node."""
        return np.diff(self.arg_ptr).astype(np.int32)

    def type_id(self, op: str) -> int:
        """Index of op type ``op`` in ``op_types``; ``KeyError`` naming it if absent."""
        try:
            return self.op_types.index(op)
        except ValueError:
            raise KeyError(f"op type {op!r} is not in this graph; its op types are {list(self.op_types)}") from None

    def nodes_of_type(self, op: str) -> np.ndarray:
        """int32 ids of the nodes of op type ``op``, ascending."""
        return np.flatnonzero(self.node_type == self.type_id(op)).astype(np.int32)

    def args(self, v: int) -> np.ndarray:
        """Argument node ids of node ``v``."""
        return self.arg_idx[self.arg_ptr[v] : self.arg_ptr[v + 1]]

    def payload(self, v: int) -> PyTree:
        """The payload pytree of node ``v`` (NumPy leaves), or ``None``."""
        tree = self.payloads[self.node_type[v]]
        if tree is None:
            return None
        row = self.payload_row[v]
        return jax.tree.map(lambda a: a[row], tree)

    @property
    def type_is_unbatchable(self) -> np.ndarray:
        """bool ``[T]``: whether each op type is unbatchable."""
        return np.array([t in self.unbatchable for t in self.op_types], dtype=bool)

    def edge_dst(self) -> np.ndarray:
        """int32 ``[E]``: the node that consumes each argument edge."""
        return np.repeat(np.arange(self.num_nodes, dtype=np.int32), self.arity)

    def __repr__(self) -> str:
        return (
            f"Graph(nodes={self.num_nodes}, edges={self.num_edges}, "
            f"instances={self.num_instances}, op_types={list(self.op_types)})"
        )


# --------------------------------------------------------------------------- helpers
def _leaf_spec(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), np.asarray(x).dtype) for x in leaves)


def _describe_spec(spec: tuple) -> str:
    treedef, leaves = spec
    return f"{treedef} with leaves {[f'{d}{list(s)}' for s, d in leaves]}"


def _payload_rows(node_type: np.ndarray, num_types: int) -> np.ndarray:
    """Rank of each node among the nodes of its type (vectorised)."""
    if num_types <= 8:  # a mask per type costs less than a stable sort
        rows = np.empty(node_type.shape[0], np.int32)
        for t in range(num_types):
            mask = node_type == t
            rows[mask] = np.arange(np.count_nonzero(mask), dtype=np.int32)
        return rows
    order = np.argsort(node_type, kind="stable")
    counts = np.bincount(node_type, minlength=num_types)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = np.empty_like(node_type)
    rows[order] = np.arange(node_type.shape[0], dtype=np.int32) - np.repeat(starts, counts).astype(np.int32)
    return rows.astype(np.int32)


class GraphBuilder:
    """Define-by-run construction of one instance's graph, in the style of DyNet.

    Example::

      b = eb.GraphBuilder()
      x = b.add("leaf", payload=np.int32(7))
      y = b.add("leaf", payload=np.int32(3))
      z = b.add("internal", x, y)
      graph = b.build()

    Every call to :meth:`add` returns the new node's id. Arguments must be ids
    returned earlier, so a builder cannot make a cycle. All payloads of one op
    type must share one pytree structure, leaf shapes and dtypes.
    """

    def __init__(self, unbatchable: Sequence[str] = ()):
        self._unbatchable = tuple(unbatchable)
        self._type_index: dict[str, int] = {}
        self._types: list[str] = []
        self._node_type: list[int] = []
        self._arity: list[int] = []
        self._args: list[int] = []
        self._payloads: list[list[PyTree]] = []
        self._payload_spec: list[tuple | None] = []

    @property
    def num_nodes(self) -> int:
        """Nodes added so far."""
        return len(self._node_type)

    def add(self, op: str, *args: int, payload: PyTree = None) -> int:
        """Adds a node of op type ``op`` reading ``args``; returns its id."""
        if not isinstance(op, str) or not op:
            raise GraphError(f"op type must be a non-empty string, got {op!r}")
        n = len(self._node_type)
        for a in args:
            if isinstance(a, (bool, np.bool_)) or not isinstance(a, (int, np.integer)):
                raise GraphError(f"node {n} (op {op!r}): argument {a!r} is not a node id (an int)")
            if not 0 <= a < n:
                raise GraphError(
                    f"node {n} (op {op!r}): argument {int(a)} does not exist (the graph has {n} nodes so far)"
                )
        t = self._type_index.get(op)
        spec = None if payload is None else _leaf_spec(payload)
        if t is None:
            t = self._type_index[op] = len(self._types)
            self._types.append(op)
            self._payloads.append([])
            self._payload_spec.append(spec)
        elif spec != self._payload_spec[t]:
            expected = "no payload" if self._payload_spec[t] is None else _describe_spec(self._payload_spec[t])
            got = "no payload" if spec is None else _describe_spec(spec)
            raise GraphError(f"node {n} (op {op!r}): payload shape mismatch: expected {expected}, got {got}")
        self._node_type.append(t)
        self._arity.append(len(args))
        self._args.extend(int(a) for a in args)
        if payload is not None:
            self._payloads[t].append(jax.tree.map(np.asarray, payload))
        return n

    def build(self) -> Graph:
        """Returns the immutable :class:`Graph` of the nodes added so far."""
        if not self._node_type:
            raise GraphError("cannot build an empty graph: no node was added")
        node_type = np.asarray(self._node_type, dtype=np.int32)
        payloads = tuple(
            None if spec is None else jax.tree.map(lambda *xs: np.stack(xs), *rows)
            for spec, rows in zip(self._payload_spec, self._payloads)
        )
        return Graph(
            node_type=node_type,
            arg_ptr=np.concatenate([[0], np.cumsum(self._arity, dtype=np.int64)]).astype(np.int32),
            arg_idx=np.asarray(self._args, dtype=np.int32),
            instance=np.zeros(len(node_type), dtype=np.int32),
            payload_row=_payload_rows(node_type, len(self._types)),
            payloads=payloads,
            op_types=tuple(self._types),
            num_instances=1,
            unbatchable=tuple(t for t in self._types if t in self._unbatchable),
        )


def batch_graphs(graphs: Sequence[Graph]) -> Graph:
    """Disjoint union of graphs (like ``jraph.batch``).

    Node ids of graph ``k`` are offset by the total number of nodes before it,
    instance ids by the total number of instances before it. Op types are
    merged by name in order of first appearance.

    Raises:
      GraphError: the list is empty, or two graphs disagree on the payload
        structure of an op type.
    """
    graphs = list(graphs)
    if not graphs:
        raise GraphError("batch_graphs got an empty batch: no graphs to batch")
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

    return Graph(
        node_type=node_type,
        arg_ptr=np.concatenate([[0], np.cumsum(arity, dtype=np.int64)]).astype(np.int32),
        arg_idx=arg_idx,
        instance=instance,
        payload_row=_payload_rows(node_type, len(types)),
        payloads=tuple(payloads),
        op_types=tuple(types),
        num_instances=int(inst_offsets[-1]),
        unbatchable=tuple(sorted({u for g in graphs for u in g.unbatchable}, key=types.index)),
    )


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
        flat = _csr_rows(graph.arg_ptr, graph.arg_idx, nodes)[0]
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
                payload_row=_payload_rows(node_type.astype(np.int32), graph.num_types),
                payloads=tuple(payloads),
                op_types=graph.op_types,
                num_instances=1,
                unbatchable=graph.unbatchable,
            )
        )
    return out


def _csr_rows(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated CSR rows ``values[ptr[r]:ptr[r+1]]`` for ``r`` in ``rows``.

    Returns ``(flat, segment)`` where ``segment[k]`` is the position in ``rows``
    that ``flat[k]`` came from. Vectorised, no Python loop.
    """
    rows = np.asarray(rows)
    starts = ptr[rows]
    counts = ptr[rows + 1] - starts
    segment = np.repeat(np.arange(rows.shape[0], dtype=np.int32), counts)
    first = np.cumsum(counts) - counts
    pos = np.repeat(starts - first, counts) + np.arange(segment.shape[0])
    return values[pos], segment


def _csr_by_source(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups pairs ``(src[k], dst[k])`` by source: ``(ptr int32 [num_nodes+1], dst int32 [M])``.

    The targets of ``u`` are ``dst[ptr[u]:ptr[u+1]]`` in their original order.
    """
    order = np.argsort(src, kind="stable")
    ptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=num_nodes))]).astype(np.int32)
    return ptr, np.asarray(dst)[order].astype(np.int32)


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
    rows = _payload_rows(graph.node_type, graph.num_types)
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
    from edbatch_jax.analysis import node_depth  # cycle check lives with the depth computation

    node_depth(graph)
