"""Data parallelism over processes and hosts: ``jax.distributed``, one all-reduce per step.

Every process holds the same parameters and the same list of global
mini-batches (the same data, seed and order). For each global mini-batch a
process builds, schedules and plans only *its share* of the instances
(:func:`process_share`: contiguous slices, the first ones one longer) and runs
it through its own engine on its own device. Its loss and gradients, divided
by the *global* instance count, are flattened into one float32 vector; one
all-reduce (a ``jnp.sum`` over a global mesh with one device per process,
through gloo on CPUs, NCCL on GPUs) gives every process the sums, and every
process applies the same optax update to its copy. The sum of the shares is
the global mini-batch's mean loss and gradient, so the parameters equal one
process's on the same mini-batches up to float summation order.

Shares of different sizes compile different engine programs in each process
but the all-reduce always moves the same vector (the parameter count plus
one), so a smaller share neither recompiles the collective nor deadlocks it.

Start a group with :func:`initialize` before any JAX computation, from a
:class:`ProcessGroup` (``EDBATCH_COORDINATOR``, ``EDBATCH_NUM_PROCESSES``,
``EDBATCH_PROCESS_ID`` in the environment: :meth:`ProcessGroup.from_env`).
:func:`launch_local` spawns ``N`` local processes of a command with that
environment and watches them: when one exits with an error, the others are
stopped and the error names it. A process whose all-reduce fails because a
peer stopped raises :class:`DistributedError`.

Host-side orchestration; not jittable.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from edbatch_jax.engine.base import Engine
from edbatch_jax.engine.common import compile_once, in_scope
from edbatch_jax.errors import EdbatchError
from edbatch_jax.training.minibatch import MiniBatch
from edbatch_jax.training.parallel import split_instances
from edbatch_jax.training.trainer import Trainer, loss_and_grads

PyTree = Any

__all__ = [
    "DistributedError",
    "ProcessGroup",
    "ProcessTrainer",
    "initialize",
    "launch_local",
    "process_share",
]

ENV_COORDINATOR = "EDBATCH_COORDINATOR"
ENV_NUM_PROCESSES = "EDBATCH_NUM_PROCESSES"
ENV_PROCESS_ID = "EDBATCH_PROCESS_ID"


class DistributedError(EdbatchError):
    """A process group that cannot start, or a step whose all-reduce failed (a peer process stopped)."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """Where a process stands in a group of processes.

    Attributes:
      coordinator: ``host:port`` of process 0's coordination service.
      num_processes: processes in the group.
      process_id: this process, in ``[0, num_processes)``.
    """

    coordinator: str
    num_processes: int
    process_id: int

    def __post_init__(self):
        host, _, port = self.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise DistributedError(f"coordinator must be 'host:port', got {self.coordinator!r}")
        if self.num_processes < 1:
            raise DistributedError(f"num_processes must be at least 1, got {self.num_processes}")
        if not 0 <= self.process_id < self.num_processes:
            raise DistributedError(f"process_id must be in [0, {self.num_processes}), got {self.process_id}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ProcessGroup | None:
        """The group named by ``EDBATCH_COORDINATOR``, ``EDBATCH_NUM_PROCESSES``, ``EDBATCH_PROCESS_ID``.

        Returns ``None`` when none of them is set.

        Raises:
          DistributedError: some but not all are set, or a value is malformed (named).
        """
        env = os.environ if environ is None else environ
        names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
        given = [n for n in names if env.get(n)]
        if not given:
            return None
        if len(given) < len(names):
            missing = [n for n in names if n not in given]
            raise DistributedError(f"{', '.join(given)} set without {', '.join(missing)}: a process group needs all")
        ints = {}
        for n in names[1:]:
            try:
                ints[n] = int(env[n])
            except ValueError:
                raise DistributedError(f"{n} must be an integer, got {env[n]!r}") from None
        return cls(env[ENV_COORDINATOR], ints[ENV_NUM_PROCESSES], ints[ENV_PROCESS_ID])

    def arguments(self) -> list[str]:
        """The ``edbatch train`` options naming this group: ``--coordinator``, ``--num-processes``, ``--process-id``."""
        return [
            "--coordinator",
            self.coordinator,
            "--num-processes",
            str(self.num_processes),
            "--process-id",
            str(self.process_id),
        ]

    def environ(self) -> dict[str, str]:
        """The environment variables that name this group (:meth:`from_env` reads them)."""
        return {
            ENV_COORDINATOR: self.coordinator,
            ENV_NUM_PROCESSES: str(self.num_processes),
            ENV_PROCESS_ID: str(self.process_id),
        }


def initialize(group: ProcessGroup, timeout_s: int = 120) -> None:
    """Joins ``group`` (``jax.distributed.initialize``; CPU collectives through gloo). Call before any JAX computation.

    A group of one process does nothing.

    Raises:
      DistributedError: JAX's backend already started, or the coordinator was
        not reached within ``timeout_s`` (named).
    """
    if group.num_processes == 1:
        return
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=group.coordinator,
            num_processes=group.num_processes,
            process_id=group.process_id,
            initialization_timeout=timeout_s,
        )
    except (RuntimeError, ValueError) as e:
        raise DistributedError(
            f"process {group.process_id} of {group.num_processes} could not join the group at {group.coordinator}: {e}"
        ) from e


def process_share(instances: Sequence[Any], num_processes: int | None = None, process_id: int | None = None) -> list:
    """This process's contiguous slice of a global mini-batch's ``instances`` (default: ``jax.process_count()``,
    ``jax.process_index()``)."""
    n = jax.process_count() if num_processes is None else num_processes
    k = jax.process_index() if process_id is None else process_id
    return split_instances(instances, n)[k]


class ProcessTrainer(Trainer):
    """A :class:`~edbatch_jax.training.Trainer` whose steps sum the gradients of every process's share.

    ``step(share, count)`` runs this process's share of a global mini-batch
    of ``count`` instances (:func:`~edbatch_jax.training.loss_and_grads`
    with ``count``), all-reduces its loss and gradients with the other
    processes' (one collective on one flat float32 vector), and applies the
    optax update (one jitted call). Every process must call ``step`` the
    same number of times with the same ``count``. In a group of one
    process it is a :class:`~edbatch_jax.training.Trainer`.

    :attr:`collective_s` holds the last step's all-reduce time (from this
    share's gradients being ready to the sums arriving: the wait for the
    slowest share included).

    Stochastic ops are refused: their per-node keys number instances within
    a share, so dropout masks would differ from one process's run.

    Raises:
      DistributedError: the all-reduce of a step failed (a peer process
        stopped); the message names the step and this process.
    """

    def __init__(self, engine: Engine, params: PyTree, optimizer: optax.GradientTransformation):
        if engine.draws:
            raise DistributedError(
                "training over processes with a stochastic model (dropout): per-node keys number instances within "
                "each process's share, so the masks would differ from a one-process run; train without dropout"
            )
        super().__init__(engine, params, optimizer)
        self.num_processes = jax.process_count()
        self.process_id = jax.process_index()
        firsts = {}
        for d in jax.devices():
            firsts.setdefault(d.process_index, d)
        devices = [firsts[p] for p in range(self.num_processes)]
        self.device = devices[self.process_id]
        self.collective_s = 0.0  # seconds the last step's all-reduce took (waiting for the slowest share included)
        mesh = jax.sharding.Mesh(np.array(devices), ("processes",))
        self._spread = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("processes"))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._all_sum = jax.jit(lambda x: jnp.sum(x, axis=0, keepdims=True), out_shardings=replicated)
        flat, unravel = ravel_pytree((jnp.zeros((), jnp.float32), params))
        self.size = int(flat.size)
        self._flatten = jax.jit(lambda loss, grads: ravel_pytree((loss, grads))[0].astype(jnp.float32)[None])

        @in_scope("update")
        def apply(total, opt_state, params):
            loss, grads = unravel(total[0])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return loss, optax.apply_updates(params, updates), opt_state

        self._apply = jax.jit(apply, donate_argnums=(1, 2))

    def all_reduce(self, flat: jax.Array) -> jax.Array:
        """The sum over processes of every process's ``flat`` (float32 ``[1, size]``, this device) -> ``[1, size]``
        (in a group of one process, ``flat`` itself: no program runs)."""
        if self.num_processes == 1:
            return flat
        shape = (self.num_processes, self.size)
        whole = jax.make_array_from_single_device_arrays(shape, self._spread, [jax.device_put(flat, self.device)])
        return self._all_sum(whole).addressable_data(0)

    def step(self, batch: MiniBatch, count: int | None = None) -> float:  # type: ignore[override]
        """One step on this process's share ``batch`` of a global mini-batch of ``count`` instances; returns
        the global mini-batch's mean loss (a host float: synchronises)."""
        loss, grads = loss_and_grads(self.engine, self.params, batch, count=count)
        try:
            flat = jax.block_until_ready(self._flatten(loss, grads))  # this share's work done: time the collective
            t0 = time.perf_counter()
            total = jax.block_until_ready(self.all_reduce(flat))
            self.collective_s = time.perf_counter() - t0
            loss, self.params, self.opt_state = self._apply(total, self.opt_state, self.params)
            value = float(loss)
        except (RuntimeError, ValueError) as e:
            raise DistributedError(
                f"process {self.process_id} of {self.num_processes}: the all-reduce of step {self.steps + 1} failed, "
                f"a peer process stopped ({str(e).splitlines()[0][:200]})"
            ) from e
        self.steps += 1
        return value

    def _precompile_update(self) -> int:
        """:meth:`Trainer.precompile` compiles, in place of the one-process update, the programs that flatten the
        loss and gradients for the all-reduce and apply the reduced vector."""
        flat = jax.ShapeDtypeStruct((1, self.size), jnp.float32)
        loss = jnp.zeros((), jnp.float32)
        return compile_once(self._compiled, self._flatten, loss, self.params) + compile_once(
            self._compiled, self._apply, flat, self.opt_state, self.params
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(argv: Sequence[str], num_processes: int, *, poll_s: float = 0.1, grace_s: float = 5.0) -> int:
    """Runs ``python -m edbatch_jax.apps.cli *argv`` as ``num_processes`` local processes of one group.

    Each process gets the group's options (:meth:`ProcessGroup.arguments`:
    a free local port for the coordinator, its process id).

    Process 0 writes to this process's stdout and stderr; the others'
    output goes to temporary files, shown when they fail. When a process
    exits with an error, the others get ``grace_s`` seconds to report
    theirs, then are stopped, and a :class:`DistributedError` names the
    first that failed, its exit code and the end of its output.

    Returns:
      0 when every process succeeded.
    """
    port = _free_port()
    procs, logs = [], []
    try:
        for k in range(num_processes):
            group = ProcessGroup(f"127.0.0.1:{port}", num_processes, k)
            env = {n: v for n, v in os.environ.items() if n not in group.environ()}
            log = None if k == 0 else tempfile.TemporaryFile("w+b")
            cmd = [sys.executable, "-m", "edbatch_jax.apps.cli", *argv, *group.arguments()]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT if log else None))
            logs.append(log)
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((k for k, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(poll_s)
        failed = next((k for k, p in enumerate(procs) if p.poll() not in (None, 0)), failed)
        if failed is None:
            return 0
        deadline = time.monotonic() + grace_s
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(poll_s)
        code = procs[failed].returncode
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        tail = ""
        if logs[failed] is not None:
            logs[failed].seek(0)
            lines = logs[failed].read().decode("utf-8", "replace").strip().splitlines()
            tail = "\n".join(lines[-5:])
        raise DistributedError(
            f"process {failed} of {num_processes} {how}; the others were stopped"
            + (f". Its last output:\n{tail}" if tail else "")
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            if log is not None:
                log.close()
