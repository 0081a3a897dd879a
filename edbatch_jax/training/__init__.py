"""Layer 5, training: mini-batches, the Trainer (optax), data parallelism over devices and the train loop.

Built on the core (graph, scheduling, layout, engine); imports nothing of the
model zoo or the applications. :mod:`~edbatch_jax.training.minibatch`
(:class:`MiniBatch`, :func:`plan_ahead`), :mod:`~edbatch_jax.training.trainer`
(:class:`Trainer`, :func:`loss_and_grads`, engines by name),
:mod:`~edbatch_jax.training.parallel` (:class:`ShardedTrainer`, over devices),
:mod:`~edbatch_jax.training.distributed` (:class:`ProcessTrainer`, over processes and hosts) and
:mod:`~edbatch_jax.training.loop` (:func:`train` with checkpoints and exact
resume).
"""

from edbatch_jax.training.distributed import ProcessTrainer, process_share
from edbatch_jax.training.minibatch import (
    MiniBatch,
    make_minibatch,
    node_labels,
    plan_ahead,
    resolve_layout,
    root_loss_nodes,
    variadic_ops,
)
from edbatch_jax.training.parallel import ShardedTrainer, make_shards, shard_devices, sharded_loss, split_instances
from edbatch_jax.training.trainer import (
    ENGINES,
    Trainer,
    batched_loss,
    loss_and_grads,
    make_engine,
    root_accuracy,
    timed,
    unbatched_loss,
)

__all__ = [
    "ENGINES",
    "MiniBatch",
    "ProcessTrainer",
    "ShardedTrainer",
    "Trainer",
    "batched_loss",
    "loss_and_grads",
    "make_engine",
    "make_minibatch",
    "make_shards",
    "node_labels",
    "plan_ahead",
    "process_share",
    "resolve_layout",
    "root_accuracy",
    "root_loss_nodes",
    "shard_devices",
    "sharded_loss",
    "split_instances",
    "timed",
    "unbatched_loss",
    "variadic_ops",
]
