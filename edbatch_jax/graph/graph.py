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
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from edbatch_jax.errors import EdbatchError, input_checks_enabled
from edbatch_jax.graph.csr import payload_rows

PyTree = Any

__all__ = [
    "Graph",
    "GraphBuilder",
    "GraphError",
    "NodeId",
    "check_int32_payloads",
    "unbatchable_order",
]

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


class GraphError(EdbatchError):
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
      unbatchable: static tuple of op type names whose nodes must run alone;
        it may name op types that no node of this graph uses (as declared to
        :class:`GraphBuilder`), which the engine checks against its ops.
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


# --------------------------------------------------------------------------- payload values
def check_int32_payloads(graph: Graph) -> None:
    """Checks that every integer payload value fits int32; :class:`GraphError` naming the first that does not.

    JAX without 64-bit mode stores integer arrays as int32 and wraps a wider
    value silently (``2**32 + 3`` becomes ``3``), so an id that does not fit
    would read another row. Leaves of int8/int16/int32/uint8/uint16 and bool
    dtypes always fit and are not scanned; wider ones are checked with one
    minimum and maximum per leaf. Assumes the payload rows are consistent (as
    :func:`~edbatch_jax.graph.validate_graph` checks first).

    Args:
      graph: the graph whose payloads to check.

    Raises:
      GraphError: a value outside ``-2**31 .. 2**31 - 1``, naming the op type,
        node, instance and value.
    """
    for t, tree in enumerate(graph.payloads):
        if tree is None:
            continue
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            dtype = np.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
            if dtype.kind not in "iu" or dtype.itemsize < 4 or dtype == np.int32:
                continue
            leaf = np.asarray(leaf)
            if leaf.size == 0:
                continue
            low = 0 if dtype.kind == "u" else int(leaf.min())
            if low >= INT32_MIN and int(leaf.max()) <= INT32_MAX:
                continue
            flat = leaf.reshape(leaf.shape[0], -1)
            outside = (flat > INT32_MAX) if dtype.kind == "u" else (flat < INT32_MIN) | (flat > INT32_MAX)
            row = int(np.flatnonzero(outside.any(axis=1))[0])
            value = int(flat[row][outside[row]][0])
            v = int(np.flatnonzero(graph.node_type == t)[row])
            where = jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(tree)[i][0]) or "the payload"
            raise GraphError(
                f"node {v} (op {graph.op_types[t]!r}, instance {int(graph.instance[v])}): payload leaf {where} "
                f"({dtype}) holds {value}, which does not fit int32; ids and other integer payloads must fit int32 "
                f"({INT32_MIN}..{INT32_MAX}), since JAX stores them as int32 and would wrap {value} silently"
            )


def unbatchable_order(op_types: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
    """The canonical order of unbatchable names: those in ``op_types`` in op-type order, then the rest as given.

    :class:`GraphBuilder` and :func:`~edbatch_jax.graph.batch_graphs` both use
    it, so that batching one graph reproduces it exactly (same pytree
    structure).
    """
    names = tuple(dict.fromkeys(names))
    present = set(op_types)
    return tuple(t for t in op_types if t in names) + tuple(u for u in names if u not in present)


# --------------------------------------------------------------------------- node ids
class NodeId(int):
    """A node id returned by :meth:`GraphBuilder.add`: a plain ``int`` that remembers its builder.

    It is an ``int`` in every use (arithmetic, ``int()``, NumPy, hashing,
    printing; arithmetic returns plain ints); :meth:`GraphBuilder.add` uses the
    builder it remembers to refuse a node of another builder. Pickling and
    copying give a plain ``int``.

    Attributes:
      builder: a weak reference to the :class:`GraphBuilder` that returned the
        id (set by :meth:`GraphBuilder.add`), or ``None``.
    """

    builder: weakref.ref | None = None

    def __reduce__(self):
        return int, (int(self),)


def _unbatchable_names(unbatchable, what: str) -> tuple[str, ...]:
    """``unbatchable`` as a tuple of distinct non-empty str; :class:`GraphError` otherwise."""
    if isinstance(unbatchable, (str, bytes)):
        raise GraphError(
            f"{what}: unbatchable must be a sequence of op type names, got the string {unbatchable!r} "
            f"(which would be read letter by letter); pass ({unbatchable!r},)"
        )
    try:
        names = tuple(unbatchable)
    except TypeError:
        raise GraphError(
            f"{what}: unbatchable must be a sequence of op type names, got {type(unbatchable).__name__}"
        ) from None
    bad = [u for u in names if not isinstance(u, str) or not u]
    if bad:
        raise GraphError(f"{what}: unbatchable must hold non-empty op type names (str), got {bad[0]!r} in {names!r}")
    return tuple(dict.fromkeys(names))


# --------------------------------------------------------------------------- helpers
def _leaf_spec(tree: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((np.shape(x), np.asarray(x).dtype) for x in leaves)


def _describe_spec(spec: tuple) -> str:
    treedef, leaves = spec
    return f"{treedef} with leaves {[f'{d}{list(s)}' for s, d in leaves]}"


class GraphBuilder:
    """Define-by-run construction of one instance's graph, in the style of DyNet.

    Example::

      b = eb.GraphBuilder()
      x = b.add("leaf", payload=np.int32(7))
      y = b.add("leaf", payload=np.int32(3))
      z = b.add("internal", x, y)
      graph = b.build()

    Every call to :meth:`add` returns the new node's id (a :class:`NodeId`,
    an ``int``). Arguments must be ids returned earlier by this builder, so a
    builder cannot make a cycle; an id returned by another builder is refused.
    All payloads of one op type must share one pytree structure, leaf shapes
    and dtypes; integer payload values must fit int32 (checked by
    :meth:`build`).

    Args:
      unbatchable: names of the op types whose nodes must run alone (a
        sequence of str, not one str). The built graph keeps every declared
        name, also one no node uses, so that a misspelt name can be reported
        against the model's ops.
    """

    def __init__(self, unbatchable: Sequence[str] = ()):
        self._unbatchable = _unbatchable_names(unbatchable, "GraphBuilder")
        self._ref = weakref.ref(self)
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

    def add(self, op: str, *args: int, payload: PyTree = None) -> NodeId:
        """Adds a node of op type ``op`` reading ``args``; returns its id.

        Args:
          op: the op type name (a non-empty str).
          *args: the argument node ids, in order: ids returned by this
            builder's :meth:`add` (or plain ints naming its nodes).
          payload: the node's payload (a pytree of arrays), or ``None``.

        Returns:
          The new node's id, a :class:`NodeId`.

        Raises:
          GraphError: a bad op name, an argument that is not a node id of
            this builder, or a payload whose structure differs from the
            earlier payloads of ``op``.
        """
        if not isinstance(op, str) or not op:
            raise GraphError(f"op type must be a non-empty string, got {op!r}")
        n = len(self._node_type)
        ref = self._ref
        for a in args:
            if type(a) is NodeId:
                if a.builder is ref:
                    continue  # returned by this builder's add: the node exists
                if a.builder is not None:
                    other = a.builder()
                    pos = next(k for k, b in enumerate(args) if b is a)
                    where = (
                        "a builder no longer alive"
                        if other is None
                        else f"another GraphBuilder ({other.num_nodes} nodes)"
                    )
                    raise GraphError(
                        f"node {n} (op {op!r}): argument {pos} is node {int(a)} of {where}, not of this GraphBuilder "
                        f"({n} nodes so far); a node id is only valid in the builder whose add returned it"
                    )
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
        node = NodeId(n)
        node.builder = self._ref
        return node

    def build(self) -> Graph:
        """Returns the immutable :class:`Graph` of the nodes added so far.

        Its ``unbatchable`` lists the declared names of op types that occur in
        op-type order, then the other declared names in declaration order.

        Raises:
          GraphError: no node was added, or an integer payload value does not
            fit int32.
        """
        if not self._node_type:
            raise GraphError("cannot build an empty graph: no node was added")
        node_type = np.asarray(self._node_type, dtype=np.int32)
        payloads = tuple(
            None if spec is None else jax.tree.map(lambda *xs: np.stack(xs), *rows)
            for spec, rows in zip(self._payload_spec, self._payloads)
        )
        graph = Graph(
            node_type=node_type,
            arg_ptr=np.concatenate([[0], np.cumsum(self._arity, dtype=np.int64)]).astype(np.int32),
            arg_idx=np.asarray(self._args, dtype=np.int32),
            instance=np.zeros(len(node_type), dtype=np.int32),
            payload_row=payload_rows(node_type, len(self._types)),
            payloads=payloads,
            op_types=tuple(self._types),
            num_instances=1,
            unbatchable=unbatchable_order(self._types, self._unbatchable),
        )
        if input_checks_enabled():
            check_int32_payloads(graph)
            object.__setattr__(graph, "_edbatch_valid", True)  # valid by construction (validate.mark_valid)
        return graph
