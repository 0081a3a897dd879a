"""Op types: what one node computes.

An op is a pure per-node function ``f(params, payload, *operand_states) -> state``
(a pytree), written for a single node; the engine vmaps it over a batch. It
may be given as a bare function (its arity is read from its signature) or as an
:class:`Op` that says more: a fixed arity, or a variable number of operands
combined by an aggregate (``"sum"``, ``"mean"`` or ``"max"``) before ``f`` sees
them, in which case ``f(params, payload, combined_state)``. A variable-arity
op may also compute per argument before the reduction (``edge=``): one
computation per (node, argument) pair, such as the Child-Sum Tree-LSTM's
forget gate per child or an attention score per child, batched over every
argument of a batch as one vmapped call. An op may also read context
(``context=True``): a per-call pytree shared by every node and a
per-instance pytree of which each node sees its own instance's row, given to
the engine beside ``params`` (:class:`Context`) and differentiable like them.

Plain functions need nothing but JAX; Flax modules become ops through
:mod:`edbatch_jax.engine.flax_ops`.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from edbatch_jax.errors import EdbatchError

__all__ = [
    "AGGREGATES",
    "Context",
    "EngineInputs",
    "Op",
    "OpError",
    "as_op",
    "as_ops",
    "check_graph_ops",
    "check_payload_bounds",
    "payload_out_of_bounds",
    "signature_arity",
]

AGGREGATES = ("sum", "mean", "max", "softmax")
"""How a variable-arity op reduces its arguments (``"softmax"``: an attention-weighted sum, with ``edge=``)."""


class OpError(EdbatchError):
    """An op type is missing, or does not fit the nodes that use it."""


class Context(NamedTuple):
    """The context a ``context=True`` op reads (a pytree).

    Given to the engine (``run``, ``execute``, ``value_and_grad``, the
    ``Trainer``) as ``context=`` (``call``) and ``instance_context=``
    (``instance``); an op receives ``Context(call, its node's row of
    instance)`` as its keyword argument ``context``.

    Attributes:
      call: a pytree of float arrays shared by every node of the run (a
        temperature, a conditioning vector), or ``None``.
      instance: given to the engine, a pytree of float arrays whose leaves
        have a leading axis ``[I, ...]``, one row per instance of the
        (batched) graph (a sentence encoding per instance); as an op sees
        it, its own instance's row (leaves ``[...]``). ``None`` if not given.
    """

    call: Any = None
    instance: Any = None


class EngineInputs(NamedTuple):
    """What an engine with ``context=True`` ops runs on, in place of ``params``: the parameters and the context.

    Internal to the engines (a pytree, so that the programs and the custom
    VJP take it as they take ``params``); its gradient has the same form.
    """

    params: Any
    context: Context


@dataclasses.dataclass(frozen=True)
class Op:
    """A per-node function with its calling convention.

    Attributes:
      fn: ``fn(params, payload, *operand_states) -> state``, pure and jittable.
      arity: number of operand states, or ``None`` for a variable number
        (then ``aggregate`` must say how they combine).
      aggregate: ``"sum"``, ``"mean"`` or ``"max"`` over the operand states of
        a variable-arity node (or over their ``edge`` results); ``fn`` then
        receives one combined state. ``"softmax"`` (with ``edge``): the
        ``edge`` function returns ``(score, value)`` per argument, ``score``
        a float scalar, and ``fn`` receives ``sum_k softmax(score)_k *
        value_k`` (an attention over the arguments; a node's softmax runs
        over its own arguments only).
      edge: for a variable-arity op, ``edge(params, payload, operand_state) ->
        message`` (a pytree), computed once per (node, argument) pair before
        the reduction: ``params`` as ``fn`` gets them, ``payload`` the
        node's, ``operand_state`` one argument's state. The engine runs it
        for every argument of a batch as one vmapped call (no padding to the
        largest arity) and reduces the messages per node with
        ``aggregate``; ``fn`` then receives the reduced message. Every
        argument of an op type must give messages of one structure.
      stochastic: the op draws random numbers: ``fn`` is called with a
        keyword argument ``key``, the node's PRNG key derived from the step
        key given to the engine and the node's identity (its instance and
        position in it: the same whatever the batch, lane, policy or
        layout; :mod:`edbatch_jax.engine.randomness`), or ``key=None`` when
        the engine is run without a step key (deterministic: evaluation,
        dropout off). ``edge`` functions get no key.
      context: the op reads context: ``fn`` (and ``edge``) is called with a
        keyword argument ``context``, a :class:`Context` of the call's
        context and its node's instance's row of the per-instance context
        (each ``None`` where the engine was given none). The engine
        differentiates through both, as through ``params``.
      params_key: if set, ``fn`` receives ``params[params_key]`` instead of the
        whole parameter pytree (and only that subtree's gradient is
        accumulated per batch, which saves work in the backward sweep).
      payload_bounds: the valid range of the op's integer payload ids:
        an int ``V`` (every integer payload leaf must lie in ``[0, V)``,
        e.g. ``eb.Op(embed, payload_bounds=vocab_size)``), or a pytree
        prefix of the payload (e.g. a mapping) with an int or ``None`` (not
        checked) per part. ``None`` (default): not checked. JAX clamps an
        out-of-range gather index to the last row silently; with bounds the
        engine checks every node's payload once per execution plan
        (vectorised per op type) and raises :class:`OpError` naming the op
        type, the node, its instance, the id and the bound.

    Each call of ``fn`` must return a state: a pytree of arrays (JAX arrays
    or scalars, at least one leaf), whose structure, shapes and dtypes
    depend only on those of ``params``, the payload and the operand states;
    the engine raises :class:`OpError` naming the op type otherwise
    (``None``, or a structure that differs between the engine's traces).
    """

    fn: Callable[..., Any]
    arity: int | None = None
    aggregate: str | None = None
    params_key: str | None = None
    payload_bounds: Any = dataclasses.field(default=None, hash=False)  # may be a mapping: equal, not hashed
    edge: Callable[..., Any] | None = None
    stochastic: bool = False
    context: bool = False

    def __post_init__(self):
        name = getattr(self.fn, "__name__", self.fn)
        if self.aggregate is not None and self.aggregate not in AGGREGATES:
            raise OpError(f"op {name!r}: aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")
        if self.edge is not None:
            if not callable(self.edge):
                raise OpError(f"op {name!r}: edge must be a function edge(params, payload, operand_state)")
            if self.aggregate is None or self.arity is not None:
                raise OpError(
                    f"op {name!r}: an edge function needs a variable number of operands: give "
                    "aggregate='sum' | 'mean' | 'max' | 'softmax' and no arity"
                )
        elif self.aggregate == "softmax":
            raise OpError(
                f"op {name!r}: aggregate='softmax' weighs the arguments by scores an edge function computes; "
                "give edge=fn returning (score, value) per argument"
            )
        for bound in _tree_leaves(self.payload_bounds):
            if isinstance(bound, bool) or not isinstance(bound, int) and not _is_np_int(bound) or bound < 1:
                raise OpError(
                    f"op {getattr(self.fn, '__name__', self.fn)!r}: payload_bounds must hold positive ints "
                    f"(or None), got {bound!r}"
                )
        if self.arity is None and self.aggregate is None:
            object.__setattr__(self, "arity", signature_arity(self.fn))

    def call(self, params, payload, *operands, key=None, context=None):
        """``fn(params, payload, *operands)``, with ``key=key`` for a stochastic op and ``context=context`` for an
        op reading context (one node; jittable)."""
        kw = {}
        if self.stochastic:
            kw["key"] = key
        if self.context:
            kw["context"] = context if context is not None else Context()
        return self.fn(params, payload, *operands, **kw)

    def call_edge(self, params, payload, operand, context=None):
        """``edge(params, payload, operand)``, with ``context=context`` for an op reading context (one (node,
        argument) pair; jittable)."""
        if self.context:
            return self.edge(params, payload, operand, context=context if context is not None else Context())
        return self.edge(params, payload, operand)

    @property
    def variadic(self) -> bool:
        """Whether the op takes a variable number of operands (``aggregate`` set)."""
        return self.aggregate is not None

    def message_struct(self, params, payload, operand, context=None):
        """The structure ``fn`` receives as its combined operand, from one node's payload and one argument's state.

        ``params``: what ``fn`` receives (:meth:`select_params` applied, without
        the context); ``context``: one node's :class:`Context` (or ``None``).
        Host-side (``jax.eval_shape``); for an op without ``edge`` the
        operand's own structure. Raises :class:`OpError` if ``edge`` fails on
        these shapes, or a ``"softmax"`` edge does not return ``(score,
        value)`` with a float scalar score.
        """
        import jax
        import numpy as np

        if self.edge is None:
            return operand
        name = getattr(self.fn, "__name__", self.fn)
        try:
            out = jax.eval_shape(lambda p, x, o, c: self.call_edge(p, x, o, c), params, payload, operand, context)
        except OpError:
            raise
        except Exception as e:  # re-raised with the op named
            raise OpError(f"op {name!r}: its edge function failed on one argument's shapes: {e}") from e
        if out is None or not jax.tree.leaves(out):
            raise OpError(f"op {name!r}: its edge function returned {out!r}; it must return a pytree of arrays")
        if self.aggregate != "softmax":
            return out
        if not (isinstance(out, tuple) and len(out) == 2):
            raise OpError(
                f"op {name!r}: with aggregate='softmax' the edge function returns (score, value), got {out!r}"
            )
        score, value = out
        if (
            not hasattr(score, "shape")
            or score.shape != ()
            or not np.issubdtype(np.dtype(score.dtype), np.floating)
            or not jax.tree.leaves(value)
        ):
            raise OpError(
                f"op {name!r}: with aggregate='softmax' the edge function returns (score, value) with score a "
                f"float scalar and value a pytree of arrays, got score {score!r}"
            )
        return value

    @property
    def grad_key(self):
        """The key of this op's gradient accumulator in the engines' backward sweeps: ops with one key share one
        (``params_key``; an op reading context accumulates the context's gradient too, under its own key)."""
        return (self.params_key, "context") if self.context else self.params_key

    def select_params(self, params):
        """The part of ``params`` that ``fn`` receives; given :class:`EngineInputs`, for an op reading context
        the pair ``(that part, the Context)``."""
        if isinstance(params, EngineInputs):
            sub = self.select_params(params.params)
            return (sub, params.context) if self.context else sub
        if self.params_key is None:
            return params
        try:
            return params[self.params_key]
        except (KeyError, TypeError, IndexError):
            raise OpError(
                f"op {getattr(self.fn, '__name__', self.fn)!r} reads params[{self.params_key!r}], which is missing"
            ) from None


def signature_arity(fn: Callable) -> int:
    """Number of operand states a per-node function takes (after params, payload; parameters with a default,
    such as a stochastic op's ``key=None``, are not operands)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        raise OpError(f"cannot read the signature of {fn!r}; wrap it as eb.Op(fn, arity=...)") from None
    positional = [  # a parameter with a default (a stochastic op's ``key=None``) is no operand
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values()):
        raise OpError(
            f"{getattr(fn, '__name__', fn)!r} takes a variable number of operands; say how they combine "
            "with eb.Op(fn, aggregate='sum' | 'mean' | 'max'), or give a fixed arity"
        )
    if len(positional) < 2:
        raise OpError(f"{getattr(fn, '__name__', fn)!r} must take (params, payload, *operand_states)")
    return len(positional) - 2


def as_op(name: str, op: Op | Callable) -> Op:
    """Normalises a function or :class:`Op` into an :class:`Op`."""
    if isinstance(op, Op):
        return op
    if not callable(op):
        raise OpError(f"op {name!r} must be a function or eb.Op, got {type(op).__name__}")
    return Op(fn=op, arity=signature_arity(op))


def as_ops(ops: Mapping[str, Op | Callable]) -> dict[str, Op]:
    """Normalises a mapping of op type names to functions or :class:`Op`."""
    if not isinstance(ops, Mapping):
        raise OpError(f"ops must map op type names to functions, got {type(ops).__name__}")
    return {name: as_op(name, op) for name, op in ops.items()}


def _tree_leaves(tree) -> list:
    import jax

    return jax.tree.leaves(tree)


def _is_np_int(x) -> bool:
    import numpy as np

    return isinstance(x, np.integer)


def check_graph_ops(graph, ops: Mapping[str, Op]) -> None:
    """Raises :class:`OpError` if a node's op type is unknown or its arity does not fit (vectorised over nodes).

    Also refuses an unbatchable op type name (``graph.unbatchable``) that is
    no op of ``ops`` (a misspelt name would otherwise be ignored), with the
    closest op names as a suggestion.
    """
    import numpy as np

    from edbatch_jax.graph.kernels import arity_mismatch

    for name in tuple(getattr(graph, "unbatchable", ()) or ()):
        if name not in ops:
            close = difflib.get_close_matches(str(name), [str(k) for k in ops], n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise OpError(f"unbatchable op type {name!r} is not an op of the model; its ops are {sorted(ops)}{hint}")
    used = np.bincount(graph.node_type, minlength=graph.num_types) > 0
    for t in np.flatnonzero(used).tolist():
        name = graph.op_types[t]
        if name not in ops:
            node = int(np.flatnonzero(graph.node_type == t)[0])
            raise OpError(f"op type {name!r} (used by node {node}) has no implementation; ops given: {sorted(ops)}")
    known = [ops.get(name) for name in graph.op_types]  # (every used type is known: checked above)
    want = np.array([-1 if op is None or op.variadic else op.arity for op in known], np.int64)
    v = arity_mismatch(graph.node_type, graph.arg_ptr, want)
    if v >= 0:
        op, name = known[graph.node_type[v]], graph.op_types[graph.node_type[v]]
        need = "at least 1 operand" if op.variadic else f"{op.arity} operand(s)"
        arity = int(graph.arg_ptr[v + 1] - graph.arg_ptr[v])
        raise OpError(f"node {v} (op {name!r}) has {arity} argument(s) but the op takes {need}")


def check_payload_bounds(graph, ops: Mapping[str, Op]) -> None:
    """Raises :class:`OpError` if an integer payload id lies outside its op's ``payload_bounds``.

    Vectorised per op type and payload leaf (one min/max pass; the culprit is
    located only when there is one). The message names the op type, the
    node, its instance, the payload leaf, the id and the bound.
    """
    import numpy as np

    for t, name in enumerate(graph.op_types):
        op = ops.get(name)
        tree = graph.payloads[t]
        if op is None or op.payload_bounds is None or tree is None:
            continue
        bad = payload_out_of_bounds(name, op, tree)
        if bad is not None:
            row, value, bound, where = bad
            node = int(np.flatnonzero((graph.node_type == t) & (graph.payload_row == row))[0])
            raise OpError(
                f"op {name!r}: node {node} (instance {int(graph.instance[node])}) has payload id {value} "
                f"at {where}, outside [0, {bound}) (the op's payload_bounds); ids out of range would be "
                "clamped silently by JAX's gather"
            )


def payload_out_of_bounds(name: str, op: Op, tree) -> tuple[int, int, int, str] | None:
    """The first payload row of op type ``name`` (stacked payloads ``tree``, leaves ``[P, ...]``) holding an
    integer id outside ``op.payload_bounds``: ``(row, id, bound, leaf path)``, or ``None`` when all are in range
    (one min/max pass per leaf). Host-side.

    Raises:
      OpError: ``op.payload_bounds`` does not fit the payload structure.
    """
    import jax
    import numpy as np

    try:
        pairs = jax.tree.map(
            lambda b, sub: None if b is None else [(b, leaf) for leaf in jax.tree.leaves(sub)],
            op.payload_bounds,
            tree,
            is_leaf=lambda x: x is None,
        )
    except (ValueError, TypeError) as e:
        raise OpError(
            f"op {name!r}: payload_bounds {op.payload_bounds!r} does not fit the payload structure "
            f"{jax.tree.structure(tree)} (give an int, or a prefix of the payload pytree): {e}"
        ) from None
    flat, _ = jax.tree.flatten_with_path(pairs, is_leaf=lambda x: isinstance(x, list))
    for path, items in flat:
        for bound, leaf in items or ():
            a = np.asarray(leaf)
            if a.size == 0 or not np.issubdtype(a.dtype, np.integer):
                continue
            lo, hi = a.min(), a.max()
            if lo >= 0 and hi < bound:
                continue
            rows = a.reshape(a.shape[0], -1)
            bad_row = int(np.flatnonzero(((rows < 0) | (rows >= bound)).any(axis=1))[0])
            value = rows[bad_row][(rows[bad_row] < 0) | (rows[bad_row] >= bound)][0]
            return bad_row, int(value), int(bound), jax.tree_util.keystr(path) or "payload"
    return None
