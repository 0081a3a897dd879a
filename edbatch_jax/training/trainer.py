"""Training and evaluation of graph models whose losses are ``loss`` nodes.

A model's graph carries one ``loss`` node per supervised node; its state is
``{"loss": f32[], "logits": f32[C]}``. The objective of a mini-batch is the
sum of its loss-node losses divided by the number of instances.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edbatch_jax.engine.base import Engine, PendingGrads
from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.common import buffer_structs, compile_once, in_scope, output_nodes, sum_rows
from edbatch_jax.engine.fused import FusedEngine
from edbatch_jax.engine.reference import run_unbatched
from edbatch_jax.engine.stepwise import StepwiseEngine
from edbatch_jax.training.minibatch import MiniBatch, plan_ahead

PyTree = Any

__all__ = [
    "ENGINES",
    "make_engine",
    "batched_loss",
    "loss_and_grads",
    "unbatched_loss",
    "Trainer",
    "root_accuracy",
]


ENGINES = ("fused", "fused_fine", "fused_recompute", "fused_fine_recompute", "stepwise")
"""``fused``: :class:`edbatch_jax.FusedEngine`, one XLA program per schedule
(training stores the outputs of matrix products for the backward program);
``fused_fine``: the same with the finer lane ladder (``fine_lanes=True``);
``..._recompute``: the same storing nothing (``save_residuals=None``: the
backward program recomputes each chunk); ``stepwise``:
:class:`edbatch_jax.StepwiseEngine`, one jitted call per batch."""


_fold_in = jax.jit(jax.random.fold_in)
"""``jax.random.fold_in`` as one compiled call (the same key; eager, it dispatches several operations)."""


def make_engine(name: str, ops, max_lanes: int = 512, plan_cache_size: int = 16, checks: bool = False) -> Engine:
    """An engine by name (see :data:`ENGINES`); ``max_lanes``: the fused engine's widest chunk;
    ``plan_cache_size``: execution plans kept (one per mini-batch in use); ``checks``: the engine's debug
    checks (non-finite states and gradients named by node, rows outside their buffers; see
    :class:`~edbatch_jax.Engine`)."""
    if name in ENGINES and name.startswith("fused"):
        kwargs = {"save_residuals": None} if name.endswith("_recompute") else {}
        return FusedEngine(
            ops,
            max_lanes=max_lanes,
            plan_cache_size=plan_cache_size,
            fine_lanes=name.startswith("fused_fine"),
            checks=checks,
            **kwargs,
        )
    if name == "stepwise":
        return StepwiseEngine(ops, plan_cache_size=plan_cache_size, checks=checks)
    raise ValueError(f"unknown engine {name!r}; choose from {ENGINES}")


def batched_loss(
    engine: Engine,
    params: PyTree,
    batch: MiniBatch,
    count: int | None = None,
    *,
    context: PyTree = None,
    instance_context: PyTree = None,
) -> jax.Array:
    """Mean per-instance loss of ``batch`` through the batched engine (f32 scalar).

    ``count``: the divisor of the summed loss (default: ``batch``'s instances;
    see :func:`loss_and_grads`). ``context``, ``instance_context``: the
    context of ops reading it (:meth:`~edbatch_jax.Engine.execute`).
    """
    out = engine.run(
        params,
        batch.graph,
        batch.schedule,
        outputs=batch.loss_nodes,
        layout=batch.layout,
        reduce="sum",
        context=context,
        instance_context=instance_context,
    )
    return out["loss"] / (batch.graph.num_instances if count is None else count)


@functools.partial(jax.jit, static_argnums=1)
@in_scope("update")
def _loss_grad(bufs: tuple, which: int, idx, mask, count):
    """:func:`batched_loss` from the state buffers and its cotangent (``None`` for the buffers it does not read)."""
    loss, ct = jax.value_and_grad(lambda b: sum_rows(b, idx, mask)["loss"] / count)(bufs[which])
    return loss, tuple(ct if b == which else None for b in range(len(bufs)))


def loss_and_grads(
    engine: Engine,
    params: PyTree,
    batch: MiniBatch,
    count: int | None = None,
    rng: jax.Array | None = None,
    *,
    context: PyTree = None,
    instance_context: PyTree = None,
    context_grads: bool = False,
) -> tuple[jax.Array, PyTree]:
    """:func:`batched_loss` of ``batch`` and its gradient w.r.t. ``params``.

    The engine's forward program, one jitted call for the loss and its
    cotangent, then the engine's backward program
    (:meth:`~edbatch_jax.Engine.value_and_grad`): the same values as
    ``jax.value_and_grad`` over :func:`batched_loss`, without tracing the
    schedule's autodiff in Python each step. Dispatched asynchronously
    (nothing waits for the device); not jittable.

    Args:
      engine: the engine that runs ``batch``.
      params: the parameter pytree (concrete arrays).
      batch: the mini-batch.
      count: the divisor of the summed loss (default: ``batch``'s instances;
        a shard of a larger mini-batch passes the mini-batch's instances, so
        that the shards' losses and gradients add up to the whole one's).
      rng: the step key of stochastic ops (dropout), or ``None``
        (deterministic).
      context: the per-call context of ops reading context, or ``None``.
      instance_context: the per-instance context (leaves ``[I, ...]``, one
        row per instance of ``batch``), or ``None``.
      context_grads: also return the context's gradients.

    Returns:
      ``(loss, grads)``: an f32 scalar and a pytree like ``params``; with
      ``context_grads``, ``(loss, (grads, eb.Context of the context's
      gradients))``.
    """
    ctx = {"context": context, "instance_context": instance_context}
    plan = engine.plan(params, batch.graph, batch.schedule, batch.layout, **ctx)
    which, args = _loss_args(plan, batch, count)
    return engine.value_and_grad(
        plan, params, lambda bufs: _loss_grad(bufs, which, *args), rng=rng, context_grads=context_grads, **ctx
    )


def _loss_args(plan, batch: MiniBatch, count: int | None) -> tuple[int, tuple]:
    """``(which, (idx, mask, count))`` of :func:`_loss_grad` for ``batch`` under ``plan``: the buffer of the loss
    nodes, their rows (int32, bucketed), which of those are real, and the divisor of the summed loss."""
    nodes = output_nodes(plan, batch.graph, batch.loss_nodes)
    k = bucket(nodes.size)
    idx = np.zeros(k, np.int32)
    idx[: nodes.size] = plan.node_slot[nodes]
    count = np.float32(batch.graph.num_instances if count is None else count)
    return int(plan.node_buffer[nodes[0]]), (idx, np.arange(k) < nodes.size, count)


def unbatched_loss(ops, params: PyTree, batch: MiniBatch) -> jax.Array:
    """Same as :func:`batched_loss`, node by node."""
    out = run_unbatched(ops, params, batch.graph, outputs=batch.loss_nodes)
    return out["loss"].sum() / batch.graph.num_instances


def root_accuracy(logits: jax.Array, labels: np.ndarray) -> float:
    """Fraction of roots whose argmax logit equals the label."""
    return float(np.mean(np.asarray(jnp.argmax(logits, axis=-1)) == labels))


class Trainer:
    """optax training of a graph model through the batched engine.

    ``step(batch)`` computes the loss and gradients (the engine's forward
    program, one jitted call for the loss and its cotangent, the engine's
    backward program) and applies one jitted optax update.
    The trainer owns ``params``: updates donate the previous arrays, so keep a
    copy (``jax.tree.map(jnp.copy, params)``) if you need the initial values.

    Args:
      engine: the engine running the mini-batches.
      params: the initial parameters.
      optimizer: an optax optimizer.
      rng: a PRNG key for the stochastic ops (dropout): step ``i`` (counted
        from 0 by :attr:`steps`) runs with the step key ``fold_in(rng, i)``,
        so a run is reproducible from it; evaluation runs deterministic (no
        key). ``None``: training is deterministic too.

    Ops reading context get it per step: ``step(batch, context=...,
    instance_context=...)`` (and ``loss_and_grads``, ``evaluate``); the
    graphs stay as they are. The trainer updates ``params`` only; a context
    computed from trainable parameters is trained through
    :func:`loss_and_grads` with ``context_grads=True`` or ``jax.grad`` over
    :meth:`~edbatch_jax.Engine.run`.

    Attributes:
      steps: optimisation steps taken (the next step's key index).
    """

    def __init__(
        self,
        engine: Engine,
        params: PyTree,
        optimizer: optax.GradientTransformation,
        rng: jax.Array | None = None,
    ):
        self._pending: PendingGrads | None = None  # the last step's gradients, their finiteness test unread
        self.engine = engine
        self._params = params
        self.optimizer = optimizer
        self._opt_state = optimizer.init(params)
        self.rng = rng
        self.steps = 0

        @in_scope("update")
        def update(grads, opt_state, params):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        @in_scope("update")
        def update_if(finite, grads, opt_state, params):
            """The update where ``finite``; else the same parameters and optimizer state."""
            new_params, new_state = update(grads, opt_state, params)
            keep = lambda new, old: jnp.where(finite, new, old)
            return jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_state, opt_state)

        self._update = jax.jit(update, donate_argnums=(1, 2))
        self._update_if = jax.jit(update_if, donate_argnums=(2, 3))
        self._compiled: set = set()  # programs compiled ahead of time (precompile)

    @property
    def params(self) -> PyTree:
        """The current parameters (after every step taken)."""
        self._settle()
        return self._params

    @params.setter
    def params(self, value: PyTree) -> None:
        self._settle()
        self._params = value

    @property
    def opt_state(self) -> PyTree:
        """The optimizer's state (after every step taken)."""
        self._settle()
        return self._opt_state

    @opt_state.setter
    def opt_state(self, value: PyTree) -> None:
        self._settle()
        self._opt_state = value

    def _settle(self) -> None:
        """Completes the last step if its gradients' finiteness test failed: that step's update was not
        applied (:meth:`step`), so the isolating program's gradients are applied now. Reads the test (waits
        for the last backward program)."""
        pending, self._pending = self._pending, None
        if pending is not None and not bool(pending.finite):
            grads = pending.again(self._params)  # the parameters that step ran on: its update kept them
            self._params, self._opt_state = self._update(grads, self._opt_state, self._params)

    def step_key(self, step: int) -> jax.Array | None:
        """The step key of step ``step`` (``fold_in(rng, step)``, one compiled call), or ``None`` without ``rng``."""
        return None if self.rng is None else _fold_in(self.rng, step)

    def _next_key(self) -> jax.Array | None:
        """The next step's key for the engine, or ``None`` when no op of the engine draws (the engine would drop
        it: a key changes no value there)."""
        return self.step_key(self.steps) if self.engine.draws else None

    def loss_and_grads(
        self, params: PyTree, batch: MiniBatch, *, context: PyTree = None, instance_context: PyTree = None
    ) -> tuple[jax.Array, PyTree]:
        """:func:`batched_loss` of ``batch`` and its gradient w.r.t. ``params`` (:func:`loss_and_grads`), with
        the next step's key."""
        return loss_and_grads(
            self.engine,
            params,
            batch,
            rng=self.step_key(self.steps),
            context=context,
            instance_context=instance_context,
        )

    def prepare(self, batch: MiniBatch) -> MiniBatch:
        """Builds (and caches) the engine's plan of ``batch`` now, e.g. inside :func:`plan_ahead`; returns ``batch``."""
        self.engine.plan(self._params, batch.graph, batch.schedule, batch.layout)
        return batch

    def precompile(self, batches: Sequence[MiniBatch]) -> int:
        """Compiles a training step's programs for every one of ``batches`` before the first step.

        Plans all of them first (the plans stay cached if the engine's plan
        cache holds them all), so that the engine's buffer capacities and
        table lengths reach their final sizes, then compiles, ahead of time
        and without running anything, the engine's forward and backward
        programs (:meth:`~edbatch_jax.Engine.precompile`), the loss and
        cotangent program of each loss-node count bucket and the optimizer
        update. Steps on these mini-batches then compile nothing, where
        without it the first steps compile, and a later step compiles again
        when its mini-batch is the first to grow a capacity. Host-side; not
        jittable.

        Returns:
          The number of programs compiled.
        """
        if not batches:
            raise ValueError("precompile: no mini-batches given")
        plans = [self.engine.plan(self.params, b.graph, b.schedule, b.layout) for b in batches]
        compiled = 0
        for batch, plan in zip(batches, plans):
            which, args = _loss_args(plan, batch, None)
            cotangents = [b == which for b in range(len(plan.signatures))]
            compiled += self.engine.precompile(self.params, plan, cotangents, rng=self.step_key(0))
            compiled += compile_once(self._compiled, _loss_grad, buffer_structs(plan), which, *args, tag=which)
        return compiled + self._precompile_update()

    def _precompile_update(self) -> int:
        """Compiles the program(s) that apply a step's gradients (here the optax update); returns how many."""
        compiled = compile_once(self._compiled, self._update, self._params, self._opt_state, self._params)
        if self.engine.defers_gradient_test:  # its steps' updates wait on a test on the device
            finite = jax.ShapeDtypeStruct((), jnp.bool_)
            compiled += compile_once(
                self._compiled, self._update_if, finite, self._params, self._opt_state, self._params
            )
        return compiled

    def step(self, batch: MiniBatch, *, context: PyTree = None, instance_context: PyTree = None) -> float:
        """One optimisation step on ``batch`` (with the context of ops reading it); returns the loss (a host
        float: waits for the forward pass, not for the backward pass and the update).

        The host's work for the step (the engine's plan, the loss rows) is done
        before it waits for the previous step's backward program; the fused
        engine's test of the gradients (:class:`~edbatch_jax.engine.base.PendingGrads`)
        is read then, or when :attr:`params` or :attr:`opt_state` is read, so
        that the host prepares the next step while the device runs this one.
        """
        ctx = {"context": context, "instance_context": instance_context}
        plan = self.engine.plan(self._params, batch.graph, batch.schedule, batch.layout, **ctx)
        which, args = _loss_args(plan, batch, None)
        key = self._next_key()  # (all the step's host work before the wait: the device idles from there on)
        self._settle()
        loss, grads = self.engine.value_and_grad(
            plan,
            self._params,
            lambda bufs: _loss_grad(bufs, which, *args),
            rng=key,
            pending=True,
            **ctx,
        )
        if isinstance(grads, PendingGrads):  # applied on the device if finite; else completed by _settle
            self._params, self._opt_state = self._update_if(grads.finite, grads.grads, self._opt_state, self._params)
            self._pending = grads
        else:
            self._params, self._opt_state = self._update(grads, self._opt_state, self._params)
        self.steps += 1
        return float(loss)

    def fit(self, items: Iterable[Any], build: Callable[[Any], MiniBatch], *, overlap: bool = True) -> list[float]:
        """One :meth:`step` per item, on the mini-batch ``build(item)`` made for it; returns the losses.

        The loop of a model whose mini-batches are built every step (shuffled
        instances, graphs built as DyNet builds them). With ``overlap`` (the
        default) the host's work on the next mini-batch runs while the device
        runs the current step (:func:`~edbatch_jax.training.minibatch.plan_ahead`):
        ``build`` (graph construction, scheduling, layout; it must not use
        the engine) on a worker thread one item ahead, the engine's plan
        (:meth:`prepare`) on the calling thread. ``overlap=False`` builds and
        plans each mini-batch before its step. Both take the same steps, so
        they give the same parameters. Host-side loop; each step as
        :meth:`step`.

        Args:
          items: what one mini-batch is made of (e.g. lists of instances),
            drawn on the calling thread.
          build: ``item -> MiniBatch`` (e.g. ``lambda xs: resolve_layout("planned",
            make_minibatch(batch_graph(xs), policy), variadic)``).
          overlap: plan the next mini-batch while the current step runs.

        Raises:
          TypeError: ``build`` returned something other than a ``MiniBatch``
            (naming the item's position).
        """
        position = iter(range(1 << 62))

        def prepare(batch: MiniBatch) -> MiniBatch:
            k = next(position)
            if not isinstance(batch, MiniBatch):
                raise TypeError(
                    f"Trainer.fit: build(item {k}) returned a {type(batch).__name__}, expected an "
                    "edbatch_jax.training.MiniBatch (make_minibatch(graph, policy))"
                )
            return self.prepare(batch)

        if overlap:
            batches = plan_ahead(items, prepare, background=build)
        else:
            batches = (prepare(build(item)) for item in items)
        return [self.step(batch) for batch in batches]

    def evaluate(
        self,
        batches: Sequence[MiniBatch],
        *,
        context: PyTree = None,
        instance_contexts: Sequence[PyTree] | None = None,
    ) -> dict:
        """Root accuracy and mean loss over ``batches`` (batched engine); ``instance_contexts``: one per-instance
        context per mini-batch (ops reading context), or ``None``."""
        if instance_contexts is not None and len(instance_contexts) != len(batches):
            raise ValueError(f"{len(instance_contexts)} instance contexts for {len(batches)} mini-batches")
        correct = total = 0
        losses = []
        for i, b in enumerate(batches):
            ctx = {"context": context, "instance_context": None if instance_contexts is None else instance_contexts[i]}
            out = self.engine.run(self.params, b.graph, b.schedule, outputs=b.root_nodes, **ctx)
            pred = np.asarray(jnp.argmax(out["logits"], axis=-1))
            correct += int((pred == b.root_labels).sum())
            total += b.root_labels.size
            losses.append(float(batched_loss(self.engine, self.params, b, **ctx)))
        return {"root_accuracy": correct / max(total, 1), "loss": float(np.mean(losses))}


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Seconds per call of ``fn`` (results blocked on), after ``warmup`` untimed calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / repeats
