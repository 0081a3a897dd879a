"""The learned batching policy: a finite state machine (ED-Batch section 4).

:class:`FSMPolicy` maps the encoded frontier (see :mod:`edbatch_jax.fsm.encoding`)
to the op type to run next: one dictionary lookup per decision, by the state
tuple. The table holds the states visited in learning only (any number of op
types, up to :data:`~edbatch_jax.fsm.encoding.MAX_TYPES`); other states fall
back to a rule (``fallback``). :func:`learn_fsm` learns one with
the jit-compiled Q-learning loop; :meth:`FSMPolicy.save` /
:meth:`FSMPolicy.load` store it as a small versioned JSON file.

The file format, and the checks :meth:`FSMPolicy.load` makes of a file, are
in :mod:`edbatch_jax.fsm.policy_file`.
"""

from __future__ import annotations

import copy
import datetime
import json
import os
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.env import make_env, stack_envs, union_op_types
from edbatch_jax.fsm.policy_file import (
    FALLBACKS,
    FORMAT,
    VERSION,
    PolicyFileError,
    policy_from_data,
    read_policy_file,
)
from edbatch_jax.fsm.qlearning import INITIAL_CAPACITY, QLearningSettings, run_q_learning
from edbatch_jax.graph import Graph
from edbatch_jax.io import write_text_atomic
from edbatch_jax.scheduling.frontier import Frontier
from edbatch_jax.scheduling.policies import FrontierPolicy
from edbatch_jax.scheduling.schedule import Schedule, ScheduleError
from edbatch_jax.scheduling.typewise import TypewiseFrontier

__all__ = ["FSMDecision", "FSMPolicy", "PolicyFileError", "learn_fsm", "refine_table", "FALLBACKS", "REFINE_BUDGET"]


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dumps(data: dict) -> str:
    """The JSON text of a policy: indented, but each table entry on one line (a table may have many)."""
    table = data["table"]
    text = json.dumps({**data, "table": []}, indent=1)
    if not table:
        return text
    rows = ",\n".join("  " + json.dumps(entry, separators=(", ", ": ")) for entry in table)
    return text.replace('"table": []', '"table": [\n' + rows + "\n ]", 1)


class FSMDecision(NamedTuple):
    """One decision of an :class:`FSMPolicy` (see :meth:`FSMPolicy.trace`).

    Attributes:
      state: the encoded frontier as op type names (a ``*`` marks a type whose
        every remaining node is ready, in the ``sort_complete`` encoding).
      action: the op type run next (one batch of its ready nodes).
      from_table: whether the state was in the table (else the fallback chose).
    """

    state: tuple[str, ...]
    action: str
    from_table: bool


class FSMPolicy(FrontierPolicy):
    """A batching policy given by a table ``state -> op type``.

    Op types are matched by name: the policy schedules any graph whose op
    types it knows, listed in any order, and a graph that lacks some of them
    (those are never ready). A graph with nodes of an op type the policy
    does not know is refused with a :class:`~edbatch_jax.ScheduleError`
    naming the type: the fallback rule (:data:`FALLBACKS`) covers states the
    table lacks, not types the states cannot express, and scheduling such a
    graph with a heuristic silently is what a learned policy is meant to
    replace (use ``"typewise"`` for it explicitly, or learn over graphs with
    the type). Op types a graph lists but has no node of are ignored.

    Attributes:
      op_types: op type names the policy was learned for.
      encoding: ``"sort"``, ``"set"``, ``"max"`` or ``"sort_complete"``.
      fallback: rule for unseen states (see :data:`FALLBACKS`).
      settings: the Q-learning settings used (a dict).
      provenance: where the table came from (a dict: graphs, episodes, times...).
      last_stats: ``(hits, decisions)`` of the last :meth:`schedule` call.
    """

    name = "fsm"

    def __init__(
        self,
        op_types: Sequence[str],
        encoding: str,
        table: Mapping[Sequence[int], int] | Iterable[tuple[Sequence[int], int]],
        fallback: str = "last",
        settings: dict | None = None,
        provenance: dict | None = None,
    ):
        """A policy from its table.

        Args:
          op_types: op type names (distinct; at most :data:`~edbatch_jax.fsm.encoding.MAX_TYPES`).
          encoding: one of :data:`~edbatch_jax.fsm.encoding.ENCODINGS`.
          table: state tuple -> op type id (a mapping, or ``(state, action)``
            pairs); every state must be a state tuple of ``encoding`` over the
            op types, and its action one of its ready types.
          fallback: rule for states missing from the table (:data:`FALLBACKS`).
          settings, provenance: kept as they are (dicts).

        Raises:
          ValueError: an unknown encoding or fallback, repeated op types, or a
            table entry that is no state or whose action is not ready (named).
          EdbatchError: more than :data:`~edbatch_jax.fsm.encoding.MAX_TYPES` op types.
          TypeError: ``table`` is not a mapping or pairs (e.g. the dense action
            array of versions before the sparse table).
        """
        self.op_types = tuple(op_types)
        k = len(self.op_types)
        enc.check_encoding(encoding, k)
        if len(set(self.op_types)) != k:
            raise ValueError(f"op_types {list(self.op_types)} repeats a name")
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; choose one of {list(FALLBACKS)}")
        if isinstance(table, np.ndarray):
            raise TypeError(
                "table must map state tuples to op type ids (a dict), not an array: the dense action array is gone"
            )
        items = table.items() if isinstance(table, Mapping) else table
        checked: dict[tuple[int, ...], int] = {}
        for state, action in items:
            key = tuple(state)
            problem = enc.state_problem(key, encoding, k)
            if problem is not None:
                raise ValueError(f"table state {_short(key)} is not a valid {encoding!r} state: {problem}")
            key = tuple(int(t) for t in key)
            if isinstance(action, (bool, np.bool_)) or not isinstance(action, (int, np.integer)):
                raise ValueError(f"table state {self._names(key)} maps to {action!r}, not an op type id")
            if int(action) not in enc.ready_types(key, encoding, k):
                name = self.op_types[action] if 0 <= action < k else f"op type id {int(action)}"
                raise ValueError(f"state {self._names(key)} maps to {name!r}, which is not ready in that state")
            if checked.setdefault(key, int(action)) != int(action):
                raise ValueError(f"state {self._names(key)} maps to two actions")
        self.encoding = encoding
        self._table = checked
        self.fallback = fallback
        self.settings = dict(settings or {})
        self.provenance = dict(provenance or {})
        self.last_stats = (0, 0)
        self._stats = {"hits": 0, "decisions": 0}
        self._tracing = False
        self._rule: tuple[np.ndarray, np.ndarray] | tuple[()] | None = None  # the compiled schedule's table

    # ------------------------------------------------------------- policy
    @property
    def frontier_class(self):
        """The frontier this policy needs (type-wise counts for ``sort_complete`` or the typewise fallback)."""
        typewise = self.fallback == "typewise" or enc.needs_typewise(self.encoding)
        return TypewiseFrontier if typewise else Frontier

    @property
    def table(self) -> Mapping[tuple[int, ...], int]:
        """The table, read-only: state tuple (over the policy's type ids) -> op type id."""
        return types.MappingProxyType(self._table)

    @property
    def num_entries(self) -> int:
        """Number of states in the table."""
        return len(self._table)

    def _names(self, state) -> list[str]:
        """Type names of a state tuple; a complete type (``sort_complete``) gets a ``*``."""
        k = len(self.op_types)
        return [self.op_types[t % k] + ("*" if t >= k else "") for t in state]

    def start(self, graph: Graph) -> dict:
        """Per-graph state; the graph may number the op types in another order, or lack some.

        Raises:
          ScheduleError: the graph has nodes of an op type the policy does not know (named).
        """
        known = set(self.op_types)
        unknown = np.array([t not in known for t in graph.op_types], dtype=bool)
        if unknown.any():
            used = np.bincount(np.asarray(graph.node_type, np.int64), minlength=graph.num_types) > 0
            names = [graph.op_types[t] for t in np.flatnonzero(unknown & used)]
            if names:
                raise ScheduleError(
                    f"this FSM policy was learned for op types {list(self.op_types)}, but the graph has nodes of "
                    f"op type{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}, which it does not know "
                    f"(the graph's op types: {list(graph.op_types)}); learn a policy on graphs with "
                    f"{'these types' if len(names) > 1 else 'this type'} (learn_fsm), or use a heuristic policy "
                    "such as 'typewise'"
                )
        # graph type id of each policy type id (the identity when both number them alike); a policy type the
        # graph lacks reads the zero count appended after the graph's (index graph.num_types)
        index = {t: i for i, t in enumerate(graph.op_types)}
        perm = np.array([index.get(t, graph.num_types) for t in self.op_types], dtype=np.int64)
        self._stats = {
            "hits": 0,
            "decisions": 0,
            "perm": perm,
            "perm_list": perm.tolist(),
            "trace": [] if self._tracing else None,
        }
        return self._stats

    def choose(self, frontier: Frontier, stats: dict) -> int:
        # host-side, once per decision: plain lists (a NumPy call on K counts costs more than the work)
        perm = stats["perm_list"]
        counts = frontier.ready_counts.tolist() + [0]  # the count of a policy type the graph lacks
        typewise = None
        if enc.needs_typewise(self.encoding):
            typewise = frontier.typewise_counts.tolist() + [0]
            typewise = [typewise[p] for p in perm]
        state = enc.state_tuple([counts[p] for p in perm], self.encoding, typewise)
        stats["decisions"] += 1
        a = self._table.get(state)
        if a is not None:
            stats["hits"] += 1
            choice = perm[a]
        else:
            choice = self._fallback_choice(state, frontier.ready_counts, frontier, perm)
        if stats["trace"] is not None:
            stats["trace"].append((state, choice, a is not None))
        return choice

    def _rule_table(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The table as sorted int64 keys and their actions for the compiled schedule
        (:func:`~edbatch_jax.scheduling.kernels.rule_schedule`: a state tuple's ids plus one as base-``(2K + 1)``
        digits), built once; ``None`` when the longest state's key would not fit in an int64."""
        if self._rule is None:
            k = len(self.op_types)
            base = 2 * k + 1
            if self._table and base ** (k + 1) >= 1 << 63:
                self._rule = ()  # (an empty table needs no keys: every state falls back, however long)
            else:
                keys = np.empty(len(self._table), np.int64)
                for i, state in enumerate(self._table):
                    key = 0
                    for t in state:
                        key = key * base + t + 1
                    keys[i] = key
                actions = np.fromiter(self._table.values(), np.int64, count=len(self._table))
                order = np.argsort(keys, kind="stable")
                self._rule = (keys[order], actions[order])
        return self._rule or None

    def _schedule(self, graph: Graph) -> Schedule:
        """The whole schedule in one compiled call where the table's keys fit (the same as :meth:`choose`
        step by step); step by step when tracing, for a subclass that overrides :meth:`choose`, or over
        too many op types for int64 keys."""
        rule = self._rule_table()
        if self._tracing or rule is None or type(self).choose is not FSMPolicy.choose:
            return super()._schedule(graph)
        stats = self.start(graph)
        perm = np.where(stats["perm"] < graph.num_types, stats["perm"], -1)
        frontier = self.frontier_class(graph)
        batch_type, batch_ptr, order, hits, decisions = frontier.run_by_rule(
            perm, _ENCODING_CODES[self.encoding], rule[0], rule[1], _FALLBACK_CODES[self.fallback]
        )
        stats["hits"], stats["decisions"] = hits, decisions
        return self._compiled_schedule(graph, frontier, batch_type, batch_ptr, order)

    def _fallback_choice(self, state, counts, frontier, perm) -> int:
        """The graph type id the fallback rule picks for a state missing from the table."""
        k = len(self.op_types)
        if self.fallback == "first":
            return int(perm[state[0] % k])
        if self.fallback == "typewise":
            ratio = np.where(counts > 0, counts / np.maximum(frontier.typewise_counts, 1), -1.0)
            best = np.flatnonzero(ratio == ratio.max())
            return int(best[np.argmax(counts[best])])
        return int(perm[state[-1] % k])

    def trace(self, graph: Graph) -> list[FSMDecision]:
        """Schedules ``graph`` and returns every decision in order: the walk through the FSM.

        Forced moves (nodes of an unbatchable type, run one at a time) are not
        decisions and are not listed; ``len(trace)`` is ``last_stats[1]``.
        """
        self._tracing = True
        try:
            self.schedule(graph)
        finally:
            self._tracing = False
        return [
            FSMDecision(tuple(self._names(state)), graph.op_types[choice], hit)
            for state, choice, hit in self._stats["trace"]
        ]

    def schedule(self, graph: Graph) -> Schedule:
        """Schedules ``graph``; ``last_stats`` then holds ``(hits, decisions)``."""
        sched = super().schedule(graph)
        self.last_stats = (self._stats["hits"], self._stats["decisions"])
        return sched

    def hit_rate(self, graphs: Sequence[Graph]) -> float:
        """Fraction of decisions found in the table, over ``graphs``."""
        hits = decisions = 0
        for g in graphs:
            self.schedule(g)
            hits += self.last_stats[0]
            decisions += self.last_stats[1]
        return hits / max(decisions, 1)

    def with_fallback(self, fallback: str) -> FSMPolicy:
        """The same table with another fallback rule."""
        return FSMPolicy(self.op_types, self.encoding, self._table, fallback, self.settings, self.provenance)

    # ---------------------------------------------------------------- io
    def to_dict(self) -> dict:
        """The JSON-ready form that :meth:`save` writes and :meth:`from_dict` reads."""
        table = [{"state": self._names(state), "action": self.op_types[a]} for state, a in self._table.items()]
        return {
            "format": FORMAT,
            "version": VERSION,
            "op_types": list(self.op_types),
            "encoding": self.encoding,
            "fallback": self.fallback,
            "table": table,
            "settings": copy.deepcopy(self.settings),  # a copy: editing the dict leaves the policy as it is
            "provenance": copy.deepcopy(self.provenance),
        }

    def save(self, path: str | os.PathLike) -> None:
        """Writes the policy as JSON, atomically (temporary file, then rename); one table entry per line."""
        write_text_atomic(path, _dumps(self.to_dict()), prefix=".fsm-")

    @classmethod
    def from_dict(cls, data: Any, op_types: Sequence[str] | None = None, source: str = "<dict>") -> FSMPolicy:
        """Validates and builds a policy from :meth:`to_dict` output.

        Every field is checked for its type and range: a file can give a policy
        whose decisions are legal actions, or a :class:`PolicyFileError`.

        Args:
          data: the parsed JSON.
          op_types: the model's op type names (any order); a policy that does not
            know one of them is refused (it may know more than the model has).
          source: what ``data`` came from, for messages (a file name).

        Raises:
          PolicyFileError: wrong format/version, missing or malformed fields,
            unknown type names, conflicting table entries, or ``op_types``
            given with a name the policy does not know (or a repeated one).
        """
        return policy_from_data(cls, data, op_types, source)

    @classmethod
    def load(cls, path: str | os.PathLike, op_types: Sequence[str] | None = None) -> FSMPolicy:
        """Reads a policy written by :meth:`save`.

        Args:
          path: the JSON file (a regular file of at most :data:`MAX_FILE_BYTES`, UTF-8).
          op_types: the model's op type names (any order); a policy that does not
            know one of them is refused (it may know more than the model has).

        Raises:
          PolicyFileError: unreadable, corrupt or mismatched file (the message
            names the file, the line and field where it can, and what was
            expected).
          TypeError: ``op_types`` is not a sequence of names.
        """
        return read_policy_file(cls, path, op_types)

    def __repr__(self) -> str:
        return (
            f"FSMPolicy(op_types={list(self.op_types)}, encoding={self.encoding!r}, "
            f"entries={self.num_entries}, fallback={self.fallback!r})"
        )


_ENCODING_CODES = {"set": 0, "sort": 1, "max": 2, "sort_complete": 3}
_FALLBACK_CODES = {"last": 0, "first": 1, "typewise": 2}

REFINE_BUDGET = 400
"""Trial schedules of the training graphs :func:`learn_fsm` spends at most on :func:`refine_table`."""


def learn_fsm(
    graphs: Graph | Sequence[Graph],
    encoding: str = "sort",
    seed: int = 0,
    fallback: str = "last",
    progress: Callable | None = None,
    capacity: int = INITIAL_CAPACITY,
    op_types: Sequence[str] = (),
    guard: bool | Sequence[Graph] = True,
    refine: int = REFINE_BUDGET,
    **settings,
) -> FSMPolicy:
    """Learns an FSM batching policy by Q-learning on one or several graphs.

    Op types are matched by name: the graphs may be built independently
    (each by its own :class:`~edbatch_jax.GraphBuilder`), list their op types
    in different orders, and lack some. The policy's ``op_types`` are the
    union of theirs in order of first appearance
    (:func:`~edbatch_jax.fsm.env.union_op_types`: graphs that all list the
    same names in the same order keep that order), and each graph's type ids
    are mapped onto it.

    The Q-table is sparse (:mod:`edbatch_jax.fsm.qlearning`): it holds the
    states visited, so every encoding works over any number of op types (up
    to :data:`~edbatch_jax.fsm.encoding.MAX_TYPES`), and the policy keeps the
    states visited before its best greedy evaluation. Learning is one
    jit-compiled loop; if the table fills up, it runs again from the start
    with a larger one (same result, more time: ``provenance["learn_runs"]``).

    Args:
      graphs: training graphs (e.g. several mini-batches). One episode runs
        all of them.
      encoding: ``"sort"`` (E_sort, default), ``"set"``, ``"max"`` or
        ``"sort_complete"``.
      seed: PRNG seed (learning is deterministic given it).
      fallback: rule for states missing from the table (:data:`FALLBACKS`).
      progress: optional callback ``(episode, greedy_mean, best_mean, lb_mean)``.
      capacity: hash table slots to start with (a power of two; it grows as
        needed, so this only trades memory for runs).
      op_types: op type names the policy should know besides the graphs'
        (e.g. every op type of the model, some of which the training graphs
        may lack), listed first: a held-out graph with such a type is then
        scheduled (its states fall back until learned) instead of refused.
      guard: keep the learned table only where it pays: the policy returned
        is the one of these that schedules the training graphs (or the
        graphs given here, e.g. a validation split) in the fewest batches,
        the first on ties: the learned table with ``fallback``; the table
        with the ``"typewise"`` fallback; an empty table with the
        ``"typewise"`` fallback, which schedules exactly as the typewise
        heuristic. ``provenance["guard"]`` records the batches of each and
        the choice. ``False``: the learned table with ``fallback``.
      refine: after Q-learning, improve the best table by greedy local
        search on the training graphs (:func:`refine_table`) with at most this
        many trial schedules of them (0: none). Q-learning's greedy tables
        are noisy from one evaluation to the next; this keeps a change of one
        state's action only when it takes fewer batches on the training
        graphs. ``provenance["refine"]`` records the batches before and after.
      **settings: :class:`~edbatch_jax.fsm.qlearning.QLearningSettings` fields
        (``alpha``, ``gamma``, ``epsilon``, ``n_step``, ``max_episodes``, ...).

    Returns:
      The :class:`FSMPolicy` of the best greedy table. Its ``provenance``
      holds the learning curve, the timing (cold start, compilation included)
      and the batch counts against the lower bound.

    Raises:
      EdbatchError: more than :data:`~edbatch_jax.fsm.encoding.MAX_TYPES` op
        types (checked before any work), or a table that would exceed
        :data:`~edbatch_jax.fsm.qlearning.MAX_TABLE_BYTES`.
      ValueError: no graphs, an unknown encoding or fallback, invalid
        settings, a ``refine`` that is not a non-negative int, or a capacity
        that is not a power of two.
    """
    if isinstance(graphs, Graph):
        graphs = [graphs]
    graphs = list(graphs)
    if not graphs:
        raise ValueError("learn_fsm needs at least one graph")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; choose one of {list(FALLBACKS)}")
    _check_budget("refine", refine)
    cfg = QLearningSettings(**settings)
    if isinstance(op_types, str):
        raise TypeError(f"op_types must be a sequence of op type names, got {op_types!r}")
    names = union_op_types([tuple(op_types)] + [g.op_types for g in graphs])
    enc.check_encoding(encoding, len(names))  # refuses an unknown encoding or too many op types up front
    t0 = time.perf_counter()
    envs = stack_envs([make_env(g, names) for g in graphs])
    t1 = time.perf_counter()
    result = run_q_learning(envs, encoding, seed, cfg, progress, capacity)
    t2 = time.perf_counter()
    table = dict(zip(result.states, result.actions.tolist()))
    provenance = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "num_graphs": len(graphs),
        "nodes_per_graph": float(np.mean([g.num_nodes for g in graphs])),
        "seed": seed,
        "episodes": result.episodes,
        "lower_bound": result.lower_bound,
        "best_batches": result.best_batches,
        "best_ratio": result.best_batches / max(result.lower_bound, 1e-9),
        "setup_seconds": round(t1 - t0, 3),
        "learn_seconds": round(t2 - t1, 3),
        "learn_runs": result.runs,
        "curve": {
            "train_batches": [round(float(x), 3) for x in result.train_batches],
            "eval_episodes": [int(x) for x in result.eval_episodes],
            "eval_batches": [round(float(x), 3) for x in result.eval_batches],
        },
    }
    policy = FSMPolicy(names, encoding, table, fallback, dict(vars(cfg)), provenance)
    if refine:
        t3 = time.perf_counter()
        policy._table, report = refine_table(policy, graphs, refine)
        policy._rule = None
        policy.provenance["refine"] = dict(report, seconds=round(time.perf_counter() - t3, 3))
    if guard is False:
        return policy
    return _guarded(policy, graphs if guard is True else list(guard))


def refine_table(
    policy: FSMPolicy, graphs: Sequence[Graph], budget: int = REFINE_BUDGET, max_sweeps: int = 3
) -> tuple[dict[tuple[int, ...], int], dict]:
    """Greedy local search over a policy's table: fewer batches on ``graphs``, one state at a time.

    A sweep takes the states that scheduling ``graphs`` decides in (table hits
    and fallbacks alike), most often decided first, and tries each other ready
    type there: a change is kept when all graphs together take strictly fewer
    batches (so the result never takes more than the table given). Sweeps
    repeat until one changes nothing, ``max_sweeps`` are done, or ``budget``
    trial schedules of all of ``graphs`` are spent. Host-side and deterministic.

    Returns:
      ``(table, report)``: the new table (state tuple -> op type id) and
      ``{"batches_before", "batches_after"}`` (means per graph),
      ``"improvements"`` (changes kept), ``"trials"`` and ``"sweeps"``.

    Raises:
      ValueError: ``budget`` or ``max_sweeps`` is not a non-negative int.
    """
    _check_budget("budget", budget)
    _check_budget("max_sweeps", max_sweeps)
    k = len(policy.op_types)
    trial = FSMPolicy(policy.op_types, policy.encoding, {}, policy.fallback)
    trial._table = table = dict(policy.table)

    def total() -> int:
        return sum(trial.schedule(g).num_batches for g in graphs)

    def decided() -> list[tuple[int, ...]]:
        """The states decided in, most frequent first (ties: first decided first)."""
        trial._tracing = True
        seen: dict[tuple[int, ...], int] = {}
        try:
            for g in graphs:
                trial.schedule(g)
                for state, _, _ in trial._stats["trace"]:
                    seen[state] = seen.get(state, 0) + 1
        finally:
            trial._tracing = False
        return sorted(seen, key=seen.get, reverse=True)  # stable: ties keep the first-visit order

    best = before = total()
    trials = sweeps = improvements = 0
    while sweeps < max_sweeps and trials < budget:
        sweeps += 1
        improved = False
        for state in decided():
            current = table.get(state)
            for action in enc.ready_types(state, policy.encoding, k):
                if action == current or trials >= budget:
                    continue
                table[state] = action
                trial._rule = None  # the table changed: its compiled keys are built again
                trials += 1
                batches = total()
                if batches < best:
                    best, current, improved = batches, action, True
                    improvements += 1
            if current is None:
                table.pop(state, None)
            else:
                table[state] = current
            trial._rule = None
        if not improved:
            break
    n = max(len(graphs), 1)
    return table, {
        "batches_before": before / n,
        "batches_after": best / n,
        "improvements": improvements,
        "trials": trials,
        "sweeps": sweeps,
    }


def _check_budget(name: str, value) -> None:
    """Refuses a count that is not a non-negative int (a bool included), naming the argument."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _guarded(policy: FSMPolicy, graphs: Sequence[Graph]) -> FSMPolicy:
    """The best of ``policy``, its table with the typewise fallback, and typewise alone on ``graphs`` (see
    :func:`learn_fsm`'s ``guard``); host-side, three schedules per graph."""
    if not graphs:
        raise ValueError("learn_fsm: guard needs at least one graph to compare on")
    candidates = {"table": policy}
    if policy.fallback != "typewise":
        candidates["table, typewise fallback"] = policy.with_fallback("typewise")
    candidates["typewise"] = FSMPolicy(policy.op_types, policy.encoding, {}, "typewise", policy.settings)
    batches = {name: float(np.mean([p.schedule(g).num_batches for g in graphs])) for name, p in candidates.items()}
    chosen = min(batches, key=batches.get)  # the first of the smallest: the table wins ties
    result = candidates[chosen]
    result.provenance = copy.deepcopy(policy.provenance)
    result.provenance["guard"] = {"graphs": len(graphs), "batches": batches, "chosen": chosen}
    return result
