"""Reusable hypothesis strategies and helpers for edbatch_jax graph tests.

Strategies (all produce :class:`edbatch_jax.Graph` objects built with
:class:`edbatch_jax.GraphBuilder`, or lists of them):

* :func:`trees` -- random binary trees with op types ``"leaf"`` (no argument,
  payload int32 scalar token), ``"internal"`` (2 arguments) and ``"loss"``
  (1 argument, payload int32 scalar label); the root always has a loss, other
  nodes sometimes do.
* :func:`dags` -- random DAGs: every node reads 0..``max_args`` earlier nodes
  (repeats allowed, so a node may read one node twice), 2..4 op types drawn
  from :data:`DAG_TYPES`, every type with a variable arity, payloads of
  several pytree shapes; optionally the unbatchable type :data:`UNBATCHABLE`.
* :func:`graph_lists` -- several instances (trees, DAGs or both); the
  unbatchable flag is drawn once per list so the instances agree on it.
* :func:`batched_graphs` -- ``eb.batch_graphs`` of a :func:`graph_lists` draw.

Helpers: :func:`node_records` (a graph as plain Python per-node records, for
node-for-node comparisons), :func:`assert_graphs_equal` (array-exact
equality), :func:`chain`, :func:`perfect_tree`, :func:`graph_from_records`.
"""

from __future__ import annotations

from collections.abc import Sequence

import hypothesis.strategies as st
import jax
import numpy as np

import edbatch_jax as eb

__all__ = [
    "DAG_TYPES",
    "TREE_TYPES",
    "UNBATCHABLE",
    "assert_graphs_equal",
    "batched_graphs",
    "chain",
    "dags",
    "graph_from_records",
    "graph_lists",
    "node_records",
    "perfect_tree",
    "trees",
]

TREE_TYPES = ("leaf", "internal", "loss")
DAG_TYPES = ("a", "b", "c", "d")
UNBATCHABLE = "u"


# --------------------------------------------------------------------------- payloads
def _dag_payload(draw, op: str):
    """A payload whose pytree structure depends only on the op type name."""
    if op == "a":
        return np.int32(draw(st.integers(-1000, 1000)))
    if op == "b":
        return np.asarray(draw(st.lists(st.integers(-50, 50), min_size=2, max_size=2)), dtype=np.float32)
    if op == "c":
        return None
    if op == "d":
        x = np.asarray(draw(st.lists(st.integers(0, 9), min_size=3, max_size=3)), dtype=np.int32)
        return {"x": x, "y": np.float32(draw(st.integers(-5, 5)))}
    if op == UNBATCHABLE:
        return np.int32(draw(st.integers(0, 99)))
    raise KeyError(op)


# --------------------------------------------------------------------------- trees
@st.composite
def trees(draw, min_leaves: int = 1, max_leaves: int = 8, unbatchable: bool = False) -> eb.Graph:
    """A random binary tree (any shape over ``1..max_leaves`` leaves).

    With ``unbatchable=True`` the ``"loss"`` type is marked unbatchable.
    """
    n_leaves = draw(st.integers(min_leaves, max_leaves))
    b = eb.GraphBuilder(unbatchable=("loss",) if unbatchable else ())

    def maybe_loss(v: int, force: bool = False) -> None:
        if force or draw(st.booleans()):
            b.add("loss", v, payload=np.int32(draw(st.integers(0, 4))))

    items = []
    for _ in range(n_leaves):
        v = b.add("leaf", payload=np.int32(draw(st.integers(0, 999))))
        items.append(v)
    # Merging two adjacent subtrees, n_leaves - 1 times, reaches every binary
    # tree shape over the ordered leaves.
    while len(items) > 1:
        i = draw(st.integers(0, len(items) - 2))
        left, right = items[i], items[i + 1]
        maybe_loss(left)
        maybe_loss(right)
        items[i : i + 2] = [b.add("internal", left, right)]
    maybe_loss(items[0], force=True)
    return b.build()


# --------------------------------------------------------------------------- DAGs
@st.composite
def dags(
    draw,
    min_nodes: int = 1,
    max_nodes: int = 12,
    max_args: int = 4,
    min_types: int = 2,
    max_types: int = 4,
    unbatchable: bool = False,
) -> eb.Graph:
    """A random DAG: node ``v`` reads 0..``max_args`` nodes among ``0..v-1``.

    Op types are the first 2..4 of :data:`DAG_TYPES` (plus :data:`UNBATCHABLE`
    when ``unbatchable`` is true); all have variable arity.
    """
    n = draw(st.integers(min_nodes, max_nodes))
    k = draw(st.integers(min_types, max_types))
    types = list(DAG_TYPES[:k]) + ([UNBATCHABLE] if unbatchable else [])
    b = eb.GraphBuilder(unbatchable=(UNBATCHABLE,) if unbatchable else ())
    for v in range(n):
        op = draw(st.sampled_from(types))
        if v == 0:
            args = []
        else:
            # mostly recent nodes, to get deep graphs as well as wide ones
            lo = draw(st.sampled_from([0, max(0, v - 3)]))
            args = draw(st.lists(st.integers(lo, v - 1), min_size=0, max_size=max_args))
        b.add(op, *args, payload=_dag_payload(draw, op))
    return b.build()


# --------------------------------------------------------------------------- batches
@st.composite
def graph_lists(
    draw,
    kind: str = "mixed",
    min_graphs: int = 1,
    max_graphs: int = 5,
    unbatchable: bool | None = None,
    max_leaves: int = 8,
    max_nodes: int = 12,
) -> list[eb.Graph]:
    """Several instances. ``kind``: ``"trees"``, ``"dags"`` or ``"mixed"``.

    ``unbatchable``: ``None`` draws it (once for the whole list).
    """
    if unbatchable is None:
        unbatchable = draw(st.booleans())
    elems = []
    if kind in ("trees", "mixed"):
        elems.append(trees(max_leaves=max_leaves, unbatchable=unbatchable))
    if kind in ("dags", "mixed"):
        elems.append(dags(max_nodes=max_nodes, unbatchable=unbatchable))
    if not elems:
        raise ValueError(f"unknown kind {kind!r}")
    return draw(st.lists(st.one_of(*elems), min_size=min_graphs, max_size=max_graphs))


def batched_graphs(**kwargs) -> st.SearchStrategy[eb.Graph]:
    """``eb.batch_graphs`` of a :func:`graph_lists` draw (same keyword arguments)."""
    return graph_lists(**kwargs).map(eb.batch_graphs)


# --------------------------------------------------------------------------- helpers
def node_records(graph: eb.Graph) -> list[tuple]:
    """``[(type_name, args tuple, arity, payload as nested Python), ...]`` per node."""

    def plain(tree):
        if tree is None:
            return None
        leaves, treedef = jax.tree.flatten(tree)
        return (
            str(treedef),
            tuple((np.asarray(x).dtype.str, np.asarray(x).shape, np.asarray(x).tolist()) for x in leaves),
        )

    return [
        (
            graph.op_types[graph.node_type[v]],
            tuple(int(a) for a in graph.args(v)),
            int(graph.arity[v]),
            plain(graph.payload(v)),
        )
        for v in range(graph.num_nodes)
    ]


def assert_graphs_equal(a: eb.Graph, b: eb.Graph) -> None:
    """Array-exact equality of two graphs (values, dtypes, payload pytrees, meta fields)."""
    assert a.op_types == b.op_types
    assert a.num_instances == b.num_instances
    assert a.unbatchable == b.unbatchable
    for name in ("node_type", "arg_ptr", "arg_idx", "instance", "payload_row"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, (name, x.dtype, y.dtype)
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert len(a.payloads) == len(b.payloads)
    for t, (pa, pb) in enumerate(zip(a.payloads, b.payloads)):
        assert (pa is None) == (pb is None), (a.op_types[t], pa, pb)
        if pa is None:
            continue
        la, ta = jax.tree.flatten(pa)
        lb, tb = jax.tree.flatten(pb)
        assert ta == tb, a.op_types[t]
        for x, y in zip(la, lb):
            assert x.dtype == y.dtype and x.shape == y.shape, (a.op_types[t], x.dtype, y.dtype, x.shape, y.shape)
            np.testing.assert_array_equal(x, y)


def graph_from_records(records: Sequence[tuple], unbatchable: Sequence[str] = ()) -> eb.Graph:
    """A graph from ``[(type_name, [args...]), ...]`` (no payloads)."""
    b = eb.GraphBuilder(unbatchable=unbatchable)
    for op, args in records:
        b.add(op, *args)
    return b.build()


def chain(n: int, op: str = "f") -> eb.Graph:
    """``n`` nodes of one type, node ``v`` reading ``v - 1``."""
    b = eb.GraphBuilder()
    v = b.add(op)
    for _ in range(n - 1):
        v = b.add(op, v)
    return b.build()


def random_typed_dag(seed: int, n: int, n_types: int) -> eb.Graph:
    """A random DAG of ``n`` nodes with op types ``t0 .. t{n_types-1}``, each node reading up to 3 earlier ones."""
    rng = np.random.default_rng(seed)
    b = eb.GraphBuilder()
    for v in range(n):
        k = int(rng.integers(0, min(v, 3) + 1))
        args = [int(a) for a in rng.choice(v, k, replace=False)] if k else []
        b.add(f"t{rng.integers(n_types)}", *args)
    return b.build()


def depth_trap(n_chains: int = 6) -> eb.Graph:
    """Chains a->b->a->b... of lengths 1..``n_chains`` plus an "x" after every b (op types a, b, x).

    Level order and the agenda heuristic run "x" level by level; the optimal
    schedule runs every x at the end, so the optimum is known: LB batches.
    """
    graphs = []
    for length in range(1, n_chains + 1):
        b = eb.GraphBuilder()
        v = b.add("a")
        for _ in range(length):
            v = b.add("b", v)
            b.add("x", v)
            v = b.add("a", v)
        graphs.append(b.build())
    return eb.batch_graphs(graphs)


def perfect_tree(depth: int) -> eb.Graph:
    """A perfect binary tree with ``2**depth`` leaves and ``depth`` internal levels."""
    b = eb.GraphBuilder()
    level = [b.add("leaf", payload=np.int32(i)) for i in range(2**depth)]
    while len(level) > 1:
        level = [b.add("internal", level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return b.build()
