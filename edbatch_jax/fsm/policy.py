"""The learned batching policy: a finite state machine (ED-Batch section 4).

:class:`FSMPolicy` maps the encoded frontier (see :mod:`edbatch_jax.fsm.encoding`)
to the op type to run next: one table lookup per decision. States never seen in
learning fall back to a rule (``fallback``). :func:`learn_fsm` learns one with
the jit-compiled Q-learning loop; :meth:`FSMPolicy.save` /
:meth:`FSMPolicy.load` store it as a small versioned JSON file.

File format (``format: "edbatch-fsm"``, ``version: 1``)::

  {"format": "edbatch-fsm", "version": 1,
   "op_types": ["leaf", "internal", "loss"], "encoding": "sort",
   "fallback": "last",
   "table": [{"state": ["internal", "loss"], "action": "internal"}, ...],
   "settings": {...}, "provenance": {...}}
"""

from __future__ import annotations

import datetime
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from edbatch_jax.errors import EdbatchError
from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.env import make_env, stack_envs
from edbatch_jax.fsm.qlearning import QLearningSettings, greedy_actions, run_q_learning
from edbatch_jax.graph import Graph
from edbatch_jax.io import write_text_atomic
from edbatch_jax.scheduling.frontier import Frontier
from edbatch_jax.scheduling.policies import FrontierPolicy
from edbatch_jax.scheduling.schedule import Schedule
from edbatch_jax.scheduling.typewise import TypewiseFrontier

__all__ = ["FSMDecision", "FSMPolicy", "PolicyFileError", "learn_fsm", "FALLBACKS"]

FORMAT = "edbatch-fsm"
VERSION = 1
FALLBACKS = ("last", "first", "typewise")
"""Rules for states missing from the table:

* ``"last"`` — the reference's: the last type of the state tuple (for
  ``sort``: the ready type with the fewest ready nodes);
* ``"first"`` — the first type of the state tuple (for ``sort``: the most
  ready nodes);
* ``"typewise"`` — the type-wise ratio greedy choice (tracks ``|TF_t|``,
  which costs a little more per step).
"""


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


class PolicyFileError(EdbatchError):
    """A policy file is unreadable, corrupt, of another version, or for other op types."""


class FSMPolicy(FrontierPolicy):
    """A batching policy given by a table ``state -> op type``.

    Attributes:
      op_types: op type names the policy was learned for (a graph must have the
        same names, in any order).
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
        """Per-graph state; the graph may number the same op types in another order."""
        if sorted(graph.op_types) != sorted(self.op_types):
            raise ValueError(
                f"this FSM policy was learned for op types {list(self.op_types)}, "
                f"but the graph has {list(graph.op_types)}"
            )
        # graph type id of each policy type id (the identity when both number them alike)
        perm = np.array([graph.op_types.index(t) for t in self.op_types], dtype=np.int64)
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
        counts = frontier.ready_counts.tolist()
        typewise = None
        if enc.needs_typewise(self.encoding):
            typewise = frontier.typewise_counts.tolist()
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
            "settings": self.settings,
            "provenance": self.provenance,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Writes the policy as JSON, atomically (temporary file, then rename)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1), prefix=".fsm-")

    @classmethod
    def from_dict(cls, data: Any, op_types: Sequence[str] | None = None, source: str = "<dict>") -> FSMPolicy:
        """Validates and builds a policy from :meth:`to_dict` output.

        Raises:
          PolicyFileError: wrong format/version, missing or malformed fields,
            unknown type names, or ``op_types`` given and different.
        """

        def fail(msg):
            raise PolicyFileError(f"{source}: {msg}")

        if not isinstance(data, dict):
            fail("not a JSON object")
        if data.get("format") != FORMAT:
            fail(f"not an edbatch FSM policy (format {data.get('format')!r}, expected {FORMAT!r})")
        if data.get("version") != VERSION:
            fail(f"unsupported version {data.get('version')!r} (this library reads version {VERSION})")
        names = data.get("op_types")
        if not isinstance(names, list) or not names or not all(isinstance(x, str) for x in names):
            fail("'op_types' must be a non-empty list of names")
        if len(set(names)) != len(names):
            fail(f"'op_types' has duplicates: {names}")
        if op_types is not None and sorted(op_types) != sorted(names):
            fail(f"the policy is for op types {names}, but the model has {list(op_types)}")
        encoding = data.get("encoding")
        if encoding not in enc.ENCODINGS:
            fail(f"unknown encoding {encoding!r}")
        fallback = data.get("fallback", "last")
        if fallback not in FALLBACKS:
            fail(f"unknown fallback {fallback!r}")
        table = data.get("table")
        if not isinstance(table, list):
            fail("'table' must be a list")
        k = len(names)
        try:
            size = enc.num_states(encoding, k)
        except ValueError as e:
            fail(str(e))
        index = {n: i for i, n in enumerate(names)}
        actions = np.full(size, -1, dtype=np.int32)
        for i, entry in enumerate(table):
            if not isinstance(entry, dict) or "state" not in entry or "action" not in entry:
                fail(f"table entry {i} must be an object with 'state' and 'action'")
            state, action = entry["state"], entry["action"]
            marked = encoding == "sort_complete"
            if isinstance(state, list) and marked:
                state = [x[:-1] if isinstance(x, str) and x.endswith("*") else x for x in entry["state"]]
            unknown = [x for x in list(state) + [action] if x not in index] if isinstance(state, list) else None
            if unknown is None:
                fail(f"table entry {i}: 'state' must be a list of op type names")
            if unknown:
                fail(f"table entry {i}: unknown op type {unknown[0]!r}")
            ids = tuple(index[x] for x in state)
            if marked:
                ids = tuple(t + k * entry["state"][j].endswith("*") for j, t in enumerate(ids))
            s = enc._index_of_tuple(ids, encoding, k) if _valid_tuple(ids, encoding, k) else -1
            if s < 0 or enc.decode(s, encoding, k) != ids:
                fail(f"table entry {i}: {state} is not a valid {encoding!r} state")
            if index[action] not in [t % k for t in (ids[:-1] if encoding == "max" else ids)]:
                fail(f"table entry {i}: action {action!r} is not ready in state {state}")
            actions[s] = index[action]
        return cls(names, encoding, actions, fallback, data.get("settings"), data.get("provenance"))

    @classmethod
    def load(cls, path: str | os.PathLike, op_types: Sequence[str] | None = None) -> FSMPolicy:
        """Reads a policy written by :meth:`save`.

        Args:
          path: the JSON file.
          op_types: the model's op type names (any order); a policy for other names is refused.

        Raises:
          PolicyFileError: unreadable, corrupt or mismatched file (the message
            names the file and the problem).
        """
        path = os.fspath(path)
        try:
            with open(path) as f:
                data = json.load(f)
        except OSError as e:
            raise PolicyFileError(f"{path}: cannot read policy file ({e.strerror})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PolicyFileError(f"{path}: corrupt policy file (not valid JSON: {e})") from None
        return cls.from_dict(data, op_types, source=path)

    def __repr__(self) -> str:
        return (
            f"FSMPolicy(op_types={list(self.op_types)}, encoding={self.encoding!r}, "
            f"entries={self.num_entries}, fallback={self.fallback!r})"
        )


def _valid_tuple(ids: tuple[int, ...], encoding: str, k: int) -> bool:
    if encoding == "max":
        return len(ids) == 0 or (
            len(set(ids[:-1])) == len(ids) - 1 and ids[-1] in ids[:-1] and list(ids[:-1]) == sorted(ids[:-1])
        )
    if encoding == "sort_complete":
        ids = tuple(t % k for t in ids)
    if len(set(ids)) != len(ids):
        return False
    return encoding != "set" or list(ids) == sorted(ids)


def learn_fsm(
    graphs: Graph | Sequence[Graph],
    encoding: str = "sort",
    seed: int = 0,
    fallback: str = "last",
    progress: Callable | None = None,
    **settings,
) -> FSMPolicy:
    """Learns an FSM batching policy by Q-learning on one or several graphs.

    Args:
      graphs: training graphs (e.g. several mini-batches), all with the same
        op types. One episode runs all of them.
      encoding: ``"sort"`` (E_sort, default), ``"set"`` or ``"max"``.
      seed: PRNG seed (learning is deterministic given it).
      fallback: rule for states missing from the table (:data:`FALLBACKS`).
      progress: optional callback ``(episode, greedy_mean, best_mean, lb_mean)``.
      **settings: :class:`~edbatch_jax.fsm.qlearning.QLearningSettings` fields
        (``alpha``, ``gamma``, ``epsilon``, ``n_step``, ``max_episodes``, ...).

    Returns:
      The :class:`FSMPolicy` of the best greedy table. Its ``provenance``
      holds the learning curve, the timing (cold start, compilation included)
      and the batch counts against the lower bound.
    """
    if isinstance(graphs, Graph):
        graphs = [graphs]
    graphs = list(graphs)
    if not graphs:
        raise ValueError("learn_fsm needs at least one graph")
    cfg = QLearningSettings(**settings)
    t0 = time.perf_counter()
    envs = stack_envs([make_env(g) for g in graphs])
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
    return FSMPolicy(graphs[0].op_types, encoding, actions, fallback, dict(vars(cfg)), provenance)
