"""The compiled planning passes against independent NumPy references (hypothesis over random arrays and graphs).

Each kernel replaced a chain of NumPy calls; the references here are those
definitions written plainly, so a kernel that drifts from them fails here
before it fails, less legibly, in an engine test.
"""

from __future__ import annotations

import types

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from strategies import assert_graphs_equal, batched_graphs

import edbatch_jax as eb
from edbatch_jax.engine.kernels import operand_clash
from edbatch_jax.graph.kernels import arity_mismatch, consumers, first_defect, hash_bytes, kahn_order, type_ranks
from edbatch_jax.scheduling.kernels import ready_slots
from edbatch_jax.zoo.data.lattice import synthetic_lattices
from edbatch_jax.zoo.data.sst import synthetic_sst
from edbatch_jax.zoo.models.graphs import binary_tree_graph
from edbatch_jax.zoo.models.kernels import padded_to_csr
from edbatch_jax.zoo.models.lattice import LATTICE_OP_TYPES, LatticeTagger

SETTINGS = settings(max_examples=60, deadline=None)


def _ranks_reference(node_type: np.ndarray, num_types: int) -> np.ndarray:
    rows = np.empty(node_type.shape[0], np.int32)
    for t in range(num_types):
        mask = node_type == t
        rows[mask] = np.arange(mask.sum())
    return rows


@SETTINGS
@given(st.integers(1, 6).flatmap(lambda k: st.tuples(st.just(k), st.lists(st.integers(0, k - 1), max_size=60))))
def test_type_ranks(case):
    num_types, types = case
    node_type = np.asarray(types, np.int32)
    np.testing.assert_array_equal(type_ranks(node_type, num_types), _ranks_reference(node_type, num_types))


def _defect_reference(node_type, num_types, instance, num_instances, arg_ptr, arg_idx, payload_row):
    """(kind, index) of the first broken invariant, in validate_graph's order, by whole-array NumPy."""
    n = node_type.shape[0]
    bad = np.flatnonzero((node_type < 0) | (node_type >= num_types))
    if bad.size:
        return 1, int(bad[0])
    bad = np.flatnonzero((instance < 0) | (instance >= num_instances))
    if bad.size:
        return 2, int(bad[0])
    bad = np.flatnonzero((arg_idx < 0) | (arg_idx >= n))
    if bad.size:
        return 3, int(bad[0])
    bad = np.flatnonzero(payload_row != _ranks_reference(node_type, num_types))
    if bad.size:
        return 4, int(bad[0])
    dst = np.repeat(np.arange(n), np.diff(arg_ptr))
    bad = np.flatnonzero(arg_idx >= dst)
    if bad.size:
        return 5, int(dst[bad[0]])
    return 0, -1


@SETTINGS
@given(batched_graphs(), st.integers(0, 5), st.integers(0, 10**6), st.integers(-3, 3))
def test_first_defect_names_what_the_reference_names(graph, field, where, delta):
    node_type, instance = graph.node_type.copy(), graph.instance.copy()
    arg_idx, payload_row = graph.arg_idx.copy(), graph.payload_row.copy()
    target = [None, node_type, instance, arg_idx, payload_row, arg_idx][field]
    if target is not None and target.size:
        k = where % target.size
        target[k] += delta if field != 5 else graph.num_nodes - target[k] - 1 + (delta % 2)  # 5: a later node
    args = (node_type, graph.num_types, instance, graph.num_instances, graph.arg_ptr, arg_idx, payload_row)
    assert first_defect(*args) == _defect_reference(*args)


def test_validate_graph_names_each_defect():
    b = eb.GraphBuilder()
    x = b.add("x", payload=np.int32(1))
    y = b.add("x", payload=np.int32(2))
    b.add("f", x, y)
    g = b.build()
    bad_rank = eb.Graph(**{**_fields(g), "payload_row": np.array([0, 0, 0], np.int32)})
    with pytest.raises(eb.GraphError, match="node 1: payload_row is 0 but must be 1"):
        eb.validate_graph(bad_rank)
    bad_arg = eb.Graph(**{**_fields(g), "arg_idx": np.array([0, 7], np.int32)})
    with pytest.raises(eb.GraphError, match=r"node 2 \(op 'f'\): argument 7 does not exist \(argument position 1"):
        eb.validate_graph(bad_arg)
    bad_instance = eb.Graph(**{**_fields(g), "instance": np.array([0, 3, 0], np.int32)})
    with pytest.raises(eb.GraphError, match="node 1 .*instance id 3 is outside 0..0"):
        eb.validate_graph(bad_instance)
    later = {"arg_ptr": np.array([0, 1, 1, 2], np.int32)}  # node 0 reads node 2, which reads node 1: no cycle
    eb.validate_graph(eb.Graph(**{**_fields(g), **later, "arg_idx": np.array([2, 1], np.int32)}))
    cycle = eb.Graph(**{**_fields(g), **later, "arg_idx": np.array([2, 0], np.int32)})  # node 2 reads node 0
    with pytest.raises(eb.GraphError, match="cycle"):
        eb.validate_graph(cycle)


def _fields(g: eb.Graph) -> dict:
    names = ("node_type", "arg_ptr", "arg_idx", "instance", "payload_row", "payloads", "op_types", "num_instances")
    return {k: getattr(g, k) for k in names}


@SETTINGS
@given(batched_graphs())
def test_consumers_and_first_ready_set(graph):
    ptr, child = consumers(graph.arg_ptr, graph.arg_idx, graph.num_nodes)
    dst = graph.edge_dst()
    order = np.argsort(graph.arg_idx, kind="stable")  # edges grouped by the node they read, in edge order
    np.testing.assert_array_equal(
        ptr, np.concatenate([[0], np.cumsum(np.bincount(graph.arg_idx, minlength=graph.num_nodes))])
    )
    np.testing.assert_array_equal(child, dst[order])

    node_type, left = graph.node_type.astype(np.int32), graph.arity.astype(np.int32)
    slots, head, tail, counts = ready_slots(node_type, left, graph.num_types)
    per_type = np.bincount(node_type, minlength=graph.num_types)
    np.testing.assert_array_equal(head, np.cumsum(per_type) - per_type)
    for t in range(graph.num_types):
        ready = np.flatnonzero((node_type == t) & (left == 0))
        assert counts[t] == tail[t] - head[t] == ready.size
        np.testing.assert_array_equal(slots[head[t] : tail[t]], ready)


@SETTINGS
@given(batched_graphs(), st.integers(0, 10**6))
def test_arity_mismatch_and_operand_clash(graph, seed):
    rng = np.random.default_rng(seed)
    arity = graph.arity
    want = np.array(
        [-1 if rng.random() < 0.3 else int(arity[graph.node_type == t].max(initial=0)) for t in range(graph.num_types)]
    )
    bad = np.flatnonzero(np.where(want[graph.node_type] < 0, arity < 1, arity != want[graph.node_type]))
    assert arity_mismatch(graph.node_type, graph.arg_ptr, want) == (int(bad[0]) if bad.size else -1)

    variadic = rng.random(graph.num_types) < 0.5
    type_buffer = rng.integers(0, 2, graph.num_types)
    dst = graph.edge_dst()
    pos = np.where(variadic[graph.node_type[dst]], 0, np.arange(graph.num_edges) - graph.arg_ptr[dst])
    src = type_buffer[graph.node_type[graph.arg_idx]]
    expected = (-1, -1)
    for e in range(graph.num_edges):  # the first edge whose (type, position) group read another buffer before
        same = np.flatnonzero((graph.node_type[dst[:e]] == graph.node_type[dst[e]]) & (pos[:e] == pos[e]))
        if same.size and src[same[0]] != src[e]:
            expected = (int(same[0]), e)
            break
    assert operand_clash(graph.node_type, graph.arg_ptr, graph.arg_idx, type_buffer, variadic) == expected


@SETTINGS
@given(st.binary(min_size=0, max_size=200), st.integers(0, 10**6))
def test_hash_bytes_changes_with_any_byte_and_the_length(data, where):
    a = np.frombuffer(data, np.uint8)
    h = hash_bytes(a)
    assert hash_bytes(a.copy()) == h  # a pure function of the content
    if a.size:
        b = a.copy()
        b[where % b.size] ^= np.uint8(1 << (where % 8))
        assert hash_bytes(b) != h
        assert hash_bytes(a[:-1]) != h
    assert hash_bytes(np.concatenate([a, np.zeros(1, np.uint8)])) != h


@SETTINGS
@given(
    st.integers(1, 4).flatmap(lambda k: st.lists(st.lists(st.integers(-1, 30), min_size=k, max_size=k), max_size=40))
)
def test_padded_to_csr(rows):
    args = np.asarray(rows, np.int64).reshape(len(rows), len(rows[0]) if rows else 2)
    ptr, idx = padded_to_csr(args)
    np.testing.assert_array_equal(ptr, np.concatenate([[0], np.cumsum((args >= 0).sum(1))]))
    np.testing.assert_array_equal(idx, args[args >= 0])


@pytest.mark.parametrize("internal_types", [1, 3])
def test_binary_tree_graph_matches_the_vectorised_definition(internal_types):
    trees = synthetic_sst(12, seed=internal_types)
    sizes = np.array([len(t.tokens) for t in trees])
    left, right = np.concatenate([t.left for t in trees]), np.concatenate([t.right for t in trees])
    internal = np.random.default_rng(0).integers(1, 1 + internal_types, left.size).astype(np.int32)
    num_types = internal_types + 2
    op_types = tuple(f"t{k}" for k in range(num_types))
    labels, leaf_ids = np.zeros(left.size, np.int32), np.zeros(int((left < 0).sum()), np.int32)
    graph = binary_tree_graph(sizes, left, right, labels, leaf_ids, op_types, internal)
    node_type, arg_ptr, arg_idx, instance, payload_row = (
        graph.node_type,
        graph.arg_ptr,
        graph.arg_idx,
        graph.instance,
        graph.payload_row,
    )
    # the definition: tree node k of tree i is node 2 (o_i + k) and its loss node 2 (o_i + k) + 1
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    binary = left >= 0
    want_type = np.empty(2 * left.size, np.int32)
    want_type[0::2], want_type[1::2] = np.where(binary, internal, 0), num_types - 1
    args = np.full((2 * left.size, 2), -1)
    args[0::2] = np.where(binary[:, None], 2 * (offsets[:, None] + np.stack([left, right], 1)), -1)
    args[1::2, 0] = 2 * np.arange(left.size)
    np.testing.assert_array_equal(node_type, want_type)
    np.testing.assert_array_equal(arg_ptr, np.concatenate([[0], np.cumsum((args >= 0).sum(1))]))
    np.testing.assert_array_equal(arg_idx, args[args >= 0])
    np.testing.assert_array_equal(instance, np.repeat(np.arange(len(trees)), 2 * sizes))
    np.testing.assert_array_equal(payload_row, _ranks_reference(want_type, num_types))


@SETTINGS
@given(batched_graphs(), st.integers(0, 10**6))
def test_kahn_order_puts_arguments_first_under_any_numbering(graph, seed):
    # renumber the nodes at random, so that ids are no topological order
    n = graph.num_nodes
    new_id = np.random.default_rng(seed).permutation(n)
    old_of = np.argsort(new_id)
    arity = graph.arity[old_of]
    arg_ptr = np.concatenate([[0], np.cumsum(arity)]).astype(np.int32)
    arg_idx = np.concatenate([new_id[graph.args(int(v))] for v in old_of] + [np.zeros(0, int)]).astype(np.int32)
    ptr, child = consumers(arg_ptr, arg_idx, n)
    order = kahn_order(ptr, child, arity)
    assert sorted(order.tolist()) == list(range(n))
    rank = np.empty(n, int)
    rank[order] = np.arange(n)
    dst = np.repeat(np.arange(n), arity)
    assert np.all(rank[arg_idx] < rank[dst])


def test_kahn_order_stops_short_of_a_cycle():
    arg_ptr, arg_idx = np.array([0, 0, 1, 2, 3], np.int32), np.array([0, 3, 2], np.int32)  # 2 <-> 3
    ptr, child = consumers(arg_ptr, arg_idx, 4)
    assert kahn_order(ptr, child, np.diff(arg_ptr)).tolist() == [0, 1]


def _lattice_graph_reference(lattices, vocab_size: int) -> eb.Graph:
    """The lattice batch graph as it was built lattice by lattice with NumPy (the definition)."""
    types, ptrs, idxs, arc_ids, tags = [], [], [], [], []
    base = 0
    for lat in lattices:
        n, a = lat.num_nodes, lat.num_arcs
        state_type = np.full(n, 3, np.int32)
        state_type[0] = 0
        types += [state_type, np.where(lat.is_char, 1, 2).astype(np.int32), np.full(n, 4, np.int32)]
        ptrs.append(np.concatenate([np.bincount(lat.arc_dst, minlength=n), np.ones(a, int), np.ones(n, int)]))
        order = np.argsort(lat.arc_dst, kind="stable")
        idxs += [base + n + order, base + np.asarray(lat.arc_src), base + np.arange(n)]
        arc_ids.append(np.asarray(lat.arc_id) % vocab_size)
        tags.append(np.asarray(lat.tags))
        base += 2 * n + a
    node_type = np.concatenate(types)
    ids = np.concatenate(arc_ids).astype(np.int32)
    char = np.concatenate([np.asarray(lat.is_char) for lat in lattices])
    return eb.Graph(
        node_type=node_type,
        arg_ptr=np.concatenate([[0], np.cumsum(np.concatenate(ptrs))]).astype(np.int32),
        arg_idx=np.concatenate(idxs).astype(np.int32),
        instance=np.repeat(np.arange(len(lattices)), [2 * x.num_nodes + x.num_arcs for x in lattices]).astype(np.int32),
        payload_row=_ranks_reference(node_type, len(LATTICE_OP_TYPES)),
        payloads=(None, ids[char], ids[~char], None, np.concatenate(tags).astype(np.int32)),
        op_types=LATTICE_OP_TYPES,
        num_instances=len(lattices),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lattice_batch_graph_matches_the_definition(seed):
    lattices = synthetic_lattices(7, seed=seed, max_nodes=30)
    model = LatticeTagger(vocab_size=50, hidden=4)
    assert_graphs_equal(model.batch_graph(lattices), _lattice_graph_reference(lattices, 50))


def test_lattice_batch_graph_refuses_an_arc_that_is_not_forward():
    good = synthetic_lattices(2, seed=0, max_nodes=10)
    fake = types.SimpleNamespace(
        num_nodes=3,
        num_arcs=2,
        arc_src=np.array([0, 2]),
        arc_dst=np.array([1, 1]),
        arc_id=np.zeros(2, int),
        tags=np.zeros(3, int),
    )  # duck-typed, past the Lattice constructor's checks
    with pytest.raises(eb.GraphError, match="lattice 2: an arc is not forward within its 3 nodes"):
        LatticeTagger(vocab_size=50, hidden=4).batch_graph([*good, fake])
