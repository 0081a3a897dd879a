"""The sparse Q-table: the learned FSM policy over hundreds of op types.

The table holds the visited states only (a hash table inside the jitted loop), so every encoding works over any
number of op types. Checked here: it learns exactly what the dense table of earlier versions learned where that
fitted (digests of the dense version's results), it learns over 64 and 256 op types in one jitted loop and the
policy schedules held-out graphs of the family, a table that fills up grows without changing the result, and
policy files (the shipped ones, written by the dense version) load, with malformed states refused by line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import edbatch_jax as eb
from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.env import make_env, stack_envs
from edbatch_jax.fsm.qlearning import QLearningSettings, run_q_learning

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"


def typed_dag(seed: int, n: int, k: int, window: int = 30, zipf: float = 1.1, max_args: int = 3, unbatchable=()):
    """``n`` nodes with op types ``t0 .. t{k-1}`` drawn Zipf-like; each reads up to ``max_args`` of the previous
    ``window`` nodes."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, k + 1) ** zipf
    types = rng.choice(k, n, p=w / w.sum())
    b = eb.GraphBuilder(unbatchable=unbatchable)
    for v in range(n):
        lo = max(0, v - window)
        m = int(rng.integers(0, min(v - lo, max_args) + 1))
        args = sorted(int(a) for a in rng.choice(np.arange(lo, v), m, replace=False)) if m else []
        b.add(f"t{types[v]}", *args)
    return b.build()


# ----------------------------------------------------------------------------- the dense version's results
SMALL = [typed_dag(1, 60, 5), typed_dag(2, 50, 4), eb.batch_graphs([typed_dag(3, 30, 5, unbatchable=("t4",))])]
HELD = typed_dag(9, 80, 5)
SETTINGS = {
    "default": dict(max_episodes=60, eval_every=10),
    "nstep3": dict(max_episodes=40, eval_every=7, n_step=3, gamma=0.9, bootstrap=True),
    "nobootstrap": dict(max_episodes=30, eval_every=5, bootstrap=False),
}
# learn_fsm(SMALL, encoding, seed=3, **SETTINGS[name]) with the dense Q-table (the version before the sparse one):
# the sha256 of its table, best batches, episodes, learning curves and held-out schedule (below), its best
# batches, table entries and held-out batch types (t0..t4 as 0..4)
DENSE = {
    ("default", "sort", 32): (
        "a8c743ab0450d80b",
        19.666666666666668,
        117,
        "4 0 0 3 2 1 0 0 2 4 4 2 4 0 1 3 0 0 2 3 1 0 1 1 0 2 4 1 4 1 1 3 0 0 2 1",
    ),
    ("nstep3", "max", None): (
        "0cfe10937348df78",
        18.333333333333332,
        73,
        "4 1 2 0 2 3 0 0 4 4 0 4 1 2 2 0 2 3 0 0 2 3 1 0 1 1 2 1 4 0 1 0 2 1 4 1 1 3",
    ),
    ("nobootstrap", "sort_complete", None): (
        "9221626f06d86af9",
        18.333333333333332,
        260,
        "4 3 0 1 0 3 0 2 2 4 4 4 1 3 2 0 2 0 0 0 2 3 4 1 4 0 2 1 2 1 0 0 3",
    ),
}


def _digest(policy: eb.FSMPolicy, held: list[str]) -> str:
    table = sorted([tuple(e["state"]), e["action"]] for e in policy.to_dict()["table"])
    record = {
        "table": [[list(s), a] for s, a in table],
        "best": policy.provenance["best_batches"],
        "episodes": policy.provenance["episodes"],
        "eval": policy.provenance["curve"]["eval_batches"],
        "train": policy.provenance["curve"]["train_batches"],
        "held": held,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@pytest.mark.parametrize("case", list(DENSE), ids=lambda c: f"{c[0]}-{c[1]}")
def test_sparse_table_learns_what_the_dense_table_learned(case):
    """Same seed, same greedy table, curves and schedule; ``sort`` starts from a 32-slot table, which grows."""
    name, encoding, capacity = case
    digest, best, entries, held = DENSE[case]
    kwargs = {} if capacity is None else {"capacity": capacity}
    policy = eb.learn_fsm(SMALL, encoding=encoding, seed=3, guard=False, refine=0, **SETTINGS[name], **kwargs)
    sched = eb.schedule(HELD, policy)
    eb.validate_schedule(HELD, sched)
    types = [HELD.op_types[t] for t in sched.batch_type]
    assert " ".join(t[1:] for t in types) == held
    assert (policy.provenance["best_batches"], policy.num_entries) == (best, entries)
    assert _digest(policy, types) == digest
    if capacity is not None:  # 16 states fit: learning ran again, with a larger table, to the same result
        assert policy.provenance["learn_runs"] >= 2


def test_jax_ranked_state_over_256_types_matches_the_host_tuple():
    rng = np.random.default_rng(0)
    k = 256
    counts = rng.integers(0, 4, (64, k)) * (rng.random((64, k)) < rng.random((64, 1)))
    typewise = counts + rng.integers(0, 2, counts.shape)
    for encoding in enc.ENCODINGS:
        for max_count in (None, 1000):  # argsort, or one packed sort
            run = jax.jit(jax.vmap(lambda c, t, e=encoding, m=max_count: enc.ranked_state(c, e, t, max_count=m)))
            ranked, rank, length = (np.asarray(x) for x in run(jnp.asarray(counts), jnp.asarray(typewise)))
            for c, t, r, rk, m in zip(counts, typewise, ranked, rank, length):
                state = enc.state_tuple(c, encoding, t)
                assert enc.state_from_ranked(r, encoding, k) == state
                ready = enc.ready_types(state, encoding, k)
                assert m == len(ready) and [int(rk[a]) for a in ready] == list(range(m))


# ----------------------------------------------------------------------------- hundreds of op types
@pytest.mark.parametrize("k", [64, 256])
def test_learning_over_many_op_types_schedules_held_out_graphs(tmp_path, k):
    names = tuple(f"t{i}" for i in range(k))
    train = [typed_dag(s, 600, k) for s in (1, 2)]
    envs = stack_envs([make_env(g, names) for g in train])
    cfg = QLearningSettings(max_episodes=30, eval_every=10)
    policy = eb.learn_fsm(train, seed=0, op_types=names, capacity=1 << 16, guard=False, refine=0, **vars(cfg))
    # 64 types: the first frontier's types set the key width to start with, a wider state made it grow, and the
    # loop ran again; the same as a loop that starts wide enough
    assert policy.provenance["learn_runs"] == (2 if k == 64 else 1)
    result = run_q_learning(envs, "sort", seed=0, settings=cfg, capacity=1 << 16, width=k if k == 64 else None)
    assert result.runs == 1 and result.capacity == 1 << 16  # one jitted loop
    assert len(set(result.states)) == len(result.states) == result.q.shape[0] > 0
    assert policy.num_entries == len(result.states) and set(policy.table) == set(result.states)
    assert policy.provenance["best_batches"] == result.best_batches
    # the greedy walk on the training graphs stays in the table and gives the batches learning reported
    counts = [eb.schedule(g, policy).num_batches for g in train]
    assert np.mean(counts) == pytest.approx(policy.provenance["best_batches"])
    assert policy.hit_rate(train) == 1.0
    for seed in (11, 12):  # held out, of the same family: a valid schedule, unseen states by the fallback
        graph = typed_dag(seed, 600, k)
        sched = eb.schedule(graph, policy)
        eb.validate_schedule(graph, sched)
        assert sched.num_batches >= eb.lower_bound(graph)
    path = tmp_path / "p.json"
    policy.save(path)
    text = path.read_text()
    lines = text.splitlines()
    assert sum('"state"' in line for line in lines) == policy.num_entries  # an entry per line
    assert len(text) < 4096 + sum(24 + 8 * (len(s) + 1) for s in policy.table)
    loaded = eb.FSMPolicy.load(path, op_types=train[0].op_types)
    assert loaded.table == policy.table and loaded.op_types == names


def test_the_guard_keeps_the_table_only_where_it_beats_typewise():
    """Over 64 op types the table loses to typewise on its training graphs: the policy becomes typewise (an empty
    table, the typewise fallback); on trees it ties and keeps its table."""
    names = tuple(f"t{i}" for i in range(64))
    train = [typed_dag(s, 300, 64) for s in (1, 2)]
    policy = eb.learn_fsm(train, seed=0, op_types=names, max_episodes=20, eval_every=10)
    guard = policy.provenance["guard"]
    assert set(guard["batches"]) == {"table", "table, typewise fallback", "typewise"} and guard["graphs"] == 2
    assert guard["batches"][guard["chosen"]] == min(guard["batches"].values())
    typewise = np.mean([eb.schedule(g, "typewise").num_batches for g in train])
    assert guard["batches"]["typewise"] == typewise and guard["batches"]["table"] > typewise
    assert guard["chosen"] == "typewise" and policy.num_entries == 0 and policy.fallback == "typewise"
    held = typed_dag(11, 300, 64)
    mine, theirs = eb.schedule(held, policy), eb.schedule(held, "typewise")
    assert np.array_equal(mine.batch_type, theirs.batch_type) and np.array_equal(mine.node_order, theirs.node_order)
    tree = eb.GraphBuilder()
    leaves = [tree.add("leaf") for _ in range(8)]
    while len(leaves) > 1:
        leaves = [tree.add("internal", a, b) for a, b in zip(leaves[::2], leaves[1::2])]
    kept = eb.learn_fsm([tree.build()], seed=0, max_episodes=20, eval_every=10)
    assert kept.provenance["guard"]["chosen"] == "table" and kept.num_entries > 0  # ties go to the table


# ----------------------------------------------------------------------------- policies and their files
def test_shipped_policy_files_of_the_dense_version_load():
    files = sorted(POLICY_DIR.glob("*.json"))
    assert len(files) >= 10
    for path in files:
        data = json.loads(path.read_text())
        policy = eb.FSMPolicy.load(path)
        assert data["version"] == 1 and policy.op_types == tuple(data["op_types"])
        assert policy.num_entries == len({tuple(e["state"]) for e in data["table"]}) > 0
        assert policy.to_dict()["table"] == data["table"]  # same entries, same order
        k = len(policy.op_types)
        assert all(a in enc.ready_types(s, policy.encoding, k) for s, a in policy.table.items())


def test_policy_table_is_checked():
    names = [f"t{i}" for i in range(300)]
    policy = eb.FSMPolicy(names, "set", {(0, 5, 299): 299, (7,): 7})
    assert policy.table[(0, 5, 299)] == 299 and policy.num_entries == 2
    with pytest.raises(TypeError, match="not an array"):
        eb.FSMPolicy(names, "sort", np.full(10, -1))
    cases = [
        ("set", {(5, 0): 0}, "not a valid 'set' state: a 'set' state lists distinct types in ascending order"),
        ("sort", {(0, 300): 0}, "op type id 300 is out of range"),
        ("sort_complete", {(0, 300): 0}, "a type appears twice"),
        ("max", {(1, 2, 3): 3}, "must be among its ready types"),
        ("sort", {(1, 2): 3}, "maps to 't3', which is not ready in that state"),
        ("max", {(1, 2, 2): 1}, None),  # valid: the argmax 2 ranks first, but 1 is ready too
    ]
    for encoding, table, message in cases:
        if message is None:
            assert eb.FSMPolicy(names, encoding, table).table == table
            continue
        with pytest.raises(ValueError, match=message):
            eb.FSMPolicy(names, encoding, table)


@pytest.mark.parametrize(
    "encoding, state, message",
    [
        ("set", ["t5", "t0"], "is not a valid 'set' state (a 'set' state lists distinct types in ascending order)"),
        ("sort_complete", ["t5*", "t5"], "is not a valid 'sort_complete' state (a type appears twice)"),
        ("max", ["t0", "t5", "t7"], "is not a valid 'max' state (the last type of a 'max' state"),
        ("max", ["t5"], "is not a valid 'max' state (a 'max' state is its ready types in ascending order"),
    ],
)
def test_malformed_states_in_large_files_are_refused_by_line(tmp_path, encoding, state, message):
    names = [f"t{i}" for i in range(300)]
    table = {}
    for i in range(0, 60, 3):  # states with ready types i (2 nodes) and 299 (1 node): i runs next
        counts = np.zeros(300, int)
        counts[[i, 299]] = (2, 1)
        table[enc.state_tuple(counts, encoding, np.full(300, 9))] = i
    path = tmp_path / "p.json"
    eb.FSMPolicy(names, encoding, table).save(path)
    lines = path.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if '"state"' in line) + 4  # the fifth entry, on its own line
    entry = json.loads(lines[row].rstrip(","))
    lines[row] = json.dumps({"state": state, "action": entry["action"]}) + ","
    path.write_text("\n".join(lines))
    with pytest.raises(eb.PolicyFileError, match="table entry 4") as err:
        eb.FSMPolicy.load(path)
    assert str(err.value).startswith(f"{path}, line {row + 1}: table entry 4: ") and message in str(err.value)
