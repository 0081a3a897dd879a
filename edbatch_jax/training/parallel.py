"""Data parallelism: the instances of a mini-batch split over devices.

Each device gets a *shard* of every mini-batch (a contiguous slice of its
instances), built, scheduled and planned as a mini-batch of its own and run
by an engine of its own; the shards' gradients are summed on the first
device, the optimizer updates there, and the new parameters are copied to
the others. The loss of every shard is divided by the whole mini-batch's
instance count, so the sum over shards is exactly the mini-batch's mean loss
and its gradient (up to float summation order).

On a CPU, JAX shows one device unless told otherwise:
``jax.config.update("jax_num_cpu_devices", n)`` before the first JAX
computation (:func:`use_cpu_devices`). Each host device then runs its shard's
programs concurrently with the others' (asynchronous dispatch). The host
devices share the machine's cores, which XLA already uses within one
program, so sharding pays where there are cores or devices to spare (on two
cores it measured 0.83-1.16x, see docs/benchmarks_engines.md).

Host-side orchestration; none of it is jittable (the engines' programs are
compiled once per device and reused).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from edbatch_jax.engine.base import Engine
from edbatch_jax.training.minibatch import MiniBatch, make_minibatch, resolve_layout
from edbatch_jax.training.trainer import batched_loss, loss_and_grads

PyTree = Any

__all__ = ["use_cpu_devices", "shard_devices", "split_instances", "make_shards", "sharded_loss", "ShardedTrainer"]


def use_cpu_devices(n: int) -> None:
    """Asks JAX for ``n`` CPU devices (``jax_num_cpu_devices``); call before the first JAX computation.

    Raises:
      RuntimeError: JAX's CPU backend already started with fewer devices.
    """
    if n < 1:
        raise ValueError(f"the number of CPU devices must be at least 1, got {n}")
    try:
        jax.config.update("jax_num_cpu_devices", max(n, jax.config.jax_num_cpu_devices))
    except RuntimeError as e:  # the backend is up: fine if it already has enough devices
        if len(jax.devices("cpu")) < n:
            raise RuntimeError(
                f"{n} CPU devices asked for, but JAX's CPU backend already started with "
                f"{len(jax.devices('cpu'))}; set jax_num_cpu_devices before the first JAX computation"
            ) from e


def shard_devices(n: int, backend: str | None = None) -> list:
    """The first ``n`` devices of ``backend`` (default backend if ``None``).

    Raises:
      ValueError: fewer than ``n`` devices (on a CPU, see :func:`use_cpu_devices`).
    """
    devices = jax.devices(backend)
    if n < 1 or n > len(devices):
        raise ValueError(
            f"{n} shards asked for, but JAX has {len(devices)} {devices[0].platform} device(s); on a CPU call "
            f"edbatch_jax.training.parallel.use_cpu_devices({n}) (jax_num_cpu_devices) before the first JAX computation"
        )
    return list(devices[:n])


def split_instances(instances: Sequence[Any], num_shards: int) -> list[list]:
    """``instances`` cut into ``num_shards`` contiguous slices of near-equal length (the first ones longer).

    Raises:
      ValueError: fewer instances than shards (a shard would be empty).
    """
    n = len(instances)
    if num_shards < 1 or n < num_shards:
        raise ValueError(f"cannot split {n} instances into {num_shards} non-empty shards")
    bounds = np.cumsum([0] + [n // num_shards + (k < n % num_shards) for k in range(num_shards)])
    return [list(instances[bounds[k] : bounds[k + 1]]) for k in range(num_shards)]


def make_shards(
    instances: Sequence[Any],
    num_shards: int,
    build: Callable[[Sequence[Any]], Any],
    policy: Any = "agenda",
    layout: str = "dynet",
    variadic=None,
) -> tuple[MiniBatch, ...]:
    """One :class:`~edbatch_jax.training.MiniBatch` per shard of ``instances``.

    Args:
      instances: the mini-batch's instances.
      num_shards: shards (one per device).
      build: instances -> batched graph (e.g. ``Workload.batch_graph``).
      policy: the batching policy of every shard.
      layout: ``"dynet"``, ``"planned"`` or ``"gather"``
        (:func:`~edbatch_jax.training.resolve_layout`).
      variadic: names of variable-arity ops (for the planned layout).
    """
    return tuple(
        resolve_layout(layout, make_minibatch(build(part), policy), variadic)
        for part in split_instances(instances, num_shards)
    )


def _check(shards, engines) -> int:
    if not shards:
        raise ValueError("no shards: a sharded mini-batch needs at least one")
    if len(shards) != len(engines):
        raise ValueError(f"{len(shards)} shards for {len(engines)} engines (one shard per device)")
    return sum(int(b.graph.num_instances) for b in shards)


@jax.jit
def _sum_trees(trees):
    return jax.tree.map(lambda *x: sum(x), *trees)


def sharded_loss(
    engines: Sequence[Engine], params: Sequence[PyTree], shards: Sequence[MiniBatch], devices: Sequence[Any]
) -> jax.Array:
    """Mean per-instance loss of a sharded mini-batch (f32 scalar, on ``devices[0]``).

    Shard ``k`` runs on ``devices[k]`` through ``engines[k]`` with
    ``params[k]`` (a copy of the parameters on that device); all shards are
    dispatched before any is waited for.
    """
    total = _check(shards, engines)
    losses = []
    for engine, p, batch, device in zip(engines, params, shards, devices):
        with jax.default_device(device):
            losses.append(batched_loss(engine, p, batch, count=total))
    return _sum_trees(jax.device_put(losses, devices[0]))


class ShardedTrainer:
    """Data-parallel optax training: every mini-batch as shards, one per device.

    ``step(shards)`` dispatches every shard's forward program, loss and
    backward program on its device (:func:`~edbatch_jax.training.loss_and_grads`
    with the whole mini-batch's instance count), sums the losses and
    gradients on the first device, applies one jitted optax update there and
    copies the new parameters to the other devices. Same results as
    :class:`~edbatch_jax.training.Trainer` on the unsharded mini-batch, up to
    float summation order.

    Args:
      engines: one engine per device (engines keep per-device plans and programs).
      params: the initial parameters (copied to every device; the trainer owns them).
      optimizer: an optax gradient transformation.
      devices: the devices, default :func:`shard_devices` ``(len(engines))``.

    Attributes:
      params: the current parameters, on ``devices[0]`` (settable, e.g. from a checkpoint).
      replicas: the current parameters on every device (``replicas[0] is params``).
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        params: PyTree,
        optimizer: optax.GradientTransformation,
        devices: Sequence[Any] | None = None,
    ):
        self.engines = list(engines)
        if not self.engines:
            raise ValueError("ShardedTrainer needs at least one engine")
        self.devices = list(devices) if devices is not None else shard_devices(len(self.engines))
        if len(self.devices) != len(self.engines):
            raise ValueError(f"{len(self.engines)} engines for {len(self.devices)} devices")
        self.optimizer = optimizer
        self._set_params(jax.device_put(params, self.devices[0]))
        self.opt_state = optimizer.init(self.params)

        def update(grads, opt_state, params):
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        self._update = jax.jit(update, donate_argnums=(1, 2))

    @property
    def params(self) -> PyTree:
        """The current parameters, on ``devices[0]``; assigning them also copies them to every device."""
        return self._params

    @params.setter
    def params(self, params: PyTree) -> None:
        self._set_params(jax.device_put(params, self.devices[0]))

    def _set_params(self, params: PyTree) -> None:
        self._params = params
        self.replicas = [params] + [jax.device_put(params, d) for d in self.devices[1:]]

    def prepare(self, shards: Sequence[MiniBatch]) -> tuple[MiniBatch, ...]:
        """Builds (and caches) every shard's plan on its engine now.

        E.g. inside :func:`~edbatch_jax.training.plan_ahead`."""
        _check(shards, self.engines)
        for engine, p, batch, device in zip(self.engines, self.replicas, shards, self.devices):
            with jax.default_device(device):
                engine.plan(p, batch.graph, batch.schedule, batch.layout)
        return tuple(shards)

    def loss_and_grads(self, shards: Sequence[MiniBatch]) -> tuple[jax.Array, PyTree]:
        """The sharded mini-batch's mean loss and its gradient, on ``devices[0]`` (asynchronous)."""
        total = _check(shards, self.engines)
        losses, grads = [], []
        for engine, p, batch, device in zip(self.engines, self.replicas, shards, self.devices):
            with jax.default_device(device):
                loss, g = loss_and_grads(engine, p, batch, count=total)
            losses.append(loss)
            grads.append(g)
        if len(grads) == 1:
            return losses[0], grads[0]
        main = self.devices[0]  # the loss apart: waiting for it waits for the forward programs only
        return _sum_trees(jax.device_put(losses, main)), _sum_trees(jax.device_put(grads, main))

    def step(self, shards: Sequence[MiniBatch]) -> float:
        """One optimisation step on a sharded mini-batch; returns the loss (a host float: synchronises)."""
        loss, grads = self.loss_and_grads(shards)
        params, self.opt_state = self._update(grads, self.opt_state, self.params)
        self._set_params(params)
        return float(loss)
