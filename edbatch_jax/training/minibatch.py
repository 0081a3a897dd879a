"""Mini-batches: a batched graph with its schedule, layout and loss nodes, built once on the host.

A model's graph carries one ``loss`` node per supervised node; its state is
``{"loss": f32[], "logits": f32[C]}``. :func:`plan_ahead` prepares the next
mini-batch while the device runs the current one. Host-side; nothing here is
jittable.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np

from edbatch_jax.graph import Graph, GraphError
from edbatch_jax.layout import plan_layout
from edbatch_jax.scheduling import Schedule
from edbatch_jax.scheduling import schedule as make_schedule

__all__ = [
    "MiniBatch",
    "make_minibatch",
    "node_labels",
    "plan_ahead",
    "resolve_layout",
    "root_loss_nodes",
    "variadic_ops",
]


@dataclasses.dataclass(frozen=True, eq=False)
class MiniBatch:
    """A batched graph with what training and evaluation need, built once on the host.

    Attributes:
      graph: the batched graph.
      schedule: its schedule under ``policy`` (``None`` for unbatched runs).
      policy: the policy name or object that made ``schedule``.
      loss_nodes: int32 ``[L]`` ids of all loss nodes.
      root_nodes: int32 ``[num_instances]`` the loss node of every instance's root.
      root_labels: int32 ``[num_instances]``.
      layout: the buffer layout passed to the engine (``None``, ``"gather"``
        or a :class:`~edbatch_jax.layout.LayoutPlan`).
    """

    graph: Graph
    schedule: Schedule | None
    policy: Any
    loss_nodes: np.ndarray
    root_nodes: np.ndarray
    root_labels: np.ndarray
    layout: Any = None


def root_loss_nodes(graph: Graph) -> np.ndarray:
    """int32 ``[num_instances]``: the last node of every instance (by convention its root's loss node)."""
    return np.flatnonzero(np.r_[graph.instance[1:] != graph.instance[:-1], True]).astype(np.int32)


def node_labels(graph: Graph, nodes: np.ndarray) -> np.ndarray:
    """int32 labels (the payloads) of the given ``loss`` nodes; ``-1`` for a node that is not a ``loss`` node,
    and for all of them when the ``loss`` op type's payloads are not integer labels (one per node)."""
    nodes = np.asarray(nodes, np.int64)
    labels = np.full(nodes.shape, -1, np.int32)
    t = graph.type_id("loss")
    payload = graph.payloads[t]
    if not (
        isinstance(payload, np.ndarray | jax.Array) and payload.ndim == 1 and np.issubdtype(payload.dtype, np.integer)
    ):
        return labels
    is_loss = graph.node_type[nodes] == t
    labels[is_loss] = np.asarray(payload)[graph.payload_row[nodes[is_loss]]]
    return labels


def make_minibatch(graph: Graph, policy: Any = "agenda") -> MiniBatch:
    """Schedules ``graph`` (unless ``policy`` is ``None``) and finds its loss nodes.

    The graph's ``loss`` nodes (op type ``"loss"``, a state with a ``"loss"``
    leaf) are what :func:`~edbatch_jax.training.batched_loss` and the
    :class:`~edbatch_jax.training.Trainer` sum; an instance's last node is
    taken as its root's loss node, and integer payloads of the ``loss`` nodes
    as their labels (``root_labels``; ``-1`` without them).

    Raises:
      GraphError: the graph has no ``loss`` op type.
    """
    if "loss" not in graph.op_types:
        raise GraphError(
            f"make_minibatch: this graph has no node of op type 'loss' (its op types are {list(graph.op_types)}); "
            "a MiniBatch's loss is the sum of the 'loss' leaves of its 'loss' nodes' states: add one per "
            "instance, e.g. builder.add('loss', root, payload=label)"
        )
    loss_nodes = graph.nodes_of_type("loss")
    roots = root_loss_nodes(graph)
    return MiniBatch(
        graph=graph,
        schedule=None if policy is None else make_schedule(graph, policy),
        policy=policy,
        loss_nodes=loss_nodes,
        root_nodes=roots,
        root_labels=node_labels(graph, roots),
    )


def variadic_ops(ops) -> set[str]:
    """Names of the variable-arity ops in an op mapping."""
    return {name for name, op in ops.items() if getattr(op, "variadic", False)}


def resolve_layout(name: str, batch: MiniBatch, variadic=None) -> MiniBatch:
    """``batch`` with the layout ``name``: ``"dynet"`` (rows in schedule order), ``"planned"`` or ``"gather"``."""
    if name == "planned":
        return dataclasses.replace(batch, layout=plan_layout(batch.graph, batch.schedule, variadic))
    if name not in ("dynet", "gather"):
        raise ValueError(f"unknown layout {name!r}; choose 'dynet', 'planned' or 'gather'")
    return dataclasses.replace(batch, layout="gather" if name == "gather" else None)


def plan_ahead(
    items: Iterable[Any], prepare: Callable[[Any], Any], background: Callable[[Any], Any] | None = None
) -> Iterator[Any]:
    """Yields ``prepare(item)`` for every item, preparing each item after the previous one was handed out.

    The preparation of item ``k + 1`` runs when the consumer asks for it,
    i.e. after it has dispatched its work on item ``k``. With JAX's
    asynchronous dispatch the host then plans the next mini-batch (graph
    construction, scheduling, layout, the engine's plan: put them in
    ``prepare``) while the device still executes the current one, so that
    planning every step costs little more than its share of the host's time::

        prepare = lambda xs: trainer.prepare(make_minibatch(build(xs), policy))
        for batch in plan_ahead(loader, prepare):
            trainer.step(batch)  # waits for the forward pass only

    With ``background``, the part of the preparation that touches no engine
    (graph construction, scheduling, layout) runs on a worker thread, one
    item ahead: ``background(item k + 1)`` starts when item ``k`` is handed
    out, so it also overlaps the calls that hold the calling thread until
    the device is done (the wait for a loss; on a GPU, the fused engine's
    loop), and ``prepare`` gets its result on the calling thread::

        build = lambda xs: make_minibatch(build_graph(xs), policy)
        for batch in plan_ahead(loader, trainer.prepare, background=build):
            trainer.step(batch)

    ``background`` must not use an engine (engines are not thread-safe) or
    anything else the consumer uses meanwhile; the items are drawn from
    ``items`` on the calling thread.

    The consumer should keep the device queue short (``Trainer.step``
    synchronises on each loss; in inference, wait for the previous result
    after dispatching the next). Host-side; not jittable. Exceptions from
    ``prepare`` or ``background`` propagate when the item is asked for.
    """
    it = iter(items)
    if background is None:
        for first in it:
            ready = prepare(first)
            for item in it:
                yield ready
                ready = prepare(item)
            yield ready
        return
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="edbatch-plan-ahead") as pool:
        pending = next((pool.submit(background, item) for item in it), None)
        while pending is not None:
            value = pending.result()
            pending = next((pool.submit(background, item) for item in it), None)  # the next one starts now
            yield prepare(value)
