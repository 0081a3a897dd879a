"""Randomness of stochastic ops: one PRNG key per node, from a per-step key and the node's identity.

An ``eb.Op(fn, stochastic=True)`` is called ``fn(params, payload,
*operands, key=k)``. With a step key ``rng`` given to the engine (``run``,
``execute``, ``value_and_grad``; ``Trainer`` passes a fresh one per step),
``k`` is ``fold_in(fold_in(rng, instance), position)``: ``instance`` is the
node's instance and ``position`` its index among its instance's nodes (in
node order) -- not its batch, lane or row -- so batched and unbatched
execution, every policy and every layout draw the same numbers, and a step
is reproducible from its key. Without a step key ``k`` is ``None``: the op
runs deterministically (evaluation; dropout off).

The engine carries a node's identity as part of its op's payload: for the
op types of stochastic ops (and of ops reading context, whose nodes read
their instance's row of the per-instance context), a plan's graph gets one payload row per node,
``{"node": int32[2] (instance, position), "payload": the node's own
payload}`` (:func:`with_node_identity`); :func:`split_identity` takes it
apart inside the batched call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.engine.ops import Op, OpError
from edbatch_jax.graph import Graph, mark_valid

__all__ = ["check_rng", "identity_types", "node_identity", "node_key", "split_identity", "with_node_identity"]

_NODE = "node"
_PAYLOAD = "payload"


def node_identity(graph: Graph) -> np.ndarray:
    """int32 ``[N, 2]``: every node's instance and its position among its instance's nodes (node order).

    Host-side, vectorised (a stable sort by instance).
    """
    instance = np.asarray(graph.instance, np.int64)
    order = np.argsort(instance, kind="stable")
    first = np.searchsorted(instance[order], instance[order], side="left")
    position = np.empty(graph.num_nodes, np.int64)
    position[order] = np.arange(graph.num_nodes) - first
    return np.stack([instance, position], axis=1).astype(np.int32)


def identity_types(graph: Graph, ops: Mapping[str, Op]) -> tuple[int, ...]:
    """The type ids of ``graph``'s op types whose nodes need their identity: stochastic ops (a key per node) and
    ops reading context (a row of the per-instance context per node)."""
    return tuple(
        t for t, name in enumerate(graph.op_types) if name in ops and (ops[name].stochastic or ops[name].context)
    )


def with_node_identity(graph: Graph, types: tuple[int, ...]) -> Graph:
    """``graph`` whose op types ``types`` carry their nodes' identity in their payloads; host-side, vectorised.

    Each such type gets one payload row per node, in node order:
    ``{"node": int32[2], "payload": the node's payload}`` (``"payload"``
    absent where the type had none). Structure and other payloads are
    unchanged (the schedule's fingerprint still matches).
    """
    if not types:
        return graph
    ident = node_identity(graph)
    payloads, payload_row = list(graph.payloads), np.array(graph.payload_row, np.int32, copy=True)
    for t in types:
        nodes = np.flatnonzero(graph.node_type == t)
        tree = {_NODE: ident[nodes]}
        if graph.payloads[t] is not None:
            rows = graph.payload_row[nodes]
            tree[_PAYLOAD] = jax.tree.map(lambda a: np.asarray(a)[rows], graph.payloads[t])
        payloads[t] = tree
        payload_row[nodes] = np.arange(nodes.size, dtype=np.int32)
    out = dataclasses.replace(graph, payloads=tuple(payloads), payload_row=payload_row)
    return mark_valid(out)


def split_identity(payload: Any) -> tuple[Any, Any]:
    """``(payload, identity)`` of a stochastic op's payload as :func:`with_node_identity` made it; jittable."""
    return payload.get(_PAYLOAD), payload[_NODE]


def node_key(rng: jax.Array, identity: jax.Array) -> jax.Array:
    """The PRNG key of one node: ``fold_in(fold_in(rng, instance), position)``; jittable.

    Args:
      rng: the step key (a raw ``uint32[2]`` key or a typed key).
      identity: int32 ``[2]``, the node's instance and position.
    """
    return jax.random.fold_in(jax.random.fold_in(rng, identity[0]), identity[1])


def check_rng(rng: Any) -> Any:
    """``rng`` if it is ``None`` or a single PRNG key (raw ``uint32[2]`` or typed); else :class:`OpError`."""
    if rng is None:
        return None
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) and rng.shape == ():
        return rng
    shape, dtype = np.shape(rng), getattr(rng, "dtype", None)
    if shape != (2,) or dtype is None or np.dtype(dtype) != np.uint32:
        raise OpError(
            f"rng must be one PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), got "
            f"{type(rng).__name__} of shape {shape} and dtype {dtype}"
        )
    return rng
