"""Planning at scale: long chains, a very wide node, and the type-wise frontier's linear bookkeeping."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_typed_dag

import edbatch_jax as eb
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.layout import planner
from edbatch_jax.scheduling.typewise import _closure_counters

HIDDEN = 4


def _graph(node_type, arity, args, op_types):
    n = node_type.shape[0]
    return eb.Graph(
        node_type=node_type.astype(np.int32),
        arg_ptr=np.concatenate([[0], np.cumsum(arity, dtype=np.int64)]).astype(np.int32),
        arg_idx=np.asarray(args, np.int32),
        instance=np.zeros(n, np.int32),
        payload_row=payload_rows(node_type.astype(np.int32), len(op_types)),
        payloads=(None,) * len(op_types),
        op_types=op_types,
        num_instances=1,
    )


def _chain(n, num_types):
    """A leaf, then ``n - 1`` nodes each reading the previous one, their types cycling."""
    node_type = np.zeros(n, np.int64)
    node_type[1:] = 1 + np.arange(n - 1) % num_types
    return _graph(
        node_type,
        (node_type > 0).astype(np.int64),
        np.arange(n - 1),
        ("leaf",) + tuple(f"step{t}" for t in range(num_types)),
    )


def _wide(num_args):
    """``num_args`` leaves and one node reading all of them, then one node reading that one."""
    n = num_args + 2
    node_type = np.zeros(n, np.int64)
    node_type[-2:] = [1, 2]
    arity = np.zeros(n, np.int64)
    arity[-2:] = [num_args, 1]
    args = np.r_[np.arange(num_args), num_args]
    return _graph(node_type, arity, args, ("leaf", "sum", "out"))


def _ops(graph, variadic=()):
    ops = {}
    for name in graph.op_types:
        if name in variadic:
            ops[name] = eb.Op(lambda p, x, s: p["w"] + s, arity=None, aggregate="sum")
        else:
            arities = np.unique(graph.arity[graph.node_type == graph.type_id(name)])
            ops[name] = eb.Op(lambda p, x, *xs: p["w"] + sum(xs, np.zeros(HIDDEN, np.float32)), arity=int(arities[0]))
    return ops


def _plan_everything(graph, variadic=()):
    params = {"w": np.zeros(HIDDEN, np.float32)}
    engine = eb.FusedEngine(_ops(graph, variadic))  # its plan is host arrays only (the stepwise one cuts steps)
    schedules = {}
    for policy in ("depth", "agenda", "typewise"):
        sched = eb.schedule(graph, policy)
        eb.validate_schedule(graph, sched)
        schedules[policy] = sched
    layout = eb.plan_layout(graph, schedules["typewise"], variadic=variadic or None)
    assert layout.position.shape == (graph.num_nodes,)
    assert np.array_equal(np.sort(layout.position), np.arange(graph.num_nodes))
    plan = engine.plan(params, graph, schedules["typewise"], layout)
    return schedules, layout, plan


def test_a_chain_of_100000_nodes_schedules_lays_out_and_plans():
    graph = _chain(100_000, 2)  # two op types in turn: typewise must still never batch two
    schedules, _, plan = _plan_everything(graph)
    bound = eb.lower_bound(graph)
    assert bound == graph.num_nodes  # one node per batch is all a chain allows
    assert schedules["typewise"].num_batches == bound
    assert schedules["depth"].num_batches == bound
    assert plan.num_steps == bound


def test_a_node_with_10000_arguments_schedules_lays_out_and_plans():
    graph = _wide(10_000)
    schedules, layout, _ = _plan_everything(graph, variadic=("sum",))
    for sched in schedules.values():
        assert sched.num_batches == 3 == eb.lower_bound(graph)
    assert layout.accepted == layout.num_operands  # the leaves, one batch, are read as one slice


def test_a_node_read_by_thousands_of_batches_keeps_the_layout_linear():
    """Node ``u`` lies in one offered operand set per step of a chain pair: twin classes stay sparse."""
    steps = 3000
    b = eb.GraphBuilder()
    u, c, d = b.add("leaf"), b.add("leaf"), b.add("leaf")
    for _ in range(steps):
        x = b.add("leaf")
        c, d = b.add("f", c, x), b.add("f", d, u)
    graph = b.build()
    sched = eb.schedule(graph, "depth")
    layout = eb.plan_layout(graph, sched)
    assert np.array_equal(np.sort(layout.position), np.arange(graph.num_nodes))
    assert layout.num_operands == 2 * steps


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 30), st.integers(1, 4))
def test_closure_counts_match_the_maximal_pairs_as_batches_run(seed, n, n_types):
    graph = random_typed_dag(seed, n, n_types)
    closure = eb.TypewiseFrontier(graph)
    pairs = eb.TypewiseFrontier(graph, edges="maximal")
    rng = np.random.default_rng(seed)
    while not closure.done:
        np.testing.assert_array_equal(closure.typewise_counts, pairs.typewise_counts)
        t = int(rng.choice(np.flatnonzero(closure.ready_counts)))
        np.testing.assert_array_equal(closure.take(t), pairs.take(t))
    assert pairs.done


def test_closure_counters_are_linear_in_the_graph():
    """One counter per (type, node), each at most the node's arity: ``O(T * E)`` decrements in all."""
    graph = random_typed_dag(3, 2000, 4)
    counters = _closure_counters(graph)
    assert counters.shape == (graph.num_types, graph.num_nodes)
    assert np.all(counters <= graph.arity[None, :])
    frontier = eb.TypewiseFrontier(graph)
    while not frontier.done:
        frontier.take(int(np.flatnonzero(frontier.ready_counts)[0]))
    assert not np.any(frontier._clear_np)  # every counter ran down to 0, none below


def test_sparse_twin_classes_equal_the_dense_ones():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 50))
        batch_of = rng.integers(0, max(1, n // 4), n)
        m = int(rng.integers(0, 150))
        key = np.unique(np.sort(rng.integers(0, max(1, m // 3), m)) * n + rng.integers(0, n, m))
        node, set_id = key % n, key // n
        members = rng.permutation(n)[: int(rng.integers(0, n + 1))]
        dense = planner._twin_classes(batch_of, node, set_id, members)
        order = np.argsort(node, kind="stable")
        sparse = planner._twin_classes_sparse(
            batch_of, node[order], set_id[order], np.bincount(node, minlength=n), members
        )
        assert dense[1] == sparse[1]
        np.testing.assert_array_equal(dense[0], sparse[0])
