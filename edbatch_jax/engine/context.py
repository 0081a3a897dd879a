"""Context of ops that read it: checked where it enters the engine.

An ``eb.Op(fn, context=True)`` is called ``fn(params, payload, *operands,
context=eb.Context(call, instance))``: ``call`` is the pytree given to the
engine as ``context=`` (shared by every node of the run) and ``instance``
its node's instance's row of the pytree given as ``instance_context=``
(leaves ``[I, ...]``, one row per instance of the batched graph). Both are
differentiable like ``params``: the engines run on
:class:`~edbatch_jax.engine.ops.EngineInputs` (params and context together)
and return their gradients in the same form. A node finds its row by its
identity, carried in its op's payload as for stochastic ops
(:mod:`edbatch_jax.engine.randomness`), so graphs are not rebuilt when the
context changes.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.engine.ops import Context, OpError

__all__ = ["check_context"]


def _where(path) -> str:
    return jax.tree_util.keystr(path) or "(the whole pytree)"


def _float_leaves(tree: Any, what: str) -> list:
    """``tree``'s leaves with their paths, each checked to be a float array (or scalar)."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        try:
            dtype = jnp.result_type(leaf)
        except TypeError:
            raise OpError(
                f"{what} leaf {_where(path)} is a {type(leaf).__name__}, not an array; context leaves are float arrays"
            ) from None
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise OpError(
                f"{what} leaf {_where(path)} has dtype {np.dtype(dtype)}; context is differentiated like params, "
                "so its leaves must be float arrays (integer data per node belongs in payloads)"
            )
        out.append((path, leaf))
    return out


def check_context(call: Any, instance: Any, num_instances: int) -> Context:
    """The :class:`~edbatch_jax.engine.ops.Context` of a run, its parts checked; host-side (works on tracers).

    Args:
      call: the per-call context (a pytree of float arrays) or ``None``.
      instance: the per-instance context (a pytree of float arrays with
        leaves ``[num_instances, ...]``) or ``None``.
      num_instances: the number of instances of the (batched) graph.

    Raises:
      OpError: a leaf is not a float array, or a per-instance leaf has no
        leading axis of ``num_instances`` rows (named by its path).
    """
    if isinstance(call, Context) or isinstance(instance, Context):
        raise OpError(
            "give the context's parts separately: context=<per-call pytree>, instance_context=<per-instance "
            "pytree>, not an eb.Context"
        )
    _float_leaves(call, "context")
    for path, leaf in _float_leaves(instance, "instance_context"):
        shape = jnp.shape(leaf)
        if not shape or shape[0] != num_instances:
            raise OpError(
                f"instance_context leaf {_where(path)} has shape {tuple(shape)}; it needs a leading axis of one row "
                f"per instance of the graph ({num_instances})"
            )
    if instance is not None and not jax.tree.leaves(instance):
        instance = None
    return Context(call, instance)
