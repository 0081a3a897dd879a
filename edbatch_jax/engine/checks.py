"""Opt-in checks of what only a run can show: non-finite states and gradients, rows out of range.

Turned on by ``checks=True`` on an engine (:class:`~edbatch_jax.engine.base.Engine`)
or ``eb.run(..., checks=True)``; off by default, since they read every state
back to the host. They say where a NaN or an inf first appears:

* :func:`check_plan_rows`: every row a plan reads or writes lies inside its
  buffer (host NumPy, once per plan);
* :func:`check_finite_states`: after a forward pass, the first node in
  schedule order whose state holds a NaN or an inf, its op type, instance,
  and whether its arguments and payload were finite (then the op made the
  value) or not;
* :func:`check_finite_grads`: a parameter gradient holding a NaN or an inf,
  named by its path in the parameter pytree.

Each raises :class:`NonFiniteError` (or ``RowRangeError``) naming the
culprit. With concrete arrays they run at once; under a trace (``jax.jit``,
``jax.grad``) the engine runs them through ``jax.debug.callback``, so the
error surfaces when the program runs (wrapped in JAX's runtime error, with
this message). Not jittable themselves: host-side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.errors import EdbatchError
from edbatch_jax.graph import Graph

if TYPE_CHECKING:
    from edbatch_jax.engine.stepwise import ExecutionPlan

PyTree = Any

__all__ = [
    "NonFiniteError",
    "RowRangeError",
    "check_finite_grads",
    "check_finite_states",
    "check_plan_rows",
    "finite_rows",
]


class NonFiniteError(EdbatchError):
    """A state or gradient holds a NaN or an inf (raised only when checks are on)."""


class RowRangeError(EdbatchError):
    """A plan reads or writes a row outside its buffer (raised only when checks are on)."""


def finite_rows(bufs: Sequence[PyTree]) -> tuple[jax.Array, ...]:
    """bool ``[capacity]`` per buffer: whether every leaf of that row is finite (integer leaves always are);
    jittable."""
    out = []
    for buf in bufs:
        leaves = [a for a in jax.tree.leaves(buf) if jnp.issubdtype(a.dtype, jnp.inexact)]
        rows = jax.tree.leaves(buf)[0].shape[0]
        ok = jnp.ones((rows,), bool)
        for a in leaves:
            ok = ok & jnp.all(jnp.isfinite(a.reshape(rows, -1)), axis=1)
        out.append(ok)
    return tuple(out)


def _describe(graph: Graph, v: int) -> str:
    return f"node {v} (op {graph.op_types[graph.node_type[v]]!r}, instance {int(graph.instance[v])})"


def _payload_finite(graph: Graph, v: int) -> bool:
    payload = graph.payload(v)
    return all(np.isfinite(a).all() for a in jax.tree.leaves(payload) if np.issubdtype(np.asarray(a).dtype, np.inexact))


def check_finite_states(plan: ExecutionPlan, graph: Graph, order: np.ndarray, finite: Sequence) -> None:
    """Raises :class:`NonFiniteError` naming the first node of ``order`` whose state is not finite.

    Args:
      plan: the plan that ran (its ``node_buffer`` / ``node_slot``).
      graph: its graph.
      order: int ``[N]``, the nodes in the order they ran (the schedule's ``node_order``).
      finite: per buffer, bool ``[capacity]`` (:func:`finite_rows`), host or device arrays.
    """
    finite = [np.asarray(f) for f in finite]
    ok = np.ones(graph.num_nodes, bool)
    for b, f in enumerate(finite):
        sel = plan.node_buffer == b
        ok[sel] = f[plan.node_slot[sel]]
    bad_in_order = np.flatnonzero(~ok[order])
    if not bad_in_order.size:
        return
    v = int(order[bad_in_order[0]])
    count = int((~ok).sum())
    args = graph.args(v)
    bad_args = [int(a) for a in args if not ok[a]]
    where = _describe(graph, v)
    if bad_args:  # cannot happen in schedule order, but say it plainly if it does
        cause = f"its argument(s) {bad_args} were already non-finite"
    elif not _payload_finite(graph, v):
        cause = "its payload holds a NaN or an inf"
    else:
        cause = f"its arguments {args.tolist()} and payload were finite, so the op computed it"
    raise NonFiniteError(
        f"{where} has a NaN or an inf in its state, the first in schedule order ({count} node(s) in all): {cause}"
    )


def check_finite_grads(grads: PyTree) -> None:
    """Raises :class:`NonFiniteError` naming the first parameter (by pytree path) whose gradient is not finite."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
        a = np.asarray(leaf)
        if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
            raise NonFiniteError(
                f"the gradient of parameter {jax.tree_util.keystr(path) or '(root)'} holds "
                f"{int(np.isnan(a).sum())} NaN and {int(np.isinf(a).sum())} inf of {a.size} entries"
            )


def check_plan_rows(plan: ExecutionPlan) -> None:
    """Raises :class:`RowRangeError` if a batch of ``plan`` reads or writes a row outside its buffer (host)."""
    rows, caps = plan.rows, np.asarray(plan.capacities, np.int64)
    node_bad = (plan.node_slot < 0) | (plan.node_slot >= caps[plan.node_buffer])
    if node_bad.any():
        v = int(np.flatnonzero(node_bad)[0])
        raise RowRangeError(
            f"node {v}'s row {int(plan.node_slot[v])} is outside buffer {int(plan.node_buffer[v])} "
            f"of {int(caps[plan.node_buffer[v]])} rows"
        )
    end = rows.offset + rows.lanes
    over = np.flatnonzero((rows.offset < 0) | (end > caps[rows.out_buffer]))
    if over.size:
        b = int(over[0])
        raise RowRangeError(
            f"batch {b} writes rows {int(rows.offset[b])}..{int(end[b]) - 1} of buffer {int(rows.out_buffer[b])}, "
            f"which has {int(caps[rows.out_buffer[b]])} rows"
        )
    if rows.edge_rows.size:
        group_of_edge = _edge_groups(rows)
        buf = rows.group_buffer[group_of_edge]
        bad = np.flatnonzero((rows.edge_rows < 0) | (rows.edge_rows >= caps[buf]))
        if bad.size:
            e = int(bad[0])
            b = int(np.searchsorted(rows.edge_ptr, e, side="right") - 1)
            raise RowRangeError(
                f"batch {b} reads row {int(rows.edge_rows[e])} of buffer {int(buf[e])}, which has "
                f"{int(caps[buf[e]])} rows"
            )


def _edge_groups(rows) -> np.ndarray:
    """int ``[E]``: the operand group of every operand row (fixed arity: one group per position; variable: one)."""
    batch = np.repeat(np.arange(rows.num_batches), np.diff(rows.edge_ptr))
    within = np.arange(rows.edge_rows.size) - rows.edge_ptr[batch]
    t = rows.batch_type[batch]
    arity = np.maximum(rows.arity[t], 1)
    pos = np.where(rows.variadic[t], 0, within % arity)
    return rows.group_ptr[batch] + pos
