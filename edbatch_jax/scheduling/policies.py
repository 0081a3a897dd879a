"""Batching policies: which ready nodes run together, in what order.

A policy is any object with ``schedule(graph) -> Schedule``. Built-in ones are
reachable by name through :func:`schedule`:

* ``"depth"`` — level order (DyNet strategy 2, TensorFlow Fold, DGL): nodes
  grouped by (depth, op type), groups in increasing depth.
* ``"agenda"`` — DyNet's default autobatching: unbatchable ready nodes first;
  otherwise all ready nodes of the ready type with the lowest average depth.

Dynamic policies subclass :class:`FrontierPolicy` and implement ``choose``;
unbatchable ready nodes are forced moves that never reach ``choose``.
"""

from __future__ import annotations

import abc
import contextlib
import gc

import numpy as np

from edbatch_jax.graph import Graph, ensure_valid
from edbatch_jax.graph.analysis import node_depth
from edbatch_jax.scheduling.frontier import Frontier
from edbatch_jax.scheduling.schedule import (
    Schedule,
    ScheduleError,
    graph_fingerprint,
    schedule_fingerprint,
    validate_schedule,
)

__all__ = [
    "AgendaPolicy",
    "DepthPolicy",
    "FrontierPolicy",
    "Policy",
    "gc_paused",
    "policy_names",
    "register_policy",
    "schedule",
]


@contextlib.contextmanager
def gc_paused():
    """Pauses Python's cyclic garbage collector for a block; re-enables it after if it was on.

    Host-side planning allocates many small lists, dicts and sets that die
    young or live only as long as the plan. Left on, the collector runs its
    full passes over the process's whole heap (JAX's objects, the dataset) in
    the middle of it: about 40 % of the FSM policy's scheduling time on
    lattices, measured. Reference counting still frees everything acyclic.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Policy(abc.ABC):
    """Anything that turns a graph into a :class:`Schedule`."""

    name: str = "policy"

    @abc.abstractmethod
    def schedule(self, graph: Graph) -> Schedule: ...


class FrontierPolicy(Policy):
    """A policy that picks, at every step, one op type whose ready nodes all run."""

    frontier_class = Frontier

    def start(self, graph: Graph) -> object:
        """Per-graph precomputation passed back to :meth:`choose` (default: none)."""
        return None

    @abc.abstractmethod
    def choose(self, frontier: Frontier, context: object) -> int:
        """Returns an op type id with ``frontier.ready_counts[t] > 0``."""

    def schedule(self, graph: Graph) -> Schedule:
        with gc_paused():  # many short-lived containers: see gc_paused
            return self._schedule(graph)

    def _schedule(self, graph: Graph) -> Schedule:
        frontier = self.frontier_class(graph)
        context = self.start(graph)
        unbatchable = np.flatnonzero(graph.type_is_unbatchable)
        num_types = graph.num_types
        types, nodes = [], []
        while not frontier.done:
            forced = unbatchable[frontier.ready_counts[unbatchable] > 0] if unbatchable.size else unbatchable
            if forced.size:
                t = int(forced[0])
                run = frontier.take(t, limit=1)
            else:
                choice = self.choose(frontier, context)
                if (
                    isinstance(choice, (bool, np.bool_))
                    or not isinstance(choice, (int, np.integer))
                    or not 0 <= choice < num_types
                    or frontier.ready_counts[choice] <= 0
                ):
                    self._bad_choice(choice, len(types), frontier, graph)
                t = int(choice)
                run = frontier.take(t)
            types.append(t)
            nodes.append(run)
        return Schedule.from_batches(graph.op_types, types, nodes).certify(graph)

    @staticmethod
    def _compiled_schedule(
        graph: Graph, frontier: Frontier, batch_type: np.ndarray, batch_ptr: np.ndarray, order: np.ndarray
    ) -> Schedule:
        """The certified :class:`Schedule` of a frontier run in one compiled call (``Frontier.run_by_*``).

        Raises:
          ScheduleError: nodes of ``graph`` never became ready (a cycle).
        """
        if not frontier.done:
            raise ScheduleError(f"{frontier.remaining} nodes never became ready (a cycle?)")
        return Schedule(batch_type=batch_type, batch_ptr=batch_ptr, node_order=order, op_types=graph.op_types).certify(
            graph
        )

    def _bad_choice(self, choice, step: int, frontier: Frontier, graph: Graph):
        """Raises the :class:`ScheduleError` for a ``choose`` result that is no ready op type."""
        ready = {graph.op_types[t]: int(frontier.ready_counts[t]) for t in np.flatnonzero(frontier.ready_counts > 0)}
        expected = (
            f"expected the id (an int in 0..{graph.num_types - 1}) of an op type with ready nodes; "
            f"ready now (op type: nodes): {ready}"
        )
        if isinstance(choice, (bool, np.bool_)) or not isinstance(choice, (int, np.integer)):
            got = f"{choice!r} (a {type(choice).__name__}, not an int)"
        elif not 0 <= choice < graph.num_types:
            got = f"op type id {int(choice)}, which is not an op type of the graph ({graph.num_types} types)"
        else:
            got = f"op type {int(choice)}, but there is no ready node of type {graph.op_types[int(choice)]!r}"
        raise ScheduleError(f"{type(self).__name__}.choose returned {got} at step {step}; {expected}")


class DepthPolicy(Policy):
    """Level order: one batch per (depth, op type), in increasing depth."""

    name = "depth"

    def schedule(self, graph: Graph) -> Schedule:
        depth = node_depth(graph)
        ids = np.arange(graph.num_nodes)
        unb = graph.type_is_unbatchable[graph.node_type]
        # unbatchable nodes get a group of their own (keyed by their id)
        solo = np.where(unb, ids, -1)
        order = np.lexsort((ids, solo, graph.node_type, depth))
        key = np.stack([depth[order], graph.node_type[order], solo[order]])
        starts = np.flatnonzero(np.r_[True, np.any(key[:, 1:] != key[:, :-1], axis=0)])
        ptr = np.r_[starts, graph.num_nodes]
        return Schedule(
            batch_type=graph.node_type[order[starts]].astype(np.int32),
            batch_ptr=ptr.astype(np.int32),
            node_order=order.astype(np.int32),
            op_types=graph.op_types,
        ).certify(graph)


class AgendaPolicy(FrontierPolicy):
    """DyNet's agenda autobatching: the ready type with the lowest average depth.

    The average is over all nodes of the type in the graph; ties go to the
    lower type id.
    """

    name = "agenda"

    def start(self, graph: Graph) -> np.ndarray:
        depth = node_depth(graph)
        counts = np.bincount(graph.node_type, minlength=graph.num_types)
        sums = np.bincount(graph.node_type, weights=depth, minlength=graph.num_types)
        return sums / np.maximum(counts, 1)

    def choose(self, frontier: Frontier, avg_depth: np.ndarray) -> int:
        ready = frontier.ready_counts > 0
        return int(np.argmin(np.where(ready, avg_depth, np.inf)))

    def _schedule(self, graph: Graph) -> Schedule:
        """The frontier run in one compiled call (the same schedule as :meth:`choose` step by step); a
        subclass that overrides :meth:`choose` is run step by step."""
        if type(self).choose is not AgendaPolicy.choose:
            return super()._schedule(graph)
        frontier = self.frontier_class(graph)
        return self._compiled_schedule(graph, frontier, *frontier.run_by_priority(self.start(graph)))


_REGISTRY: dict[str, Policy] = {"depth": DepthPolicy(), "agenda": AgendaPolicy()}


def register_policy(name: str, policy: Policy) -> None:
    """Makes ``policy`` reachable as ``schedule(graph, name)``."""
    _REGISTRY[name] = policy


def policy_names() -> tuple[str, ...]:
    """The names :func:`schedule` accepts (built in, and added with :func:`register_policy`)."""
    return tuple(_REGISTRY)


def schedule(graph: Graph, policy: str | Policy = "agenda") -> Schedule:
    """Schedules ``graph`` with a policy name (``"agenda"``, ``"depth"``, ...) or object.

    Host-side NumPy; not jittable (a schedule decides shapes). The schedule
    of a policy whose class did not certify it (:meth:`Schedule.certify`:
    the built-in policies and every :class:`FrontierPolicy` do) is validated
    here, once, and then certified for ``graph``.

    Raises:
      GraphError: ``graph`` is not one graph (e.g. a list of graphs: batch
        them with ``eb.batch_graphs``).
      ScheduleError: the policy returned no valid schedule of ``graph``
        (the message names the policy class and the step or batch).
    """
    graph = ensure_valid(graph, "one Graph to schedule")
    if isinstance(policy, str):
        try:
            policy = _REGISTRY[policy]
        except KeyError:
            raise ValueError(f"unknown policy {policy!r}; known policies: {sorted(_REGISTRY)}") from None
    if not hasattr(policy, "schedule"):
        raise TypeError(f"policy must be a name or have a schedule(graph) method, got {policy!r}")
    result = policy.schedule(graph)
    name = type(policy).__name__
    if not isinstance(result, Schedule):
        raise ScheduleError(f"{name}.schedule returned {type(result).__name__}, expected an eb.Schedule")
    if result.fingerprint is not None and (
        (result._certified_for is not None and result._certified_for() is graph)  # certified for this very object
        or result.fingerprint == (graph_fingerprint(graph), schedule_fingerprint(result))
    ):
        return result
    try:
        validate_schedule(graph, result)
    except ScheduleError as e:
        raise ScheduleError(f"{name}.schedule returned an invalid schedule: {e}") from None
    return result.certify(graph)
