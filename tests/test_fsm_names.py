"""The learned FSM policy matches op types by name: learning over independently built graphs, applying a policy
to graphs that list their op types in another order or lack some, unknown op types, and hundreds of op types.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import edbatch_jax as eb
from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.env import make_env, stack_envs

EPISODES = 40


def _records(n_chains: int, with_c: bool = True) -> list[tuple[str, tuple[int, ...]]]:
    """Chains a -> b -> a -> ... of lengths 1..n_chains; an "x" after every b, which also reads a source "c".

    As in ``tests/test_fsm.py``'s depth trap, the optimum runs every "x" at the end. Records are
    ``(op type, argument record indices)`` in a topological order whose op types first appear as (a, c, b, x).
    """
    recs: list[tuple[str, tuple[int, ...]]] = []
    for length in range(1, n_chains + 1):
        recs.append(("a", ()))
        v = len(recs) - 1
        for _ in range(length):
            if with_c:
                recs.append(("c", ()))
            c = len(recs) - 1
            recs.append(("b", (v,)))
            b = len(recs) - 1
            recs.append(("x", (b, c) if with_c else (b,)))
            recs.append(("a", (b,)))
            v = len(recs) - 1
    return recs


def _build(recs, sources_first: str | None = None) -> tuple[eb.Graph, np.ndarray]:
    """The graph of ``recs`` from its own builder, the sources of type ``sources_first`` added before the rest.

    Returns ``(graph, record)``: ``record[v]`` is the record index of graph node ``v``.
    """
    first = [i for i, (op, args) in enumerate(recs) if op == sources_first and not args]
    order = first + [i for i in range(len(recs)) if i not in set(first)]
    builder, node_of = eb.GraphBuilder(), {}
    for i in order:
        op, args = recs[i]
        node_of[i] = builder.add(op, *[node_of[a] for a in args])
    return builder.build(), np.array(order)


def _relabel(graph: eb.Graph, op_types: tuple[str, ...]) -> eb.Graph:
    """The same nodes (same ids) with the op types listed as ``op_types`` (a superset of the graph's, any order)."""
    remap = np.array([op_types.index(t) for t in graph.op_types])
    payloads = [None] * len(op_types)
    for t, p in enumerate(graph.payloads):
        payloads[remap[t]] = p
    return dataclasses.replace(
        graph, node_type=remap[graph.node_type].astype(np.int32), payloads=tuple(payloads), op_types=op_types
    )


def _batches(sched: eb.Schedule, record: np.ndarray) -> list[tuple[str, list[int]]]:
    """Every batch as (op type, sorted record indices of its nodes)."""
    ptr = sched.batch_ptr
    return [
        (sched.op_types[int(t)], sorted(record[sched.node_order[s:e]].tolist()))
        for t, s, e in zip(sched.batch_type, ptr[:-1], ptr[1:])
    ]


@pytest.fixture(scope="module")
def training():
    """Three mini-batches, each from its own builder: op types (a, c, b, x), (c, a, b, x) and (a, b, x)."""
    graphs = [_build(_records(4))[0], _build(_records(3), sources_first="c")[0], _build(_records(5, with_c=False))[0]]
    assert [g.op_types for g in graphs] == [("a", "c", "b", "x"), ("c", "a", "b", "x"), ("a", "b", "x")]
    return graphs


@pytest.fixture(scope="module")
def policy(training):
    return eb.learn_fsm(training, seed=0, max_episodes=EPISODES)


# ----------------------------------------------------------------------------- learning by name
def test_learning_over_graphs_listing_op_types_in_other_orders(training, policy):
    assert policy.op_types == ("a", "c", "b", "x")  # first appearance across the list
    counts = []
    for g in training:
        sched = eb.schedule(g, policy)
        eb.validate_schedule(g, sched)
        counts.append(sched.num_batches)
    # the learning's greedy evaluation ran the same decisions on the remapped environments
    assert np.mean(counts) == pytest.approx(policy.provenance["best_batches"])
    assert counts == [eb.lower_bound(g) for g in training]


def test_environments_are_stacked_by_name():
    from edbatch_jax.fsm.env import union_op_types

    assert union_op_types([("a", "c"), ("c", "b"), ()]) == ("a", "c", "b")
    g = _build(_records(3))[0]
    other = _relabel(g, ("x", "b", "c", "a"))  # the same nodes, op types listed in another order
    lacking = _build(_records(2, with_c=False))[0]
    by_name = stack_envs([make_env(g), make_env(other), make_env(lacking)])
    alike = stack_envs([make_env(g), make_env(g), make_env(_relabel(lacking, g.op_types))])
    assert by_name.op_types == alike.op_types == g.op_types
    for a, b in zip(by_name.__dict__.values(), alike.__dict__.values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # one environment numbered after given names; a graph type missing from them is named
    one = make_env(lacking, op_types=g.op_types)
    assert one.op_types == g.op_types and int(np.asarray(one.initial_tail)[g.op_types.index("c")]) == 0
    with pytest.raises(ValueError, match=r"\['x'\] are not among"):
        make_env(lacking, op_types=("a", "b"))


def test_learning_ignores_the_order_graphs_list_their_op_types():
    g1, g2 = _build(_records(3))[0], _build(_records(4))[0]
    other = _relabel(g2, ("x", "c", "b", "a"))
    a = eb.learn_fsm([g1, g2], seed=1, max_episodes=EPISODES)
    b = eb.learn_fsm([g1, other], seed=1, max_episodes=EPISODES)
    assert a.op_types == b.op_types == g1.op_types
    assert a.table == b.table
    assert a.provenance["best_batches"] == b.provenance["best_batches"]


# ----------------------------------------------------------------------------- applying a policy by name
def test_policy_schedules_reordered_and_partial_graphs_like_its_own_order(policy):
    recs = _records(6)
    own, own_rec = _build(recs)
    assert own.op_types == policy.op_types
    expected = _batches(eb.schedule(own, policy), own_rec)
    for graph, record in [_build(recs, sources_first="c"), (_relabel(own, ("x", "b", "a", "c")), own_rec)]:
        assert graph.op_types != policy.op_types
        sched = eb.schedule(graph, policy)
        eb.validate_schedule(graph, sched)
        assert _batches(sched, record) == expected
        assert [d.action for d in policy.trace(graph)] == [t for t, _ in expected]
    # a graph lacking an op type of the policy schedules as the same nodes with that type listed but unused
    part, part_rec = _build(_records(6, with_c=False))
    assert set(part.op_types) < set(policy.op_types)
    sched = eb.schedule(part, policy)
    eb.validate_schedule(part, sched)
    assert _batches(sched, part_rec) == _batches(eb.schedule(_relabel(part, policy.op_types), policy), part_rec)
    assert sched.num_batches == eb.lower_bound(part)


def test_unknown_op_type_is_named(policy):
    recs = _records(2) + [("y", (0,))]
    graph = _build(recs)[0]
    with pytest.raises(eb.ScheduleError, match=r"learned for op types \['a', 'c', 'b', 'x'\].* op type 'y'"):
        eb.schedule(graph, policy)
    with pytest.raises(eb.ScheduleError, match="op type 'y'"):
        policy.trace(graph)
    # an op type the graph lists without any node of it asks for no decision
    unused = _relabel(_build(_records(2))[0], ("a", "c", "b", "x", "y"))
    eb.validate_schedule(unused, eb.schedule(unused, policy))


def test_policy_files_load_for_models_with_fewer_op_types(tmp_path, policy):
    path = tmp_path / "p.json"
    policy.save(path)
    loaded = eb.FSMPolicy.load(path, op_types=("x", "b", "a"))
    assert loaded.table == policy.table
    with pytest.raises(eb.PolicyFileError, match=r"only in the model: \['y'\]"):
        eb.FSMPolicy.load(path, op_types=("a", "b", "y"))


# ----------------------------------------------------------------------------- hundreds of op types
def _many_types(k: int) -> eb.Graph:
    """``k`` op types: 3 chains of 4 nodes per 4 types, node ``i`` of a chain of type ``(3 chain + i) mod k``."""
    builder = eb.GraphBuilder()
    for chain in range(k // 4 * 3):
        v = None
        for i in range(4):
            op = f"t{(3 * chain + i) % k:03d}"
            v = builder.add(op) if v is None else builder.add(op, v)
    return builder.build()


def test_learning_works_over_256_op_types():
    """The sparse table has no state-space limit: 'sort_complete', which a dense table fitted to 7 op types only."""
    graph = _many_types(256)
    assert graph.num_types == 256
    # the learning loop's own table (refine=0): its greedy walk is the one learning evaluated
    policy = eb.learn_fsm([graph], encoding="sort_complete", seed=0, max_episodes=6, eval_every=5, refine=0)
    assert policy.op_types == graph.op_types and 0 < policy.num_entries
    sched = eb.schedule(graph, policy)
    eb.validate_schedule(graph, sched)
    assert sched.num_batches == policy.provenance["best_batches"]
    assert policy.last_stats[0] == policy.last_stats[1]  # the greedy walk's states are all in the table
    # more op types than any policy may have: refused up front, named
    names = [f"u{i}" for i in range(enc.MAX_TYPES + 1)]
    huge = dataclasses.replace(graph, op_types=tuple(names[:256]))
    with pytest.raises(eb.EdbatchError, match=f"{enc.MAX_TYPES + 1} op types: an FSM policy has at most"):
        eb.learn_fsm([huge], op_types=names, max_episodes=1)
    with pytest.raises(eb.EdbatchError, match=f"at most {enc.MAX_TYPES}"):
        eb.FSMPolicy(names, "sort", {})
