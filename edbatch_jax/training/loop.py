"""Training any bundled workload with optax and orbax: the engine behind ``edbatch train``.

:func:`train` runs Adam with a warm-up + cosine learning-rate schedule over
shuffled mini-batches of the workload's training split (graphs, schedules and
layouts are built once and reused across epochs), evaluates on held-out
mini-batches after every epoch, logs metrics as JSON lines, and checkpoints
``(params, opt_state, step)`` with orbax. Checkpoints are written atomically
(orbax finalises a step directory only when complete); with ``resume=True`` a
run continues from the newest checkpoint and, on CPU with the same seed,
reaches exactly the parameters of an uninterrupted run: the mini-batch order
of every epoch is a pure function of ``(seed, epoch)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edbatch_jax.engine import Engine
from edbatch_jax.graph import Graph
from edbatch_jax.scheduling import Policy
from edbatch_jax.training.minibatch import MiniBatch, make_minibatch, resolve_layout, variadic_ops
from edbatch_jax.training.parallel import ShardedTrainer, make_shards, shard_devices
from edbatch_jax.training.trainer import Trainer, make_engine

__all__ = ["TrainConfig", "TrainResult", "TrainableModel", "TrainingWorkload", "evaluate_nodes", "train"]


class TrainableModel(Protocol):
    """What :func:`train` needs of a model: its ops and an initialiser."""

    @property
    def ops(self) -> Mapping[str, Any]:
        """Op type name -> op (:class:`~edbatch_jax.Op` or a per-node function)."""

    def init(self, rng: jax.Array) -> Any:
        """The parameter pytree for a PRNG key."""


class TrainingWorkload(Protocol):
    """What :func:`train` needs of a workload (a bundled :class:`edbatch_jax.zoo.workloads.Workload` is one).

    A model, instances split into training and held-out mini-batches, the
    graph of a list of instances, and policies by name.
    """

    model: TrainableModel
    batch_size: int
    source: str

    def batch_graph(self, instances: Sequence[Any]) -> Graph:
        """One batched graph of the given instances."""

    def minibatch_instances(
        self, split: str, batch_size: int | None = None, count: int | None = None, seed: int = 0
    ) -> list[list]:
        """The instances of every mini-batch of shuffled ``split`` (``"train"`` or ``"held_out"``)."""

    def minibatches(
        self, split: str, batch_size: int | None = None, count: int | None = None, seed: int = 0
    ) -> list[Graph]:
        """Batched graphs of shuffled ``split`` instances."""

    def resolve_policy(self, spec: str | Policy) -> str | Policy:
        """A policy for :func:`~edbatch_jax.schedule` from a name, a policy file or a policy."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run."""

    steps: int = 200
    batch_size: int | None = None
    lr: float = 5e-3
    warmup_steps: int = 20
    policy: str = "typewise"
    layout: str = "dynet"
    engine: str = "stepwise"
    eval_batches: int = 4
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    log_path: str | None = None
    seed: int = 0
    shards: int = 1  # > 1: every training mini-batch split over that many devices (edbatch_jax.training.parallel)
    precompile: bool = True  # compile the run's programs before the first step (Trainer.precompile; one device)


@dataclasses.dataclass
class TrainResult:
    """Final parameters and metrics."""

    params: dict
    step: int
    losses: list[float]
    evals: list[dict]
    resumed_from: int | None
    precompiled: int = 0  # programs compiled ahead of the first step
    precompile_s: float = 0.0


def evaluate_nodes(engine: Engine, params, batches: list[MiniBatch]) -> dict:
    """Mean loss per instance and accuracy over every loss node (argmax logits vs label)."""
    correct = total = 0
    loss_sum = 0.0
    instances = 0
    for b in batches:
        out = engine.run(params, b.graph, b.schedule, b.loss_nodes, layout=b.layout)
        labels = np.asarray(b.graph.payloads[b.graph.type_id("loss")])[b.graph.payload_row[b.loss_nodes]]
        pred = np.asarray(jnp.argmax(out["logits"], axis=-1))
        correct += int((pred == labels).sum())
        total += labels.size
        loss_sum += float(out["loss"].sum())
        instances += b.graph.num_instances
    return {"loss": loss_sum / max(instances, 1), "accuracy": correct / max(total, 1)}


def _majority(batches: list[MiniBatch]) -> float:
    labels = np.concatenate(
        [np.asarray(b.graph.payloads[b.graph.type_id("loss")])[b.graph.payload_row[b.loss_nodes]] for b in batches]
    )
    return float(np.bincount(labels).max() / max(labels.size, 1))


def _prepare(work: TrainingWorkload, graphs, policy, layout: str) -> list[MiniBatch]:
    variadic = variadic_ops(work.model.ops)
    return [resolve_layout(layout, make_minibatch(g, policy), variadic) for g in graphs]


def _checkpointer(directory: str):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(
        os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True)
    )


def train(
    work: TrainingWorkload,
    config: TrainConfig,
    resume: bool = False,
    progress: Callable[[int, float, float], None] | None = None,
    epoch_end: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Trains ``work.model`` on ``work.train``; see the module docstring.

    Args:
      work: the workload.
      config: :class:`TrainConfig`.
      resume: continue from the newest checkpoint in ``config.checkpoint_dir``.
      progress: called after every step with ``(step, loss, instances_per_s)``.
      epoch_end: called after every evaluation with ``(epoch, metrics)``.
    """
    if config.shards < 1:
        raise ValueError(f"shards must be at least 1, got {config.shards}")
    size = config.batch_size or work.batch_size
    policy = work.resolve_policy(config.policy)
    train_sets = work.minibatch_instances("train", size, seed=config.seed)
    if not train_sets:
        raise ValueError(f"no training mini-batch of {size} instances in {work.source}")
    if config.shards > 1:  # tuples of shards, one per device
        variadic = variadic_ops(work.model.ops)
        train_batches = [
            make_shards(x, config.shards, work.batch_graph, policy, config.layout, variadic) for x in train_sets
        ]
    else:
        train_batches = _prepare(work, [work.batch_graph(x) for x in train_sets], policy, config.layout)
    held = _prepare(
        work, work.minibatches("held_out", size, config.eval_batches, seed=config.seed + 1), policy, config.layout
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, config.lr, max(1, min(config.warmup_steps, config.steps // 2)), max(config.steps, 2)
    )
    # every mini-batch's execution plan stays cached: epochs after the first do no host planning at all
    engine = make_engine(config.engine, work.model.ops, plan_cache_size=len(train_batches) + len(held))
    params = work.model.init(jax.random.PRNGKey(config.seed))
    if config.shards > 1:  # the first device's engine also evaluates
        engines = [engine] + [
            make_engine(config.engine, work.model.ops, plan_cache_size=len(train_batches))
            for _ in range(config.shards - 1)
        ]
        trainer = ShardedTrainer(engines, params, optax.adam(schedule), shard_devices(config.shards))
    else:
        trainer = Trainer(engine, params, optax.adam(schedule))
    step, resumed_from = 0, None
    manager = _checkpointer(config.checkpoint_dir) if config.checkpoint_dir else None
    if resume and manager is not None and manager.latest_step() is not None:
        import orbax.checkpoint as ocp

        latest = manager.latest_step()
        template = {"params": trainer.params, "opt_state": trainer.opt_state, "step": np.array(0, np.int64)}
        state = manager.restore(latest, args=ocp.args.StandardRestore(template))
        # restored arrays are committed to a device, which changes jit's cache key: hand them back
        # uncommitted, as fresh ones are, so the executables compiled before the restart still apply
        uncommitted = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)
        trainer.params, trainer.opt_state = uncommitted(state["params"]), uncommitted(state["opt_state"])
        step = resumed_from = int(state["step"])

    def save(at: int) -> None:
        if manager is None or manager.latest_step() == at:
            return
        import orbax.checkpoint as ocp

        state = {"params": trainer.params, "opt_state": trainer.opt_state, "step": np.array(at, np.int64)}
        manager.save(at, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()

    per_epoch = len(train_batches)
    precompiled, precompile_s = 0, 0.0
    if config.precompile and config.shards == 1 and step < config.steps:
        t0 = time.perf_counter()
        precompiled = _precompile(trainer, train_batches, held, step, config)
        precompile_s = time.perf_counter() - t0
    log = open(config.log_path, "a") if config.log_path else None
    losses: list[float] = []
    evals: list[dict] = []
    try:
        while step < config.steps:
            epoch, k = divmod(step, per_epoch)
            order = _epoch_order(config.seed, epoch, per_epoch)
            t0 = time.perf_counter()
            loss = trainer.step(train_batches[order[k]])
            shards = train_batches[order[k]]
            count = sum(b.graph.num_instances for b in shards) if config.shards > 1 else shards.graph.num_instances
            rate = count / (time.perf_counter() - t0)
            step += 1
            losses.append(loss)
            if log:
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": loss, "instances_per_s": rate}) + "\n")
            if progress:
                progress(step, loss, rate)
            if step % config.checkpoint_every == 0:
                save(step)
            if step % per_epoch == 0 or step == config.steps:
                metrics = evaluate_nodes(engine, trainer.params, held)
                metrics.update(step=step, epoch=epoch, majority=_majority(held))
                evals.append(metrics)
                if log:
                    log.write(json.dumps({"eval": metrics}) + "\n")
                if epoch_end:
                    epoch_end(epoch, metrics)
        save(step)
    finally:
        if log:
            log.close()
        if manager is not None:
            manager.close()
    return TrainResult(trainer.params, step, losses, evals, resumed_from, precompiled, precompile_s)


def _epoch_order(seed: int, epoch: int, per_epoch: int) -> np.ndarray:
    """The mini-batch order of an epoch: a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(per_epoch)


def _precompile(
    trainer: Trainer, train_batches: list[MiniBatch], held: list[MiniBatch], step: int, config: TrainConfig
) -> int:
    """Plans the mini-batches that steps ``step`` to ``config.steps`` and the evaluations will run, then compiles
    their programs (:meth:`Trainer.precompile`, the evaluations' forward programs); returns the programs compiled."""
    engine, per_epoch = trainer.engine, len(train_batches)
    used: set[int] = set()
    for epoch in range(step // per_epoch, (config.steps - 1) // per_epoch + 1):
        first, last = max(step - epoch * per_epoch, 0), min(config.steps - epoch * per_epoch, per_epoch)
        used.update(_epoch_order(config.seed, epoch, per_epoch)[first:last].tolist())
    held_plans = [engine.plan(trainer.params, b.graph, b.schedule, b.layout) for b in held]  # sizes first
    compiled = trainer.precompile([train_batches[i] for i in sorted(used)])
    return compiled + sum(engine.precompile(trainer.params, p) for p in held_plans)
