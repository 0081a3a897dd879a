"""The learned batching policy: a finite state machine (ED-Batch section 4).

:class:`FSMPolicy` maps the encoded frontier (see :mod:`edbatch_jax.fsm.encoding`)
to the op type to run next: one table lookup per decision. States never seen in
learning fall back to a rule (``fallback``). :func:`learn_fsm` learns one with
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
from collections.abc import Callable, Sequence
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
from edbatch_jax.fsm.qlearning import QLearningSettings, greedy_actions, run_q_learning
from edbatch_jax.graph import Graph
from edbatch_jax.io import write_text_atomic
from edbatch_jax.scheduling.frontier import Frontier
from edbatch_jax.scheduling.policies import FrontierPolicy
from edbatch_jax.scheduling.schedule import Schedule, ScheduleError
from edbatch_jax.scheduling.typewise import TypewiseFrontier

__all__ = ["FSMDecision", "FSMPolicy", "PolicyFileError", "learn_fsm", "FALLBACKS"]


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
      encoding: ``"sort"``, ``"set"`` or ``"max"``.
      actions: int32 ``[S]``, the action of every dense state; -1 where unseen.
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
        actions: np.ndarray,
        fallback: str = "last",
        settings: dict | None = None,
        provenance: dict | None = None,
    ):
        self.op_types = tuple(op_types)
        k = len(self.op_types)
        size = enc.num_states(encoding, k)
        actions = np.asarray(actions, dtype=np.int32)
        if actions.shape != (size,):
            raise ValueError(f"actions must have shape ({size},) for {encoding!r} over {k} types, got {actions.shape}")
        if fallback not in FALLBACKS:
            raise ValueError(f"unknown fallback {fallback!r}; choose one of {list(FALLBACKS)}")
        avail, _ = enc.action_table(encoding, k)
        seen = actions >= 0
        bad = np.flatnonzero(seen & ~avail[np.arange(size), np.maximum(actions, 0)])
        if bad.size:
            s = int(bad[0])
            raise ValueError(
                f"state {self._names(enc.decode(s, encoding, k))} maps to "
                f"{self.op_types[actions[s]]!r}, which is not ready in that state"
            )
        self.encoding = encoding
        self.actions = actions
        self.fallback = fallback
        self.settings = dict(settings or {})
        self.provenance = dict(provenance or {})
        self.last_stats = (0, 0)
        self._stats = {"hits": 0, "decisions": 0}
        self._tracing = False

    # ------------------------------------------------------------- policy
    @property
    def frontier_class(self):
        """The frontier this policy needs (type-wise counts for ``sort_complete`` or the typewise fallback)."""
        typewise = self.fallback == "typewise" or enc.needs_typewise(self.encoding)
        return TypewiseFrontier if typewise else Frontier

    @property
    def num_entries(self) -> int:
        """Number of states in the table."""
        return int((self.actions >= 0).sum())

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
            "actions": self.actions.tolist(),
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
        s = enc._index_of_tuple(state, self.encoding, len(perm))
        stats["decisions"] += 1
        a = stats["actions"][s]
        if a >= 0:
            stats["hits"] += 1
            choice = perm[a]
        else:
            choice = self._fallback_choice(state, frontier.ready_counts, frontier, perm)
        if stats["trace"] is not None:
            stats["trace"].append((state, choice, a >= 0))
        return choice

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
        return FSMPolicy(self.op_types, self.encoding, self.actions, fallback, self.settings, self.provenance)

    # ---------------------------------------------------------------- io
    def to_dict(self) -> dict:
        """The JSON-ready form that :meth:`save` writes and :meth:`from_dict` reads."""
        k = len(self.op_types)
        table = [
            {"state": self._names(enc.decode(s, self.encoding, k)), "action": self.op_types[a]}
            for s, a in enumerate(self.actions.tolist())
            if a >= 0
        ]
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
        """Writes the policy as JSON, atomically (temporary file, then rename)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1), prefix=".fsm-")

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


def learn_fsm(
    graphs: Graph | Sequence[Graph],
    encoding: str = "sort",
    seed: int = 0,
    fallback: str = "last",
    progress: Callable | None = None,
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

    Args:
      graphs: training graphs (e.g. several mini-batches). One episode runs
        all of them.
      encoding: ``"sort"`` (E_sort, default), ``"set"``, ``"max"`` or
        ``"sort_complete"``.
      seed: PRNG seed (learning is deterministic given it).
      fallback: rule for states missing from the table (:data:`FALLBACKS`).
      progress: optional callback ``(episode, greedy_mean, best_mean, lb_mean)``.
      **settings: :class:`~edbatch_jax.fsm.qlearning.QLearningSettings` fields
        (``alpha``, ``gamma``, ``epsilon``, ``n_step``, ``max_episodes``, ...).

    Returns:
      The :class:`FSMPolicy` of the best greedy table. Its ``provenance``
      holds the learning curve, the timing (cold start, compilation included)
      and the batch counts against the lower bound.

    Raises:
      EdbatchError: more op types than ``encoding``'s dense table fits
        (:data:`~edbatch_jax.fsm.encoding.MAX_STATES`; the message names the
        encoding, the number of op types, the table size and the limit),
        checked before any work.
      ValueError: no graphs, an unknown encoding or fallback, or invalid settings.
    """
    if isinstance(graphs, Graph):
        graphs = [graphs]
    graphs = list(graphs)
    if not graphs:
        raise ValueError("learn_fsm needs at least one graph")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown fallback {fallback!r}; choose one of {list(FALLBACKS)}")
    cfg = QLearningSettings(**settings)
    names = union_op_types([g.op_types for g in graphs])
    enc.num_states(encoding, len(names))  # refuses an unknown encoding or too many op types up front
    t0 = time.perf_counter()
    envs = stack_envs([make_env(g, names) for g in graphs])
    t1 = time.perf_counter()
    result = run_q_learning(envs, encoding, seed, cfg, progress)
    t2 = time.perf_counter()
    actions = np.where(result.seen, greedy_actions(result.q, encoding), -1)
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
        "curve": {
            "train_batches": [round(float(x), 3) for x in result.train_batches],
            "eval_episodes": [int(x) for x in result.eval_episodes],
            "eval_batches": [round(float(x), 3) for x in result.eval_batches],
        },
    }
    return FSMPolicy(names, encoding, actions, fallback, dict(vars(cfg)), provenance)
