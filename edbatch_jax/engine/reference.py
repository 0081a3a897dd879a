"""The unbatched reference executor: node by node, in topological order.

It is the ground truth the batched engine is tested against, and the
"no batching" baseline of the benchmarks. Each op's per-node function is
called once per node (jitted per op type when ``jit=True``, which changes
speed, not values).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.engine.context import check_context
from edbatch_jax.engine.ops import Context, Op, OpError, as_ops, check_graph_ops, check_payload_bounds
from edbatch_jax.engine.randomness import check_rng, node_identity, node_key
from edbatch_jax.graph import Graph, check_node_ids, validate_graph
from edbatch_jax.graph.analysis import topological_order

PyTree = Any

__all__ = ["run_unbatched"]


def _aggregate(kind: str, states: list) -> PyTree:
    if kind == "softmax":  # states: (score, value) per argument
        scores = jnp.stack([score for score, _ in states])
        weights = jax.nn.softmax(scores)
        return jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs)), *[value for _, value in states])
    if kind == "sum":
        return jax.tree.map(lambda *xs: functools.reduce(jnp.add, xs), *states)
    if kind == "mean":
        return jax.tree.map(lambda *xs: functools.reduce(jnp.add, xs) / len(xs), *states)
    return jax.tree.map(lambda *xs: functools.reduce(jnp.maximum, xs), *states)


def _call(op: Op, params, payload, key, context, *states):
    p = op.select_params(params)
    if op.variadic:
        if op.edge is not None:  # one edge call per argument, as written for one (node, argument) pair
            states = tuple(op.call_edge(p, payload, s, context) for s in states)
        return op.call(p, payload, _aggregate(op.aggregate, list(states)), key=key, context=context)
    return op.call(p, payload, *states, key=key, context=context)


@functools.lru_cache(maxsize=256)
def _jitted(op: Op):
    return jax.jit(functools.partial(_call, op))


def run_unbatched(
    ops: Mapping[str, Any],
    params: PyTree,
    graph: Graph,
    outputs: Sequence[int] | np.ndarray | None = None,
    *,
    jit: bool = True,
    rng: Any = None,
    context: PyTree = None,
    instance_context: PyTree = None,
) -> PyTree:
    """Runs every node alone and returns the stacked states of ``outputs``.

    Same contract as :func:`edbatch_jax.run` without a schedule: ``outputs``
    are node ids of one state structure (``None``: every node). Differentiable
    with ``jax.grad``. Slow by design: one call per node. A stochastic op's
    node gets the key ``fold_in(fold_in(rng, instance), position)``
    (:func:`~edbatch_jax.engine.randomness.node_key`), or ``None`` without
    ``rng``. An op reading context gets ``eb.Context(context, its instance's
    row of instance_context)``; differentiable w.r.t. both.
    """
    rng = check_rng(rng)
    validate_graph(graph)
    ops = as_ops(ops)
    if not any(op.context for op in ops.values()) and (context is not None or instance_context is not None):
        raise OpError("context was given, but no op reads it: declare the ops that do as eb.Op(fn, context=True)")
    ctx = check_context(context, instance_context, graph.num_instances)
    check_graph_ops(graph, ops)
    check_payload_bounds(graph, ops)  # as the engines do: an id out of range is an error, not a clamped row
    states: list = [None] * graph.num_nodes
    identity = node_identity(graph) if rng is not None else None
    for v in topological_order(graph):
        v = int(v)
        op = ops[graph.op_types[graph.node_type[v]]]
        args = [states[a] for a in graph.args(v)]
        payload = graph.payload(v)
        key = node_key(rng, identity[v]) if op.stochastic and rng is not None else None
        context = None
        if op.context:
            row = None if ctx.instance is None else jax.tree.map(lambda a: a[graph.instance[v]], ctx.instance)
            context = Context(ctx.call, row)
        states[v] = (_jitted(op) if jit else functools.partial(_call, op))(params, payload, key, context, *args)
    picked = [states[v] for v in check_node_ids(graph, outputs)]
    if not picked:  # no outputs: the states of none, leaves [0, ...] (of the first node's structure)
        return jax.tree.map(lambda x: jnp.zeros((0,) + jnp.shape(x), jnp.result_type(x)), states[0])
    return jax.tree.map(lambda *xs: jnp.stack(xs), *picked)
