"""Programs whose graph depends on computed values: lazy calls, rounds, and the recorded graph.

An instance's program is a Python generator function. :func:`call` records a
node in the instance's graph and returns a lazy :class:`Handle`; ``yield
handle`` (or a tuple or list of handles) suspends the instance until those
values are computed and resumes it with them (one state pytree of host NumPy
arrays per handle). :class:`DynamicRuntime` advances every instance until it
waits for values or returns, runs all nodes recorded since the last round, of
all instances, as one batched graph with the library's policies and engines,
hands the values back, and repeats (a *round*). Values computed in earlier
rounds enter a round's graph as leaf nodes of an internal value op type (one
per state structure, payload = the stored value), so the engines run it
unchanged.

Every call an instance ever made is kept (op type, arguments, payload);
:meth:`DynamicResult.recorded` replays each instance's calls into a
:class:`~edbatch_jax.graph.GraphBuilder` and batches the graphs
into one ordinary :class:`~edbatch_jax.graph.Graph` with a map
from handles to node ids, on which losses and gradients are computed with
the existing engines.

All of this module is host-side Python; nothing in it is jittable (the ops
run jitted inside the engine).
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import itertools
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Literal, Protocol

import jax
import numpy as np

from edbatch_jax.engine.base import Engine
from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.common import combine
from edbatch_jax.engine.ops import Op, OpError, as_ops, payload_out_of_bounds
from edbatch_jax.engine.stepwise import StepwiseEngine
from edbatch_jax.errors import EdbatchError
from edbatch_jax.graph import Graph, GraphBuilder, batch_graphs
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.scheduling.policies import Policy, schedule

__all__ = [
    "VALUE_OP_PREFIX",
    "DynamicError",
    "DynamicResult",
    "DynamicRunError",
    "DynamicRuntime",
    "EngineFactory",
    "Handle",
    "InstanceFailure",
    "RecordedGraph",
    "RoundStats",
    "RunStats",
    "call",
    "run_dynamic",
]

PyTree = Any

VALUE_OP_PREFIX = "value#"
"""Prefix of the internal value op types (``"value#0"``, ...); user op names may not start with it."""

MAX_IMMEDIATE_RESUMES = 100_000
"""Yields of already computed values one instance may make in a row within one round (a guard against loops)."""

_RUN_IDS = itertools.count(1)


class DynamicError(EdbatchError):
    """A program run by the dynamic runtime misused it: an unknown op type, a bad handle, a bad yield, ...

    The message names the instance (its index in the list of instances), the
    round, the op type and what was expected.
    """


@dataclasses.dataclass(frozen=True)
class InstanceFailure:
    """One instance that did not finish.

    Attributes:
      instance: its index in the list of instances.
      round: the round in whose advance phase (or execution) it failed.
      message: what went wrong, naming the instance and round.
      error: the exception the program raised (or the runtime raised for it).
    """

    instance: int
    round: int
    message: str
    error: BaseException | None = dataclasses.field(default=None, compare=False)


class DynamicRunError(DynamicError):
    """Some instances failed; :attr:`result` holds the outputs of the others and :attr:`failures` the failed ones.

    Raised by :meth:`DynamicRuntime.run` after the run (``on_error="raise"``),
    so no instance's result is lost: ``err.result.outputs[i]`` is instance
    ``i``'s return value (``None`` for a failed one).

    Attributes:
      result: the :class:`DynamicResult` of the whole run.
      failures: ``result.failures``.
    """

    def __init__(self, message: str, result: DynamicResult):
        super().__init__(message)
        self.result = result
        self.failures = result.failures


@dataclasses.dataclass(frozen=True, eq=False)
class Handle:
    """A lazy node of one instance's graph, returned by :func:`call`.

    Pass it to later :func:`call` s of the same instance as an argument, or
    ``yield`` it to get its value. Handles compare by identity.

    Attributes:
      instance: the index of the instance that recorded it.
      node: its node id in the instance's recorded graph (0, 1, ... in call order).
      op: its op type.
      run: the id of the run that recorded it (a handle is only valid in its run).
    """

    instance: int
    node: int
    op: str
    run: int

    def __repr__(self) -> str:
        return f"Handle(instance={self.instance}, node={self.node}, op={self.op!r})"


@dataclasses.dataclass(frozen=True)
class RoundStats:
    """What one round did and cost.

    Attributes:
      round: its index (0, 1, ...).
      instances: instances with nodes in the round.
      nodes: nodes run (recorded calls plus value leaves).
      value_nodes: value leaves (values of earlier rounds entering the graph).
      batches: batches of the round's schedule.
      advance_s: seconds advancing the instances before it (host Python).
      build_s: seconds building, scheduling and planning its graph (host); for a direct round, gathering
        its operands and payloads.
      execute_s: seconds executing it and reading its states back to the host.
      direct: the round ran as direct batched calls, level by level (:class:`DynamicRuntime`'s
        ``direct_rounds``), without a round graph; ``value_nodes`` is then 0.
    """

    round: int
    instances: int
    nodes: int
    value_nodes: int
    batches: int
    advance_s: float
    build_s: float
    execute_s: float
    direct: bool = False


@dataclasses.dataclass(frozen=True)
class RunStats:
    """Per-run measurements of :meth:`DynamicRuntime.run`.

    Attributes:
      rounds: one :class:`RoundStats` per round run.
      advance_s: all seconds advancing instances (including the last advance, after the last round).
      build_s: all seconds building, scheduling and planning round graphs.
      execute_s: all seconds executing rounds (states read back included).
      total_s: wall-clock seconds of the run.
      traces: programs traced during the run: the engine's (``engine.trace_count`` after minus before)
        and the direct rounds' batched calls (0 once warm: no round compiled anything).
      plans_built: execution plans the engine built during the run (one per round).
    """

    rounds: tuple[RoundStats, ...]
    advance_s: float
    build_s: float
    execute_s: float
    total_s: float
    traces: int
    plans_built: int

    @property
    def num_rounds(self) -> int:
        """Rounds run."""
        return len(self.rounds)

    @property
    def batches_per_round(self) -> tuple[int, ...]:
        """Batches of every round's schedule."""
        return tuple(r.batches for r in self.rounds)

    @property
    def num_batches(self) -> int:
        """Batches of all rounds."""
        return sum(self.batches_per_round)

    @property
    def direct_rounds(self) -> int:
        """Rounds run as direct batched calls (no round graph)."""
        return sum(r.direct for r in self.rounds)


@dataclasses.dataclass(frozen=True, eq=False)
class RecordedGraph:
    """The graphs every listed instance recorded (all rounds), batched into one :class:`~edbatch_jax.graph.Graph`.

    Attributes:
      graph: the batched graph (``eb.batch_graphs`` of the instances' recorded graphs, in :attr:`instances` order);
        its instance ``k`` is program instance ``instances[k]``.
      instances: the program instances it holds.
      offsets: int64 ``[K + 1]``, the first node id of each of them in :attr:`graph`.
      run: the id of the run that recorded it.
    """

    graph: Graph
    instances: tuple[int, ...]
    offsets: np.ndarray
    run: int

    def node(self, handle: Handle) -> int:
        """The node id of ``handle`` in :attr:`graph`; :class:`DynamicError` for a handle it does not hold."""
        if not isinstance(handle, Handle):
            raise DynamicError(f"expected a Handle (returned by call()), got {type(handle).__name__}")
        if handle.run != self.run:
            raise DynamicError(f"{handle!r} was recorded by another run than this graph's")
        try:
            k = self.instances.index(handle.instance)
        except ValueError:
            raise DynamicError(
                f"{handle!r}: instance {handle.instance} is not in this recorded graph (it holds instances "
                f"{list(self.instances)}; failed instances are left out unless asked for)"
            ) from None
        return int(self.offsets[k]) + handle.node

    def nodes(self, handles: Sequence[Handle]) -> np.ndarray:
        """int32 ``[K]``: the node ids of ``handles`` in :attr:`graph` (e.g. ``outputs=`` of ``engine.run``)."""
        return np.asarray([self.node(h) for h in handles], np.int32).reshape(-1)


class EngineFactory(Protocol):
    """Makes the runtime's engine from its ops (the user's and the value ops): an engine class, or a function."""

    def __call__(self, ops: Mapping[str, Op]) -> Engine: ...


# --------------------------------------------------------------------------- recording
_CURRENT: contextvars.ContextVar[tuple[_Run, _Instance] | None] = contextvars.ContextVar(
    "edbatch_dynamic_instance", default=None
)

_WAITING, _FINISHED, _FAILED = "waiting", "finished", "failed"


def call(op: str, *args: Handle, payload: PyTree = None) -> Handle:
    """Records a node of op type ``op`` in the current instance's graph; returns its lazy :class:`Handle`.

    Only valid inside a program being advanced by a :class:`DynamicRuntime`.
    Nothing runs now: the node runs in the next round, with every other node
    recorded by then.

    Args:
      op: an op type of the runtime's ops.
      *args: handles of earlier calls of the same instance (of this round or
        any earlier one), one per operand of the op.
      payload: the node's payload, a pytree of arrays (or ints, floats), or
        ``None``; every node of one op type, in every instance, must give
        the same structure, leaf shapes and dtypes (Python ints become int32,
        floats float32, as in JAX).

    Returns:
      The node's handle.

    Raises:
      DynamicError: called outside a program, an unknown op type, an argument
        that is not a handle of this instance and run, the wrong number of
        arguments, or a payload unlike the op type's earlier ones (the
        message names the instance, round and op type). Raised inside the
        program, so its instance fails at this line.
    """
    current = _CURRENT.get()
    if current is None:
        raise DynamicError(
            f"call({op!r}, ...) records a node of the instance a DynamicRuntime is advancing; it was called "
            "outside a program run by one (run the program with DynamicRuntime.run or run_dynamic)"
        )
    run, inst = current
    return run.record(inst, op, args, payload)


@dataclasses.dataclass(eq=False)
class _Instance:
    """One instance's bookkeeping: its program, recorded nodes, and where their values are."""

    index: int
    gen: Generator | None = None
    status: str = _WAITING
    output: Any = None
    request: tuple[tuple[Handle, ...], str] | None = None
    first_new: int = 0  # nodes below it have run; the others are pending
    args: list = dataclasses.field(default_factory=list)  # per node: tuple of argument node ids
    ops: list = dataclasses.field(default_factory=list)  # per node: op type
    payloads: list = dataclasses.field(default_factory=list)  # per node: payload (NumPy leaves) or None
    loc_store: list = dataclasses.field(default_factory=list)  # per run node: index of its round's store
    loc_buffer: list = dataclasses.field(default_factory=list)  # per run node: buffer in that store
    loc_slot: list = dataclasses.field(default_factory=list)  # per run node: row in that buffer

    @property
    def num_nodes(self) -> int:
        return len(self.ops)


@dataclasses.dataclass(frozen=True, eq=False)
class _Store:
    """The states of one round, on the host: per buffer its signature and NumPy leaves ``[capacity, ...]``."""

    signatures: tuple[tuple, ...]
    leaves: tuple[tuple[np.ndarray, ...], ...]


_LEAF = jax.tree.structure(0)
_ARRAY_TYPES = frozenset({np.ndarray, np.int32, np.float32, np.int8, np.int16, np.uint8, np.bool_, np.float16})
"""Payload types taken as one array without a pytree walk (when shape and dtype are the op type's)."""


def _payload_spec(payload: PyTree) -> tuple:
    leaves, treedef = jax.tree.flatten(payload)
    return treedef, tuple((a.shape, a.dtype) for a in leaves)


def _describe(spec: tuple | None) -> str:
    if spec is None:
        return "no payload"
    treedef, leaves = spec
    return f"{treedef} with leaves {[f'{d}{list(s)}' for s, d in leaves]}"


def _value_state(params: PyTree, payload: PyTree) -> PyTree:
    """The value op: a node whose state is its payload (a value computed in an earlier round)."""
    del params
    return payload


def _canonical_leaf(leaf: Any, where: str) -> np.ndarray:
    """``leaf`` as a NumPy array of the dtype JAX computes in (int64 -> int32, ...); :class:`DynamicError` if it
    is not numeric or an integer does not fit."""
    if isinstance(leaf, Handle):
        raise DynamicError(
            f"{where}: the payload holds {leaf!r}; a handle is an argument, not a payload: pass it after the op name"
        )
    try:
        a = np.asarray(leaf)
    except Exception as e:  # re-raised with the call named
        raise DynamicError(f"{where}: payload leaf {type(leaf).__name__} is not an array: {e}") from None
    if a.dtype.kind not in "biufc":
        raise DynamicError(f"{where}: payload leaf of dtype {a.dtype} ({type(leaf).__name__}); expected numbers")
    want = np.dtype(jax.dtypes.canonicalize_dtype(a.dtype))
    if want != a.dtype:
        if a.dtype.kind in "iu" and a.size:
            info = np.iinfo(want)
            if a.min() < info.min or a.max() > info.max:
                raise DynamicError(
                    f"{where}: payload value {a.max() if a.max() > info.max else a.min()} does not "
                    f"fit {want}, the dtype JAX computes {a.dtype} in"
                )
        a = a.astype(want)
    return a


class _Run:
    """The state of one :meth:`DynamicRuntime.run`: instances, round stores, the current round."""

    def __init__(self, runtime: DynamicRuntime, num_instances: int):
        self.runtime = runtime
        self.id = next(_RUN_IDS)
        self.round = 0
        self.instances = [_Instance(i) for i in range(num_instances)]
        self.stores: list[_Store] = []
        self.failures: list[InstanceFailure] = []
        self._arity = {name: -1 if op.variadic else op.arity for name, op in runtime.user_ops.items()}
        self._fast_payloads = runtime.fast_payloads  # (the runtime's: filled as op types are first called)

    # ---------------------------------------------------------------- recording
    def record(self, inst: _Instance, op: str, args: tuple, payload: PyTree) -> Handle:
        arity = self._arity.get(op) if isinstance(op, str) else None  # -1: variable
        if arity is None:
            self._unknown_op(inst, op)
        rid, index = self.id, inst.index
        for a in args:  # the common case checked inline; the messages are built only for a bad argument
            if type(a) is not Handle or a.run != rid or a.instance != index:
                self._bad_arguments(inst, op, args)
        if len(args) != arity:
            if arity >= 0:
                raise DynamicError(f"{self._where(inst, op)}: the op takes {arity} argument(s), got {len(args)}")
            if not args:
                raise DynamicError(
                    f"{self._where(inst, op)}: the op takes a variable number (at least 1) of arguments, got none"
                )
        fast = self._fast_payloads.get(op)
        if fast is not None and type(payload) in _ARRAY_TYPES and payload.shape == fast[0] and payload.dtype == fast[1]:
            payload = np.asarray(payload)  # one array of the op type's shape and dtype: nothing else to check
        elif payload is not None or op not in self.runtime.payload_specs:
            payload = self._check_payload(inst, op, payload)
        elif self.runtime.payload_specs[op] is not None:
            self._check_payload(inst, op, payload)  # raises: the op type had a payload before
        node = len(inst.ops)
        inst.ops.append(op)
        inst.args.append(tuple([a.node for a in args]))
        inst.payloads.append(payload)
        return Handle(index, node, op, rid)

    def _where(self, inst: _Instance, op: str) -> str:
        return f"instance {inst.index}, round {self.round}: call({op!r})"

    def _unknown_op(self, inst: _Instance, op: Any) -> None:
        user = self.runtime.user_ops
        close = difflib.get_close_matches(str(op), list(user), n=3)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise DynamicError(
            f"instance {inst.index}, round {self.round}: call({op!r}): unknown op type; the runtime's op "
            f"types are {sorted(user)}{hint}"
        )

    def _bad_arguments(self, inst: _Instance, op: str, args: tuple) -> None:
        where = self._where(inst, op)
        for k, a in enumerate(args):
            if not isinstance(a, Handle):
                raise DynamicError(
                    f"{where}: argument {k} is a {type(a).__name__}, not a Handle returned by call() (a value "
                    "received from yield is a state, not a node: pass the handle it came from)"
                )
            if a.run != self.id:
                raise DynamicError(f"{where}: argument {k} is {a!r} of another run; handles are valid in their run")
            if a.instance != inst.index:
                raise DynamicError(
                    f"{where}: argument {k} is {a!r} of instance {a.instance}; an instance may only use its own handles"
                )

    def _check_payload(self, inst: _Instance, op: str, payload: PyTree) -> PyTree:
        """``payload`` with canonical NumPy leaves, checked against the op type's first payload (and the first
        one recorded as the op type's)."""
        where = self._where(inst, op)
        if payload is not None:
            leaves, treedef = jax.tree.flatten(payload)
            if not leaves:
                raise DynamicError(f"{where}: the payload {payload!r} holds no array; give None or arrays")
            payload = jax.tree.unflatten(treedef, [_canonical_leaf(x, where) for x in leaves])
        spec = None if payload is None else _payload_spec(payload)
        known = self.runtime.payload_specs.setdefault(op, spec)
        if known != spec:
            raise DynamicError(
                f"{where}: payload {_describe(spec)}, but op {op!r} was called with {_describe(known)} before; "
                "every node of an op type, in every instance, needs one payload structure, leaf shapes and dtypes"
            )
        if spec is not None and spec[0] == _LEAF and op not in self.runtime.fast_payloads:
            self.runtime.fast_payloads[op] = spec[1][0]
        return payload

    # ---------------------------------------------------------------- advancing
    def advance(self, inst: _Instance, program: Callable, instance: Any, send: Any) -> None:
        """Runs ``inst``'s program (starting it when it has no generator yet) until it waits or returns."""
        token = _CURRENT.set((self, inst))
        try:
            immediate = 0
            while True:
                try:
                    if inst.gen is None:
                        gen = program(instance)
                        if not isinstance(gen, Generator):  # a program without yield: it has returned
                            self.finish(inst, gen)
                            return
                        inst.gen = gen
                        request = next(gen)
                    else:
                        request = inst.gen.send(send)
                except StopIteration as stop:
                    self.finish(inst, stop.value)
                    return
                handles, kind = self.parse_request(inst, request)
                if all(h.node < inst.first_new for h in handles):  # values known: resume at once
                    immediate += 1
                    if immediate > MAX_IMMEDIATE_RESUMES:
                        raise DynamicError(
                            f"instance {inst.index}, round {self.round}: yielded {MAX_IMMEDIATE_RESUMES} times in a "
                            "row values that were already computed, without waiting for a new one (a loop?)"
                        )
                    send = self.values(handles, kind, inst)
                    continue
                inst.request = (handles, kind)
                inst.status = _WAITING
                return
        except Exception as e:  # the program raised (or misused the runtime): this instance fails, the others go on
            self.fail(inst, e)
        finally:
            _CURRENT.reset(token)

    def parse_request(self, inst: _Instance, request: Any) -> tuple[tuple[Handle, ...], str]:
        kind = "one" if isinstance(request, Handle) else type(request).__name__
        handles = (request,) if kind == "one" else request
        where = f"instance {inst.index}, round {self.round}"
        if kind not in ("one", "tuple", "list"):
            raise DynamicError(
                f"{where}: the program yielded a {kind}; yield a Handle returned by call(), or a tuple or list of them"
            )
        if not handles:
            raise DynamicError(f"{where}: the program yielded an empty {kind}; yield at least one Handle")
        for k, h in enumerate(handles):
            if not isinstance(h, Handle):
                raise DynamicError(
                    f"{where}: the program yielded a {kind} whose element {k} is a {type(h).__name__}, not a Handle"
                )
            if h.run != self.id or h.instance != inst.index:
                owner = "another run" if h.run != self.id else f"instance {h.instance}"
                raise DynamicError(f"{where}: the program yielded {h!r} of {owner}; yield this instance's handles")
        return tuple(handles), kind

    def values(self, handles: tuple[Handle, ...], kind: str, inst: _Instance) -> Any:
        out = [self.value_of(inst, h.node) for h in handles]
        return out[0] if kind == "one" else (tuple(out) if kind == "tuple" else out)

    def value_of(self, inst: _Instance, node: int) -> PyTree:
        store = self.stores[inst.loc_store[node]]
        b, slot = inst.loc_buffer[node], inst.loc_slot[node]
        treedef = store.signatures[b][0]
        if treedef == _LEAF:  # one array: no pytree to rebuild
            return store.leaves[b][0][slot]
        return jax.tree.unflatten(treedef, [leaf[slot] for leaf in store.leaves[b]])

    def finish(self, inst: _Instance, output: Any) -> None:
        inst.status, inst.output, inst.request, inst.gen = _FINISHED, output, None, None

    def fail(self, inst: _Instance, error: BaseException, message: str | None = None) -> None:
        if inst.gen is not None:
            try:
                inst.gen.close()
            except Exception:  # a program that fails while closing: it has failed already
                pass
        if message is None:
            message = (
                str(error)
                if isinstance(error, DynamicError)
                else f"instance {inst.index}, round {self.round}: the program raised {type(error).__name__}: {error}"
            )
        inst.status, inst.request, inst.gen = _FAILED, None, None
        self.failures.append(InstanceFailure(inst.index, self.round, message, error))


class DynamicRuntime:
    """Runs value-dependent programs, one per instance, batching their nodes across instances round by round.

    The runtime holds its engine, so compiled step functions are reused by
    every round and every later :meth:`run` (the default stepwise engine's
    steps are bucketed by shape: once warm, rounds compile nothing;
    :attr:`RunStats.traces` counts what a run traced).

    Example::

      import edbatch_jax.dynamic as ebd

      def program(inst):
          h = ebd.call("encode", payload=inst)
          logits = ebd.call("logits", h)
          lv = yield logits                 # waits for the value
          return int(lv.argmax())

      rt = ebd.DynamicRuntime(ops)
      result = rt.run(program, instances, params)
      result.outputs, result.stats.batches_per_round

    Args:
      ops: op type name -> :class:`~edbatch_jax.engine.ops.Op` or per-node
        function (as for the engines). Stochastic ops are refused (a node's
        random key depends on its position in the graph it runs in, which
        differs between a round's graph and the recorded one).
      policy: the scheduling policy of every round (a name or a
        :class:`~edbatch_jax.scheduling.Policy`).
      engine: makes the engine from the full op table (the user's ops and
        the value ops): an engine class such as ``eb.StepwiseEngine`` (the
        default) or ``eb.FusedEngine``, or a function ``ops -> Engine``.
      max_rounds: the step budget: instances still waiting after this many
        rounds fail (as :class:`InstanceFailure`).
      direct_rounds: run a round whose ops read no context as direct
        batched calls (a variadic op's arguments reduced as the engines
        reduce them; payload ids checked against ``payload_bounds`` as the
        engines check them): level by level (a node's level is one more than its
        arguments' of the same round), one ``jax.jit`` of the op's vmapped
        call per (level, op type), lanes bucketed to powers of two, operands
        gathered on the host from the stored values. No round graph is
        built, scheduled or planned, so a round costs its calls; values are
        those of the engine's (the same vmapped op). Other rounds, and every
        round with ``direct_rounds=False``, run as a graph on the engine
        with ``policy``.

    Attributes:
      user_ops: the user's ops, normalised.
      ops: every op of the engine: the user's and the value ops.
      engine: the engine every round runs on (use it on
        :meth:`DynamicResult.recorded` graphs too).
      policy, max_rounds: as given.
      payload_specs: op type -> payload structure of its first call (kept across runs).

    Raises:
      DynamicError: an op name starting with :data:`VALUE_OP_PREFIX`, a
        stochastic op, a bad ``max_rounds``, or an engine factory that does
        not return an :class:`~edbatch_jax.engine.Engine`.
    """

    def __init__(
        self,
        ops: Mapping[str, Op | Callable],
        *,
        policy: str | Policy = "agenda",
        engine: EngineFactory | type[Engine] = StepwiseEngine,
        max_rounds: int = 1000,
        direct_rounds: bool = True,
    ):
        user = as_ops(ops)
        if not user:
            raise DynamicError("DynamicRuntime needs at least one op")
        for name, op in user.items():
            if not isinstance(name, str) or not name:
                raise DynamicError(f"op type names must be non-empty str, got {name!r}")
            if name.startswith(VALUE_OP_PREFIX):
                raise DynamicError(f"op {name!r}: names starting with {VALUE_OP_PREFIX!r} are the runtime's value ops")
            if op.stochastic:
                raise DynamicError(
                    f"op {name!r} is stochastic; the dynamic runtime does not run stochastic ops yet (a node's key "
                    "derives from its position in the graph it runs in, which differs between a round's graph and "
                    "the recorded graph, so the draws would not be reproducible)"
                )
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, (int, np.integer)) or max_rounds < 1:
            raise DynamicError(f"max_rounds must be a positive int, got {max_rounds!r}")
        self.user_ops = user
        # one value op per possible state structure: at most one per op type while each op returns one structure
        self._value_names = [f"{VALUE_OP_PREFIX}{k}" for k in range(len(user))]
        self.ops = {**user, **{name: Op(_value_state, arity=0) for name in self._value_names}}
        self._op_rank = {name: k for k, name in enumerate(self.ops)}
        self.engine = engine(self.ops)
        if not isinstance(self.engine, Engine):
            raise DynamicError(f"engine must make an eb.Engine from the ops, got {type(self.engine).__name__}")
        self.policy = policy
        self.max_rounds = int(max_rounds)
        self.payload_specs: dict[str, tuple | None] = {}
        self.fast_payloads: dict[str, tuple] = {}  # op type -> (shape, dtype) of its payload, if one array
        self._value_type: dict[tuple, str] = {}  # state signature -> value op type
        self.direct_rounds = bool(direct_rounds)
        # op types a direct round may run: those reading no context (the runtime gives none)
        self._direct_op = {name: not op.context for name, op in user.items()}
        self._direct_calls: dict[str, Callable] = {}  # op type -> jitted batched call
        self.direct_traces = 0  # batched calls traced (compiled) by direct rounds

    def _value_op(self, signature: tuple, round_: int) -> str:
        name = self._value_type.get(signature)
        if name is None:
            if len(self._value_type) == len(self._value_names):
                raise DynamicError(
                    f"round {round_}: a value of state structure {_describe(signature)} is the "
                    f"{len(self._value_names) + 1}-th distinct structure carried between rounds, more than the "
                    f"{len(self._value_names)} the runtime has value ops for (one per op type): an op returns states "
                    "of several structures"
                )
            name = self._value_type[signature] = self._value_names[len(self._value_type)]
        return name

    # ---------------------------------------------------------------- the run
    def run(
        self,
        program: Callable[[Any], Generator | Any],
        instances: Sequence[Any],
        params: PyTree,
        *,
        on_error: Literal["raise", "return"] = "raise",
    ) -> DynamicResult:
        """Runs ``program(instance)`` for every instance, batched across instances, until all return.

        Args:
          program: a generator function of one instance (``call`` records,
            ``yield`` handles waits for values), or a plain function (which
            records and returns without waiting).
          instances: one object per instance, passed to ``program``.
          params: the parameter pytree (concrete arrays: the rounds run now).
          on_error: ``"raise"``: if an instance failed, raise
            :class:`DynamicRunError` after the run (it carries the result of
            every other instance); ``"return"``: return the result with the
            failures in :attr:`DynamicResult.failures`.

        Returns:
          A :class:`DynamicResult`: each instance's return value, the
          failures, and :class:`RunStats`.

        Raises:
          DynamicError: bad arguments (``program`` not callable, no
            instances, traced ``params``).
          DynamicRunError: with ``on_error="raise"``, after the run, if an
            instance failed (raised, yielded something that is not a handle,
            called an unknown op, used another instance's handle, did not
            finish in ``max_rounds`` rounds, or its round's graph failed to
            run).
        """
        if not callable(program):
            raise DynamicError(f"program must be a generator function of one instance, got {type(program).__name__}")
        if isinstance(instances, (str, bytes)) or not isinstance(instances, Sequence):
            raise DynamicError(
                f"instances must be a sequence (one object per instance), got {type(instances).__name__}"
            )
        if not instances:
            raise DynamicError("run got no instances")
        if on_error not in ("raise", "return"):
            raise DynamicError(f"on_error must be 'raise' or 'return', got {on_error!r}")
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params)):
            raise DynamicError(
                "run needs concrete params (its rounds run now, and their values decide the structure); to "
                "differentiate, run engine.run on DynamicResult.recorded().graph under jax.grad"
            )
        start = time.perf_counter()
        traces0, plans0 = self.engine.trace_count + self.direct_traces, self.engine.plans_built
        run = _Run(self, len(instances))
        rounds: list[RoundStats] = []
        t = time.perf_counter()
        for inst in run.instances:
            run.advance(inst, program, instances[inst.index], None)
        advance_s = time.perf_counter() - t
        total_advance = advance_s
        while True:
            waiting = [i for i in run.instances if i.status == _WAITING]
            if waiting and run.round >= self.max_rounds:
                for inst in waiting:
                    run.fail(
                        inst,
                        DynamicError(f"instance {inst.index} did not finish within max_rounds={self.max_rounds}"),
                        f"instance {inst.index}, round {run.round}: did not finish within max_rounds="
                        f"{self.max_rounds} rounds (it is still waiting for values)",
                    )
                waiting = []
            live = [i for i in run.instances if i.status != _FAILED and i.num_nodes > i.first_new]
            if not live:
                break
            stats = self._run_direct_round(run, live, params, advance_s) if self.direct_rounds else None
            if stats is None:  # not a round of plain calls: a graph on the engine
                stats = self._run_round(run, live, params, advance_s)
            rounds.append(stats)
            run.round += 1
            t = time.perf_counter()
            for inst in waiting:
                if inst.status == _WAITING:  # not failed with its round
                    handles, kind = inst.request
                    run.advance(inst, program, instances[inst.index], run.values(handles, kind, inst))
            advance_s = time.perf_counter() - t
            total_advance += advance_s
        stats = RunStats(
            rounds=tuple(rounds),
            advance_s=total_advance,
            build_s=sum(r.build_s for r in rounds),
            execute_s=sum(r.execute_s for r in rounds),
            total_s=time.perf_counter() - start,
            traces=self.engine.trace_count + self.direct_traces - traces0,
            plans_built=self.engine.plans_built - plans0,
        )
        failures = tuple(sorted(run.failures, key=lambda f: f.instance))
        result = DynamicResult(
            outputs=tuple(i.output if i.status == _FINISHED else None for i in run.instances),
            failures=failures,
            stats=stats,
            run=run.id,
            _run=run,
        )
        if failures and on_error == "raise":
            shown = "; ".join(f.message for f in failures[:5])
            more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
            error = DynamicRunError(
                f"{len(failures)} of {len(instances)} instance(s) failed (the others' results are in "
                f".result): {shown}{more}",
                result,
            )
            raise error from failures[0].error
        return result

    def _round_graph(self, run: _Run, live: list[_Instance]) -> tuple[Graph, list[int], int]:
        """The round's graph of every pending node of ``live``, with its value leaves; the first pending node's id
        of each instance in it; the number of value leaves.

        Instance ``k`` of the graph is ``live[k]``: its value leaves (the earlier rounds' nodes its pending nodes
        read, by node id), then its pending nodes in call order. Per-node work is a few list operations; the
        rest is NumPy over all nodes of the round.
        """
        los = [inst.first_new for inst in live]
        ops: list[str] = []
        args: list[tuple] = []
        payloads: list = []
        for inst, lo in zip(live, los):
            ops += inst.ops[lo:]
            args += inst.args[lo:]
            payloads += inst.payloads[lo:]
        k_live = len(live)
        lo_a = np.asarray(los, np.int64)
        new_count = np.asarray([inst.num_nodes for inst in live], np.int64) - lo_a
        node_inst = np.repeat(np.arange(k_live), new_count)
        arity = np.fromiter(map(len, args), np.int64, len(args))
        arg_local = np.fromiter(itertools.chain.from_iterable(args), np.int64, int(arity.sum()))
        arg_inst = np.repeat(node_inst, arity)
        old = arg_local < lo_a[arg_inst]
        # value leaves: the distinct (instance, node) of earlier rounds read, in the order of their first reading
        # (so grouped by instance, as the arguments are)
        stride = int(max(inst.num_nodes for inst in live)) + 1
        keys, first_read, leaf_of_arg = np.unique(
            arg_inst[old] * stride + arg_local[old], return_index=True, return_inverse=True
        )
        order = np.argsort(first_read, kind="stable")
        leaf_rank = np.empty(len(keys), np.int64)
        leaf_rank[order] = np.arange(len(keys))
        keys, leaf_of_arg = keys[order], leaf_rank[leaf_of_arg.reshape(-1)]
        leaf_inst, leaf_local = np.divmod(keys, stride)
        leaf_count = np.bincount(leaf_inst, minlength=k_live)
        size = leaf_count + new_count
        base = np.concatenate([[0], np.cumsum(size)])
        first = base[:-1] + leaf_count  # the first pending node of each instance
        leaf_start = np.concatenate([[0], np.cumsum(leaf_count)])
        leaf_pos = base[leaf_inst] + np.arange(len(keys)) - leaf_start[leaf_inst]
        new_pos = (
            np.repeat(first, new_count) + np.arange(len(ops)) - np.repeat(np.cumsum(new_count) - new_count, new_count)
        )
        arg_pos = np.where(old, 0, first[arg_inst] + arg_local - lo_a[arg_inst])
        arg_pos[old] = leaf_pos[leaf_of_arg]
        num_nodes = int(base[-1])
        # op types in the order of the runtime's op table (the user's, then the value ops), whatever the order of
        # the instances, so that buffers and compiled steps are the same for the same op types
        node_type = np.empty(num_nodes, np.int32)
        payload_of: dict[str, Any] = {}
        pair_names: list[str] = []
        if len(keys):
            insts = [live[k] for k in leaf_inst.tolist()]
            src = np.asarray(
                [(i.loc_store[n], i.loc_buffer[n], i.loc_slot[n]) for i, n in zip(insts, leaf_local.tolist())],
                np.int64,
            ).reshape(-1, 3)
            pairs, pair_of = np.unique(src[:, :2], axis=0, return_inverse=True)
            pair_of = pair_of.reshape(-1)
            pair_names = [self._value_op(run.stores[st].signatures[b], run.round) for st, b in pairs.tolist()]
        names = list(dict.fromkeys(ops))
        rank = self._op_rank
        op_types = tuple(sorted({*names, *pair_names}, key=rank.__getitem__))
        type_index = {name: t for t, name in enumerate(op_types)}
        if len(keys):
            leaf_type = np.asarray([type_index[n] for n in pair_names], np.int32)[pair_of]
            node_type[leaf_pos] = leaf_type
            for t in np.unique(leaf_type).tolist():
                payload_of[op_types[t]] = self._gather_values(run, src[leaf_type == t])
        node_type[new_pos] = np.asarray([type_index[o] for o in ops], np.int32)
        for name in names:
            rows = [p for p, o in zip(payloads, ops) if o == name]
            if rows[0] is not None:
                stacked = (
                    np.stack(rows) if type(rows[0]) is np.ndarray else jax.tree.map(lambda *xs: np.stack(xs), *rows)
                )
                payload_of[name] = stacked
        # arguments in node order: every node's argument list at its position
        node_arity = np.zeros(num_nodes, np.int64)
        node_arity[new_pos] = arity
        arg_ptr = np.concatenate([[0], np.cumsum(node_arity)])
        arg_idx = np.empty(int(arity.sum()), np.int32)
        starts = (
            np.repeat(arg_ptr[new_pos], arity) + np.arange(len(arg_local)) - np.repeat(np.cumsum(arity) - arity, arity)
        )
        arg_idx[starts] = arg_pos
        graph = Graph(
            node_type=node_type,
            arg_ptr=arg_ptr.astype(np.int32),
            arg_idx=arg_idx,
            instance=np.repeat(np.arange(k_live, dtype=np.int32), size),
            payload_row=payload_rows(node_type, len(op_types)),
            payloads=tuple(payload_of.get(name) for name in op_types),
            op_types=op_types,
            num_instances=k_live,
        )
        return graph, first.tolist(), len(keys)

    def _run_round(self, run: _Run, live: list[_Instance], params: PyTree, advance_s: float) -> RoundStats:
        """Builds, schedules, plans and executes one round's graph; stores its states; host-side."""
        t0 = time.perf_counter()
        graph, firsts, value_nodes = self._round_graph(run, live)
        try:
            sched = schedule(graph, self.policy)
            plan = self.engine.plan(params, graph, sched)
            t1 = time.perf_counter()
            bufs = jax.device_get(self.engine.execute(plan, params))
        except Exception as e:  # the round's graph failed: its waiting instances fail, finished ones keep outputs
            names = ", ".join(f"{k} is instance {inst.index}" for k, inst in enumerate(live[:20]))
            message = (
                f"round {run.round}: running the round's graph failed ({type(e).__name__}: {e}); in that graph, "
                f"instance {names}{' ...' if len(live) > 20 else ''}"
            )
            for inst in live:
                if inst.status == _WAITING:
                    run.fail(inst, e, f"instance {inst.index}, {message}")
                inst.first_new = inst.num_nodes  # never run: no values (DynamicResult.value refuses them)
                inst.loc_store.extend([-1] * (inst.num_nodes - len(inst.loc_store)))
                inst.loc_buffer.extend([-1] * (inst.num_nodes - len(inst.loc_buffer)))
                inst.loc_slot.extend([-1] * (inst.num_nodes - len(inst.loc_slot)))
            t = time.perf_counter()
            return RoundStats(run.round, len(live), graph.num_nodes, 0, 0, advance_s, t - t0, 0.0)
        t2 = time.perf_counter()
        store = len(run.stores)
        run.stores.append(
            _Store(tuple(plan.signatures), tuple(tuple(np.asarray(x) for x in jax.tree.leaves(b)) for b in bufs))
        )
        node_buffer, node_slot = np.asarray(plan.node_buffer), np.asarray(plan.node_slot)
        for inst, first in zip(live, firsts):
            k = inst.num_nodes - inst.first_new
            inst.loc_store.extend([store] * k)
            inst.loc_buffer.extend(node_buffer[first : first + k].tolist())
            inst.loc_slot.extend(node_slot[first : first + k].tolist())
            inst.first_new = inst.num_nodes
        return RoundStats(
            run.round, len(live), graph.num_nodes, value_nodes, sched.num_batches, advance_s, t1 - t0, t2 - t1
        )

    def _run_direct_round(
        self, run: _Run, live: list[_Instance], params: PyTree, advance_s: float
    ) -> RoundStats | None:
        """Runs the round's pending nodes as direct batched calls, level by level and op type by op type (see
        ``direct_rounds``); stores their states. ``None`` (nothing done) when an op type of the round may not run
        so. Host-side."""
        t0 = time.perf_counter()
        los = [inst.first_new for inst in live]
        ops: list[str] = []
        args: list[tuple] = []
        for inst, lo in zip(live, los):
            ops += inst.ops[lo:]
            args += inst.args[lo:]
        if not all(self._direct_op[name] for name in dict.fromkeys(ops)):
            return None
        lo_a = np.asarray(los, np.int64)
        count = np.asarray([inst.num_nodes for inst in live], np.int64) - lo_a
        node_inst = np.repeat(np.arange(len(live)), count)
        node_local = np.arange(len(ops)) - np.repeat(np.cumsum(count) - count - lo_a, count)
        level = _round_levels(count, lo_a, args)
        for inst, k in zip(live, count.tolist()):  # this round's nodes: where their states go, once run
            inst.loc_store.extend([-1] * k)
            inst.loc_buffer.extend([-1] * k)
            inst.loc_slot.extend([-1] * k)
        names = sorted(dict.fromkeys(ops), key=self._op_rank.__getitem__)
        type_index = {name: t for t, name in enumerate(names)}
        key = level * len(names) + np.fromiter(map(type_index.__getitem__, ops), np.int64, len(ops))
        order = np.argsort(key, kind="stable")  # batches (level, op type), nodes in instance and call order
        sorted_key = key[order]
        starts = np.flatnonzero(np.concatenate(([True], sorted_key[1:] != sorted_key[:-1]))).tolist()
        execute_s, batches = 0.0, 0
        try:
            for b0, b1 in zip(starts, starts[1:] + [len(order)]):
                sel = order[b0:b1]
                insts = [live[k] for k in node_inst[sel].tolist()]
                execute_s += self._run_direct_batch(run, ops[sel[0]], insts, node_local[sel].tolist(), params)
                batches += 1
        except Exception as e:  # the round's calls failed: its waiting instances fail, finished ones keep outputs
            message = f"round {run.round}: running the round's calls failed ({type(e).__name__}: {e})"
            for inst in live:
                if inst.status == _WAITING:
                    run.fail(inst, e, f"instance {inst.index}, {message}")
                inst.first_new = inst.num_nodes
            elapsed = time.perf_counter() - t0
            return RoundStats(run.round, len(live), len(ops), 0, batches, advance_s, elapsed, 0.0, True)
        for inst in live:
            inst.first_new = inst.num_nodes
        build_s = time.perf_counter() - t0 - execute_s
        return RoundStats(run.round, len(live), len(ops), 0, batches, advance_s, build_s, execute_s, True)

    def _run_direct_batch(self, run: _Run, name: str, insts: list[_Instance], nodes: list[int], params) -> float:
        """Runs node ``nodes[k]`` of ``insts[k]`` (all of op type ``name``, their arguments run) as one batched
        call, lanes bucketed; stores their states as one store of ``run``; returns the seconds it executed."""
        n, lanes = len(nodes), bucket(len(nodes))
        pad = np.arange(lanes)
        pad[n:] = 0  # padding lanes repeat the first lane
        op = self.user_ops[name]
        operands, segments = [], None
        if op.variadic:  # one operand list: every argument of every lane, lane by lane, and each one's lane
            counts = [len(i.args[m]) for i, m in zip(insts, nodes)]
            owners = [i for i, k in zip(insts, counts) for _ in range(k)]
            src = np.asarray(
                [(i.loc_store[a], i.loc_buffer[a], i.loc_slot[a]) for i, m in zip(insts, nodes) for a in i.args[m]],
                np.int64,
            ).reshape(-1, 3)
            self._check_operand(run, name, 0, src, owners)
            rows = bucket(len(src))
            edge_pad = np.arange(rows)
            edge_pad[len(src) :] = 0  # padding rows repeat the first argument and belong to no lane
            operands.append(self._gather_values(run, src[edge_pad]))
            segments = np.full(rows, lanes, np.int32)
            segments[: len(src)] = np.repeat(np.arange(n, dtype=np.int32), counts)
        for j in range(0 if op.variadic else op.arity):
            src = np.asarray(
                [
                    (i.loc_store[a], i.loc_buffer[a], i.loc_slot[a])
                    for i, a in ((i, i.args[m][j]) for i, m in zip(insts, nodes))
                ],
                np.int64,
            ).reshape(-1, 3)
            self._check_operand(run, name, j, src, insts)
            operands.append(self._gather_values(run, src[pad]))
        rows = [i.payloads[m] for i, m in zip(insts, nodes)]
        payload = None
        if rows[0] is not None:
            rows = [rows[k] for k in pad.tolist()]
            payload = np.stack(rows) if type(rows[0]) is np.ndarray else jax.tree.map(lambda *x: np.stack(x), *rows)
            bad = None if op.payload_bounds is None else payload_out_of_bounds(name, op, payload)
            if bad is not None:  # as the engines refuse it: JAX's gather would clamp the id silently
                row, value, bound, where = bad
                raise OpError(
                    f"op {name!r}: node {nodes[row]} of instance {insts[row].index} has payload id {value} at "
                    f"{where}, outside [0, {bound}) (the op's payload_bounds)"
                )
        t0 = time.perf_counter()
        try:
            call = self._direct_call(name)
            out = jax.device_get(call(params, payload, tuple(operands), segments, np.arange(lanes) < n))
        except Exception as e:  # re-raised with the op and a node named
            shapes = [jax.tree.map(lambda a: f"{a.dtype}{list(a.shape[1:])}", o) for o in operands]
            raise OpError(
                f"op {name!r} failed on its {n} call(s) of this round (instance {insts[0].index}'s node "
                f"{nodes[0]} among them; operands {shapes}): {type(e).__name__}: {e}"
            ) from e
        execute_s = time.perf_counter() - t0
        leaves, treedef = jax.tree.flatten(out)
        if not leaves:
            raise DynamicError(f"op {name!r} returned {out!r}; an op must return its state, a pytree of arrays")
        signature = (treedef, tuple((tuple(np.shape(x)[1:]), np.dtype(x.dtype)) for x in leaves))
        store = len(run.stores)
        run.stores.append(_Store((signature,), (tuple(np.asarray(x) for x in leaves),)))
        for k, (i, m) in enumerate(zip(insts, nodes)):
            i.loc_store[m], i.loc_buffer[m], i.loc_slot[m] = store, 0, k
        return execute_s

    def _check_operand(self, run: _Run, name: str, j: int, src: np.ndarray, insts: list[_Instance]) -> None:
        """Raises :class:`DynamicError` unless operand ``j`` of every node of a batch of ``name`` has one state
        structure (``src``: their (store, buffer, slot))."""
        if not src.size or _one_source(src):
            return  # (the common case: all from one batch of one round)
        groups = np.unique(src[:, :2], axis=0)
        signatures = [run.stores[s].signatures[b] for s, b in groups.tolist()]
        if any(sig != signatures[0] for sig in signatures[1:]):
            k = next(k for k, row in enumerate(src.tolist()) if run.stores[row[0]].signatures[row[1]] != signatures[0])
            raise DynamicError(
                f"op {name!r}: argument {j} of a call of instance {insts[k].index} has state structure "
                f"{_describe(run.stores[src[k, 0]].signatures[src[k, 1]])}, but a call of instance "
                f"{insts[0].index} passes {_describe(signatures[0])}; one operand position must always read one "
                "structure"
            )

    def _direct_call(self, name: str) -> Callable:
        """The jitted batched call of op type ``name``: ``(params, payload, operands, segments, mask) -> states``
        (leaves ``[L, ...]``; :func:`~edbatch_jax.engine.common.combine`, as the engines call ops; ``segments``:
        a variadic op's lane of every argument row, ``None`` for a fixed arity)."""
        fn = self._direct_calls.get(name)
        if fn is None:
            op = self.user_ops[name]

            def batched(params, payload, operands, segments, mask):
                self.direct_traces += 1
                return combine(op, op.select_params(params), payload, operands, segments, mask)

            fn = self._direct_calls[name] = jax.jit(batched)
        return fn

    def _gather_values(self, run: _Run, src: np.ndarray) -> PyTree:
        """The payload of one value op type: the stored states at ``src`` (int64 ``[K, 3]``: store, buffer, slot),
        stacked in order; one NumPy take per (store, buffer) group."""
        first = run.stores[int(src[0, 0])]
        sig = first.signatures[int(src[0, 1])]
        if _one_source(src):  # one (store, buffer): one take per leaf
            return jax.tree.unflatten(sig[0], [leaf[src[:, 2]] for leaf in first.leaves[int(src[0, 1])]])
        span = max(len(st.signatures) for st in run.stores)
        groups, inverse = np.unique(src[:, 0] * span + src[:, 1], return_inverse=True)
        groups = np.stack(np.divmod(groups, span), axis=1)
        inverse = inverse.reshape(-1)
        out = [np.empty((src.shape[0], *shape), dtype) for shape, dtype in sig[1]]
        for g, (s, b) in enumerate(groups.tolist()):
            rows = np.flatnonzero(inverse == g)
            for o, leaf in zip(out, run.stores[s].leaves[b]):
                o[rows] = leaf[src[rows, 2]]
        return jax.tree.unflatten(sig[0], out)


def _one_source(src: np.ndarray) -> bool:
    """Whether the rows ``src`` (int ``[K, 3]``: store, buffer, slot; ``K >= 1``) all lie in one (store, buffer)."""
    return bool(((src[:, 0] == src[0, 0]) & (src[:, 1] == src[0, 1])).all())


def _round_levels(count: np.ndarray, first: np.ndarray, args: list[tuple]) -> np.ndarray:
    """int64 ``[M]``: the level of each of a round's ``M`` pending nodes (instance ``k``'s ``count[k]`` nodes
    from its node ``first[k]`` on, their argument tuples ``args`` in that order): 0 for a node whose arguments
    all ran in earlier rounds, else one more than its highest argument of this round. Vectorised; a pass per
    level."""
    base = np.cumsum(count) - count
    node_inst = np.repeat(np.arange(len(count)), count)
    arity = np.fromiter(map(len, args), np.int64, len(args))
    arg_local = np.fromiter(itertools.chain.from_iterable(args), np.int64, int(arity.sum()))
    arg_node = np.repeat(np.arange(len(args)), arity)
    arg_inst = node_inst[arg_node]
    new = arg_local >= first[arg_inst]  # an argument recorded in this round: it runs at an earlier level
    src = base[arg_inst[new]] + arg_local[new] - first[arg_inst[new]]
    dst = arg_node[new]
    level = np.zeros(len(args), np.int64)
    while src.size:  # arguments come before their nodes: at most as many passes as levels
        lifted = level.copy()
        np.maximum.at(lifted, dst, level[src] + 1)
        if np.array_equal(lifted, level):
            break
        level = lifted
    return level


@dataclasses.dataclass(frozen=True, eq=False)
class DynamicResult:
    """The result of :meth:`DynamicRuntime.run`.

    Attributes:
      outputs: per instance, what its program returned (handles in it stay
        handles: read them with :meth:`value`, or map them to nodes of
        :meth:`recorded`), or ``None`` for a failed instance.
      failures: the instances that failed, by index (empty if none).
      stats: the run's :class:`RunStats`.
      run: the run's id (the ``run`` of its handles).
    """

    outputs: tuple
    failures: tuple[InstanceFailure, ...]
    stats: RunStats
    run: int
    _run: _Run = dataclasses.field(repr=False)

    @property
    def ok(self) -> bool:
        """Whether every instance finished."""
        return not self.failures

    def value(self, handle: Handle) -> PyTree:
        """The state a node computed (host NumPy leaves); every recorded node of a finished instance has one.

        Raises:
          DynamicError: not a handle of this run, or its node never ran (its instance failed first).
        """
        if not isinstance(handle, Handle):
            raise DynamicError(f"expected a Handle (returned by call()), got {type(handle).__name__}")
        if handle.run != self.run:
            raise DynamicError(f"{handle!r} was recorded by another run")
        inst = self._run.instances[handle.instance]
        if handle.node >= len(inst.loc_store) or inst.loc_store[handle.node] < 0:
            raise DynamicError(f"{handle!r} never ran: its instance failed before its round ran")
        return self._run.value_of(inst, handle.node)

    def recorded(self, instances: Sequence[int] | None = None) -> RecordedGraph:
        """Every call the instances made, in all rounds, as one batched :class:`~edbatch_jax.graph.Graph`.

        Run it with the runtime's engine (``engine.run(params, rec.graph,
        eb.schedule(rec.graph, ...), outputs=rec.nodes(handles))``, under
        ``jax.value_and_grad`` to train): its values equal those the
        instances saw, up to float rounding.

        Args:
          instances: which instances (indices), in order; default: every
            finished instance that recorded at least one node.

        Raises:
          DynamicError: an index out of range, or an instance without nodes.
        """
        insts = self._run.instances
        if instances is None:
            chosen = [i.index for i in insts if i.status == _FINISHED and i.num_nodes]
        else:
            chosen = []
            for k in instances:
                if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(insts):
                    raise DynamicError(f"recorded(): instance {k!r} is not an index in 0..{len(insts) - 1}")
                chosen.append(int(k))
        if not chosen:
            raise DynamicError("recorded(): no instance with recorded nodes to batch")
        empty = [k for k in chosen if not insts[k].num_nodes]
        if empty:
            raise DynamicError(f"recorded(): instance {empty[0]} recorded no node")
        graphs = [_build_graph(insts[k]) for k in chosen]
        sizes = np.asarray([g.num_nodes for g in graphs], np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return RecordedGraph(batch_graphs(graphs), tuple(chosen), offsets, self.run)


def _build_graph(inst: _Instance) -> Graph:
    """The graph of every call ``inst`` made, in call order (as a :class:`~edbatch_jax.graph.GraphBuilder` builds
    it)."""
    builder = GraphBuilder()
    for op, args, payload in zip(inst.ops, inst.args, inst.payloads):
        builder.add(op, *args, payload=payload)
    return builder.build()


def run_dynamic(
    program: Callable[[Any], Generator | Any],
    instances: Sequence[Any],
    ops: Mapping[str, Op | Callable],
    params: PyTree,
    *,
    policy: str | Policy = "agenda",
    engine: EngineFactory | type[Engine] = StepwiseEngine,
    max_rounds: int = 1000,
    on_error: Literal["raise", "return"] = "raise",
    direct_rounds: bool = True,
) -> DynamicResult:
    """One-shot :meth:`DynamicRuntime.run` (a new runtime, so nothing compiled is reused; keep a
    :class:`DynamicRuntime` to run again). Arguments as for :class:`DynamicRuntime` and its ``run``."""
    runtime = DynamicRuntime(ops, policy=policy, engine=engine, max_rounds=max_rounds, direct_rounds=direct_rounds)
    return runtime.run(program, instances, params, on_error=on_error)
