"""The engine protocol: :class:`Engine`, the abstract base of the stepwise and the fused engine.

An engine turns a (graph, schedule, layout) into an execution plan and runs
plans: :meth:`Engine.plan`, :meth:`Engine.execute` (differentiable),
:meth:`Engine.value_and_grad`, :meth:`Engine.precompile` and
:meth:`Engine.run`. What both engines do alike lives here: the plan cache,
the buffer planning (one state buffer per state structure, a row per node,
the whole schedule's rows), the ``jax.custom_vjp`` around the forward pass,
``value_and_grad`` and ``run``. How a plan is executed (its forward and
backward passes, its extra tables, its precompilation) is left to the
subclasses: :class:`~edbatch_jax.engine.stepwise.StepwiseEngine` and
:class:`~edbatch_jax.engine.fused.FusedEngine`.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import hashlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import CustomVJPPrimal

from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.checks import check_finite_grads, check_finite_states, check_plan_rows, finite_rows
from edbatch_jax.engine.common import (
    PyTree,
    in_scope,
    instantiate_zeros,
    output_nodes,
    scope,
    signature_bytes,
    signature_struct,
    state_signature,
    sum_rows,
    take_rows,
)
from edbatch_jax.engine.context import check_context
from edbatch_jax.engine.kernels import operand_clash
from edbatch_jax.engine.ops import Context, EngineInputs, Op, OpError, as_ops, check_graph_ops, check_payload_bounds
from edbatch_jax.engine.randomness import check_rng, identity_types, split_identity, with_node_identity
from edbatch_jax.engine.rows import ScheduleRows, schedule_rows
from edbatch_jax.errors import input_checks_enabled
from edbatch_jax.graph import Graph, GraphError, ensure_valid
from edbatch_jax.layout.planner import LayoutPlan
from edbatch_jax.scheduling.schedule import (
    Schedule,
    ScheduleError,
    check_schedule,
    schedule_fingerprint,
)

if TYPE_CHECKING:
    from edbatch_jax.engine.stepwise import ExecutionPlan

__all__ = ["BufferPlan", "Engine", "PendingGrads", "payload_digest"]


def payload_digest(graph: Graph) -> bytes:
    """A 16-byte hash of a graph's payload arrays and payload rows (host-side, microseconds).

    The engine keeps it with every cached plan and compares it on a cache
    hit, so that payloads written into a graph's arrays in place (new token
    ids) are never run with the plan's stale copy of them.
    """
    h = hashlib.sha256()
    h.update(memoryview(np.ascontiguousarray(graph.payload_row)).cast("B"))
    for tree in graph.payloads:
        for leaf in jax.tree.leaves(tree):
            a = np.ascontiguousarray(leaf)
            h.update(a.dtype.str.encode())
            h.update(memoryview(a).cast("B"))
    return h.digest()[:16]


def _canonical_signature(tree: PyTree) -> tuple:
    """:func:`~edbatch_jax.engine.common.state_signature` with dtypes as JAX computes in them (x64 off: int32)."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(np.shape(x)), jax.dtypes.canonicalize_dtype(x.dtype)) for x in leaves)


def _checked_op(name: str, op: Op, derived: dict) -> Op:
    """``op`` whose ``fn`` checks, when traced by an engine, that it returns the state structure planned for it,
    and whose ``fn`` and ``edge`` run inside ``scope("op." + name)`` (named in the compiled programs).

    ``derived`` maps ``(name, params, payload, operand signatures)`` to the
    output signature that planning derived with ``jax.eval_shape``; a trace
    whose output differs (an impure op, one that depends on how it is
    traced) raises :class:`OpError` naming the op and both structures, at
    trace time (no cost per call).
    """
    fn = op.fn

    @functools.wraps(fn)
    def checked(params, payload, *operands, **kw):
        with scope("op." + name):  # the op's own arithmetic, named in the compiled program
            out = fn(params, payload, *operands, **kw)
        key = (
            name,
            _canonical_signature(params),
            _canonical_signature(payload),
            tuple(_canonical_signature(o) for o in operands),
            _canonical_signature(kw.get("context")),
        )
        want = derived.get(key)
        if out is None or not jax.tree.leaves(out):
            raise OpError(f"op {name!r} returned {out!r}; an op must return its state, a pytree of arrays")
        got = _canonical_signature(out)
        if want is None:
            raise OpError(
                f"op {name!r} is run with params, payload and operands of structure {key[1:]}, for which no plan "
                "of this engine derived its output; run a plan with params of the structure it was made with"
            )
        if got != want:
            raise OpError(
                f"op {name!r} returned {got} when the engine traced it, but {want} when its state structure "
                "was planned (jax.eval_shape on one node); an op's output structure, shapes and dtypes must "
                "depend only on those of its params, payload and operands"
            )
        return out

    edge = None if op.edge is None else in_scope("op." + name)(op.edge)
    return dataclasses.replace(op, fn=checked, edge=edge)


def _host_check(check, *args) -> None:
    """Runs a host-side ``check`` on arrays: at once if they are concrete, else when the traced program runs."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
        jax.debug.callback(check, *args)
    else:
        check(*args)


@dataclasses.dataclass(frozen=True)
class PendingGrads:
    """Gradients of a backward program whose finiteness test has not been read back from the device yet.

    The fused engine's gradients are right when they are all finite; otherwise
    a second, lane-isolating program gives them
    (:meth:`~edbatch_jax.engine.fused.FusedEngine._isolate_if_needed`).
    Reading the test waits for the backward program, so a caller that can
    wait later (the :class:`~edbatch_jax.training.Trainer`, which applies the
    update on the device only when ``finite`` holds and reads the test
    before its next step) keeps the host free meanwhile.

    Attributes:
      grads: the first program's gradients (a pytree like the parameters).
      finite: bool scalar on the device: whether every leaf of ``grads`` is finite.
      again: ``params -> gradients`` of the isolating program (run only when
        ``finite`` is false; ``params``: the same values the first program ran on).
    """

    grads: PyTree
    finite: jax.Array
    again: Callable[[PyTree], PyTree]

    def resolve(self, params: Any) -> Any:
        """The gradients: ``grads`` if ``finite`` (reads it: waits for the device), else ``again(params)``."""
        return self.grads if bool(self.finite) else self.again(params)

    def map(self, fn) -> PendingGrads:
        """The same with ``fn`` applied to the gradients (either program's)."""
        return PendingGrads(fn(self.grads), self.finite, lambda params: fn(self.again(params)))


class BufferPlan(NamedTuple):
    """The state buffers and rows of one schedule, as both engines plan them (host arrays).

    Attributes:
      signatures: state structure of every buffer (:func:`~edbatch_jax.engine.common.state_signature`).
      capacities: rows of every buffer (bucketed).
      node_buffer: int32 ``[N]``, the buffer holding each node's state.
      node_slot: int32 ``[N]``, the node's row in that buffer.
      rows: the whole schedule's lanes, operand rows and slice/gather
        decisions (:class:`~edbatch_jax.engine.rows.ScheduleRows`).
    """

    signatures: tuple[tuple, ...]
    capacities: tuple[int, ...]
    node_buffer: np.ndarray
    node_slot: np.ndarray
    rows: ScheduleRows


class Engine(abc.ABC):
    """Runs schedules of graphs whose op types are implemented by ``ops`` (abstract).

    An engine owns its compiled programs and the buffer capacities, so
    reusing one engine across mini-batches reuses its executables. The
    concrete engines are :class:`~edbatch_jax.engine.stepwise.StepwiseEngine`
    (one jitted call per batch) and
    :class:`~edbatch_jax.engine.fused.FusedEngine` (one XLA program per
    schedule). ``Engine(ops, ...)`` itself still builds a ``StepwiseEngine``,
    with a ``DeprecationWarning``.

    Args:
      ops: op type name -> :class:`~edbatch_jax.engine.ops.Op` or per-node
        function.
      min_capacity: smallest buffer capacity (rows).
      plan_cache_size: execution plans kept (one per mini-batch in use).
      checks: debug checks of what only a run shows
        (:mod:`edbatch_jax.engine.checks`): every plan's rows inside its
        buffers; after :meth:`run` and :meth:`value_and_grad`, the first
        node in schedule order whose state holds a NaN or an inf (op type,
        instance, and whether its inputs were finite), and any parameter
        gradient that does; each a :class:`~edbatch_jax.engine.checks.NonFiniteError`.
        Off by default: they read every state back to the host. Under
        ``jax.jit`` / ``jax.grad`` they run through ``jax.debug.callback``
        (the error then arrives wrapped in JAX's runtime error).

    Attributes:
      ops: op type name -> :class:`~edbatch_jax.engine.ops.Op`.
      min_capacity: smallest buffer capacity.
      trace_count: number of programs traced (each trace is one compiled
        executable when running eagerly).
      plans_built: number of execution plans built (host-side work per new
        mini-batch; a mini-batch whose plan is still cached costs none).
    """

    def __new__(cls, *args: Any, **kwargs: Any):
        if cls is Engine:  # the old spelling of the stepwise engine
            from edbatch_jax.engine.stepwise import StepwiseEngine

            warnings.warn(
                "constructing edbatch_jax.Engine is deprecated: Engine is the abstract base of the engines now; "
                "use eb.StepwiseEngine(ops, ...) (the same engine) or eb.FusedEngine(ops, ...)",
                DeprecationWarning,
                stacklevel=2,
            )
            return super().__new__(StepwiseEngine)  # then initialised by StepwiseEngine.__init__ with these arguments
        return super().__new__(cls)

    def __init__(
        self,
        ops: Mapping[str, Op | Any],
        *,
        min_capacity: int = 64,
        plan_cache_size: int = 16,
        checks: bool = False,
    ):
        given = as_ops(ops)
        self._unchecked = {name: op.fn for name, op in given.items()}  # the ops' own functions (for eval_shape)
        self._derived: dict[tuple, tuple] = {}  # (op, input signatures) -> output signature, for _checked_op
        self.ops = {name: _checked_op(name, op, self._derived) for name, op in given.items()}
        # with an op reading context, the engine runs on EngineInputs(params, Context) in place of params
        self._contextual = any(op.context for op in given.values())
        self._draws = any(op.stochastic for op in given.values())  # (see draws)
        self.min_capacity = int(min_capacity)
        self.checks = bool(checks)
        # lanes without a cotangent compute on a live lane's inputs (engine/common.combine); off only to measure
        # what that costs: padding lanes then poison gradients through ops singular at zero
        self._isolate_lanes = True
        self.trace_count = 0
        self.plans_built = 0
        self._capacity: dict[tuple, int] = {}  # signature -> rows (grows, kept)
        self._signature_cache: dict[tuple, tuple] = {}
        self._compiled: set = set()  # programs compiled ahead of time (precompile)
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self._signature_ops: dict[tuple, set] = {}  # state signature -> op types whose state it is
        self._plan_cache_size = plan_cache_size

    # ------------------------------------------------------------------ planning
    def plan(
        self,
        params: PyTree,
        graph: Graph,
        schedule: Schedule,
        layout: LayoutPlan | Literal["gather"] | None = None,
        *,
        context: PyTree = None,
        instance_context: PyTree = None,
    ) -> ExecutionPlan:
        """Host-side plan of one schedule: buffers, rows, index arrays (and the engine's own tables).

        Cached per (graph, schedule, layout) object and the graph's payload
        contents (:func:`payload_digest`, compared on a cache hit: payloads
        written in place are planned again, never run stale); not jittable.
        Checks the schedule (by its fingerprint, or in full if it was made
        by hand), the layout, the ops and their payload bounds once per
        plan. A failed call leaves the engine as it was (plan cache,
        registered op types, buffer capacities).

        Args:
          params: the parameter pytree (its structure, shapes and dtypes
            decide the state structures).
          graph: the (batched) graph.
          schedule: a valid schedule of ``graph``.
          layout: ``None`` (rows in schedule order, as DyNet allocates them;
            operands that happen to be consecutive are read as slices),
            ``"gather"`` (the same rows, every operand gathered), or a
            :class:`~edbatch_jax.layout.LayoutPlan` (rows in its order).
          context, instance_context: for an engine with ops reading context,
            the context the plan will run with (only its structure, shapes
            and dtypes matter: they may decide the state structures); see
            :meth:`execute`.

        Returns:
          The engine's plan (an :class:`~edbatch_jax.engine.stepwise.ExecutionPlan`;
          a :class:`~edbatch_jax.engine.fused.FusedPlan` for the fused engine).

        Raises:
          GraphError: ``graph`` is not one graph (a list: use ``eb.batch_graphs``), or is empty.
          ScheduleError: ``schedule`` is not a valid schedule of ``graph``
            (made for another graph, a node missing or run twice, ...), or
            ``layout`` was planned for another schedule or graph.
          OpError: an op is missing, does not fit its nodes, returns no
            state, or a payload id is outside the op's ``payload_bounds``.
          ValueError: ``layout`` is none of the above.
        """
        graph = ensure_valid(graph, "one Graph")
        if not (layout is None or isinstance(layout, LayoutPlan) or (isinstance(layout, str) and layout == "gather")):
            raise ValueError(f"layout must be None, 'gather' or a LayoutPlan, got {layout!r}")
        params = self._inputs(params, context, instance_context, graph.num_instances)
        key = (id(graph), id(schedule), layout if isinstance(layout, str) else id(layout))
        hit = self._plans.get(key)
        params_sig = state_signature(params)
        checks = input_checks_enabled()
        digest = payload_digest(graph) if checks else None
        if (
            hit is not None
            and hit[0] is graph
            and hit[1] is schedule
            and hit[2] == params_sig
            and hit[3] is layout
            and (hit[5] == digest or not checks)
        ):
            self._plans.move_to_end(key)
            return hit[4]
        saved = self._snapshot()
        try:
            if checks:
                check_payload_bounds(graph, self.ops)
            plan = self._new_plan(params, params_sig, graph, schedule, layout)
        except BaseException:
            self._restore(saved)  # no half-registered op types, capacities or tables survive a failed plan
            raise
        if self.checks:
            check_plan_rows(plan)
        self.plans_built += 1
        self._plans[key] = (graph, schedule, params_sig, layout, plan, digest)
        if len(self._plans) > self._plan_cache_size:
            self._plans.popitem(last=False)
        return plan

    def _snapshot(self) -> dict:
        """The engine's bookkeeping (attributes; shallow copies of its containers), for :meth:`_restore`."""
        return {k: (v, v.copy() if isinstance(v, (dict, set, list)) else None) for k, v in vars(self).items()}

    def _restore(self, saved: dict) -> None:
        """Puts the engine's bookkeeping back as :meth:`_snapshot` found it (containers restored in place)."""
        for k in [k for k in vars(self) if k not in saved]:
            delattr(self, k)
        for k, (obj, copy) in saved.items():
            if isinstance(obj, list):
                obj[:] = copy
            elif copy is not None:
                obj.clear()
                obj.update(copy)
            setattr(self, k, obj)

    def _new_plan(
        self,
        params: PyTree,
        params_sig: tuple,
        graph: Graph,
        schedule: Schedule,
        layout: LayoutPlan | Literal["gather"] | None,
    ) -> ExecutionPlan:
        """A new plan of ``graph`` (no cache, no input checks: :meth:`plan` makes those; the benchmark harness
        times this): the graph with the node identities of stochastic ops in their payloads
        (:func:`~edbatch_jax.engine.randomness.with_node_identity`), planned by :meth:`_build_plan`."""
        run_graph = with_node_identity(graph, identity_types(graph, self.ops))
        return self._build_plan(params, params_sig, run_graph, schedule, layout)

    @abc.abstractmethod
    def _build_plan(
        self,
        params: PyTree,
        params_sig: tuple,
        graph: Graph,
        schedule: Schedule,
        layout: LayoutPlan | Literal["gather"] | None,
    ) -> ExecutionPlan:
        """A new plan (:meth:`plan` has checked ``layout`` and missed its cache); ``params_sig``: the
        :func:`~edbatch_jax.engine.common.state_signature` of ``params``."""

    def _output_signature(self, name: str, params_sig: tuple, payload_sig, operand_sigs: tuple, params) -> tuple:
        """State signature of op ``name``'s output for one node's payload and operand signatures (cached)."""
        key = (name, params_sig, payload_sig, operand_sigs)
        sig = self._signature_cache.get(key)
        if sig is None:
            op, fn = self.ops[name], self._unchecked[name]
            payload = None if payload_sig is None else signature_struct(payload_sig)
            if op.stochastic or op.context:  # the node identities the engine added (engine/randomness.py) are not fn's
                payload = split_identity(payload)[0]
            sub, context = op.select_params(params), None
            if op.context:  # one node's context: the call's, and one row of the per-instance context
                sub, whole = sub
                row = jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a)[1:], jnp.result_type(a)), whole.instance)
                context = Context(whole.call, row)
            operands = [signature_struct(s) for s in operand_sigs]
            if op.edge is not None:  # fn receives the reduced messages of the edge function
                operands = [op.message_struct(sub, payload, o, context) for o in operands]
            step_key = jax.ShapeDtypeStruct((2,), np.uint32)  # a step key: the output structure of a random draw
            kw = lambda k, c: {**({"key": k} if op.stochastic else {}), **({"context": c} if op.context else {})}
            call = lambda p, x, k, c, *o: fn(p, x, *o, **kw(k, c))
            try:
                out = jax.eval_shape(call, sub, payload, step_key, context, *operands)
            except Exception as e:  # re-raised with the op named
                raise OpError(
                    f"op {name!r} failed on one node's shapes (payload {payload_sig}, operands {operand_sigs}): {e}"
                ) from e
            if out is None or not jax.tree.leaves(out):
                raise OpError(
                    f"op {name!r} returned {out!r} (payload {payload_sig}, operands {operand_sigs}); an op must "
                    "return its state, a pytree of at least one array"
                )
            sig = self._signature_cache[key] = state_signature(out)
            derived_key = (
                name,
                _canonical_signature(sub),
                _canonical_signature(payload),
                tuple(_canonical_signature(o) for o in operands),
                _canonical_signature(context),
            )
            self._derived[derived_key] = _canonical_signature(out)
        return sig

    def _plan_buffers(
        self,
        params: PyTree,
        params_sig: tuple,
        graph: Graph,
        schedule: Schedule,
        layout: LayoutPlan | Literal["gather"] | None,
    ) -> BufferPlan:
        """The plan's state buffers and whole-schedule rows; grows the engine's buffer capacities. Host-side."""
        if graph.num_nodes == 0:
            raise GraphError("empty graph: nothing to run")
        if not isinstance(schedule, Schedule):
            raise ScheduleError(f"expected an eb.Schedule (eb.schedule(graph, policy)), got {type(schedule).__name__}")
        if schedule.op_types != graph.op_types:
            raise ScheduleError(
                f"this schedule was made for another graph: its op types {list(schedule.op_types)} differ from "
                f"the graph's {list(graph.op_types)}"
            )
        checks = input_checks_enabled()
        graph_fp = check_schedule(graph, schedule) if checks else None
        if isinstance(layout, LayoutPlan):
            if not np.issubdtype(np.asarray(layout.position).dtype, np.integer):
                raise ScheduleError(
                    f"the layout plan's positions must be integer ranks, got dtype {np.asarray(layout.position).dtype}"
                )
            if np.shape(layout.position) != (graph.num_nodes,):
                raise ScheduleError(
                    f"the layout plan has {np.shape(layout.position)} positions for a graph of {graph.num_nodes} "
                    "nodes: it was planned for another graph"
                )
            if (
                checks
                and layout.fingerprint is not None
                and layout.fingerprint != (graph_fp, schedule_fingerprint(schedule))
            ):
                raise ScheduleError(
                    "this layout was planned for another schedule or graph (its fingerprint differs); plan it "
                    "for this one with eb.plan_layout(graph, schedule)"
                )
        check_graph_ops(graph, self.ops)
        n, T = graph.num_nodes, graph.num_types
        order = schedule.node_order
        first_node = order[schedule.batch_ptr[:-1]]

        # --- state structure of every op type, found at its first batch (in schedule order)
        type_sig: list[tuple | None] = [None] * T
        types, first_batch = np.unique(schedule.batch_type, return_index=True)
        for t, b in sorted(zip(types.tolist(), first_batch.tolist()), key=lambda tb: tb[1]):
            v = first_node[b]
            name = graph.op_types[t]
            args = graph.args(v)
            if self.ops[name].variadic:
                args = args[:1]
            operand_sigs = tuple(type_sig[graph.node_type[a]] for a in args)
            if any(s is None for s in operand_sigs):
                raise OpError(f"node {v} (op {name!r}) runs before one of its arguments; validate the schedule")
            tree = graph.payloads[t]
            payload_sig = None if tree is None else state_signature(jax.tree.map(lambda a: a[0], tree))
            type_sig[t] = self._output_signature(name, params_sig, payload_sig, operand_sigs, params)
        signatures = tuple(dict.fromkeys(s for s in type_sig if s is not None))
        for t, sig in enumerate(type_sig):
            if sig is not None:
                self._signature_ops.setdefault(sig, set()).add(graph.op_types[t])
        type_buffer = np.array([-1 if s is None else signatures.index(s) for s in type_sig], dtype=np.int32)

        # --- every operand position of a type must read one state structure
        variadic = np.array([graph.op_types[t] in self.ops and self.ops[graph.op_types[t]].variadic for t in range(T)])
        arity = np.array(
            [
                0 if variadic[t] or graph.op_types[t] not in self.ops else self.ops[graph.op_types[t]].arity
                for t in range(T)
            ],
            np.int64,
        )
        e1, e2 = operand_clash(graph.node_type, graph.arg_ptr, graph.arg_idx, type_buffer, variadic)
        if e1 >= 0:
            dst1, dst2 = (int(np.searchsorted(graph.arg_ptr, e, side="right") - 1) for e in (e1, e2))
            pos = 0 if variadic[graph.node_type[dst1]] else e1 - int(graph.arg_ptr[dst1])
            buf1, buf2 = (type_buffer[graph.node_type[graph.arg_idx[e]]] for e in (e1, e2))
            raise OpError(
                f"op {graph.op_types[graph.node_type[dst1]]!r}: operand {pos} of node {dst1} "
                f"has state structure {signatures[buf1]} but node {dst2} passes "
                f"{signatures[buf2]}; one operand position must always read one structure"
            )

        # --- rows: per buffer in schedule order (each batch contiguous), or in the layout's order
        node_buffer = type_buffer[graph.node_type]
        if isinstance(layout, LayoutPlan):
            position = np.asarray(layout.position)
            in_range = n == 0 or (position.min() >= 0 and position.max() < n)
            if in_range and np.array_equal(np.bincount(position, minlength=n), np.ones(n)):
                by_row = np.empty(n, np.int64)  # a permutation of 0..n-1 (as plan_layout gives): invert it
                by_row[position] = np.arange(n)
            else:
                by_row = np.argsort(position, kind="stable")
        else:
            by_row = order
        buf_in_order = node_buffer[by_row]
        node_slot = np.empty(n, dtype=np.int32)
        for b in range(len(signatures)):
            sel = buf_in_order == b
            node_slot[by_row[sel]] = np.arange(int(sel.sum()), dtype=np.int32)
        row_bytes = np.array([signature_bytes(sig) for sig in signatures], np.int64)
        rows = schedule_rows(
            graph,
            schedule,
            node_slot,
            node_buffer,
            len(signatures),
            variadic,
            arity,
            row_bytes,
            allow_slices=layout != "gather",
        )

        capacities = []
        for b, sig in enumerate(signatures):
            cap = max(self._capacity.get(sig, 0), bucket(int(rows.need[b]), self.min_capacity))
            self._capacity[sig] = cap
            capacities.append(cap)
        return BufferPlan(signatures, tuple(capacities), node_buffer, node_slot, rows)

    # ------------------------------------------------------------------ execution (engine-specific)
    @abc.abstractmethod
    def _forward(self, plan: ExecutionPlan, params: PyTree, rng: Any = None) -> tuple:
        """All state buffers after running ``plan`` (one pytree per buffer, leaves ``[capacity, ...]``);
        ``rng``: the step key of stochastic ops, or ``None``."""

    @abc.abstractmethod
    def _forward_saving(self, plan: ExecutionPlan, params: PyTree, rng: Any = None) -> tuple[tuple, Any]:
        """``(buffers, saved)``: the buffers and what the backward pass may reuse (``None``: nothing)."""

    @abc.abstractmethod
    def _backward(
        self,
        plan: ExecutionPlan,
        params: PyTree,
        bufs: tuple,
        ct_bufs: tuple,
        owned: bool = False,
        saved: Any = None,
        rng: Any = None,
    ) -> PyTree:
        """Gradient w.r.t. ``params`` of a plan's run, given one cotangent per buffer (``None``: zero).

        ``owned``: the cotangent arrays (and ``saved``) are the caller's to give up (donated or reused, not copied).
        ``saved``: the second output of :meth:`_forward_saving`. ``rng``: the forward pass's step key.
        """

    @property
    def draws(self) -> bool:
        """Whether an op of this engine is stochastic (draws from the step key). Without one, a step key
        changes no value, and the engine runs without it."""
        return self._draws

    @property
    def defers_gradient_test(self) -> bool:
        """Whether this engine's gradients may come as :class:`PendingGrads` (a finiteness test still on the
        device; the fused engine's lane isolation). The base engine's never do."""
        return False

    def _backward_pending(
        self,
        plan: ExecutionPlan,
        params: PyTree,
        bufs: tuple,
        ct_bufs: tuple,
        owned: bool = False,
        saved: Any = None,
        rng: Any = None,
    ) -> PyTree | PendingGrads:
        """:meth:`_backward`, or :class:`PendingGrads` when the gradients still wait on a test on the device."""
        return self._backward(plan, params, bufs, ct_bufs, owned, saved, rng)

    @abc.abstractmethod
    def precompile(
        self,
        params: PyTree,
        plan: ExecutionPlan,
        cotangents: Sequence[bool] | None = None,
        rng: Any = None,
        *,
        context: PyTree = None,
        instance_context: PyTree = None,
    ) -> int:
        """Compiles, ahead of time and without running them, the programs that running ``plan`` needs.

        Plan every mini-batch first (:meth:`plan`: buffer capacities and the
        fused engine's table lengths only grow), then precompile each plan:
        the programs are then compiled once, at their final shapes, before
        the first step, instead of during the first steps and again whenever
        a larger mini-batch grows a capacity. Programs already compiled are
        not compiled again. Host-side; not jittable.

        Args:
          params: the parameter pytree the plan will run with (concrete
            arrays; only their shapes, dtypes and placement matter).
          plan: a plan of this engine (:meth:`plan`).
          cotangents: ``None`` for inference (the forward programs);
            otherwise one bool per state buffer of ``plan``, ``True`` where
            the loss gives that buffer a cotangent, for training through
            :meth:`value_and_grad` (the forward programs that keep what the
            backward pass reuses, and the backward programs).
          rng: a step key (any: only its type matters) to compile the
            programs of runs with a step key (stochastic ops drawing), or
            ``None`` for runs without one.
          context, instance_context: the context the runs will have (any
            values: only structures, shapes and dtypes matter; see
            :meth:`execute`).

        Returns:
          The number of programs compiled by this call.
        """

    def _inputs(self, params: PyTree, context: PyTree, instance_context: PyTree, num_instances: int) -> PyTree:
        """What the programs run on: ``params``, or for an engine with ops reading context
        :class:`~edbatch_jax.engine.ops.EngineInputs` of ``params`` and the checked context
        (:func:`~edbatch_jax.engine.context.check_context`)."""
        if isinstance(params, EngineInputs):
            raise OpError("params must be the parameter pytree; give context as context= and instance_context=")
        if not self._contextual:
            if context is not None or instance_context is not None:
                raise OpError(
                    "context was given, but no op of this engine reads it: declare the ops that do as "
                    "eb.Op(fn, context=True) (linen_op / nnx_op: context=True)"
                )
            return params
        return EngineInputs(params, check_context(context, instance_context, num_instances))

    def _step_key(self, rng: Any) -> Any:
        """``rng`` checked (:func:`~edbatch_jax.engine.randomness.check_rng`); ``None`` when no op of the engine
        is stochastic (a key would change no value, only the programs' signatures)."""
        rng = check_rng(rng)
        return rng if self._draws else None

    def _check_differentiable(self, plan: ExecutionPlan) -> None:
        """Raises :class:`OpError` naming the op types whose states have integer or bool leaves (no gradient)."""
        for sig in plan.signatures:
            bad = [d for _, d in sig[1] if not jax.dtypes.issubdtype(d, np.inexact)]
            if bad:
                names = sorted(self._signature_ops.get(sig, ()))
                raise OpError(
                    f"op(s) {names} return a state with {bad[0]} leaves ({sig[0]}); the engine differentiates "
                    "every state, so states need float leaves under jax.grad / value_and_grad: return them as "
                    "floats, or compute integer results outside the engine"
                )

    # ------------------------------------------------------------------ execution (shared)
    def execute(
        self,
        plan: ExecutionPlan,
        params: PyTree,
        rng: Any = None,
        *,
        context: PyTree = None,
        instance_context: PyTree = None,
    ) -> tuple:
        """All state buffers after running ``plan``; differentiable w.r.t. ``params`` and the context.

        With concrete ``params`` (nothing traces them: no ``jax.grad``, no
        ``jax.jit`` around the call) the forward program runs directly;
        otherwise through a ``jax.custom_vjp`` whose backward pass is the
        engine's reverse sweep (buffers nothing reads get no cotangent work:
        zero cotangents stay symbolic until the sweep makes them). Usable
        eagerly or under ``jax.jit``.

        Args:
          plan: a plan of this engine (:meth:`plan`).
          params: the parameter pytree.
          rng: the step key of stochastic ops (``jax.random.PRNGKey`` or
            ``jax.random.key``; every node's key derives from it and the
            node's identity: :mod:`edbatch_jax.engine.randomness`), or
            ``None``: stochastic ops run with ``key=None`` (deterministic).
          context: the per-call context of ops reading context (a pytree of
            float arrays, :class:`~edbatch_jax.engine.ops.Context`'s ``call``),
            or ``None``.
          instance_context: the per-instance context (a pytree of float
            arrays, leaves ``[I, ...]`` with ``I`` the graph's
            ``num_instances``; each node reads its instance's row), or ``None``.

        Returns:
          One pytree per state buffer, leaves ``[capacity, ...]``.

        Raises:
          OpError: context given to an engine none of whose ops reads it, a
            context leaf that is not a float array, or a per-instance leaf
            without one row per instance.
        """
        rng = self._step_key(rng)
        params = self._inputs(params, context, instance_context, plan.graph.num_instances)
        if not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(params)):
            return self._forward(plan, params, rng)  # nothing to differentiate: skip the custom_vjp machinery
        self._check_differentiable(plan)

        @jax.custom_vjp
        def buffers(p, r):
            return self._forward(plan, p, r)

        def fwd(p, r):
            p, r = jax.tree.map(lambda x: x.value, (p, r), is_leaf=lambda x: isinstance(x, CustomVJPPrimal))
            bufs, saved = self._forward_saving(plan, p, r)
            return bufs, (p, r, bufs, saved)

        def bwd(res, ct):
            p, r, bufs, saved = res
            grads = self._backward(plan, p, bufs, tuple(instantiate_zeros(c) for c in ct), saved=saved, rng=r)
            if self.checks:
                _host_check(check_finite_grads, grads)
            return grads, None  # the step key has no gradient

        buffers.defvjp(fwd, bwd, symbolic_zeros=True)
        return buffers(params, rng)

    def value_and_grad(
        self,
        plan: ExecutionPlan,
        params: PyTree,
        loss_grad,
        rng: Any = None,
        *,
        context: PyTree = None,
        instance_context: PyTree = None,
        context_grads: bool = False,
        pending: bool = False,
    ) -> tuple[jax.Array, PyTree | PendingGrads]:
        """A loss of the state buffers and its gradient w.r.t. ``params``, without tracing the schedule.

        The same result as ``jax.value_and_grad`` of ``loss(execute(plan, p, rng))``
        for concrete ``params``, without autodiff's per-call tracing and zero
        cotangents: the forward program, ``loss_grad``, then the backward
        program. Not jittable (use ``jax.value_and_grad`` over :meth:`run`
        under ``jax.jit``).

        Args:
          plan: a plan of this engine (:meth:`plan`).
          params: the parameter pytree (concrete arrays).
          loss_grad: ``buffers -> (loss, cotangents)``, with one cotangent
            pytree per buffer or ``None`` for a buffer the loss does not read
            (e.g. a jitted ``jax.value_and_grad``). The cotangent arrays are
            handed over: the stepwise engine updates them in place (donated),
            so they must be fresh (the outputs of a jitted function are).
          rng: the step key of stochastic ops, or ``None`` (see :meth:`execute`).
          context, instance_context: the context of ops reading it (see
            :meth:`execute`).
          context_grads: also return the context's gradients.
          pending: the gradients may come as :class:`PendingGrads`, their
            finiteness test still on the device (:attr:`defers_gradient_test`;
            not with ops reading context, ``context_grads`` or debug checks);
            resolve them with the same ``params``. For a caller that can
            read the test later (the :class:`~edbatch_jax.training.Trainer`).

        Returns:
          ``(loss, grads)``, ``grads`` with the structure of ``params``; with
          ``context_grads``, ``(loss, (grads, context_grads))``,
          ``context_grads`` an :class:`~edbatch_jax.engine.ops.Context` of the
          gradients of ``context`` and ``instance_context`` (``None`` where
          not given).
        """
        rng = self._step_key(rng)
        inputs = self._inputs(params, context, instance_context, plan.graph.num_instances)
        self._check_differentiable(plan)
        bufs, saved = self._forward_saving(plan, inputs, rng)
        if self.checks:
            self._check_states(plan, bufs)
        loss, ct = loss_grad(bufs)
        if len(ct) != len(bufs):
            raise ValueError(f"loss_grad returned {len(ct)} cotangents for {len(bufs)} buffers")
        grads = self._backward_pending(plan, inputs, bufs, tuple(ct), owned=True, saved=saved, rng=rng)
        if isinstance(grads, PendingGrads):
            if pending and not self.checks and not context_grads and inputs is params:
                return loss, grads
            grads = grads.resolve(inputs)
        if self.checks:
            check_finite_grads(grads)
        if isinstance(grads, EngineInputs):
            return loss, ((grads.params, grads.context) if context_grads else grads.params)
        return loss, ((grads, Context()) if context_grads else grads)

    def _check_states(self, plan: ExecutionPlan, bufs: tuple) -> None:
        """The debug check of a forward pass's states (:func:`~edbatch_jax.engine.checks.check_finite_states`)."""
        graph, order = plan.graph, plan.rows.lane_nodes
        _host_check(lambda *finite: check_finite_states(plan, graph, order, finite), *finite_rows(bufs))

    def run(
        self,
        params: PyTree,
        graph: Graph,
        schedule: Schedule,
        outputs: Sequence[int] | np.ndarray | None = None,
        layout: LayoutPlan | Literal["gather"] | None = None,
        reduce: Literal["sum"] | None = None,
        *,
        rng: Any = None,
        context: PyTree = None,
        instance_context: PyTree = None,
    ) -> PyTree:
        """Runs ``schedule`` and returns the stacked states of ``outputs``.

        Args:
          params: the parameter pytree passed to every op.
          graph: the (batched) graph.
          schedule: a valid schedule of ``graph``.
          outputs: node ids (int ``[K]``), all of one state structure; ``None``
            means every node (then all op types must share one structure).
          layout: buffer layout (see :meth:`plan`): ``None``, ``"gather"`` or
            a :class:`~edbatch_jax.layout.LayoutPlan`.
          reduce: ``"sum"`` returns the sum over the outputs instead (no
            leading axis), computed on a bucketed index so that mini-batches
            with different output counts share one executable.
          rng: the step key of stochastic ops, or ``None`` (deterministic;
            see :meth:`execute`).
          context: the per-call context of ops reading context, or ``None``
            (see :meth:`execute`).
          instance_context: the per-instance context (leaves ``[I, ...]``,
            one row per instance of ``graph``), or ``None``.

        Returns:
          The state pytree with a leading axis ``[K]`` (or summed). Differentiable with
          ``jax.grad`` w.r.t. ``params``, ``context`` and ``instance_context``;
          usable eagerly or under ``jax.jit``.
        """
        if reduce not in (None, "sum"):
            raise ValueError(f"reduce must be None or 'sum', got {reduce!r}")
        ctx = {"context": context, "instance_context": instance_context}
        plan = self.plan(params, graph, schedule, layout, **ctx)  # checks the graph
        nodes = output_nodes(plan, graph, outputs)
        bufs = self.execute(plan, params, rng, **ctx)
        if self.checks:
            self._check_states(plan, bufs)
        buf = bufs[int(plan.node_buffer[nodes[0]]) if nodes.size else 0]
        if reduce == "sum":
            k = bucket(nodes.size)
            idx = np.zeros(k, np.int32)
            idx[: nodes.size] = plan.node_slot[nodes]
            return sum_rows(buf, idx, np.arange(k) < nodes.size)
        return take_rows(buf, plan.node_slot[nodes])
