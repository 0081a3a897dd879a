"""What both engines share: state structures, buffer rows, the batched op call, gradients, precompilation.

Free functions on pytrees of arrays (or of ``jax.ShapeDtypeStruct``), used by
the stepwise engine (:mod:`edbatch_jax.engine.stepwise`), the fused engine
(:mod:`edbatch_jax.engine.fused`), their base class
(:mod:`edbatch_jax.engine.base`) and by the training and benchmark layers:

* state structures: :func:`state_signature`, :func:`signature_struct`,
  :func:`signature_bytes`;
* state buffers (one row per node state): :func:`zeros_of`,
  :func:`zero_buffer`, :func:`buffer_structs`, :func:`take_rows`,
  :func:`read_rows`, :func:`write_rows`, :func:`add_rows`,
  :func:`sum_rows`, :func:`mask_rows`;
* the batched op call: :func:`combine` (and a variadic op's reduction of
  its arguments, per-argument ``edge`` computations included:
  :func:`reduce_arguments`);
* lanes that must not poison gradients: :func:`lanes_with_cotangent`,
  :func:`guard_lanes`, :func:`zero_unless`;
* gradients: :func:`instantiate_zeros`, :func:`assemble_grads`;
* precompilation: :func:`compile_once`, :func:`placement`,
  :func:`check_cotangents`;
* outputs: :func:`output_nodes`;
* names in the compiled programs: :func:`scope` (what a profile attributes
  time to: ``edbatch.gather``, ``edbatch.aggregate``, ``edbatch.write``,
  ``edbatch.accumulate``, ``edbatch.store``, ``edbatch.lanes``,
  ``edbatch.op.<op type>``), :func:`in_scope`.

A *signature* is the hashable ``(treedef, ((shape, dtype), ...))`` of one
node's state; a *buffer* of a signature is that pytree with a leading row
axis. Functions marked jittable work on concrete arrays and on tracers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from edbatch_jax.engine.ops import Context, EngineInputs, Op, OpError
from edbatch_jax.engine.randomness import node_key, split_identity
from edbatch_jax.graph import Graph, check_node_ids

if TYPE_CHECKING:
    from edbatch_jax.engine.stepwise import ExecutionPlan

PyTree = Any

__all__ = [
    "PyTree",
    "add_rows",
    "assemble_grads",
    "buffer_structs",
    "check_cotangents",
    "combine",
    "compile_once",
    "guard_lanes",
    "in_scope",
    "instantiate_zeros",
    "lanes_with_cotangent",
    "mask_rows",
    "output_nodes",
    "placement",
    "read_rows",
    "reduce_arguments",
    "scope",
    "signature_bytes",
    "signature_struct",
    "state_signature",
    "sum_rows",
    "take_rows",
    "write_rows",
    "zero_buffer",
    "zero_unless",
    "zeros_of",
]


SCOPE_PREFIX = "edbatch."


def scope(part: str):
    """``jax.named_scope("edbatch." + part)``: a name every instruction traced inside carries in the compiled
    program's metadata, so that a profile can attribute its time (``edbatch bench --profile``). Changes no value
    and no compiled code. ``part``: ``"gather"``, ``"aggregate"``, ``"write"``, ``"accumulate"``, ``"store"``,
    ``"lanes"`` (lane masks and guards), ``"update"`` (loss and optimizer update) or ``"op.<op type>"``
    (characters other than letters, digits, ``_``, ``-`` and ``.`` become ``_``)."""
    return jax.named_scope(SCOPE_PREFIX + _SCOPE_CHARS.sub("_", part))


def in_scope(part: str):
    """Decorator: the function's body runs inside :func:`scope` ``(part)``."""

    def wrap(fn):
        @functools.wraps(fn)
        def scoped(*args, **kwargs):
            with scope(part):
                return fn(*args, **kwargs)

        return scoped

    return wrap


_SCOPE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


# ------------------------------------------------------------------ state structures
def state_signature(tree: PyTree) -> tuple:
    """Hashable ``(treedef, ((shape, dtype), ...))`` of a state (arrays or ``jax.ShapeDtypeStruct``); host-side.

    Args:
      tree: a pytree whose leaves have ``shape`` and ``dtype``.

    Returns:
      The signature: shapes as tuples of ints, dtypes as ``np.dtype``.
    """
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(x.shape), np.dtype(x.dtype)) for x in leaves)


def signature_struct(sig: tuple, lead: tuple = ()) -> PyTree:
    """The pytree of ``jax.ShapeDtypeStruct`` of signature ``sig``, each leaf ``lead + shape``; host-side.

    Args:
      sig: a :func:`state_signature`.
      lead: leading axes put before every leaf's shape (e.g. ``(rows,)``).

    Returns:
      The state's structure with ``jax.ShapeDtypeStruct`` leaves.
    """
    treedef, leaves = sig
    return jax.tree.unflatten(treedef, [jax.ShapeDtypeStruct(lead + s, d) for s, d in leaves])


@functools.lru_cache(maxsize=256)
def signature_bytes(sig: tuple) -> int:
    """Bytes of one row (one node's state) of signature ``sig``; host-side, cached."""
    return int(sum(np.prod(shape, dtype=np.int64) * np.dtype(dtype).itemsize for shape, dtype in sig[1]))


# ------------------------------------------------------------------ state buffers
def zeros_of(structs: PyTree) -> PyTree:
    """Zero arrays of the shapes and dtypes of a pytree of ``jax.ShapeDtypeStruct``; jittable."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), structs)


def zero_buffer(sig: tuple, capacity: int) -> PyTree:
    """A zero state buffer of signature ``sig``: leaves ``[capacity, *shape]`` of its dtypes; jittable."""
    return zeros_of(signature_struct(sig, (capacity,)))


def buffer_structs(plan: ExecutionPlan) -> tuple:
    """The state buffers of a plan as pytrees of ``jax.ShapeDtypeStruct`` (leaves ``[capacity, ...]``); host-side.

    Args:
      plan: an :class:`~edbatch_jax.engine.stepwise.ExecutionPlan` (or a
        fused plan).

    Returns:
      One pytree per buffer, in the plan's buffer order.
    """
    return tuple(signature_struct(sig, (cap,)) for sig, cap in zip(plan.signatures, plan.capacities))


@in_scope("gather")
def take_rows(tree: PyTree, idx) -> PyTree:
    """Rows ``idx`` (int32 ``[M]``) of every leaf (``[R, ...]`` -> ``[M, ...]``), a gather; jittable."""
    return jax.tree.map(lambda a: jnp.take(a, idx, axis=0), tree)


@in_scope("gather")
def read_rows(tree: PyTree, idx, length: int) -> PyTree:
    """Rows of every leaf: ``idx`` (int32 ``[M]``: a gather) or ``idx .. idx + length`` (int32 scalar: a slice).

    Jittable; ``length`` is static.

    Args:
      tree: a buffer, leaves ``[R, ...]``.
      idx: int32 ``[M]`` row indices, or an int32 scalar, the first row of a slice.
      length: rows of the slice (ignored for a gather).

    Returns:
      The rows, leaves ``[M, ...]`` or ``[length, ...]``.
    """
    if jnp.ndim(idx) == 0:
        return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, idx, length, 0), tree)
    return take_rows(tree, idx)


@in_scope("write")
def write_rows(tree: PyTree, offset, values: PyTree, mask) -> PyTree:
    """``tree`` with rows ``offset .. offset + L`` replaced by ``values`` where ``mask``; jittable.

    Padding lanes (``mask`` false) keep the rows they cover (another batch's,
    in a planned layout). Values are cast to the buffer's dtypes.

    Args:
      tree: a buffer, leaves ``[R, ...]``.
      offset: int32 scalar, the first row written.
      values: the lanes' states, leaves ``[L, ...]``.
      mask: bool ``[L]``, the real lanes.

    Returns:
      The updated buffer (same structure, shapes and dtypes as ``tree``).
    """

    def write(b, v):
        old = jax.lax.dynamic_slice_in_dim(b, offset, v.shape[0], 0)
        keep = mask.reshape((-1,) + (1,) * (v.ndim - 1))
        return jax.lax.dynamic_update_slice_in_dim(b, jnp.where(keep, v.astype(b.dtype), old), offset, 0)

    return jax.tree.map(write, tree, values)


@in_scope("accumulate")
def add_rows(tree: PyTree, idx, values: PyTree) -> PyTree:
    """Adds ``values`` (leaves ``[M, ...]``) into rows ``idx`` (int32 ``[M]``, scatter-add) or into the slice
    starting at ``idx`` (int32 scalar), cast to the buffer's dtypes; jittable."""
    if jnp.ndim(idx) == 0:

        def add(c, x):
            cur = jax.lax.dynamic_slice_in_dim(c, idx, x.shape[0], 0)
            return jax.lax.dynamic_update_slice_in_dim(c, cur + x.astype(c.dtype), idx, 0)

        return jax.tree.map(add, tree, values)
    return jax.tree.map(lambda c, x: c.at[idx].add(x.astype(c.dtype)), tree, values)


@jax.jit
def sum_rows(tree: PyTree, idx, mask) -> PyTree:
    """Sum of rows ``idx`` (int32 ``[K]``) where ``mask`` (bool ``[K]``): leaves ``[R, ...]`` -> ``[...]``.

    Jitted (bucketed ``K``: one executable per bucket); usable under an outer
    ``jax.jit``.
    """

    def one(a):
        rows = jnp.take(a, idx, axis=0)
        return jnp.sum(jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), rows, jnp.zeros_like(rows)), axis=0)

    return jax.tree.map(one, tree)


@in_scope("lanes")
def mask_rows(tree: PyTree, mask) -> PyTree:
    """``tree`` (leaves ``[L, ...]``) with the rows outside ``mask`` (bool ``[L]``) set to zero; jittable."""
    return jax.tree.map(lambda a: jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, jnp.zeros_like(a)), tree)


# ------------------------------------------------------------------ the batched op call
def combine(
    op: Op, params: PyTree, payload: PyTree, gathered: Sequence[PyTree], segments, mask, live=None, rng=None
) -> PyTree:
    """The batched op call: ``vmap(op.fn)`` over lanes, after aggregation for variadic ops
    (:func:`reduce_arguments`); jittable.

    With ``live``, the lanes outside it (padding lanes, and lanes whose
    output no loss reads) compute on a copy of the first live lane's payload
    and (aggregated) operands, gradient stopped (:func:`guard_lanes`): under
    ``jax.vjp`` with zero cotangents they then contribute exact zeros to
    parameter gradients and operand cotangents, even where their own inputs
    are NaN or inf or at a singular point of the op (``y / norm(y)`` at
    zero), as in unbatched execution.

    Args:
      op: the op type's :class:`~edbatch_jax.engine.ops.Op`.
      params: the parameters ``op.fn`` reads (``op.select_params`` applied).
      payload: per-lane payloads, leaves ``[L, ...]``, or ``None``; for a
        stochastic op the payload with the nodes' identities
        (:func:`~edbatch_jax.engine.randomness.with_node_identity`).
      gathered: per operand position the operand states, leaves ``[L, ...]``;
        for a variadic op one entry, leaves ``[E, ...]`` (every argument of
        every lane).
      segments: variadic ops: int32 ``[E]``, the lane of every gathered row
        (``L`` for padding rows, dropped); otherwise ``None``.
      mask: bool ``[L]``, the real (not padding) lanes; its length is the lane
        count ``L``.
      live: bool ``[L]`` or ``None``: the lanes whose inputs are used as
        they are (the others get the first live lane's).
      rng: the step key of a stochastic op (each lane's key derived from it
        and the node's identity: :func:`~edbatch_jax.engine.randomness.node_key`),
        or ``None`` (``key=None``: deterministic).

    Returns:
      The lanes' output states, leaves ``[L, ...]``.
    """
    lanes = mask.shape[0]
    ctx = None
    if op.context:  # params is (the op's params, the whole Context): see Op.select_params
        params, ctx = params
    identity = None
    if op.stochastic or op.context:
        payload, identity = split_identity(payload)
    if op.variadic:
        with scope("aggregate"):  # the op's edge function inside it is named as the op
            gathered = (reduce_arguments(op, params, payload, gathered[0], segments, lanes, live, ctx, identity),)
    if live is not None:
        payload, gathered, identity = guard_lanes((payload, tuple(gathered), identity), live)
    per_lane = {}  # what each lane's call gets besides payload and operands, leaves [L, ...]
    if op.stochastic and rng is not None:
        per_lane["key"] = jax.vmap(lambda i: node_key(rng, i))(identity)
    if ctx is not None and ctx.instance is not None:
        per_lane["instance"] = instance_rows(ctx.instance, identity)

    def call(p, lane, *xs):
        context = None if ctx is None else Context(ctx.call, lane.get("instance"))
        return op.call(params, p, *xs, key=lane.get("key"), context=context)

    if not jax.tree.leaves([payload, per_lane, *gathered]):  # nothing varies across lanes: compute once, broadcast
        y = call(payload, per_lane, *gathered)
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (lanes,) + a.shape), y)
    return jax.vmap(call)(payload, per_lane, *gathered)


def instance_rows(instance: PyTree, identity) -> PyTree:
    """Each lane's row of a per-instance context (leaves ``[I, ...]``), by the lanes' node identities (int32
    ``[L, 2]``); leaves ``[L, ...]``; jittable (its gradient is a scatter-add into the instances' rows)."""
    return jax.tree.map(lambda a: jnp.take(a, identity[:, 0], axis=0), instance)


def reduce_arguments(
    op: Op,
    params: PyTree,
    payload: PyTree,
    x: PyTree,
    segments,
    lanes: int,
    live=None,
    ctx: Context | None = None,
    identity=None,
) -> PyTree:
    """A variadic op's combined operand per lane: its ``edge`` messages (if any) reduced by ``op.aggregate``;
    jittable.

    Args:
      op: a variadic :class:`~edbatch_jax.engine.ops.Op`.
      params: the parameters ``op.fn`` (and ``op.edge``) read.
      payload: per-lane payloads, leaves ``[L, ...]``, or ``None``.
      x: every argument's state, leaves ``[E, ...]``.
      segments: int32 ``[E]``, the lane of every argument (``L`` for padding
        rows, dropped).
      lanes: the lane count ``L`` (static).
      live: bool ``[L]`` or ``None``: with it, the edge function of an
        argument of a lane outside ``live`` (and of a padding row) runs on
        the first live argument's inputs, gradient stopped
        (:func:`guard_lanes`).
      ctx: an op reading context: the :class:`~edbatch_jax.engine.ops.Context`
        (per-instance leaves ``[I, ...]``), else ``None``.
      identity: int32 ``[L, 2]``, the lanes' node identities (with ``ctx``).

    Returns:
      The combined operand per lane, leaves ``[L, ...]`` (zeros for lanes
      without arguments).
    """
    lane = jnp.minimum(segments, lanes - 1)
    real = segments < lanes
    if op.edge is not None:
        take = lambda t: None if t is None else jax.tree.map(lambda a: jnp.take(a, lane, axis=0), t)
        edge_payload, edge_identity = take(payload), take(identity)
        if live is not None:
            edge_payload, x, edge_identity = guard_lanes((edge_payload, x, edge_identity), real & live[lane])
        rows = None if ctx is None or ctx.instance is None else instance_rows(ctx.instance, edge_identity)

        def edge(p, o, row):
            return op.call_edge(params, p, o, None if ctx is None else Context(ctx.call, row))

        x = jax.vmap(edge)(edge_payload, x, rows)
    count = jax.ops.segment_sum(real.astype(jnp.float32), segments, num_segments=lanes)
    per_row = lambda v, a: v.reshape((-1,) + (1,) * (a.ndim - 1)).astype(a.dtype)  # [R] against a leaf [R, ...]
    if op.aggregate == "softmax":
        score, value = x
        top = jax.ops.segment_max(jax.lax.stop_gradient(score), segments, num_segments=lanes)
        top = jnp.where(jnp.isfinite(top), top, jnp.zeros_like(top))
        weight = jnp.where(real, jnp.exp(score - top[lane]), jnp.zeros_like(score))
        total = jax.ops.segment_sum(weight, segments, num_segments=lanes)
        agg = jax.tree.map(
            lambda a: (
                jax.ops.segment_sum(a * per_row(weight, a), segments, num_segments=lanes)
                / per_row(jnp.where(total > 0, total, jnp.ones_like(total)), a)
            ),
            value,
        )
    elif op.aggregate == "max":
        agg = jax.tree.map(lambda a: jax.ops.segment_max(a, segments, num_segments=lanes), x)
    else:
        agg = jax.tree.map(lambda a: jax.ops.segment_sum(a, segments, num_segments=lanes), x)
        if op.aggregate == "mean":
            agg = jax.tree.map(lambda a: a / per_row(jnp.maximum(count, 1), a), agg)
    return mask_rows(agg, count > 0)  # empty (padding) lanes: keep them finite so that masked gradients stay exact


# ------------------------------------------------------------------ lanes that must not poison gradients
@in_scope("lanes")
def lanes_with_cotangent(mask, ct: PyTree):
    """bool ``[L]``: the real lanes (``mask``, bool ``[L]``) whose output cotangent (leaves ``[L, ...]``) is not
    all zero (a NaN counts as not zero); jittable."""
    lanes = mask.shape[0]
    live = jnp.zeros((lanes,), bool)
    for leaf in jax.tree.leaves(ct):
        if leaf.dtype == jax.dtypes.float0 or leaf.size == 0:
            continue
        live = live | jnp.any(leaf.reshape(lanes, -1) != 0, axis=1)
    return live & mask


@in_scope("lanes")
def guard_lanes(tree: PyTree, live) -> PyTree:
    """``tree`` (leaves ``[L, ...]``) with the rows of lanes outside ``live`` (bool ``[L]``) replaced by the first
    live lane's row, its gradient stopped; jittable.

    A replaced lane then computes on finite values a real lane computed on,
    and ``jnp.where`` hands its own row an exact zero cotangent (no ``0 * NaN``).
    With no live lane every row is replaced by row 0 (the caller discards
    the gradients then: :func:`zero_unless`).
    """
    src = jnp.argmax(live)

    def one(a):
        if a.ndim == 0:
            return a
        stand_in = jax.lax.stop_gradient(jax.lax.dynamic_index_in_dim(a, src, 0, keepdims=True))
        return jnp.where(live.reshape((-1,) + (1,) * (a.ndim - 1)), a, stand_in)

    return jax.tree.map(one, tree)


@in_scope("lanes")
def zero_unless(flag, tree: PyTree) -> PyTree:
    """``tree`` where ``flag`` (bool scalar), else zeros of its shapes and dtypes (exact, even for NaN); jittable."""
    return jax.tree.map(lambda a: jnp.where(flag, a, jnp.zeros_like(a)), tree)


# ------------------------------------------------------------------ gradients
def instantiate_zeros(ct: PyTree) -> PyTree | None:
    """A custom-VJP cotangent with symbolic zeros: ``None`` if all of it is zero, else arrays (the symbolic zeros
    made zero arrays of their shapes and dtypes); jittable."""
    is_zero = lambda x: isinstance(x, SymbolicZero)
    leaves = jax.tree.leaves(ct, is_leaf=is_zero)
    if all(is_zero(x) for x in leaves):
        return None
    return jax.tree.map(lambda x: jnp.zeros(x.aval.shape, x.aval.dtype) if is_zero(x) else x, ct, is_leaf=is_zero)


def _path_head(path) -> Any:
    """The first key of a pytree path (dict key, attribute name or index)."""
    k = path[0]
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return k


def assemble_grads(params: PyTree, grads: dict) -> PyTree:
    """The gradient pytree of ``params`` from per-``params_key`` accumulators; jittable.

    Leaves are matched by path, so any mapping container works (dicts,
    ``flax.nnx.State``).

    Args:
      params: the parameter pytree.
      grads: ``params_key`` -> gradient accumulator (emptied: its entries are
        popped or read). ``grads[None]`` (ops reading all of ``params``) has
        the structure of ``params``; ``grads[key]`` that of ``params[key]``.

    Returns:
      The summed gradients, with the structure, shapes and dtypes of ``params``.
      Given :class:`~edbatch_jax.engine.ops.EngineInputs`, an ``EngineInputs``
      of the parameters' and the context's gradients (the accumulators of
      ops reading context, :attr:`Op.grad_key`, hold both).

    Raises:
      OpError: an accumulator's leaves do not match its parameters'.
    """
    if isinstance(params, EngineInputs):
        plain: dict = {}
        context = None
        for key, g in grads.items():
            if isinstance(key, tuple):  # an op reading context: (its params' gradient, the Context's)
                key, (g, g_context) = key[0], g
                context = g_context if context is None else jax.tree.map(jnp.add, context, g_context)
            plain[key] = g if key not in plain else jax.tree.map(jnp.add, plain[key], g)
        grads.clear()
        if context is None:
            context = jax.tree.map(jnp.zeros_like, params.context)
        return EngineInputs(assemble_grads(params.params, plain), context)
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    total = grads.pop(None, None)
    out = jax.tree.leaves(total) if total is not None else [jnp.zeros_like(x) for _, x in with_path]
    heads = [_path_head(p) if p else None for p, _ in with_path]
    for key, g in grads.items():
        idx = [i for i, h in enumerate(heads) if h == key]
        leaves = jax.tree.leaves(g)
        if len(idx) != len(leaves):
            raise OpError(f"gradient of params[{key!r}] has {len(leaves)} leaves, the parameters {len(idx)}")
        for i, leaf in zip(idx, leaves):
            out[i] = out[i] + leaf
    return jax.tree.unflatten(treedef, out)


# ------------------------------------------------------------------ precompilation
def placement(tree: PyTree) -> tuple | None:
    """``(committed, devices)`` of the first array of ``tree``; host-side.

    ``None`` for a tracer, a ``jax.ShapeDtypeStruct`` or no array. Arrays
    placed otherwise (another device, or committed where these are not) are
    another kind of program input, for which XLA would compile the program
    again.
    """
    leaf = next(iter(jax.tree.leaves(tree)), None)
    if not isinstance(leaf, jax.Array) or isinstance(leaf, jax.core.Tracer):
        return None
    return leaf.committed, tuple(leaf.devices())


def compile_once(done: set, fn, *args, tag: Any = None) -> int:
    """Compiles jitted ``fn`` for ``args`` without running it, unless ``done`` says it was; host-side.

    The compiled program is the one a later call with such arguments runs
    (jit keeps it).

    Args:
      done: the keys compiled so far (function, argument types, placement,
        ``tag``); updated.
      fn: a jitted function (has ``lower``).
      *args: its arguments: arrays or ``jax.ShapeDtypeStruct`` leaves.
      tag: the values of ``fn``'s static arguments, if any.

    Returns:
      The number of programs compiled (0 or 1).
    """
    leaves, treedef = jax.tree.flatten(args)
    key = (id(fn), tag, treedef, tuple((np.shape(x), jnp.result_type(x), placement(x)) for x in leaves))
    if key in done:
        return 0
    fn.lower(*args).compile()
    done.add(key)
    return 1


def check_cotangents(plan: ExecutionPlan, cotangents: Sequence[bool] | None) -> None:
    """Refuses a cotangent mask (one bool per state buffer of ``plan``, for precompilation) of the wrong length.

    Raises:
      ValueError: ``cotangents`` is not ``None`` and its length differs from
        the plan's buffer count.
    """
    if cotangents is not None and len(cotangents) != len(plan.signatures):
        raise ValueError(f"cotangents has {len(cotangents)} entries for a plan of {len(plan.signatures)} state buffers")


# ------------------------------------------------------------------ outputs
def output_nodes(plan: ExecutionPlan, graph: Graph, outputs: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """Checks requested output node ids against a plan: they exist and share one buffer; host-side.

    Args:
      plan: a plan of ``graph``.
      graph: the (batched) graph.
      outputs: node ids (int ``[K]``), or ``None`` for every node.

    Returns:
      The node ids, int ``[K]``.

    Raises:
      OpError: the outputs mix state structures (buffers).
    """
    nodes = check_node_ids(graph, outputs)
    which = np.unique(plan.node_buffer[nodes])
    if which.size > 1:
        v1 = nodes[plan.node_buffer[nodes] == which[0]][0]
        v2 = nodes[plan.node_buffer[nodes] == which[1]][0]
        raise OpError(
            f"outputs mix state structures: node {v1} ({graph.op_types[graph.node_type[v1]]!r}) and node {v2} "
            f"({graph.op_types[graph.node_type[v2]]!r}); request them separately"
        )
    return nodes
