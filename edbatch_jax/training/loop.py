"""Training any bundled workload with optax and orbax: the engine behind ``edbatch train``.

:func:`train` runs Adam with a warm-up + cosine learning-rate schedule over
shuffled mini-batches of the workload's training split (graphs, schedules and
layouts are built once and reused across epochs; with ``rebuild``, every epoch
draws new mini-batches, each built while the previous step runs), evaluates on held-out
mini-batches after every epoch, logs metrics as JSON lines, and checkpoints
``(params, opt_state, step)`` with orbax. Checkpoints are written atomically
(orbax finalises a step directory only when complete); with ``resume=True`` a
run continues from the newest checkpoint and, on CPU with the same seed,
reaches exactly the parameters of an uninterrupted run: the mini-batch order
of every epoch (and with ``rebuild`` its mini-batches) is a pure function of ``(seed, epoch)``. (The best-dev
bookkeeping of early stopping and of the test evaluation is not
checkpointed: a resumed run tracks the evaluations it makes itself.)

In a group of processes (:mod:`~edbatch_jax.training.distributed`, joined
before the call), each process trains its share of every mini-batch with a
:class:`~edbatch_jax.training.distributed.ProcessTrainer`, evaluates the
whole dev and test splits itself (every process reaches the same decisions),
and saves the checkpoints with the others; process 0 alone writes the log.

The JSON-lines log holds one record per step (``step``, ``epoch``, ``loss``,
``instances`` (of the global mini-batch), ``instances_per_s``, and in a group of processes ``collective_s``, the
all-reduce's seconds), one ``{"eval": {...}}`` record per evaluation, whose
``split`` is ``"dev"`` or ``"test"`` (fields ``loss``, ``accuracy`` over
every loss node, ``majority``, ``step``, ``epoch``, and the workload's root
metrics, e.g. ``root_accuracy``, ``root_binary_accuracy``), and with
pretrained embeddings one ``{"embeddings": {...}}`` record of how many words
were found.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from edbatch_jax.engine import Engine
from edbatch_jax.errors import EdbatchError
from edbatch_jax.graph import Graph
from edbatch_jax.scheduling import Policy
from edbatch_jax.training.distributed import ProcessTrainer, process_share
from edbatch_jax.training.minibatch import MiniBatch, make_minibatch, plan_ahead, resolve_layout, variadic_ops
from edbatch_jax.training.parallel import ShardedTrainer, make_shards, shard_devices
from edbatch_jax.training.trainer import Trainer, make_engine

__all__ = [
    "TRAIN_OPTIMIZERS",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainableModel",
    "TrainingWorkload",
    "evaluate_nodes",
    "make_optimizer",
    "train",
]

TRAIN_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "adagrad": optax.adagrad,
    "adam": optax.adam,
    "sgd": optax.sgd,
}
"""Optimizers of :class:`TrainConfig` by name: optax constructors taking the learning rate (or schedule)."""

LR_SCHEDULES = ("constant", "warmup_cosine")


class TrainConfigError(EdbatchError):
    """A :class:`TrainConfig` setting out of range: the message names the setting and what was expected."""


class TrainableModel(Protocol):
    """What :func:`train` needs of a model: its ops and an initialiser."""

    @property
    def ops(self) -> Mapping[str, Any]:
        """Op type name -> op (:class:`~edbatch_jax.Op` or a per-node function)."""

    def init(self, rng: jax.Array) -> Any:
        """The parameter pytree for a PRNG key."""


class TrainingWorkload(Protocol):
    """What :func:`train` needs of a workload (a bundled :class:`edbatch_jax.zoo.workloads.Workload` is one).

    A model, instances split into training, dev and test mini-batches, the
    graph of a list of instances, policies by name, the initial parameters
    (with pretrained embeddings) and the metrics of evaluated roots.
    """

    model: TrainableModel
    batch_size: int
    source: str

    def batch_graph(self, instances: Sequence[Any]) -> Graph:
        """One batched graph of the given instances."""

    def minibatch_instances(
        self,
        split: str,
        batch_size: int | None = None,
        count: int | None = None,
        seed: int = 0,
        keep_remainder: bool = False,
    ) -> list[list]:
        """The instances of every mini-batch of shuffled ``split`` (``"train"``, ``"dev"``, ``"test"``).

        At most ``count`` mini-batches of ``batch_size``; the instances left
        over make a last, smaller one if ``keep_remainder``; an empty split
        (no test data) has none.
        """

    def minibatches(
        self,
        split: str,
        batch_size: int | None = None,
        count: int | None = None,
        seed: int = 0,
        keep_remainder: bool = False,
    ) -> list[Graph]:
        """Batched graphs of :meth:`minibatch_instances`."""

    def resolve_policy(self, spec: str | Policy) -> str | Policy:
        """A policy for :func:`~edbatch_jax.schedule` from a name, a policy file or a policy."""

    def initial_params(self, rng: jax.Array, embeddings: str | None = None) -> tuple[Any, dict]:
        """``(params, report)``: the model's parameters for a PRNG key, with the pretrained word vectors of
        the GloVe-format file ``embeddings`` in its embedding table when given (``report``: how many words
        were found; ``{}`` without a file)."""

    def root_metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict:
        """Extra metrics of the evaluated instances' roots from f32 ``[N, C]`` logits and int ``[N]``
        labels (SST: ``root_accuracy``, ``root_binary_accuracy``); ``{}`` for none."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes:
      steps: optimisation steps (mini-batches), unless ``epochs`` is given.
      batch_size: instances per mini-batch (``None``: the workload's).
      lr: the peak learning rate.
      warmup_steps: linear warm-up steps of the ``"warmup_cosine"`` schedule.
      policy: the batching policy (name, policy file or ``"fsm"``).
      layout: ``"dynet"``, ``"planned"`` or ``"gather"``.
      engine: an engine name (:data:`~edbatch_jax.training.trainer.ENGINES`).
      eval_batches: dev (and test) mini-batches per evaluation; ``0`` or
        ``None``: the whole split, its last smaller mini-batch included.
      checkpoint_dir: orbax checkpoint directory (``None``: no checkpoints).
      checkpoint_every: steps between checkpoints.
      log_path: append JSON-lines metrics here (module docstring).
      seed: parameter initialisation and mini-batch order.
      shards: > 1: every training mini-batch split over that many devices
        (:mod:`~edbatch_jax.training.parallel`).
      precompile: compile the run's programs before the first step
        (:meth:`~edbatch_jax.training.trainer.Trainer.precompile`; one device).
      optimizer: a key of :data:`TRAIN_OPTIMIZERS` (``"adagrad"``: optax's, as Tai
        et al. 2015 train).
      weight_decay: L2 regularisation strength ``λ``: ``λ θ`` is added to the
        gradient of every parameter before the optimizer
        (``optax.add_decayed_weights`` chained in front), i.e. the loss gains
        ``λ/2 ‖θ‖²``, the L2 term of Tai et al. (coupled, not AdamW's
        decoupled decay). Embedding tables included.
      lr_schedule: ``"warmup_cosine"`` (warm-up, then cosine decay to 0 at
        the last step) or ``"constant"`` (Tai et al.'s Adagrad).
      epochs: train this many passes over the training mini-batches
        (``steps`` is then ``epochs`` times their number).
      patience: stop after this many dev evaluations in a row without a new
        best score (``None``: never). The score is the dev ``root_accuracy``
        where the workload reports it, else the all-nodes ``accuracy``.
      embeddings: a GloVe-format text file of pretrained word vectors for the
        model's embedding table (:meth:`TrainingWorkload.initial_params`).
      test: evaluate the workload's test split at the end, with the
        parameters of the best dev evaluation.
      rebuild: every epoch draws new mini-batches (the training split
        shuffled again, a pure function of ``(seed, epoch)``), whose graphs,
        schedules, layouts and plans are built during the run: each on a
        worker thread while the previous step runs (the pipeline of
        :meth:`~edbatch_jax.training.trainer.Trainer.fit`). ``False``: the
        mini-batches of the first shuffle are built once and every epoch
        runs them in a new order (no host planning after the first epoch).
        One process and one device only.
      debug_checks: run the engines with their debug checks
        (:class:`~edbatch_jax.Engine`'s ``checks``): a non-finite state
        stops the run naming the first node (op type, instance) in
        schedule order, a non-finite gradient naming its parameter; every
        step reads the states back to the host, so slower.
    """

    steps: int = 200
    batch_size: int | None = None
    lr: float = 5e-3
    warmup_steps: int = 20
    policy: str = "typewise"
    layout: str = "dynet"
    engine: str = "stepwise"
    eval_batches: int | None = 4
    checkpoint_dir: str | None = None
    checkpoint_every: int = 50
    log_path: str | None = None
    seed: int = 0
    shards: int = 1
    precompile: bool = True
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "warmup_cosine"
    epochs: int | None = None
    patience: int | None = None
    embeddings: str | None = None
    test: bool = True
    debug_checks: bool = False
    rebuild: bool = False

    def check(self) -> None:
        """Raises :class:`TrainConfigError` naming the first setting out of range."""
        if self.shards < 1:
            raise TrainConfigError(f"shards must be at least 1, got {self.shards}")
        if self.rebuild and self.shards > 1:
            raise TrainConfigError("rebuild with shards > 1: mini-batches are rebuilt on one device only")
        if self.optimizer not in TRAIN_OPTIMIZERS:
            raise TrainConfigError(f"optimizer must be one of {sorted(TRAIN_OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise TrainConfigError(f"lr_schedule must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not self.weight_decay >= 0:
            raise TrainConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.epochs is not None and self.epochs < 1:
            raise TrainConfigError(f"epochs must be at least 1 (or None: use steps), got {self.epochs}")
        if self.epochs is None and self.steps < 1:
            raise TrainConfigError(f"steps must be at least 1, got {self.steps}")
        if self.patience is not None and self.patience < 1:
            raise TrainConfigError(f"patience must be at least 1 (or None: no early stopping), got {self.patience}")
        if self.eval_batches is not None and self.eval_batches < 0:
            raise TrainConfigError(f"eval_batches must be >= 0 (0: the whole split), got {self.eval_batches}")


def make_optimizer(name: str, learning_rate: float | optax.Schedule, weight_decay: float = 0.0):
    """The optax optimizer ``name`` (:data:`TRAIN_OPTIMIZERS`), with L2 weight decay chained in front when > 0.

    ``weight_decay`` ``λ`` adds ``λ θ`` to every gradient before the optimizer
    sees it (``optax.add_decayed_weights``): the gradient of ``λ/2 ‖θ‖²`` added
    to the loss, as Tai et al. (2015) regularise.
    """
    if name not in TRAIN_OPTIMIZERS:
        raise TrainConfigError(f"optimizer must be one of {sorted(TRAIN_OPTIMIZERS)}, got {name!r}")
    optimizer = TRAIN_OPTIMIZERS[name](learning_rate)
    return optax.chain(optax.add_decayed_weights(weight_decay), optimizer) if weight_decay else optimizer


@dataclasses.dataclass
class TrainResult:
    """Final parameters and metrics.

    Attributes:
      params: the parameters after the last step.
      step: the last step.
      losses: the training loss of every step this call ran.
      evals: the dev evaluations (``split`` ``"dev"``), one per epoch and
        one after the last step.
      resumed_from: the checkpoint step resumed from, or ``None``.
      precompiled: programs compiled ahead of the first step.
      precompile_s: seconds spent compiling them.
      best_params: the parameters of the best dev evaluation (``None``
        without one).
      best: that evaluation's metrics.
      test: the test split's metrics with ``best_params`` (``split``
        ``"test"``; ``step`` and ``epoch`` are the best dev evaluation's,
        ``params`` says ``"best_dev"``, or ``"final"`` when this call made
        no dev evaluation), or ``None``.
      stopped_early: whether ``patience`` ended the run.
      embeddings: the pretrained-embedding report (``found`` of ``words``),
        ``{}`` without a file.
    """

    params: dict
    step: int
    losses: list[float]
    evals: list[dict]
    resumed_from: int | None
    precompiled: int = 0
    precompile_s: float = 0.0
    best_params: dict | None = None
    best: dict | None = None
    test: dict | None = None
    stopped_early: bool = False
    embeddings: dict = dataclasses.field(default_factory=dict)


def evaluate_nodes(
    engine: Engine,
    params,
    batches: list[MiniBatch],
    root_metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None,
) -> dict:
    """Mean loss per instance and accuracy over every loss node (argmax logits vs label).

    With ``root_metrics`` (a workload's :meth:`TrainingWorkload.root_metrics`),
    the logits and labels of every instance's root loss node (those roots that
    are loss nodes) over all ``batches`` go through it once, and its metrics
    join the result.
    """
    correct = total = 0
    loss_sum = 0.0
    instances = 0
    root_logits, root_labels = [], []
    for b in batches:
        out = engine.run(params, b.graph, b.schedule, b.loss_nodes, layout=b.layout)
        labels = np.asarray(b.graph.payloads[b.graph.type_id("loss")])[b.graph.payload_row[b.loss_nodes]]
        logits = np.asarray(out["logits"])
        pred = logits.argmax(axis=-1)
        correct += int((pred == labels).sum())
        total += labels.size
        loss_sum += float(out["loss"].sum())
        instances += b.graph.num_instances
        if root_metrics is not None:  # loss_nodes ascend (nodes_of_type): find the roots among them
            at = np.minimum(np.searchsorted(b.loss_nodes, b.root_nodes), max(len(b.loss_nodes) - 1, 0))
            is_loss = b.loss_nodes[at] == b.root_nodes if len(b.loss_nodes) else np.zeros(len(at), bool)
            root_logits.append(logits[at[is_loss]])
            root_labels.append(labels[at[is_loss]])
    metrics = {"loss": loss_sum / max(instances, 1), "accuracy": correct / max(total, 1)}
    if root_metrics is not None and root_logits:
        metrics.update(root_metrics(np.concatenate(root_logits), np.concatenate(root_labels)))
    return metrics


def _selection_score(metrics: dict) -> float:
    """What the best dev evaluation maximises: ``root_accuracy`` where reported, else ``accuracy``."""
    score = metrics.get("root_accuracy")
    return metrics["accuracy"] if score is None else score


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
      epoch_end: called after every dev evaluation with ``(epoch, metrics)``.

    Raises:
      TrainConfigError: a setting of ``config`` out of range.
      EdbatchError: the embedding file cannot be read (the workload's
        error, naming its line).
    """
    config.check()
    size = config.batch_size or work.batch_size
    policy = work.resolve_policy(config.policy)
    train_sets = work.minibatch_instances("train", size, seed=config.seed)
    if not train_sets:
        raise ValueError(f"no training mini-batch of {size} instances in {work.source}")
    processes = jax.process_count()  # > 1: this process trains its share of every mini-batch (distributed)
    if processes > 1 and config.shards > 1:
        raise TrainConfigError("shards > 1 in a group of processes: use one or the other")
    if processes > 1 and config.rebuild:
        raise TrainConfigError("rebuild in a group of processes: mini-batches are rebuilt by one process only")
    counts = [len(x) for x in train_sets]  # instances of each (global) mini-batch
    if processes > 1:
        if min(counts) < processes:
            raise TrainConfigError(f"mini-batches of {size} instances cannot be shared by {processes} processes")
        train_batches = _prepare(work, [work.batch_graph(process_share(x)) for x in train_sets], policy, config.layout)
    elif config.shards > 1:  # tuples of shards, one per device
        variadic = variadic_ops(work.model.ops)
        train_batches = [
            make_shards(x, config.shards, work.batch_graph, policy, config.layout, variadic) for x in train_sets
        ]
    else:
        train_batches = _prepare(work, [work.batch_graph(x) for x in train_sets], policy, config.layout)
    per_epoch = len(train_batches)
    total = config.epochs * per_epoch if config.epochs is not None else config.steps
    whole = not config.eval_batches  # 0 or None: every instance of the split
    count = None if whole else config.eval_batches
    dev = _prepare(
        work, work.minibatches("dev", size, count, config.seed + 1, keep_remainder=whole), policy, config.layout
    )
    test = (
        _prepare(
            work, work.minibatches("test", size, count, config.seed + 2, keep_remainder=whole), policy, config.layout
        )
        if config.test
        else []
    )
    if config.lr_schedule == "constant":
        schedule = optax.constant_schedule(config.lr)
    else:
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, config.lr, max(1, min(config.warmup_steps, total // 2)), max(total, 2)
        )
    optimizer = make_optimizer(config.optimizer, schedule, config.weight_decay)
    if config.shards > 1 and any(op.stochastic for op in work.model.ops.values()):
        raise TrainConfigError(
            "shards > 1 with a stochastic model (dropout): sharded steps do not draw per-node keys yet, so dropout "
            "would be silently off; train on one device, or without dropout"
        )
    # every mini-batch's execution plan stays cached: epochs after the first do no host planning at all
    engine = make_engine(
        config.engine, work.model.ops, plan_cache_size=per_epoch + len(dev) + len(test), checks=config.debug_checks
    )
    params, embeddings = work.initial_params(jax.random.PRNGKey(config.seed), config.embeddings)
    if processes > 1:
        trainer = ProcessTrainer(engine, params, optimizer)
    elif config.shards > 1:  # the first device's engine also evaluates
        engines = [engine] + [
            make_engine(config.engine, work.model.ops, plan_cache_size=per_epoch, checks=config.debug_checks)
            for _ in range(config.shards - 1)
        ]
        trainer = ShardedTrainer(engines, params, optimizer, shard_devices(config.shards))
    else:
        # step keys of the stochastic ops (dropout): fold_in(key, step), so a run (and a resumed one) is reproducible
        trainer = Trainer(engine, params, optimizer, rng=jax.random.fold_in(jax.random.PRNGKey(config.seed), 1))
    step, resumed_from = 0, None
    manager = _checkpointer(config.checkpoint_dir) if config.checkpoint_dir else None
    if resume and manager is not None and manager.latest_step() is not None:
        import orbax.checkpoint as ocp

        latest = manager.latest_step()
        template = jax.device_get({"params": trainer.params, "opt_state": trainer.opt_state})
        template["step"] = np.array(0, np.int64)
        state = manager.restore(latest, args=ocp.args.StandardRestore(template))
        # restored arrays are committed to a device, which changes jit's cache key: hand them back
        # uncommitted, as fresh ones are, so the executables compiled before the restart still apply
        uncommitted = lambda tree: jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), tree)
        trainer.params, trainer.opt_state = uncommitted(state["params"]), uncommitted(state["opt_state"])
        step = resumed_from = int(state["step"])
    if isinstance(trainer, Trainer):
        trainer.steps = step  # the next step's key

    def save(at: int) -> None:
        if manager is None or manager.latest_step() == at:
            return
        import orbax.checkpoint as ocp

        # host arrays: in a group of processes every process saves its (equal) copy, process 0 writes it
        state = jax.device_get({"params": trainer.params, "opt_state": trainer.opt_state})
        state["step"] = np.array(at, np.int64)
        manager.save(at, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()

    precompiled, precompile_s = 0, 0.0
    if config.precompile and config.shards == 1 and step < total:
        t0 = time.perf_counter()
        precompiled = _precompile(trainer, train_batches, dev + test, step, total, config.seed)
        precompile_s = time.perf_counter() - t0
    # line-buffered: a run that dies keeps its log up to its last step
    log = open(config.log_path, "a", buffering=1) if config.log_path and jax.process_index() == 0 else None
    losses: list[float] = []
    evals: list[dict] = []
    best, best_params, since_best, stopped_early, test_metrics = None, None, 0, False, None
    rebuilt = _rebuilt_batches(work, config, size, policy, trainer, step, total, per_epoch) if config.rebuild else None
    try:
        if log and embeddings:
            log.write(json.dumps({"embeddings": embeddings}) + "\n")
        while step < total:
            epoch, k = divmod(step, per_epoch)
            order = _epoch_order(config.seed, epoch, per_epoch)
            t0 = time.perf_counter()  # with rebuild, the wait for the step's mini-batch counts too
            batch, count = next(rebuilt) if rebuilt is not None else (train_batches[order[k]], counts[order[k]])
            loss = trainer.step(batch, count) if processes > 1 else trainer.step(batch)
            rate = count / (time.perf_counter() - t0)
            step += 1
            losses.append(loss)
            if log:
                record = {"step": step, "epoch": epoch, "loss": loss, "instances": count, "instances_per_s": rate}
                if processes > 1:
                    record["collective_s"] = trainer.collective_s
                log.write(json.dumps(record) + "\n")
            if progress:
                progress(step, loss, rate)
            if step % config.checkpoint_every == 0:
                save(step)
            if dev and (step % per_epoch == 0 or step == total):
                metrics = evaluate_nodes(engine, trainer.params, dev, work.root_metrics)
                metrics.update(split="dev", step=step, epoch=epoch, majority=_majority(dev))
                if best is None or _selection_score(metrics) > _selection_score(best):
                    best, since_best = metrics, 0
                    best_params = jax.tree.map(jnp.copy, trainer.params)  # the trainer donates its params
                else:
                    since_best += 1
                metrics.update(best_step=best["step"], best_epoch=best["epoch"])
                evals.append(metrics)
                if log:
                    log.write(json.dumps({"eval": metrics}) + "\n")
                if epoch_end:
                    epoch_end(epoch, metrics)
                if config.patience is not None and since_best >= config.patience and step < total:
                    stopped_early = True
                    break
        save(step)
        if test:
            chosen = trainer.params if best_params is None else best_params
            test_metrics = evaluate_nodes(engine, chosen, test, work.root_metrics)
            test_metrics.update(split="test", majority=_majority(test), params="final" if best is None else "best_dev")
            at = (step, max(step - 1, 0) // per_epoch) if best is None else (best["step"], best["epoch"])
            test_metrics.update(step=at[0], epoch=at[1])
            if log:
                log.write(json.dumps({"eval": test_metrics}) + "\n")
    finally:
        if rebuilt is not None:
            rebuilt.close()  # waits for the mini-batch in flight
        if log:
            log.close()
        if manager is not None:
            manager.close()
    return TrainResult(
        trainer.params,
        step,
        losses,
        evals,
        resumed_from,
        precompiled,
        precompile_s,
        best_params=best_params,
        best=best,
        test=test_metrics,
        stopped_early=stopped_early,
        embeddings=embeddings,
    )


def _rebuilt_batches(
    work: TrainingWorkload,
    config: TrainConfig,
    size: int,
    policy: Any,
    trainer: Trainer,
    start: int,
    total: int,
    per_epoch: int,
) -> Iterator[tuple[MiniBatch, int]]:
    """``(mini-batch, instances)`` of steps ``start`` to ``total - 1`` with ``rebuild``: epoch 0 runs the first
    shuffle's mini-batches in the order of :func:`_epoch_order`, epoch ``e > 0`` those of a shuffle seeded by
    ``(seed, e)``; each is built on a worker thread while the previous step runs and planned on the calling
    thread (:func:`~edbatch_jax.training.minibatch.plan_ahead`)."""
    shuffles: dict[int, list] = {}

    def instance_sets() -> Iterator[list]:
        for step in range(start, total):
            epoch, k = divmod(step, per_epoch)
            if epoch not in shuffles:
                shuffles.clear()
                seed = (
                    config.seed if epoch == 0 else int(np.random.default_rng([config.seed, epoch, 1]).integers(2**31))
                )
                sets = work.minibatch_instances("train", size, seed=seed)
                shuffles[epoch] = sets if epoch else [sets[i] for i in _epoch_order(config.seed, 0, per_epoch)]
            yield shuffles[epoch][k]

    def build(instances: list) -> tuple[MiniBatch, int]:
        return _prepare(work, [work.batch_graph(instances)], policy, config.layout)[0], len(instances)

    return plan_ahead(instance_sets(), lambda built: (trainer.prepare(built[0]), built[1]), background=build)


def _epoch_order(seed: int, epoch: int, per_epoch: int) -> np.ndarray:
    """The mini-batch order of an epoch: a pure function of ``(seed, epoch)``."""
    return np.random.default_rng([seed, epoch]).permutation(per_epoch)


def _precompile(
    trainer: Trainer, train_batches: list[MiniBatch], held: list[MiniBatch], step: int, total: int, seed: int
) -> int:
    """Plans the mini-batches that steps ``step`` to ``total`` and the evaluations will run, then compiles
    their programs (:meth:`Trainer.precompile`, the evaluations' forward programs); returns the programs compiled."""
    engine, per_epoch = trainer.engine, len(train_batches)
    used: set[int] = set()
    for epoch in range(step // per_epoch, (total - 1) // per_epoch + 1):
        first, last = max(step - epoch * per_epoch, 0), min(total - epoch * per_epoch, per_epoch)
        used.update(_epoch_order(seed, epoch, per_epoch)[first:last].tolist())
    held_plans = [engine.plan(trainer.params, b.graph, b.schedule, b.layout) for b in held]  # sizes first
    compiled = trainer.precompile([train_batches[i] for i in sorted(used)])
    return compiled + sum(engine.precompile(trainer.params, p) for p in held_plans)
