"""Type-wise frontier counts against a brute force, and the type-wise greedy policy."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import random_typed_dag

import edbatch_jax as eb
from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
from edbatch_jax.zoo.models.treelstm import TreeLSTM


def _ancestors(graph):
    anc = [set() for _ in range(graph.num_nodes)]
    for v in eb.topological_order(graph):
        for a in graph.args(int(v)):
            anc[v] |= anc[a] | {int(a)}
    return anc


def _brute_typewise_counts(graph, remaining, anc):
    counts = np.zeros(graph.num_types, np.int64)
    for w in remaining:
        t = graph.node_type[w]
        if not any(graph.node_type[u] == t for u in anc[w] & remaining):
            counts[t] += 1
    return counts


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10**6),
    st.integers(1, 30),
    st.integers(1, 3),
    st.sampled_from(["closure", "maximal", "nearest"]),
)
def test_typewise_counts_match_brute_force_as_batches_run(seed, n, n_types, edges):
    _check_typewise_counts(seed, n, n_types, edges)


def _check_typewise_counts(seed, n, n_types, edges):
    graph = random_typed_dag(seed, n, n_types)
    anc = _ancestors(graph)
    frontier = eb.TypewiseFrontier(graph, edges=edges)
    remaining = set(range(graph.num_nodes))
    rng = np.random.default_rng(seed)
    while not frontier.done:
        np.testing.assert_array_equal(frontier.typewise_counts, _brute_typewise_counts(graph, remaining, anc))
        ready = np.flatnonzero(frontier.ready_counts)
        assert np.all(frontier.ready_counts <= frontier.typewise_counts)  # F_t is a subset of TF_t
        remaining -= set(frontier.take(int(rng.choice(ready))).tolist())
    assert not remaining


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 40), st.integers(1, 4))
def test_typewise_schedules_are_valid_and_bounded_below(seed, n, n_types):
    graph = random_typed_dag(seed, n, n_types)
    sched = eb.schedule(graph, "typewise")
    eb.validate_schedule(graph, sched)
    assert sched.num_batches >= eb.lower_bound(graph)


def test_typewise_meets_the_lower_bound_on_sst_like_trees():
    trees = synthetic_sst(192, seed=2)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab))
    for i in range(0, 192, 64):
        graph = model.batch_graph(trees[i : i + 64], vocab)
        lb = eb.lower_bound(graph)
        assert eb.schedule(graph, "typewise").num_batches == lb
        # the heuristics it improves on need about twice as many
        assert eb.schedule(graph, "agenda").num_batches > 1.6 * lb
