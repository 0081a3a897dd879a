"""Bad graph inputs are refused with a GraphError naming the culprit, never answered silently or with a NumPy error.

* ``validate_graph`` on hand-made graphs: inconsistent lengths, dtypes, ids
  out of range, duplicate op names, swapped payload rows, instance ids,
  meta fields;
* integer payloads that do not fit int32 (JAX would wrap them silently);
* ``check_node_ids``: floats, boolean masks, nested sequences, strings;
* ``GraphBuilder``: node ids of another builder, ``unbatchable`` kept as
  declared and never a bare string;
* ``batch_graphs`` / ``validate_graph`` given something else than graphs;
* a property test: a random corruption of a valid random graph always raises
  a ``GraphError``.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import batched_graphs, chain, dags, trees

import edbatch_jax as eb
from edbatch_jax.graph import check_node_ids


def _tree() -> eb.Graph:
    """leaf 0, leaf 1, internal 2 (reads 0, 1), loss 3 (reads 2); int32 payloads on leaves and loss."""
    b = eb.GraphBuilder()
    x = b.add("leaf", payload=np.int32(5))
    y = b.add("leaf", payload=np.int32(6))
    z = b.add("internal", x, y)
    b.add("loss", z, payload=np.int32(1))
    return b.build()


def _with(graph: eb.Graph, **fields) -> eb.Graph:
    return dataclasses.replace(graph, **fields)


# =========================================================================== 1. hand-made graphs
@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"instance": np.zeros(3, np.int32)}, r"instance must have shape \[4\].*got \[3\]"),
        ({"payload_row": np.zeros(5, np.int32)}, r"payload_row must have shape \[4\].*got \[5\]"),
        ({"node_type": np.asarray([0, 0, 1], np.int32)}, r"instance must have shape \[3\] \(one entry per node"),
        ({"arg_ptr": np.asarray([0, 0, 2], np.int32)}, r"arg_ptr must have shape \[5\] \(node_type has 4 nodes\)"),
        ({"arg_idx": np.asarray([0, 1], np.int32)}, r"arg_ptr must start at 0 and end at 2"),
        ({"arg_ptr": np.asarray([0, 0, 2, 0, 3], np.int32)}, r"arg_ptr must be non-decreasing: node 2"),
        ({"node_type": np.zeros((4, 1), np.int32)}, r"node_type must be 1-D, got shape \[4, 1\]"),
        ({"instance": [0, 0, 0, 0]}, r"instance must be a NumPy integer array, got list"),
        ({"payloads": (np.int32(5), None, np.zeros(1, np.int32))}, r"op type 'leaf': payload leaf .* got shape \[\]"),
        ({"payloads": (np.zeros(3, np.int32), None, np.zeros(1, np.int32))}, r"'leaf': payload has 3 rows for 2"),
        ({"payloads": (None, None)}, r"payloads must have one entry per op type \(3\), got 2"),
    ],
)
def test_validate_inconsistent_lengths_and_shapes(fields, match):
    with pytest.raises(eb.GraphError, match=match):
        eb.validate_graph(_with(_tree(), **fields))


@pytest.mark.parametrize("name", ["node_type", "arg_ptr", "arg_idx", "instance", "payload_row"])
def test_validate_refuses_float_index_fields(name):
    g = _tree()
    bad = _with(g, **{name: getattr(g, name).astype(np.float64)})
    with pytest.raises(eb.GraphError, match=rf"{name} must be an integer array \(.*\), got dtype float64"):
        eb.validate_graph(bad)
    with pytest.raises(eb.GraphError, match=rf"{name} must be an integer array \(.*\), got dtype uint64"):
        eb.validate_graph(_with(g, **{name: getattr(g, name).astype(np.uint64)}))
    eb.validate_graph(_with(g, **{name: getattr(g, name).astype(np.int64)}))  # any integer dtype that casts
    eb.validate_graph(_with(g, **{name: getattr(g, name).astype(np.uint16)}))


def test_validate_ids_out_of_range_and_meta_fields():
    g = _tree()
    with pytest.raises(eb.GraphError, match=r"node 3 \(op 'loss'\): argument 9 does not exist \(argument position 0"):
        eb.validate_graph(_with(g, arg_idx=np.asarray([0, 1, 9], np.int32)))
    with pytest.raises(eb.GraphError, match=r"node 2 \(op 'internal'\): argument -1 does not exist \(argument posit"):
        eb.validate_graph(_with(g, arg_idx=np.asarray([0, -1, 2], np.int32)))
    with pytest.raises(eb.GraphError, match=r"node 1 has op type id 7, outside 0..2"):
        eb.validate_graph(_with(g, node_type=np.asarray([0, 7, 1, 2], np.int32)))
    with pytest.raises(eb.GraphError, match=r"op_types names 'leaf' twice, as op type ids 0 and 2"):
        eb.validate_graph(_with(g, op_types=("leaf", "internal", "leaf")))
    with pytest.raises(eb.GraphError, match=r"num_instances is 0 but the graph has 4 nodes"):
        eb.validate_graph(_with(g, num_instances=0))
    with pytest.raises(eb.GraphError, match=r"node 2 \(op 'internal'\): instance id -1 is outside 0..0"):
        eb.validate_graph(_with(g, instance=np.asarray([0, 0, -1, 0], np.int32)))
    with pytest.raises(eb.GraphError, match=r"node 3 \(op 'loss'\): instance id 2 is outside 0..1 \(num_instances=2"):
        eb.validate_graph(_with(g, instance=np.asarray([0, 1, 1, 2], np.int32), num_instances=2))
    with pytest.raises(eb.GraphError, match=r"unbatchable must be a tuple of non-empty str, got 'loss' \(a bare"):
        eb.validate_graph(_with(g, unbatchable="loss"))
    with pytest.raises(eb.GraphError, match=r"unbatchable must be a tuple of non-empty str, got \['loss'\]"):
        eb.validate_graph(_with(g, unbatchable=["loss"]))
    with pytest.raises(eb.GraphError, match=r"op_types must be a tuple of non-empty str"):
        eb.validate_graph(_with(g, op_types=("leaf", 3, "loss")))


def test_validate_catches_a_swapped_payload_row():
    g = _tree()
    # the two leaves' payload rows swapped: each would read the other's token
    with pytest.raises(eb.GraphError, match=r"node 0: payload_row is 1 but must be 0.*'leaf' \(instance 0\)"):
        eb.validate_graph(_with(g, payload_row=np.asarray([1, 0, 0, 0], np.int32)))


# =========================================================================== 2. int32 payloads
def test_int64_payload_that_does_not_fit_int32_is_refused():
    b = eb.GraphBuilder()
    b.add("leaf", payload=np.int64(4))
    b.add("leaf", payload=np.int64(2**32 + 3))  # JAX without x64 would read 3
    with pytest.raises(eb.GraphError, match=r"node 1 \(op 'leaf', instance 0\).* holds 4294967299.* must fit int32"):
        b.build()
    g = eb.batch_graphs([_tree(), _tree()])
    big = np.asarray([1, 2, 3, -(2**31) - 1], np.int64)
    with pytest.raises(eb.GraphError, match=r"node 5 \(op 'leaf', instance 1\).* holds -2147483649"):
        eb.validate_graph(_with(g, payloads=(big, None, np.zeros(2, np.int32))))
    word = {"ids": np.asarray([[0, 1], [2, 2**40]], np.uint64)}
    with pytest.raises(eb.GraphError, match=r"node 1 \(op 'leaf', instance 0\): payload leaf \['ids'\] \(uint64\)"):
        eb.validate_graph(_with(_tree(), payloads=(word, None, np.zeros(1, np.int32))))
    # values that fit are fine, whatever the dtype
    fits = (np.asarray([2**31 - 1, -(2**31)], np.int64), None, np.asarray([7], np.uint64))
    eb.validate_graph(_with(_tree(), payloads=fits))
    eb.validate_graph(_with(_tree(), payloads=(np.asarray([True, False]), None, np.asarray([3], np.uint32))))
    b = eb.GraphBuilder()
    b.add("leaf", payload=7)  # a Python int: int64, fits
    assert b.build().payloads[0].dtype == np.int64


# =========================================================================== 3. check_node_ids
def test_check_node_ids_refuses_floats_masks_nested_and_strings():
    g = _tree()
    with pytest.raises(eb.GraphError, match=r"expected output node ids.*got floats \[1.0, 2.7\]"):
        check_node_ids(g, [1.0, 2.7])
    with pytest.raises(eb.GraphError, match=r"got a boolean mask of shape \[4\].*np.flatnonzero\(mask\)"):
        check_node_ids(g, np.asarray([True, False, True, False]))
    with pytest.raises(eb.GraphError, match=r"boolean mask"):
        check_node_ids(g, [True, False])
    with pytest.raises(eb.GraphError, match=r"got an array of shape \[2, 2\]"):
        check_node_ids(g, [[0, 1], [2, 3]])
    with pytest.raises(eb.GraphError, match=r"expected output node ids.*got list"):
        check_node_ids(g, [[0, 1], [2]])
    with pytest.raises(eb.GraphError, match=r"got the string '3'"):
        check_node_ids(g, "3")
    with pytest.raises(eb.GraphError, match=r"got strings \['0', '1'\]"):
        check_node_ids(g, ["0", "1"])
    with pytest.raises(eb.GraphError, match=r"loss node ids.*got values of dtype object"):
        check_node_ids(g, [0, None], what="loss node")
    with pytest.raises(eb.GraphError, match=r"output node 4 does not exist"):
        check_node_ids(g, np.asarray([0, 4], np.uint64))
    with pytest.raises(eb.GraphError, match=r"output node 36893488147419103232 does not exist"):
        check_node_ids(g, [0, 2**65])
    # what keeps working
    np.testing.assert_array_equal(check_node_ids(g, None), [0, 1, 2, 3])
    np.testing.assert_array_equal(check_node_ids(g, 2), [2])
    np.testing.assert_array_equal(check_node_ids(g, np.int32(3)), [3])
    np.testing.assert_array_equal(check_node_ids(g, [3, np.int64(0)]), [3, 0])
    np.testing.assert_array_equal(check_node_ids(g, np.asarray([1, 2], np.uint8)), [1, 2])
    assert check_node_ids(g, []).shape == (0,)
    assert check_node_ids(g, [1]).dtype == np.int64


# =========================================================================== 4. node ids of another builder
def test_builder_refuses_a_node_id_of_another_builder():
    b1, b2 = eb.GraphBuilder(), eb.GraphBuilder()
    x = b1.add("leaf")
    b1.add("leaf")
    y = b1.add("leaf")
    b2.add("leaf")
    b2.add("leaf")
    u = b2.add("leaf")
    with pytest.raises(
        eb.GraphError,
        match=r"node 3 \(op 'f'\): argument 1 is node 2 of another GraphBuilder \(3 nodes\), not of this "
        r"GraphBuilder \(3 nodes so far\)",
    ):
        b2.add("f", u, y)
    # plain ints, NumPy ints and this builder's ids are accepted; ids behave as ints
    v = b2.add("f", u, 0, np.int64(1))
    assert v == 3 and isinstance(v, int) and int(v) == 3 and type(v + 1) is int and v + 1 == 4
    assert np.asarray([x, y]).tolist() == [0, 2] and {v: "a"}[3] == "a" and repr(v) == "3"
    assert type(pickle.loads(pickle.dumps(v))) is int and type(copy.deepcopy(v)) is int
    g = b2.build()
    np.testing.assert_array_equal(g.args(3), [2, 0, 1])


# =========================================================================== 5. unbatchable names
def test_unbatchable_names_are_kept_and_never_a_bare_string():
    b = eb.GraphBuilder(unbatchable=["u", "lsos"])  # a list is fine; "lsos" is misspelt and unused
    b.add("f")
    b.add("u", 0)
    g = b.build()
    assert g.unbatchable == ("u", "lsos")
    eb.validate_graph(g)  # names not in op_types are left for the engine to report against its ops
    np.testing.assert_array_equal(g.type_is_unbatchable, [False, True])
    h = eb.batch_graphs([chain(2, "f"), g, _only("f", ("x", "u"))])
    assert h.unbatchable == ("u", "lsos", "x")
    np.testing.assert_array_equal(h.type_is_unbatchable, [False, True])
    assert eb.batch_graphs([g]).unbatchable == g.unbatchable
    with pytest.raises(eb.GraphError, match=r"unbatchable must be a sequence of op type names, got the string 'loss'"):
        eb.GraphBuilder(unbatchable="loss")
    with pytest.raises(eb.GraphError, match=r"unbatchable must hold non-empty op type names \(str\), got 3"):
        eb.GraphBuilder(unbatchable=("loss", 3))
    with pytest.raises(eb.GraphError, match=r"unbatchable must be a sequence of op type names, got int"):
        eb.GraphBuilder(unbatchable=3)


def _only(op: str, unbatchable: tuple) -> eb.Graph:
    b = eb.GraphBuilder(unbatchable=unbatchable)
    b.add(op)
    return b.build()


# =========================================================================== 6. not graphs
def test_batch_graphs_and_validate_graph_refuse_what_is_not_a_graph():
    g = _tree()
    with pytest.raises(eb.GraphError, match=r"batch_graphs takes a list of graphs, got a single Graph.*pass \[graph\]"):
        eb.batch_graphs(g)
    with pytest.raises(eb.GraphError, match=r"batch_graphs: element 1 is a NoneType, not a Graph"):
        eb.batch_graphs([g, None])
    with pytest.raises(eb.GraphError, match=r"element 2 is a list, not a Graph \(a nested list"):
        eb.batch_graphs([g, g, [g]])
    with pytest.raises(eb.GraphError, match=r"batch_graphs takes a list of graphs, got int"):
        eb.batch_graphs(3)
    with pytest.raises(eb.GraphError, match=r"validate_graph expects a Graph, got list.*eb.batch_graphs"):
        eb.validate_graph([g, g])
    with pytest.raises(eb.GraphError, match=r"validate_graph expects a Graph, got NoneType"):
        eb.validate_graph(None)
    # graphs listing their op types in different orders still batch, by name
    b = eb.GraphBuilder()
    b.add("internal")
    b.add("leaf", payload=np.int32(9))
    h = eb.batch_graphs([g, b.build()])
    assert h.op_types == ("leaf", "internal", "loss")
    assert [h.op_types[t] for t in h.node_type[4:]] == ["internal", "leaf"]
    assert int(h.payload(5)) == 9
    eb.validate_graph(h)


# =========================================================================== property: corruptions
def _set(graph, name, index, value):
    x = getattr(graph, name).copy()
    x[index] = value
    return _with(graph, **{name: x})


def _field_length(graph, data):
    name = data.draw(st.sampled_from(["node_type", "arg_ptr", "arg_idx", "instance", "payload_row"]))
    x = getattr(graph, name)
    if x.size and data.draw(st.booleans()):
        return _with(graph, **{name: x[:-1]})
    return _with(graph, **{name: np.concatenate([x, x[:1] if x.size else np.zeros(1, x.dtype)])})


def _arg_out_of_range(graph, data):
    if not graph.num_edges:
        return None
    e = data.draw(st.integers(0, graph.num_edges - 1))
    return _set(graph, "arg_idx", e, data.draw(st.sampled_from([-1, -7, graph.num_nodes, graph.num_nodes + 5])))


def _self_loop(graph, data):
    if not graph.num_edges:
        return None
    e = data.draw(st.integers(0, graph.num_edges - 1))
    return _set(graph, "arg_idx", e, int(graph.edge_dst()[e]))


def _type_out_of_range(graph, data):
    v = data.draw(st.integers(0, graph.num_nodes - 1))
    return _set(graph, "node_type", v, data.draw(st.sampled_from([-1, graph.num_types, graph.num_types + 3])))


def _payload_row_swap(graph, data):
    counts = np.bincount(graph.node_type, minlength=graph.num_types)
    types = np.flatnonzero(counts >= 2)
    if not types.size:
        return None
    nodes = np.flatnonzero(graph.node_type == data.draw(st.sampled_from(types.tolist())))
    i, j = data.draw(st.lists(st.sampled_from(nodes.tolist()), min_size=2, max_size=2, unique=True))
    rows = graph.payload_row.copy()
    rows[[i, j]] = rows[[j, i]]
    return _with(graph, payload_row=rows)


def _instance_out_of_range(graph, data):
    v = data.draw(st.integers(0, graph.num_nodes - 1))
    return _set(graph, "instance", v, data.draw(st.sampled_from([-1, graph.num_instances, graph.num_instances + 2])))


def _no_instances(graph, data):
    return _with(graph, num_instances=0)


def _duplicate_op_name(graph, data):
    if graph.num_types < 2:
        return _with(graph, op_types=graph.op_types * 2, payloads=graph.payloads * 2)
    k = data.draw(st.integers(1, graph.num_types - 1))
    names = list(graph.op_types)
    names[k] = names[data.draw(st.integers(0, k - 1))]
    return _with(graph, op_types=tuple(names))


def _payload_too_big(graph, data):
    t = int(graph.node_type[data.draw(st.integers(0, graph.num_nodes - 1))])
    count = int(np.count_nonzero(graph.node_type == t))
    leaf = np.zeros(count, np.int64 if data.draw(st.booleans()) else np.uint64)
    leaf[data.draw(st.integers(0, count - 1))] = data.draw(st.sampled_from([2**31, 2**32 + 3, 2**40]))
    payloads = list(graph.payloads)
    payloads[t] = leaf
    return _with(graph, payloads=tuple(payloads))


def _payload_rows_mismatch(graph, data):
    t = int(graph.node_type[data.draw(st.integers(0, graph.num_nodes - 1))])
    count = int(np.count_nonzero(graph.node_type == t))
    payloads = list(graph.payloads)
    payloads[t] = np.zeros(count + data.draw(st.sampled_from([-1, 1, 2])), np.int32)
    return _with(graph, payloads=tuple(payloads))


def _payloads_length(graph, data):
    return _with(graph, payloads=graph.payloads[:-1] if data.draw(st.booleans()) else graph.payloads + (None,))


def _float_field(graph, data):
    name = data.draw(st.sampled_from(["node_type", "arg_ptr", "arg_idx", "instance", "payload_row"]))
    return _with(graph, **{name: getattr(graph, name).astype(data.draw(st.sampled_from([np.float32, np.float64])))})


def _list_field(graph, data):
    name = data.draw(st.sampled_from(["node_type", "arg_ptr", "arg_idx", "instance", "payload_row"]))
    return _with(graph, **{name: getattr(graph, name).tolist()})


def _arg_ptr_decreasing(graph, data):
    if graph.num_nodes < 2:
        return None
    k = data.draw(st.integers(1, graph.num_nodes - 1))  # an inner offset, made larger than the next one
    return _set(graph, "arg_ptr", k, int(graph.arg_ptr[k + 1]) + 1)


def _unbatchable_string(graph, data):
    return _with(graph, unbatchable=graph.op_types[0])


CORRUPTIONS = [
    _field_length,
    _arg_out_of_range,
    _self_loop,
    _type_out_of_range,
    _payload_row_swap,
    _instance_out_of_range,
    _no_instances,
    _duplicate_op_name,
    _payload_too_big,
    _payload_rows_mismatch,
    _payloads_length,
    _float_field,
    _list_field,
    _arg_ptr_decreasing,
    _unbatchable_string,
]


@settings(max_examples=150, deadline=None)
@given(trees() | dags() | batched_graphs(max_graphs=3), st.sampled_from(CORRUPTIONS), st.data())
def test_every_corruption_of_a_valid_graph_is_a_graph_error(graph, corrupt, data):
    eb.validate_graph(graph)
    bad = corrupt(graph, data)
    assume(bad is not None)
    with pytest.raises(eb.GraphError):
        eb.validate_graph(bad)
