"""Tests for edbatch_jax.graph and edbatch_jax.graph.analysis.

* batch/unbatch round trips and the offsets of batch_graphs;
* every error names its culprit (GraphBuilder, batch_graphs, validate_graph,
  op checking at run time);
* node depth, topological order, type-wise depth, type depths and the lower
  bound against a brute-force enumeration of all paths.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    assert_graphs_equal,
    batched_graphs,
    chain,
    dags,
    graph_lists,
    node_records,
    perfect_tree,
    trees,
)

import edbatch_jax as eb


# =========================================================================== round trips
@settings(max_examples=60, deadline=None)
@given(graph_lists())
def test_unbatch_of_batch_is_identity_node_for_node(gs):
    parts = eb.unbatch_graph(eb.batch_graphs(gs))
    assert len(parts) == len(gs)
    for g, p in zip(gs, parts):
        assert p.num_instances == 1
        assert p.num_nodes == g.num_nodes
        assert node_records(p) == node_records(g)
        assert set(p.unbatchable) >= set(g.unbatchable)
        np.testing.assert_array_equal(p.instance, np.zeros(g.num_nodes, np.int32))
        eb.validate_graph(p)


@settings(max_examples=60, deadline=None)
@given(batched_graphs())
def test_batch_of_unbatch_reproduces_arrays(g):
    assert_graphs_equal(eb.batch_graphs(eb.unbatch_graph(g)), g)


@settings(max_examples=30, deadline=None)
@given(graph_lists(min_graphs=3, max_graphs=6), st.data())
def test_batch_graphs_is_associative(gs, data):
    cut = data.draw(st.integers(1, len(gs) - 1))
    nested = eb.batch_graphs([eb.batch_graphs(gs[:cut]), eb.batch_graphs(gs[cut:])])
    assert_graphs_equal(nested, eb.batch_graphs(gs))


@settings(max_examples=30, deadline=None)
@given(trees() | dags())
def test_batch_of_one_graph_is_that_graph(g):
    assert_graphs_equal(eb.batch_graphs([g]), g)


@settings(max_examples=30, deadline=None)
@given(batched_graphs())
def test_graph_is_a_pytree(g):
    leaves, treedef = jax.tree.flatten(g)
    assert all(isinstance(x, np.ndarray) for x in leaves)
    assert_graphs_equal(jax.tree.unflatten(treedef, leaves), g)


# =========================================================================== batch_graphs offsets
@settings(max_examples=60, deadline=None)
@given(graph_lists(min_graphs=1, max_graphs=6))
def test_batch_graphs_offsets_instances_and_types(gs):
    g = eb.batch_graphs(gs)
    eb.validate_graph(g)
    sizes = [x.num_nodes for x in gs]
    offsets = np.cumsum([0] + sizes)
    assert g.num_nodes == offsets[-1]
    assert g.num_edges == sum(x.num_edges for x in gs)
    assert g.num_instances == len(gs)
    # op type union in order of first appearance
    expected_types = list(dict.fromkeys(t for x in gs for t in x.op_types))
    assert list(g.op_types) == expected_types
    assert set(g.unbatchable) == {u for x in gs for u in x.unbatchable}
    for k, x in enumerate(gs):
        lo = offsets[k]
        np.testing.assert_array_equal(g.instance[lo : lo + x.num_nodes], k)
        for v in range(x.num_nodes):
            np.testing.assert_array_equal(g.args(lo + v), x.args(v) + lo)
            assert g.op_types[g.node_type[lo + v]] == x.op_types[x.node_type[v]]
    for arr in (g.node_type, g.arg_ptr, g.arg_idx, g.instance, g.payload_row):
        assert arr.dtype == np.int32


def test_batch_graphs_offsets_exact():
    b1 = eb.GraphBuilder()
    x = b1.add("leaf", payload=np.int32(1))
    y = b1.add("leaf", payload=np.int32(2))
    b1.add("internal", x, y)
    g1 = b1.build()  # nodes 0..2
    b2 = eb.GraphBuilder()
    u = b2.add("p")
    b2.add("leaf", payload=np.int32(3))
    b2.add("q", u, u)
    g2 = b2.build()  # nodes 3..5
    g = eb.batch_graphs([g1, g2])
    assert g.op_types == ("leaf", "internal", "p", "q")
    np.testing.assert_array_equal(g.node_type, [0, 0, 1, 2, 0, 3])
    np.testing.assert_array_equal(g.arg_ptr, [0, 0, 0, 2, 2, 2, 4])
    np.testing.assert_array_equal(g.arg_idx, [0, 1, 3, 3])
    np.testing.assert_array_equal(g.instance, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(g.payload_row, [0, 1, 0, 0, 2, 0])
    np.testing.assert_array_equal(g.payloads[0], [1, 2, 3])
    assert g.payloads[1] is None and g.payloads[2] is None and g.payloads[3] is None
    assert int(g.payload(4)) == 3
    np.testing.assert_array_equal(g.nodes_of_type("leaf"), [0, 1, 4])
    with pytest.raises(KeyError, match="'nope'"):
        g.type_id("nope")


def test_batch_graphs_instance_ids_of_batched_inputs():
    g12 = eb.batch_graphs([chain(2), chain(3)])
    g = eb.batch_graphs([g12, chain(1), g12])
    assert g.num_instances == 5
    np.testing.assert_array_equal(g.instance, [0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4])


def test_unbatchable_keeps_declared_names_so_that_a_misspelt_one_can_be_caught():
    # a declared name whose op type does not occur is kept (after the present ones): the engine checks every
    # name against the model's ops, so a misspelling is refused instead of ignored
    b = eb.GraphBuilder(unbatchable=("absent", "u"))
    b.add("u")
    assert b.build().unbatchable == ("u", "absent")
    g = eb.batch_graphs([chain(2, "f"), b.build()])
    assert g.unbatchable == ("u", "absent")
    np.testing.assert_array_equal(g.type_is_unbatchable, [False, True])


def test_unbatchable_names_are_in_op_type_order():
    # the builder lists unbatchable types in op-type order, as batch_graphs does,
    # so that batch_graphs([g]) has the same pytree structure as g
    b = eb.GraphBuilder(unbatchable=("u", "v"))
    b.add("v")
    b.add("u", 0)
    g = b.build()
    assert g.op_types == ("v", "u")
    assert g.unbatchable == ("v", "u")
    h = eb.batch_graphs([g])
    assert_graphs_equal(h, g)
    assert jax.tree.structure(h) == jax.tree.structure(g)


# =========================================================================== errors
def test_builder_dangling_argument_names_node_and_argument():
    b = eb.GraphBuilder()
    b.add("leaf")
    b.add("leaf")
    with pytest.raises(eb.GraphError, match=r"node 2 \(op 'internal'\): argument 7 does not exist"):
        b.add("internal", 0, 7)
    with pytest.raises(eb.GraphError, match=r"node 2 .*argument -1 does not exist"):
        b.add("internal", -1, 0)
    # a self-reference is a dangling argument too (a builder cannot make cycles)
    with pytest.raises(eb.GraphError, match=r"node 2 .*argument 2 does not exist"):
        b.add("internal", 2)
    assert b.num_nodes == 2  # failed adds leave the builder unchanged
    b.add("internal", 0, 1)
    assert b.build().num_nodes == 3


@pytest.mark.parametrize("bad", [1.0, "0", None, True, np.float32(0), [0]])
def test_builder_non_int_argument(bad):
    b = eb.GraphBuilder()
    b.add("leaf")
    with pytest.raises(eb.GraphError, match=r"node 1 \(op 'f'\): argument .* is not a node id"):
        b.add("f", bad)


def test_builder_accepts_numpy_integer_arguments():
    b = eb.GraphBuilder()
    x = b.add("leaf")
    y = b.add("f", np.int64(x), np.int32(x))
    g = b.build()
    np.testing.assert_array_equal(g.args(y), [0, 0])


@pytest.mark.parametrize(
    "first, second",
    [
        (np.int32(1), np.zeros(2, np.int32)),  # shape
        (np.int32(1), np.float32(1)),  # dtype
        (np.int32(1), None),  # payload vs none
        (None, np.int32(1)),
        ({"a": np.int32(1)}, {"b": np.int32(1)}),  # structure
    ],
)
def test_builder_payload_mismatch_names_node_and_op(first, second):
    b = eb.GraphBuilder()
    b.add("other", payload=np.zeros(3))
    b.add("leaf", payload=first)
    with pytest.raises(eb.GraphError, match=r"node 2 \(op 'leaf'\): payload shape mismatch"):
        b.add("leaf", payload=second)


def test_builder_bad_op_name():
    with pytest.raises(eb.GraphError, match="non-empty string"):
        eb.GraphBuilder().add("")
    with pytest.raises(eb.GraphError, match="non-empty string"):
        eb.GraphBuilder().add(3)


def test_empty_builder_and_empty_batch():
    with pytest.raises(eb.GraphError, match="empty"):
        eb.GraphBuilder().build()
    with pytest.raises(eb.GraphError, match="empty"):
        eb.batch_graphs([])


def test_batch_graphs_payload_conflict_names_op_and_graphs():
    b1 = eb.GraphBuilder()
    b1.add("leaf", payload=np.int32(1))
    b2 = eb.GraphBuilder()
    b2.add("leaf", payload=np.float32(1))
    with pytest.raises(eb.GraphError, match=r"op type 'leaf' .* graph 2 .* graph 0"):
        eb.batch_graphs([b1.build(), chain(2), b2.build()])


def _hand_graph(node_type, args, op_types=None, num_instances=1):
    """A Graph made directly from arrays; ``args`` is a list of argument lists."""
    n = len(node_type)
    op_types = op_types or tuple(f"t{i}" for i in range(max(node_type) + 1))
    arity = [len(a) for a in args]
    return eb.Graph(
        node_type=np.asarray(node_type, np.int32),
        arg_ptr=np.concatenate([[0], np.cumsum(arity)]).astype(np.int32),
        arg_idx=np.asarray([a for xs in args for a in xs], np.int32),
        instance=np.zeros(n, np.int32),
        payload_row=np.asarray([list(node_type[:v]).count(t) for v, t in enumerate(node_type)], np.int32),
        payloads=(None,) * len(op_types),
        op_types=tuple(op_types),
        num_instances=num_instances,
    )


def _cycle_nodes(message):
    return {int(m) for m in re.findall(r"(\d+) \(", message)}


def test_validate_graph_cycle_names_the_nodes_on_it():
    # 0 -> 1 -> 2 -> 3 -> 1 (cycle 1, 2, 3); node 4 reads node 0; node 0 is on no cycle
    g = _hand_graph([0, 1, 0, 1, 0], [[], [0, 3], [1], [2], [0]], op_types=("x", "y"))
    with pytest.raises(eb.GraphError, match="cycle") as info:
        eb.validate_graph(g)
    assert _cycle_nodes(str(info.value)) == {1, 2, 3}
    with pytest.raises(eb.GraphError, match="cycle") as info:
        eb.node_depth(g)
    assert _cycle_nodes(str(info.value)) == {1, 2, 3}
    with pytest.raises(eb.GraphError, match="cycle"):
        eb.schedule(g, "agenda")
    with pytest.raises(eb.GraphError, match="cycle"):
        eb.schedule(g, "depth")


def test_validate_graph_cycle_reached_through_an_acyclic_prefix():
    # node 0 reads 1, which is on the cycle 1 <-> 2: the walk starts at 0
    g = _hand_graph([0, 0, 0], [[1], [2], [1]])
    with pytest.raises(eb.GraphError, match="cycle") as info:
        eb.validate_graph(g)
    assert _cycle_nodes(str(info.value)) == {1, 2}


def test_validate_graph_self_loop():
    g = _hand_graph([0, 0], [[], [1]])
    with pytest.raises(eb.GraphError, match=r"cycle: 1 \(t0\) -> 1 \(t0\)"):
        eb.validate_graph(g)


def test_validate_graph_cycle_in_a_random_graph():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(3, 15))
        args = [sorted(rng.choice(v, size=min(v, 2), replace=False).tolist()) if v else [] for v in range(n)]
        lo, hi = sorted(rng.choice(n, size=2, replace=False).tolist())
        args[lo] = args[lo] + [hi]  # back edge lo <- hi closes a cycle through hi ... lo if hi reaches lo
        g = _hand_graph([0] * n, args)
        reach = {hi}
        stack = [hi]
        while stack:  # does hi (transitively) read lo?
            for a in args[stack.pop()]:
                if a not in reach:
                    reach.add(a)
                    stack.append(a)
        if lo in reach:
            with pytest.raises(eb.GraphError, match="cycle") as info:
                eb.validate_graph(g)
            cyc = _cycle_nodes(str(info.value))
            # every reported edge is real and the reported nodes form a closed walk
            path = [int(m) for m in re.findall(r"(\d+) \(", str(info.value))]
            assert path[0] == path[-1] and len(path) >= 2
            for u, w in zip(path, path[1:]):
                assert u in args[w], (path, args)
            assert cyc <= set(range(n))
        else:
            eb.validate_graph(g)


def test_validate_graph_dangling_argument_in_hand_made_graph():
    g = _hand_graph([0, 1, 1], [[], [0], [0, 9]], op_types=("leaf", "f"))
    with pytest.raises(eb.GraphError, match=r"node 2 \(op 'f'\): argument 9 does not exist"):
        eb.validate_graph(g)
    g = _hand_graph([0, 1], [[], [-3]], op_types=("leaf", "f"))
    with pytest.raises(eb.GraphError, match=r"node 1 \(op 'f'\): argument -3 does not exist"):
        eb.validate_graph(g)


def test_validate_graph_other_malformations():
    good = _hand_graph([0, 0], [[], [0]])
    eb.validate_graph(good)
    bad_type = _hand_graph([0, 0], [[], [0]])
    object.__setattr__(bad_type, "node_type", np.asarray([0, 5], np.int32))
    with pytest.raises(eb.GraphError, match="node 1 has op type id 5"):
        eb.validate_graph(bad_type)
    bad_ptr = _hand_graph([0, 0], [[], [0]])
    object.__setattr__(bad_ptr, "arg_ptr", np.asarray([0, 1], np.int32))
    with pytest.raises(eb.GraphError, match="arg_ptr"):
        eb.validate_graph(bad_ptr)
    bad_rows = _hand_graph([0, 0], [[], [0]])
    object.__setattr__(bad_rows, "payloads", (np.zeros(3, np.int32),))
    with pytest.raises(eb.GraphError, match="op type 't0': payload has 3 rows for 2 nodes"):
        eb.validate_graph(bad_rows)


def test_unbatch_rejects_cross_instance_edges():
    g = _hand_graph([0, 0], [[], [0]], num_instances=2)
    object.__setattr__(g, "instance", np.asarray([0, 1], np.int32))
    with pytest.raises(eb.GraphError, match=r"node 1 \(instance 1\) reads node 0 of instance 0"):
        eb.unbatch_graph(g)


# ----------------------------------------------------------------- op errors at run time
def _tree_graph():
    b = eb.GraphBuilder()
    x = b.add("leaf", payload=np.int32(1))
    y = b.add("leaf", payload=np.int32(2))
    z = b.add("internal", x, y)
    b.add("loss", z, payload=np.int32(0))
    return b.build()


def _leaf(params, payload):
    return payload.astype(np.float32)


def _internal(params, payload, l, r):
    return l + r


def _loss(params, payload, h):
    return h


def test_run_unbatched_unknown_op_type_names_it():
    g = _tree_graph()
    with pytest.raises(eb.OpError, match=r"op type 'loss' \(used by node 3\) has no implementation"):
        eb.run_unbatched({"leaf": _leaf, "internal": _internal}, {}, g)


def test_run_unbatched_arity_mismatch_names_node_and_op():
    b = eb.GraphBuilder()
    xs = [b.add("leaf", payload=np.int32(i)) for i in range(3)]
    b.add("internal", *xs)
    g = b.build()
    ops = {"leaf": _leaf, "internal": eb.Op(_internal, arity=2)}
    with pytest.raises(eb.OpError, match=r"node 3 \(op 'internal'\) has 3 argument\(s\) but the op takes 2"):
        eb.run_unbatched(ops, {}, g)
    # the arity read from a signature is checked the same way
    with pytest.raises(eb.OpError, match=r"node 3 \(op 'internal'\) has 3 argument"):
        eb.run_unbatched({"leaf": _leaf, "internal": _internal}, {}, g)
    # a variable-arity op needs at least one argument
    b = eb.GraphBuilder()
    b.add("leaf", payload=np.int32(0))
    b.add("internal")
    ops = {"leaf": _leaf, "internal": eb.Op(lambda p, x, s: s, aggregate="sum")}
    with pytest.raises(eb.OpError, match=r"node 1 \(op 'internal'\) has 0 argument\(s\) but the op takes at least 1"):
        eb.run_unbatched(ops, {}, b.build())
    with pytest.raises(eb.OpError, match=r"node 1 \(op 'internal'\) has 0 argument"):
        eb.StepwiseEngine(ops).run({}, b.build(), eb.schedule(b.build(), "agenda"))


def test_variadic_function_without_aggregate_is_rejected():
    def f(params, payload, *xs):
        return sum(xs)

    with pytest.raises(eb.OpError, match="aggregate"):
        eb.run_unbatched({"leaf": _leaf, "internal": f, "loss": _loss}, {}, _tree_graph())
    # with an aggregate it runs
    out = eb.run_unbatched(
        {"leaf": _leaf, "internal": eb.Op(lambda p, x, s: s, aggregate="sum"), "loss": _loss},
        {},
        _tree_graph(),
        outputs=[3],
    )
    np.testing.assert_allclose(np.asarray(out), [3.0])


def test_op_bad_aggregate_and_bad_signature():
    with pytest.raises(eb.OpError, match="aggregate must be one of"):
        eb.Op(_leaf, aggregate="prod")
    with pytest.raises(eb.OpError, match=r"must take \(params, payload"):
        eb.run_unbatched({"leaf": lambda p: p, "internal": _internal, "loss": _loss}, {}, _tree_graph())


def test_run_unbatched_values_on_a_small_tree():
    out = eb.run_unbatched({"leaf": _leaf, "internal": _internal, "loss": _loss}, {}, _tree_graph())
    np.testing.assert_allclose(np.asarray(out), [1.0, 2.0, 3.0, 3.0])


# =========================================================================== analysis
def _all_paths(g):
    """Every directed path (as a tuple of node ids, sources first), by DFS from every node."""
    args = [sorted(set(int(a) for a in g.args(v))) for v in range(g.num_nodes)]
    paths = []

    def extend(path):  # path ends at path[0]'s ... grow backwards through arguments
        paths.append(tuple(path))
        for a in args[path[0]]:
            extend([a] + path)

    for v in range(g.num_nodes):
        extend([v])
    return paths


def _brute_force(g):
    n, t = g.num_nodes, g.num_types
    depth = [0] * n
    d = [[0] * t for _ in range(n)]
    D = [0] * t
    for p in _all_paths(g):
        end = p[-1]
        depth[end] = max(depth[end], len(p) - 1)
        counts = [sum(1 for v in p if g.node_type[v] == k) for k in range(t)]
        for k in range(t):
            d[end][k] = max(d[end][k], counts[k])
            D[k] = max(D[k], counts[k])
    unb = [g.op_types[k] in g.unbatchable for k in range(t)]
    lb = sum(int(np.sum(g.node_type == k)) if unb[k] else D[k] for k in range(t))
    return np.asarray(depth), np.asarray(d).reshape(n, t), np.asarray(D), lb


small_graphs = st.one_of(
    dags(max_nodes=12, unbatchable=False),
    dags(max_nodes=12, unbatchable=True),
    trees(max_leaves=4),
    batched_graphs(max_graphs=3, max_leaves=3, max_nodes=5),
)


@settings(max_examples=150, deadline=None)
@given(small_graphs)
def test_analysis_matches_brute_force(g):
    assert g.num_nodes <= 30
    depth, d, D, lb = _brute_force(g)
    np.testing.assert_array_equal(eb.node_depth(g), depth)
    assert eb.node_depth(g).dtype == np.int32
    np.testing.assert_array_equal(eb.typewise_depth(g), d)
    assert eb.typewise_depth(g).shape == (g.num_nodes, g.num_types)
    np.testing.assert_array_equal(eb.type_depths(g), D)
    assert eb.lower_bound(g) == lb
    assert isinstance(eb.lower_bound(g), int)
    # passing a precomputed depth gives the same answers
    np.testing.assert_array_equal(eb.typewise_depth(g, eb.node_depth(g)), d)


@settings(max_examples=100, deadline=None)
@given(small_graphs | batched_graphs(max_graphs=6))
def test_topological_order_puts_arguments_first(g):
    order = eb.topological_order(g)
    assert order.dtype == np.int32
    np.testing.assert_array_equal(np.sort(order), np.arange(g.num_nodes))
    pos = np.empty(g.num_nodes, int)
    pos[order] = np.arange(g.num_nodes)
    for v in range(g.num_nodes):
        for a in g.args(v):
            assert pos[a] < pos[v]


@settings(max_examples=60, deadline=None)
@given(small_graphs)
def test_children_is_the_reverse_adjacency(g):
    ptr, idx = eb.children(g)
    assert ptr.shape == (g.num_nodes + 1,)
    for u in range(g.num_nodes):
        expected = sorted(v for v in range(g.num_nodes) for a in g.args(v) if a == u)
        assert sorted(idx[ptr[u] : ptr[u + 1]].tolist()) == expected


@settings(max_examples=40, deadline=None)
@given(graph_lists(max_graphs=4))
def test_analysis_of_a_batch_is_the_analysis_of_its_parts(gs):
    g = eb.batch_graphs(gs)
    np.testing.assert_array_equal(eb.node_depth(g), np.concatenate([eb.node_depth(x) for x in gs]))
    # D_t of a disjoint union is the max over the parts
    per_part = np.zeros((len(gs), g.num_types), int)
    for k, x in enumerate(gs):
        for t, name in enumerate(x.op_types):
            per_part[k, g.type_id(name)] = eb.type_depths(x)[t]
    np.testing.assert_array_equal(eb.type_depths(g), per_part.max(axis=0))


def test_analysis_exact_examples():
    g = chain(5)
    np.testing.assert_array_equal(eb.node_depth(g), [0, 1, 2, 3, 4])
    assert eb.type_depths(g).tolist() == [5]
    assert eb.lower_bound(g) == 5

    g = perfect_tree(3)
    depth = eb.node_depth(g)
    np.testing.assert_array_equal(depth, [0] * 8 + [1] * 4 + [2] * 2 + [3])
    assert eb.type_depths(g).tolist() == [1, 3]
    assert eb.lower_bound(g) == 4
    np.testing.assert_array_equal(eb.typewise_depth(g)[-1], [1, 3])

    # diamond with a repeated argument: 0 -> {1, 2} -> 3 (3 reads 1 twice)
    b = eb.GraphBuilder(unbatchable=("u",))
    b.add("a")
    b.add("u", 0)
    b.add("a", 0)
    b.add("a", 1, 1, 2)
    g = b.build()
    np.testing.assert_array_equal(eb.node_depth(g), [0, 1, 1, 2])
    np.testing.assert_array_equal(eb.typewise_depth(g), [[1, 0], [1, 1], [2, 0], [3, 1]])
    assert eb.lower_bound(g) == 3 + 1  # D_a = 3, one unbatchable node

    # unbatchable nodes count one each, not D_t
    b = eb.GraphBuilder(unbatchable=("u",))
    for _ in range(4):
        b.add("u")
    assert eb.lower_bound(b.build()) == 4


def test_brute_force_reference_is_sane():
    # the reference itself, on a graph whose paths are listed by hand
    b = eb.GraphBuilder()
    b.add("a")
    b.add("b", 0)
    b.add("a", 0, 1)
    g = b.build()
    assert sorted(_all_paths(g)) == sorted([(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)])
    depth, d, D, lb = _brute_force(g)
    assert depth.tolist() == [0, 1, 2]
    assert D.tolist() == [2, 1] and lb == 3
    assert d.tolist() == [[1, 0], [1, 1], [2, 1]]


def test_later_fixes_negative_output_bad_payload_rows_empty_instances():
    import jax.numpy as jnp

    b = eb.GraphBuilder()
    b.add("x", payload=np.float32(1.0))
    b.add("x", payload=np.float32(2.0))
    g = b.build()
    ops = {"x": lambda p, s: s * p}
    with pytest.raises(eb.GraphError, match="output node -1 does not exist"):
        eb.run_unbatched(ops, jnp.float32(1.0), g, outputs=[-1])
    permuted = dataclasses.replace(g, payload_row=np.array([1, 0], np.int32))
    with pytest.raises(eb.GraphError, match="node 0: payload_row is 1 but must be 0"):
        eb.validate_graph(permuted)
    too_many = dataclasses.replace(g, num_instances=2)
    with pytest.raises(eb.GraphError, match="instance 1 has no nodes"):
        eb.unbatch_graph(too_many)
    bad = eb.Schedule(np.array([0, 0], np.int32), np.array([0, 2], np.int32), np.array([0, 1], np.int32), g.op_types)
    with pytest.raises(eb.ScheduleError, match="batch_ptr must have 3 entries"):
        eb.validate_schedule(g, bad)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 20), st.integers(0, 200), st.integers(0, 10**6))
def test_payload_rows_rank_nodes_within_their_type(num_types, n, seed):
    from edbatch_jax.graph.csr import payload_rows

    node_type = np.random.default_rng(seed).integers(0, num_types, n).astype(np.int32)
    seen = [0] * num_types
    want = []
    for t in node_type.tolist():
        want.append(seen[t])
        seen[t] += 1
    rows = payload_rows(node_type, num_types)
    assert rows.dtype == np.int32
    np.testing.assert_array_equal(rows, np.asarray(want, np.int32).reshape(-1))
