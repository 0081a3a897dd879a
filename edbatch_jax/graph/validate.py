"""Checks of a graph's invariants and of node ids given by a user.

Every check is vectorised NumPy over whole arrays (loops run over fields, op
types and payload leaves, never over nodes), and runs in an order in which no
check indexes an array an earlier check has not vouched for: whatever is
wrong is reported as a :class:`~edbatch_jax.graph.GraphError` naming the
culprit, never as an ``IndexError`` from inside NumPy.

Host-side NumPy; not jittable.
"""

from __future__ import annotations

import numbers

import jax
import numpy as np

from edbatch_jax.errors import input_checks_enabled
from edbatch_jax.graph.analysis import node_depth
from edbatch_jax.graph.graph import Graph, GraphError, check_int32_payloads
from edbatch_jax.graph.kernels import first_defect

__all__ = ["check_node_ids", "ensure_valid", "mark_valid", "validate_graph"]

_INDEX_FIELDS = ("node_type", "arg_ptr", "arg_idx", "instance", "payload_row")


def check_node_ids(graph: Graph, nodes, what: str = "output node") -> np.ndarray:
    """The node ids ``nodes`` as int64 ``[K]``, checked; ``None`` means every node.

    Args:
      graph: the graph the ids refer to.
      nodes: an int, or a 1-D sequence or array of ints (Python or NumPy),
        or ``None`` for all nodes.
      what: what the ids are, for messages (e.g. ``"output node"``).

    Returns:
      int64 ``[K]``, the ids in the order given.

    Raises:
      GraphError: ``nodes`` is not integer node ids (floats, a boolean mask,
        strings, nested or ragged sequences), or names a node that does not
        exist.
    """
    n = graph.num_nodes
    if nodes is None:
        return np.arange(n)
    expected = f"expected {what} ids: an int, or a 1-D sequence or array of ints in 0..{n - 1}"
    if isinstance(nodes, (str, bytes)):
        raise GraphError(f"{expected}; got the string {nodes!r}")
    try:
        ids = np.asarray(nodes)
    except (ValueError, TypeError) as exc:
        raise GraphError(f"{expected}; got {type(nodes).__name__} {nodes!r:.80}, which is not one ({exc})") from None
    if ids.dtype.kind == "b":
        raise GraphError(
            f"{expected}; got a boolean mask of shape {list(ids.shape)}, which would be read as ids 0 and 1: "
            f"pass np.flatnonzero(mask) for the ids where the mask is true"
        )
    if ids.ndim > 1:
        raise GraphError(f"{expected}; got an array of shape {list(ids.shape)} (pass a flat list of ids)")
    if ids.size == 0:
        return np.zeros(0, np.int64)
    if ids.dtype.kind not in "iu":
        integral = ids.dtype.kind == "O" and all(
            isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)) for x in ids.reshape(-1)
        )  # Python ints beyond int64: kept as objects, they fail the range check below
        if not integral:
            kind = {"f": "floats", "c": "complex numbers", "U": "strings", "S": "bytes", "M": "dates"}.get(
                ids.dtype.kind, f"values of dtype {ids.dtype}"
            )
            raise GraphError(
                f"{expected}; got {kind} {ids.reshape(-1)[:5].tolist()!r} (convert whole-number values with "
                f"np.asarray(ids, dtype=np.int64) once they are known to be whole)"
            )
    ids = ids.reshape(-1)
    bad = ids[((ids < 0) | (ids >= n)).astype(bool)]
    if bad.size:
        raise GraphError(f"{what} {bad[0]} does not exist (the graph has {n} nodes)")
    return ids.astype(np.int64)


def validate_graph(graph: Graph) -> None:
    """Checks a graph's invariants; raises :class:`GraphError` naming the culprit.

    Checked, in this order (so that no check indexes an array before it is
    known to be safe): the meta fields (op type names distinct strings,
    ``unbatchable`` a tuple of str, which may name op types the graph does not
    use, ``num_instances`` an int); every index field a 1-D NumPy integer
    array, of consistent lengths; ``arg_ptr`` a valid CSR offset array; op
    type ids, instance ids and argument ids in range; one payload entry per op
    type, each leaf an array with one row per node of its type; payload rows
    (the node's rank among the nodes of its type); integer payload values
    that fit int32; acyclicity (a cycle is reported with the nodes on it).

    Args:
      graph: a :class:`Graph` (one instance or a batched graph).

    Raises:
      GraphError: the first broken invariant, naming the node, op type,
        instance and argument position where they apply.
    """
    if not isinstance(graph, Graph):
        several = " (for several graphs, validate eb.batch_graphs(graphs))" if isinstance(graph, (list, tuple)) else ""
        raise GraphError(f"validate_graph expects a Graph, got {type(graph).__name__}{several}")
    _check_meta(graph)
    n = _check_fields(graph)
    op_types, node_type, instance = graph.op_types, graph.node_type, graph.instance
    num_types = len(op_types)

    # every index invariant in one compiled pass; the first broken one is named below, in this order
    kind, at = first_defect(
        node_type, num_types, instance, int(graph.num_instances), graph.arg_ptr, graph.arg_idx, graph.payload_row
    )
    if kind == 1:
        raise GraphError(
            f"node {at} has op type id {node_type[at]}, outside 0..{num_types - 1} (op_types has {num_types} "
            f"names; instance {instance[at]})"
        )
    if graph.num_instances < 1:
        raise GraphError(f"num_instances is {graph.num_instances} but the graph has {n} nodes (it must be >= 1)")
    if kind == 2:
        raise GraphError(
            f"node {at} (op {op_types[node_type[at]]!r}): instance id {instance[at]} is outside "
            f"0..{graph.num_instances - 1} (num_instances={graph.num_instances})"
        )
    arg_idx = graph.arg_idx
    if kind == 3:
        v = int(np.searchsorted(graph.arg_ptr, at, side="right") - 1)
        raise GraphError(
            f"node {v} (op {op_types[node_type[v]]!r}): argument {arg_idx[at]} does not exist (argument position "
            f"{at - int(graph.arg_ptr[v])} of the node, instance {instance[v]}; the graph has {n} nodes, "
            f"ids 0..{n - 1})"
        )

    if not isinstance(graph.payloads, (tuple, list)) or len(graph.payloads) != num_types:
        got = len(graph.payloads) if isinstance(graph.payloads, (tuple, list)) else type(graph.payloads).__name__
        raise GraphError(f"payloads must have one entry per op type ({num_types}), got {got}")
    counts = np.bincount(node_type, minlength=num_types)
    for t, tree in enumerate(graph.payloads):
        if tree is None:
            continue
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")) or len(leaf.shape) == 0:
                where = jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(tree)[i][0]) or "the payload"
                got = f"shape {list(leaf.shape)}" if hasattr(leaf, "shape") else type(leaf).__name__
                raise GraphError(
                    f"op type {op_types[t]!r}: payload leaf {where} must be an array with one row per node of the "
                    f"type ({counts[t]}), got {got}"
                )
            if leaf.shape[0] != counts[t]:
                raise GraphError(f"op type {op_types[t]!r}: payload has {leaf.shape[0]} rows for {counts[t]} nodes")
    if kind == 4:
        rank = int(np.count_nonzero(node_type[:at] == node_type[at]))
        raise GraphError(
            f"node {at}: payload_row is {graph.payload_row[at]} but must be {rank}, the node's rank among the "
            f"nodes of op type {op_types[node_type[at]]!r} (instance {instance[at]})"
        )
    check_int32_payloads(graph)
    if kind == 5:
        node_depth(graph)  # arguments are not all earlier nodes: look for a cycle (named if found)
    mark_valid(graph)


_VALID = "_edbatch_valid"  # attribute set on a Graph object that is valid (checked, or valid by construction)


def mark_valid(graph: Graph) -> Graph:
    """Marks ``graph`` (this object) as valid, so that :func:`ensure_valid` does not check it again; returns it.

    :func:`validate_graph` marks what it passed; :class:`~edbatch_jax.graph.GraphBuilder`,
    :func:`~edbatch_jax.graph.batch_graphs` and the library's vectorised graph
    constructions mark graphs valid by construction. A graph rebuilt from its
    pytree leaves, or by ``dataclasses.replace``, is a new object, unmarked.
    """
    object.__setattr__(graph, _VALID, True)
    return graph


def ensure_valid(graph, what: str = "a Graph") -> Graph:
    """``graph``, checked once: :func:`validate_graph` unless it is already marked valid (:func:`mark_valid`).

    The entry check of scheduling, layout planning and the engines: a graph
    made by hand (the ``Graph`` constructor) is validated in full the first
    time it enters, which costs about 0.05 us per node when its arguments
    are earlier nodes (no cycle search needed); graphs from the builder or
    ``batch_graphs`` are not checked again. Skipped inside
    ``eb.input_checks(False)``.

    Raises:
      GraphError: ``graph`` is not a Graph (a list of graphs gets the hint to
        use ``eb.batch_graphs``), or is not valid (:func:`validate_graph`).
    """
    if not isinstance(graph, Graph):
        if isinstance(graph, (list, tuple)) and any(isinstance(g, Graph) for g in graph):
            raise GraphError(
                f"expected {what}, got a {type(graph).__name__} of {len(graph)} graphs; batch them into one graph "
                "first with eb.batch_graphs(graphs) (and split results per instance with graph.instance)"
            )
        raise GraphError(f"expected {what}, got {type(graph).__name__}")
    if not getattr(graph, _VALID, False) and input_checks_enabled():
        validate_graph(graph)
    return graph


def _check_meta(graph: Graph) -> None:
    """The static fields: op type names, unbatchable names, the number of instances."""
    op_types = graph.op_types
    if not isinstance(op_types, tuple) or not all(isinstance(t, str) and t for t in op_types):
        raise GraphError(f"op_types must be a tuple of non-empty str, got {op_types!r:.200}")
    if len(set(op_types)) != len(op_types):
        seen: dict[str, int] = {}
        for k, t in enumerate(op_types):  # over op types, not nodes
            if t in seen:
                raise GraphError(
                    f"op_types names {t!r} twice, as op type ids {seen[t]} and {k}: op type names must be distinct"
                )
            seen[t] = k
    unbatchable = graph.unbatchable
    if not isinstance(unbatchable, tuple) or not all(isinstance(u, str) and u for u in unbatchable):
        hint = " (a bare string would be read letter by letter)" if isinstance(unbatchable, str) else ""
        raise GraphError(f"unbatchable must be a tuple of non-empty str, got {unbatchable!r:.200}{hint}")
    num_instances = graph.num_instances
    if isinstance(num_instances, (bool, np.bool_)) or not isinstance(num_instances, (int, np.integer)):
        raise GraphError(f"num_instances must be an int, got {type(num_instances).__name__} {num_instances!r:.50}")


def _check_fields(graph: Graph) -> int:
    """The index fields: 1-D NumPy integer arrays of consistent lengths, ``arg_ptr`` valid CSR; returns ``N``."""
    for name in _INDEX_FIELDS:
        x = getattr(graph, name)
        if not isinstance(x, np.ndarray):
            raise GraphError(f"{name} must be a NumPy integer array, got {type(x).__name__}")
        if x.dtype.kind not in "iu" or not np.can_cast(x.dtype, np.int64):
            raise GraphError(
                f"{name} must be an integer array (int32, or an integer dtype that casts to int64), got dtype {x.dtype}"
            )
        if x.ndim != 1:
            raise GraphError(f"{name} must be 1-D, got shape {list(x.shape)}")
    n = graph.node_type.shape[0]
    if n == 0:
        raise GraphError("empty graph: it has no nodes")
    for name in ("instance", "payload_row"):
        shape = getattr(graph, name).shape
        if shape != (n,):
            raise GraphError(f"{name} must have shape [{n}] (one entry per node, as node_type), got {list(shape)}")
    arg_ptr, num_edges = graph.arg_ptr, graph.arg_idx.shape[0]
    if arg_ptr.shape != (n + 1,):
        raise GraphError(
            f"arg_ptr must have shape [{n + 1}] (node_type has {n} nodes), got {list(arg_ptr.shape)}; it must also "
            f"start at 0 and end at {num_edges}, the length of arg_idx"
        )
    if arg_ptr[0] != 0 or arg_ptr[-1] != num_edges:
        raise GraphError(
            f"arg_ptr must start at 0 and end at {num_edges}, the length of arg_idx; "
            f"it runs {arg_ptr[0]}..{arg_ptr[-1]}"
        )
    if np.any(arg_ptr[1:] < arg_ptr[:-1]):
        v = int(np.flatnonzero(arg_ptr[1:] < arg_ptr[:-1])[0])
        raise GraphError(f"arg_ptr must be non-decreasing: node {v} has arguments {arg_ptr[v]}..{arg_ptr[v + 1]}")
    return n
