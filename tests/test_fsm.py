"""The learned FSM policy: encodings, the JAX batching environment, Q-learning, policy files."""

from __future__ import annotations

import itertools
import json
import os

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies
from hypothesis import HealthCheck, given, settings

import edbatch_jax as eb
from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.env import _pad_env
from edbatch_jax.fsm.policy import refine_table
from edbatch_jax.fsm.qlearning import QLearningSettings, _n_step_update

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------------------- encodings
@pytest.mark.parametrize("encoding", enc.ENCODINGS)
@pytest.mark.parametrize("k", [1, 3, 5])
def test_jax_ranked_state_gives_the_state_tuple_and_its_ranks(encoding, k):
    rng = np.random.default_rng(k)
    counts = np.array(list(itertools.product(range(3), repeat=k)))
    typewise = counts + rng.integers(0, 2, counts.shape)  # |TF_t| >= |F_t|
    run = jax.jit(jax.vmap(lambda c, t: enc.ranked_state(c, encoding, t, max_count=8)))
    ranked, rank, length = (np.asarray(x) for x in run(jnp.asarray(counts), jnp.asarray(typewise)))
    seen = set()
    for c, t, r, rk, m in zip(counts, typewise, ranked, rank, length):
        state = enc.state_tuple(c, encoding, t)
        assert enc.state_from_ranked(r, encoding, k) == state
        assert enc.state_problem(state, encoding, k) is None
        ready = enc.ready_types(state, encoding, k)
        assert m == len(ready) == (c > 0).sum() and sorted(ready) == list(np.flatnonzero(c > 0))
        assert [int(rk[t]) for t in ready] == list(range(len(ready)))  # ties in Q go to the lowest rank
        assert (r[m:] == -1).all()
        seen.add(state)
    # distinct frontiers that the encoding tells apart give distinct keys
    assert len({tuple(r) for r in ranked}) == len(seen)


def test_encodings_follow_the_paper():
    counts = np.array([0, 5, 2, 9])
    assert enc.state_tuple(counts, "set") == (1, 2, 3)
    assert enc.state_tuple(counts, "sort") == (3, 1, 2)
    assert enc.state_tuple(counts, "max") == (1, 2, 3, 3)
    assert enc.state_tuple(np.array([4, 4, 1]), "sort") == (0, 1, 2)  # ties: lower id first
    assert enc.state_tuple(counts, "sort_complete", np.array([0, 5, 3, 9])) == (3 + 4, 1 + 4, 2)
    with pytest.raises(ValueError, match="type-wise frontier counts"):
        enc.state_tuple(counts, "sort_complete")
    with pytest.raises(ValueError, match="unknown state encoding"):
        enc.check_encoding("bogus", 3)
    with pytest.raises(eb.EdbatchError, match=f"at most {enc.MAX_TYPES}"):
        enc.check_encoding("sort", enc.MAX_TYPES + 1)


def test_ready_types_rank_ties():
    assert enc.ready_types((3, 1, 2), "sort", 4) == (3, 1, 2)
    assert enc.ready_types((1, 2, 3, 2), "max", 4) == (2, 1, 3)  # the appended argmax first
    assert enc.ready_types((3 + 4, 1), "sort_complete", 4) == (3, 1)
    assert enc.state_from_ranked((2, 1, 3, -1), "max", 4) == (1, 2, 3, 2)
    problems = {
        ((1, 0), "set"): "ascending",
        ((1, 1), "sort"): "twice",
        ((1, 5), "sort_complete"): "twice",
        ((0, 2), "max"): "among its ready types",
        ((0,), "max"): "ascending order followed by",
        ((4,), "sort"): "out of range",
        ((8,), "sort_complete"): "out of range",
        ((True,), "sort"): "integers",
    }
    for (state, encoding), message in problems.items():
        assert message in enc.state_problem(state, encoding, 4), (state, encoding)


# ----------------------------------------------------------------------------- environment
def _fixed_env(graph):
    """The environment padded to fixed sizes, so that one compilation serves every example."""
    env = eb.fsm.make_env(graph)
    # a node may be read many times (repeated arguments): rare wider rows get a power-of-two width of their own
    width = lambda rows: 12 if rows.shape[1] <= 12 else 1 << (rows.shape[1] - 1).bit_length()
    # 64 nodes for most examples; a larger graph gets a power-of-two size of its own (one more compilation)
    n = 64 if graph.num_nodes <= 64 else 1 << (graph.num_nodes - 1).bit_length()
    return _pad_env(env, n, width(env.children), width(env.near_children), np.full(graph.num_types, n, np.int32))


_step = jax.jit(eb.fsm.step)
_reset = jax.jit(eb.fsm.reset)


def _walk(graph, seed):
    """Drives the JAX environment and the NumPy reference with the same random actions."""
    env = _fixed_env(graph)
    ref = eb.fsm.ReferenceEnv(graph)
    state = _reset(env)
    rng = np.random.default_rng(seed)
    unbatchable = graph.type_is_unbatchable
    steps = 0
    while True:
        ref.force()
        # the JAX side: forced moves, one type at a time, each node its own batch
        while True:
            counts = np.asarray(state.ready_counts)
            forced = np.flatnonzero((counts > 0) & unbatchable)
            if not forced.size:
                break
            state, _ = _step(env, state, int(forced[0]), int(counts[forced[0]]))
        np.testing.assert_array_equal(np.asarray(state.ready_counts), ref.ready_counts)
        np.testing.assert_array_equal(np.asarray(state.typewise), ref.typewise_counts)
        assert int(state.num_batches) == ref.num_batches
        assert int(state.remaining) == ref.frontier.remaining
        if ref.done:
            return steps
        a = int(rng.choice(np.flatnonzero(ref.ready_counts > 0)))
        r_ref = ref.step(a)
        state, r = _step(env, state, a)
        assert float(r) == pytest.approx(r_ref, abs=1e-6)
        assert -1.0 < r_ref <= 0.0
        steps += 1


@PROPERTY
@given(strategies.batched_graphs(max_graphs=4), st.integers(0, 2**16))
def test_jax_environment_agrees_with_numpy_reference(graph, seed):
    # at most 4 instances of at most 30 nodes (a tree of 8 leaves: 15 cells and up to 15 loss nodes)
    assert graph.num_nodes <= 120
    _walk(graph, seed)


def test_environment_on_real_sizes_agrees_with_reference(sst_minibatches):
    steps = _walk_unpadded(sst_minibatches[0], seed=3)
    assert steps > 20


def _walk_unpadded(graph, seed):
    env = eb.fsm.make_env(graph)
    ref = eb.fsm.ReferenceEnv(graph)
    state = _reset(env)
    rng = np.random.default_rng(seed)
    steps = 0
    while not ref.done:
        np.testing.assert_array_equal(np.asarray(state.ready_counts), ref.ready_counts)
        np.testing.assert_array_equal(np.asarray(state.typewise), ref.typewise_counts)
        a = int(rng.choice(np.flatnonzero(ref.ready_counts > 0)))
        r_ref = ref.step(a)
        state, r = _step(env, state, a)
        assert float(r) == pytest.approx(r_ref, abs=1e-6)
        steps += 1
    assert int(state.remaining) == 0
    return steps


def test_step_jit_and_eager_agree():
    graph = strategies.perfect_tree(3)
    env = eb.fsm.make_env(graph)
    s1, s2 = eb.fsm.reset(env), _reset(env)
    for a in (0, 1, 1):
        s1, r1 = eb.fsm.step(env, s1, a)
        s2, r2 = _step(env, s2, a)
        assert float(r1) == float(r2)
        for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_maximal_edges_give_the_same_frontier_as_nearest_edges(lattice_minibatch):
    from edbatch_jax.scheduling.typewise import maximal_same_type_edges, nearest_same_type_edges

    near = nearest_same_type_edges(lattice_minibatch)
    maximal = maximal_same_type_edges(lattice_minibatch)
    assert set(zip(*map(list, maximal))) <= set(zip(*map(list, near)))
    assert maximal[0].size < near[0].size / 2  # the reduction is what keeps steps cheap
    _walk_unpadded(lattice_minibatch, seed=1)


# ----------------------------------------------------------------------------- Q-learning
def test_n_step_update_equals_sequential_updates():
    rng = np.random.default_rng(0)
    s_count, w, g, t_max = 7, 3, 2, 9
    # state i has ready types at positions < width[i] of its key (-1 after)
    width = rng.integers(1, w + 1, s_count)
    keys = np.where(np.arange(w)[None, :] < width[:, None], 0, -1).astype(np.int16)
    q0 = rng.normal(size=(s_count, w)).astype(np.float32)
    states = rng.integers(0, s_count, (g, t_max)).astype(np.int32)
    positions = rng.integers(0, width[states]).astype(np.int32)
    rewards = -rng.random((g, t_max)).astype(np.float32)
    lengths = np.array([t_max, 5], np.int32)
    cfg = QLearningSettings(n_step=3, gamma=0.9)
    got = np.asarray(_n_step_update(jnp.asarray(q0), jnp.asarray(keys), states, positions, rewards, lengths, cfg))
    # reference: targets from the table as it stood at the end of the episode, applied one by one
    v = np.where(keys >= 0, q0, -np.inf).max(axis=1)
    want = q0.copy()
    for gi in range(g):
        for t in range(lengths[gi]):
            ret = sum(cfg.gamma**i * rewards[gi, t + i] for i in range(cfg.n_step) if t + i < lengths[gi])
            if t + cfg.n_step < lengths[gi]:
                ret += cfg.gamma**cfg.n_step * v[states[gi, t + cfg.n_step]]
            s, a = states[gi, t], positions[gi, t]
            want[s, a] += cfg.alpha * (ret - want[s, a])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="alpha"):
        QLearningSettings(alpha=0.0)
    with pytest.raises(TypeError):
        eb.learn_fsm([strategies.perfect_tree(2)], bogus=1)
    with pytest.raises(ValueError, match="at least one graph"):
        eb.learn_fsm([])


def test_learning_reaches_the_lower_bound_where_heuristics_do_not():
    graph = strategies.depth_trap()
    lb = eb.lower_bound(graph)
    assert eb.schedule(graph, "depth").num_batches > lb
    policy = eb.learn_fsm([graph], seed=0, max_episodes=200)
    sched = eb.schedule(graph, policy)
    eb.validate_schedule(graph, sched)
    assert sched.num_batches == lb
    assert policy.provenance["best_batches"] == lb
    assert policy.last_stats[0] == policy.last_stats[1]  # every decision found in the table


def test_sort_complete_policy_round_trips_and_matches_its_learning(tmp_path, lattice_minibatch):
    policy = eb.learn_fsm(
        [lattice_minibatch], encoding="sort_complete", seed=0, max_episodes=40, bootstrap=False, guard=False, refine=0
    )
    assert eb.schedule(lattice_minibatch, policy).num_batches == policy.provenance["best_batches"]
    path = tmp_path / "p.json"
    policy.save(path)
    assert any(name.endswith("*") for e in policy.to_dict()["table"] for name in e["state"])
    loaded = eb.FSMPolicy.load(path, op_types=lattice_minibatch.op_types)
    assert loaded.table == policy.table

    # refinement (the default): the same Q-learning, then greedy local search on the table; it keeps only
    # changes that take fewer batches on the training graph, so it never ends above the learned table
    refined = eb.learn_fsm(
        [lattice_minibatch], encoding="sort_complete", seed=0, max_episodes=40, bootstrap=False, guard=False
    )
    report = refined.provenance["refine"]
    assert report["batches_before"] == policy.provenance["best_batches"]
    assert eb.schedule(lattice_minibatch, refined).num_batches == report["batches_after"]
    assert report["batches_after"] < report["batches_before"]  # 40 episodes leave room on a lattice
    assert report["improvements"] >= 1 and report["trials"] <= eb.fsm.REFINE_BUDGET
    table, again = refine_table(policy, [lattice_minibatch])
    assert table == dict(refined.table) and dict(again, seconds=report["seconds"]) == report  # deterministic
    for bad in (-1, 2.5, True):  # counts are checked where they enter, naming the argument
        with pytest.raises(ValueError, match="refine must be a non-negative int"):
            eb.learn_fsm([lattice_minibatch], max_episodes=1, refine=bad)
        with pytest.raises(ValueError, match="budget must be a non-negative int"):
            refine_table(policy, [lattice_minibatch], budget=bad)
    table, small = refine_table(policy, [lattice_minibatch], budget=3)
    assert small["trials"] == 3 and small["batches_after"] <= small["batches_before"]
    assert (
        eb.schedule(lattice_minibatch, eb.FSMPolicy(policy.op_types, "sort_complete", table)).num_batches
        == (small["batches_after"])
    )


def test_learned_table_reproduces_the_greedy_evaluation(sst_minibatches):
    policy = eb.learn_fsm(sst_minibatches[:2], seed=0, max_episodes=120)
    counts = [eb.schedule(g, policy).num_batches for g in sst_minibatches[:2]]
    assert np.mean(counts) == pytest.approx(policy.provenance["best_batches"])
    assert policy.provenance["best_ratio"] < 1.01  # typewise-complete batches exist for trees
    assert policy.hit_rate(sst_minibatches[2:]) == 1.0


# ----------------------------------------------------------------------------- policy files
@pytest.fixture(scope="module")
def tree_policy():
    return eb.learn_fsm([strategies.depth_trap()], seed=0, max_episodes=100)


def test_save_load_round_trip(tmp_path, tree_policy):
    path = tmp_path / "sub" / "policy.json"
    tree_policy.save(path)
    assert os.listdir(path.parent) == ["policy.json"]  # no temporary file left behind
    loaded = eb.FSMPolicy.load(path, op_types=tree_policy.op_types)
    assert loaded.table == tree_policy.table and loaded.num_entries == len(tree_policy.to_dict()["table"])
    assert loaded.encoding == tree_policy.encoding and loaded.fallback == tree_policy.fallback
    assert loaded.provenance == json.loads(json.dumps(tree_policy.provenance))
    graph = strategies.depth_trap()
    a, b = eb.schedule(graph, tree_policy), eb.schedule(graph, loaded)
    np.testing.assert_array_equal(a.node_order, b.node_order)
    data = json.loads(path.read_text())
    assert data["format"] == "edbatch-fsm" and data["version"] == 1
    assert all(set(e) == {"state", "action"} for e in data["table"])


def _write(tmp_path, text):
    p = tmp_path / "p.json"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="other"), "not an edbatch FSM policy"),
        (lambda d: d.update(version=99), "unsupported version 99"),
        (lambda d: d.update(encoding="zigzag"), "unknown encoding 'zigzag'"),
        (lambda d: d.update(op_types="a"), "'op_types' must be"),
        (lambda d: d.update(table={}), "'table' must be a list"),
        (lambda d: d["table"].append({"state": ["a", "nope"], "action": "a"}), "unknown op type 'nope'"),
        (lambda d: d["table"].append({"state": ["a", "a"], "action": "a"}), "not a valid 'sort' state"),
        (lambda d: d["table"].append({"state": ["a"], "action": "b"}), "action 'b' is not ready"),
        (lambda d: d["table"].append({"state": ["a"]}), "must be an object with 'state' and 'action'"),
    ],
)
def test_corrupt_policy_files_name_the_problem(tmp_path, tree_policy, mutate, message):
    data = tree_policy.to_dict()
    mutate(data)
    p = _write(tmp_path, json.dumps(data))
    with pytest.raises(eb.PolicyFileError, match=message) as err:
        eb.FSMPolicy.load(p)
    assert str(p) in str(err.value)


def test_unreadable_and_mismatched_policy_files(tmp_path, tree_policy):
    with pytest.raises(eb.PolicyFileError, match="not valid JSON"):
        eb.FSMPolicy.load(_write(tmp_path, '{"format": "edbatch-fsm", '))
    with pytest.raises(eb.PolicyFileError, match="cannot read policy file"):
        eb.FSMPolicy.load(tmp_path / "missing.json")
    path = tmp_path / "ok.json"
    tree_policy.save(path)
    with pytest.raises(eb.PolicyFileError, match=r"the policy is for op types \['a', 'b', 'x'\], but the model has"):
        eb.FSMPolicy.load(path, op_types=("leaf", "internal", "loss"))
    with pytest.raises(ValueError, match="learned for op types"):
        eb.schedule(strategies.perfect_tree(2), tree_policy)


def test_fallbacks_apply_to_unseen_states():
    policy = eb.FSMPolicy(("a", "b", "x"), "sort", {}, fallback="last")
    graph = strategies.depth_trap()
    for fallback in eb.fsm.FALLBACKS:
        p = policy.with_fallback(fallback)
        sched = eb.schedule(graph, p)
        eb.validate_schedule(graph, sched)
        assert p.last_stats[0] == 0 and p.last_stats[1] > 0
    with pytest.raises(ValueError, match="unknown fallback"):
        policy.with_fallback("random")


def test_learn_command_saves_a_policy_and_prints_the_comparison(tmp_path, capsys):
    from edbatch_jax.apps.cli import main

    out = tmp_path / "treelstm.json"
    plot = tmp_path / "curve.png"
    argv = [
        "learn",
        "--model",
        "treelstm",
        "--batch-size",
        "16",
        "--graphs",
        "2",
        "--eval-batches",
        "2",
        "--episodes",
        "60",
        "--out",
        str(out),
        "--plot",
        str(plot),
        "--quiet",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for word in ("learned in", "held-out", "depth", "agenda", "typewise", "fsm", "hit rate"):
        assert word in text
    policy = eb.FSMPolicy.load(out, op_types=("leaf", "internal", "loss"))
    assert policy.provenance["model"] == "treelstm"
    assert plot.stat().st_size > 1000
    held = policy.provenance["held_out"]  # the held-out comparison printed is in the saved provenance
    assert held["graphs"] == 2 and set(held["batches"]) == {"depth", "agenda", "typewise", "fsm"}
    assert f"{held['batches']['fsm'] / held['lower_bound']:.3f}" in text
    assert "refinement:" in text and "batches_after" in policy.provenance["refine"]


def _step_by_step(policy, graph):
    """The schedule and (hits, decisions) of ``policy.choose`` decision by decision (the traced path)."""
    policy._tracing = True
    try:
        return policy.schedule(graph), policy.last_stats
    finally:
        policy._tracing = False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    graph=strategies.dags(min_nodes=1, max_nodes=30, max_types=4, unbatchable=True),
    encoding=st.sampled_from(enc.ENCODINGS),
    fallback=st.sampled_from(eb.fsm.FALLBACKS),
    data=st.data(),
)
def test_compiled_fsm_schedule_equals_choose_decision_by_decision(graph, encoding, fallback, data):
    """A table of random entries (states of the graph's own walk and others): the one-call compiled schedule
    equals the step-by-step one, batches and table hits alike."""
    k = graph.num_types
    pool = [i for i in range(k) if graph.op_types[i] != strategies.UNBATCHABLE]
    table = {}
    for _ in range(data.draw(st.integers(0, 12)) if pool else 0):  # (a graph of unbatchable nodes alone: none)
        ready = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=len(pool), unique=True))
        counts = np.zeros(k, np.int64)
        counts[ready] = data.draw(st.lists(st.integers(1, 4), min_size=len(ready), max_size=len(ready)))
        typewise = counts + np.asarray(data.draw(st.lists(st.integers(0, 1), min_size=k, max_size=k)))
        state = enc.state_tuple(counts, encoding, typewise)
        table[state] = data.draw(st.sampled_from(sorted(enc.ready_types(state, encoding, k))))
    policy = eb.FSMPolicy(graph.op_types, encoding, table, fallback)
    _step_by_step(policy, graph)
    visited = list(dict.fromkeys(state for state, _, _ in policy._stats["trace"]))
    for state in visited[: data.draw(st.integers(0, 3))]:  # some states the walk meets, too
        policy._table[state] = enc.ready_types(state, encoding, k)[-1]
    policy._rule = None
    compiled, stats = policy.schedule(graph), policy.last_stats
    stepwise, step_stats = _step_by_step(policy, graph)
    for field in ("batch_type", "batch_ptr", "node_order"):
        np.testing.assert_array_equal(getattr(compiled, field), getattr(stepwise, field))
    assert stats == step_stats


def test_compiled_schedules_equal_step_by_step_on_lattices(lattice_minibatch):
    from edbatch_jax.scheduling.typewise import TypewisePolicy

    class StepByStep(TypewisePolicy):
        def choose(self, frontier, context):
            return super().choose(frontier, context)

    a, b = eb.schedule(lattice_minibatch, "typewise"), StepByStep().schedule(lattice_minibatch)
    np.testing.assert_array_equal(a.node_order, b.node_order)
    np.testing.assert_array_equal(a.batch_ptr, b.batch_ptr)
    from edbatch_jax.zoo.workloads import default_policy_path

    shipped = eb.FSMPolicy.load(default_policy_path("lattice_lstm"))
    for fallback in eb.fsm.FALLBACKS:
        policy = shipped.with_fallback(fallback)
        compiled, stats = policy.schedule(lattice_minibatch), policy.last_stats
        stepwise, step_stats = _step_by_step(policy, lattice_minibatch)
        np.testing.assert_array_equal(compiled.node_order, stepwise.node_order)
        np.testing.assert_array_equal(compiled.batch_ptr, stepwise.batch_ptr)
        assert stats == step_stats and stats[1] > 0


@pytest.mark.parametrize("name", ["treelstm", "lattice_lstm"])
def test_shipped_policies_load_for_their_models(name):
    from edbatch_jax.zoo.workloads import default_policy_path, load_workload

    work = load_workload(name, num_train=64, num_held_out=64)
    policy = eb.FSMPolicy.load(default_policy_path(name), op_types=work.op_types)
    graph = work.minibatches("held_out", 8, 1)[0]
    sched = eb.schedule(graph, policy)
    eb.validate_schedule(graph, sched)
    assert sched.num_batches <= eb.schedule(graph, "agenda").num_batches
    if name == "treelstm":  # the workload's vocabulary is the one its graphs were built with
        again = work.model.batch_graph(work.held_out[:3], work.vocab)
        np.testing.assert_array_equal(again.payloads[0], work.batch_graph(work.held_out[:3]).payloads[0])
    else:
        assert work.vocab is None


def test_policy_follows_op_types_numbered_in_another_order():
    """``tree_graph`` + ``batch_graphs`` number the types (leaf, loss, internal); the policy maps them by name."""
    from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
    from edbatch_jax.zoo.models.treelstm import TreeLSTM
    from edbatch_jax.zoo.workloads import default_policy_path

    trees = synthetic_sst(8, seed=4)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab), hidden=4, embed=4)
    a = model.batch_graph(trees, vocab)
    b = eb.batch_graphs([model.tree_graph(t, vocab.encode(t)) for t in trees])
    assert a.op_types != b.op_types and sorted(a.op_types) == sorted(b.op_types)
    policy = eb.FSMPolicy.load(default_policy_path("treelstm"), op_types=b.op_types)
    sa, sb = eb.schedule(a, policy), eb.schedule(b, policy)
    eb.validate_schedule(b, sb)
    assert [a.op_types[t] for t in sa.batch_type] == [b.op_types[t] for t in sb.batch_type]
    assert [sorted(sa.node_order[s:e].tolist()) for s, e in zip(sa.batch_ptr[:-1], sa.batch_ptr[1:])] == [
        sorted(sb.node_order[s:e].tolist()) for s, e in zip(sb.batch_ptr[:-1], sb.batch_ptr[1:])
    ]
    assert sb.num_batches == eb.lower_bound(b)
    # the decision trace speaks in op type names, so both numberings give the same walk through the FSM
    ta, tb = policy.trace(a), policy.trace(b)
    assert ta == tb and len(ta) == policy.last_stats[1] == sb.num_batches
    assert [d.action for d in tb] == [b.op_types[t] for t in sb.batch_type]
    assert sum(d.from_table for d in tb) == policy.last_stats[0]
    assert ta[0].state == ("leaf",) and all(d.action in d.state for d in ta)


def test_trace_reports_fallback_decisions():
    policy = eb.FSMPolicy(("a", "b", "x"), "sort", {}, fallback="first")
    graph = strategies.depth_trap()
    trace = policy.trace(graph)
    sched = eb.schedule(graph, policy)
    assert len(trace) == sched.num_batches and not any(d.from_table for d in trace)
    assert all(d.action == d.state[0] for d in trace)  # "first": the most ready type
