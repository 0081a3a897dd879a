"""The benchmark harness behind ``edbatch bench``.

For one workload it measures, side by side in one process, every combination
of batching policy, memory layout and mode (inference or training):

* throughput in instances per second — on cached mini-batches (graphs,
  schedules and layouts built once and reused, as a data pipeline may) and
  rebuilt every step (construction + scheduling + layout + engine plan +
  execution, one after the other), and rebuilt every step with the planning
  of the next mini-batch overlapped with the execution of the current one
  (:func:`edbatch_jax.training.plan_ahead`, as a training loop would run),
  and the same again with construction, scheduling and layout on a worker
  thread (``plan_ahead``'s ``background``);
* the time split: graph construction, scheduling, layout planning, the
  engine's plan (state rows and index tables; for the fused engine its
  descriptor tables too), execution (each the median over timed rounds in
  which the configurations take turns);
* batches per mini-batch against the lower bound;
* operand gathers and bytes gathered per mini-batch (the engine's count);
* step executables compiled for the configuration (one engine per mode is
  shared across configurations, so this counts what the configuration adds)
  and the warm-up (compile) time, and XLA compilations during the timed
  rounds (expected: none; counted with a ``jax.monitoring`` listener, so a
  program compiled again without a new trace counts too);
* the process's peak resident memory;
* with ``checks=("on", "off")``, every configuration twice: with the input
  checks where graphs, schedules, layouts, outputs and payloads enter the
  library (the default), and without them (:func:`edbatch_jax.input_checks`),
  so that :func:`checks_cost` gives what the checks add to a rebuilt step;
* with ``op_calls=True``, the op-call bound of the schedule: the throughput
  if execution were only its batched op calls, each a jitted call timed alone
  (:mod:`edbatch_jax.apps.op_calls`), and the measured throughput over it;
* with ``floor=True``, the compute floor: the FLOPs of a mini-batch's real
  nodes (XLA's cost analysis, forward or forward + backward) at the
  machine's matmul rate measured in the same run, and the measured
  throughput as a fraction of it (a figure that does not depend on the
  machine's speed);
* with ``profile=N``, where the time of a cached mini-batch goes: the
  arithmetic of each op type, operand gathers, output writes, cotangent
  accumulation, residual stores, loop and branch overhead, other device
  work and host time, from a ``jax.profiler`` trace of N mini-batches
  (:mod:`edbatch_jax.apps.profile`).

Each phase is wrapped in a ``jax.profiler.TraceAnnotation`` so that a
``jax.profiler`` trace shows it. Speeds are only comparable within one run.
"""

from __future__ import annotations

import dataclasses
import itertools
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import edbatch_jax as eb
from edbatch_jax.apps.op_calls import matmul_gflops, op_calls_ms, plan_flops
from edbatch_jax.apps.profile import StepProfile, profile_calls
from edbatch_jax.apps.profile import format_profiles as format_profile_table
from edbatch_jax.engine.stepwise import state_signature
from edbatch_jax.training import (
    Trainer,
    batched_loss,
    make_engine,
    make_minibatch,
    plan_ahead,
    resolve_layout,
    variadic_ops,
)
from edbatch_jax.training.parallel import ShardedTrainer, make_shards, shard_devices, sharded_loss, split_instances
from edbatch_jax.zoo.workloads import Workload

__all__ = [
    "BenchResult",
    "LAYOUTS",
    "checks_cost",
    "format_checks_cost",
    "format_table",
    "resolve_policy",
    "run_benchmarks",
    "xla_compiles",
]

OPTIMIZERS = {"adam": (optax.adam, 1e-3), "sgd": (optax.sgd, 0.01)}
"""The training configurations' optimizer by name: ``(optax constructor, learning rate)``. ``sgd`` is plain SGD,
as DyNet's Tree-LSTM benchmark trains (``SimpleSGDTrainer``, whose sparse row updates of lookup parameters are
dense SGD's values, untouched rows having zero gradient)."""

LAYOUTS = ("dynet", "planned", "gather")
"""``dynet``: rows in schedule order, slices only where operands happen to be
consecutive; ``planned``: :func:`edbatch_jax.plan_layout`; ``gather``: every
operand gathered."""


@dataclasses.dataclass
class BenchResult:
    """One measured configuration (the ``--json`` object)."""

    model: str
    policy: str
    layout: str
    mode: str
    engine: str
    batch_size: int
    hidden: int
    backend: str
    instances_per_s: float
    instances_per_s_rebuilt: float
    construct_ms: float
    schedule_ms: float
    layout_ms: float
    execute_ms: float
    engine_plan_ms: float
    batches_per_minibatch: float
    lower_bound: float
    gathers_per_minibatch: float
    gathered_bytes_per_minibatch: float
    executables: int
    warmup_s: float
    compiles_after_warmup: int
    peak_rss_mb: float
    op_calls_instances_per_s: float = 0.0
    rounds: int = 1
    execute_ms_rounds: list = dataclasses.field(default_factory=list)
    overlapped_ms: float = 0.0
    instances_per_s_overlapped: float = 0.0
    threaded_ms: float = 0.0
    instances_per_s_threaded: float = 0.0
    flops_per_instance: float = 0.0
    matmul_gflops: float = 0.0
    floor_instances_per_s: float = 0.0
    shards: int = 1
    optimizer: str = "adam"
    checks: str = "on"
    profile: StepProfile | None = None  # where a step's time goes (``profile=``), shards 1 only

    @property
    def engine_label(self) -> str:
        """The engine, with ``xN`` when a mini-batch ran as ``N`` data-parallel shards."""
        return self.engine + (f" x{self.shards}" if self.shards > 1 else "")

    @property
    def op_calls_fraction(self) -> float:
        """Measured throughput over the op-call bound (0 when it was not measured)."""
        return self.instances_per_s / self.op_calls_instances_per_s if self.op_calls_instances_per_s else 0.0

    @property
    def spread_pct(self) -> float:
        """Half the range of the per-round execution times, in % of their median (0 for one round)."""
        if len(self.execute_ms_rounds) < 2:
            return 0.0
        return 50.0 * (max(self.execute_ms_rounds) - min(self.execute_ms_rounds)) / max(self.execute_ms, 1e-9)

    @property
    def host_ms(self) -> float:
        """Host work per rebuilt mini-batch: construction + scheduling + layout + engine plan (ms)."""
        return self.construct_ms + self.schedule_ms + self.layout_ms + self.engine_plan_ms

    @property
    def planning_fraction(self) -> float:
        """(construction + scheduling + layout + engine plan) over the rebuilt step time."""
        plan = self.construct_ms + self.schedule_ms + self.layout_ms + self.engine_plan_ms
        return plan / max(plan + self.execute_ms, 1e-9)

    @property
    def floor_fraction(self) -> float:
        """Measured (cached) throughput over the compute floor (0 when the floor was not measured)."""
        return self.instances_per_s / self.floor_instances_per_s if self.floor_instances_per_s else 0.0

    @property
    def planning_fraction_overlapped(self) -> float:
        """The time planning adds to a step when it overlaps execution: (overlapped - execution) / overlapped."""
        return (self.overlapped_ms - self.execute_ms) / self.overlapped_ms if self.overlapped_ms else 0.0

    @property
    def planning_fraction_threaded(self) -> float:
        """The same with construction, scheduling and layout on a worker thread: (threaded - execution) / threaded."""
        return (self.threaded_ms - self.execute_ms) / self.threaded_ms if self.threaded_ms else 0.0


def resolve_policy(name: str, work: Workload):
    """A policy name, ``"fsm"`` (the workload's shipped policy) or a policy file: :meth:`Workload.resolve_policy`."""
    return work.resolve_policy(name)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _block(x):
    return jax.block_until_ready(x)


_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_compiles = {"count": 0, "listening": False}


def _count_compile(event: str, duration: float, **kwargs) -> None:
    if event == _BACKEND_COMPILE_EVENT:
        _compiles["count"] += 1


def _count_cache_hit(event: str, **kwargs) -> None:
    if event == _CACHE_HIT_EVENT:
        _compiles["count"] += 1


def xla_compiles() -> int:
    """Programs XLA compiled, or loaded from the persistent compilation cache instead, in this process since the
    harness first asked (``jax.monitoring`` listeners): each is a program that was not ready."""
    if not _compiles["listening"]:
        jax.monitoring.register_event_duration_secs_listener(_count_compile)
        jax.monitoring.register_event_listener(_count_cache_hit)
        _compiles["listening"] = True
    return _compiles["count"]


@dataclasses.dataclass
class _Config:
    """One (engine, policy, layout, mode) under measurement: its mini-batches, engine and samples."""

    engine_name: str
    label: str
    policy: Any
    layout: str
    mode: str
    graphs: list  # per mini-batch, a tuple of shard graphs
    mbs: list  # per mini-batch, a tuple of shard MiniBatches
    engines: list  # one per device (shard)
    devices: list
    params: Any  # one parameter copy per device
    trainer: Any
    variadic: Any
    instance_sets: list
    build: Any  # instances -> batched graph
    checks: bool = True  # input checks on (the default) or off while this configuration plans
    executables: int = 0
    warmup_s: float = 0.0
    compiles_after_warmup: int = 0
    schedule_ms: list = dataclasses.field(default_factory=list)  # one mean per mini-batch per round
    layout_ms: list = dataclasses.field(default_factory=list)
    engine_plan_ms: list = dataclasses.field(default_factory=list)
    execute_ms: list = dataclasses.field(default_factory=list)
    overlapped_ms: list = dataclasses.field(default_factory=list)
    threaded_ms: list = dataclasses.field(default_factory=list)

    @property
    def shards(self) -> int:
        return len(self.engines)

    @property
    def trace_count(self) -> int:
        return sum(e.trace_count for e in self.engines)

    def plan_all(self, graphs) -> tuple[list, float, float]:
        """Mini-batches (tuples of shards) of ``graphs`` and the mean scheduling and layout ms per mini-batch."""
        t0 = time.perf_counter()
        with jax.profiler.TraceAnnotation("edbatch.schedule"):
            mbs = [tuple(make_minibatch(g, self.policy) for g in gs) for gs in graphs]
        t1 = time.perf_counter()
        with jax.profiler.TraceAnnotation("edbatch.layout"):
            mbs = [tuple(resolve_layout(self.layout, m, self.variadic) for m in ms) for ms in mbs]
        t2 = time.perf_counter()
        layout_ms = (t2 - t1) / len(mbs) * 1e3 if self.layout == "planned" else 0.0
        return mbs, (t1 - t0) / len(mbs) * 1e3, layout_ms

    def step(self, mb) -> None:
        """One training step on a mini-batch (a tuple of shards); waits for its loss."""
        self.trainer.step(mb if self.shards > 1 else mb[0])

    def loss(self, mb):
        """The mean loss of a mini-batch (a tuple of shards), dispatched."""
        if self.shards > 1:
            return sharded_loss(self.engines, self.params, mb, self.devices)
        return batched_loss(self.engines[0], self.params[0], mb[0])

    def sync_params(self) -> None:
        """Takes the trainer's current parameters (per device)."""
        if self.trainer is not None:  # the previous ones were donated to the updates
            self.params = self.trainer.replicas if self.shards > 1 else [self.trainer.params]

    def run_one(self, k: int, block: bool = True):
        """Runs cached mini-batch ``k`` (a training step, or the loss) and waits for it; a training step with
        ``block=False`` waits for its forward pass only (its loss), as a training loop does."""
        if self.trainer is not None:
            self.step(self.mbs[k])  # returns a host float: waits for the forward pass
            return _block(self.trainer.params) if block else None  # and for the backward pass and the update
        return _block(self.loss(self.mbs[k]))

    def time_round(self, warmup: int, num_batches: int) -> None:
        """One timed round: re-plan the timed mini-batches, then run each once (input checks as configured)."""
        with eb.input_checks(self.checks):
            self._time_round(warmup, num_batches)

    def _time_round(self, warmup: int, num_batches: int) -> None:
        mbs, sched, lay = self.plan_all(self.graphs[warmup : warmup + num_batches])
        self.schedule_ms.append(sched)
        self.layout_ms.append(lay)
        # the engine's plan of the fresh mini-batches (built, not cached: the timed runs below use the
        # plans cached at warm-up, so the cache must keep them)
        signature = state_signature(self.params[0])
        t0 = time.perf_counter()
        with jax.profiler.TraceAnnotation("edbatch.engine_plan"):
            for ms in mbs:
                for engine, device, m in zip(self.engines, self.devices, ms):
                    with jax.default_device(device):
                        engine._new_plan(self.params[0], signature, m.graph, m.schedule, m.layout)
        self.engine_plan_ms.append((time.perf_counter() - t0) / len(mbs) * 1e3)
        before = xla_compiles()
        t0 = time.perf_counter()
        with jax.profiler.TraceAnnotation("edbatch.execute"):
            for k in range(warmup, warmup + num_batches):
                self.run_one(k, block=False)
            if self.trainer is not None:
                _block(self.trainer.params)  # the last step's backward pass and update
        self.execute_ms.append((time.perf_counter() - t0) / num_batches * 1e3)
        self.compiles_after_warmup += xla_compiles() - before
        self.sync_params()
        self.time_overlapped(warmup, num_batches)
        self.time_overlapped(warmup, num_batches, threaded=True)

    def build_shards(self, instances):
        """The host's work on one mini-batch that touches no engine: construction, schedule, layout."""
        return make_shards(instances, self.shards, self.build, self.policy, self.layout, self.variadic)

    def plan_engines(self, mb):
        """The engines' plans of a mini-batch (a tuple of shards); returns it."""
        for engine, device, p, m in zip(self.engines, self.devices, self.params, mb):
            with jax.default_device(device):
                engine.plan(p, m.graph, m.schedule, m.layout)
        return mb

    def prepare(self, instances):
        """Everything the host does for one mini-batch: construction, schedule, layout, the engine's plan."""
        return self.plan_engines(self.build_shards(instances))

    def time_overlapped(self, warmup: int, num_batches: int, threaded: bool = False) -> None:
        """Rebuilt mini-batches, each planned while the previous one executes (the first one's planning included);
        ``threaded``: construction, schedule and layout on a worker thread (``plan_ahead``'s ``background``)."""
        before = xla_compiles()
        t0 = time.perf_counter()
        sets = self.instance_sets[warmup : warmup + num_batches]
        batches = (
            plan_ahead(sets, self.plan_engines, background=self.build_shards)
            if threaded
            else plan_ahead(sets, self.prepare)
        )
        with jax.profiler.TraceAnnotation("edbatch.overlapped_threaded" if threaded else "edbatch.overlapped"):
            pending = None
            for mb in batches:
                if self.trainer is not None:
                    self.step(mb)  # waits for this step's forward pass; the backward runs on
                else:
                    out = self.loss(mb)
                    if pending is not None:
                        _block(pending)  # the previous mini-batch; this one runs on
                    pending = out
            _block(self.trainer.params if self.trainer is not None else pending)
        (self.threaded_ms if threaded else self.overlapped_ms).append((time.perf_counter() - t0) / num_batches * 1e3)
        self.compiles_after_warmup += xla_compiles() - before
        self.sync_params()


def _prepare(
    work,
    shared,
    graphs,
    instance_sets,
    engine_name,
    policy_name,
    layout,
    mode,
    shards,
    params0,
    variadic,
    warmup,
    say,
    optimizer,
    checks,
) -> _Config:
    """Plans a configuration's mini-batches and runs each once (the warm-up, where compilation happens)."""
    policy = resolve_policy(policy_name, work)
    label = (
        policy_name if isinstance(policy, str) else "fsm" if policy_name == "fsm" else f"fsm:{Path(policy_name).stem}"
    )
    say(
        f"{engine_name} / {label} / {layout} / {mode}"
        + (f" / {shards} shards" if shards > 1 else "")
        + ("" if checks else " / checks off")
    )
    devices = shard_devices(shards)
    engines = [shared[(engine_name, mode, k)] for k in range(shards)]
    params = jax.tree.map(jnp.copy, params0)
    trainer = None
    if mode == "train":
        make, learning_rate = OPTIMIZERS[optimizer]
        opt = make(learning_rate)
        step_keys = jax.random.PRNGKey(0)  # stochastic ops (dropout) draw from fold_in(key, step)
        trainer = (
            ShardedTrainer(engines, params, opt, devices)
            if shards > 1
            else Trainer(engines[0], params, opt, rng=step_keys)
        )
    replicas = None if trainer else [jax.device_put(params, d) for d in devices]  # a trainer's: sync_params
    cfg = _Config(
        engine_name,
        label,
        policy,
        layout,
        mode,
        graphs[shards],
        [],
        engines,
        devices,
        replicas,
        trainer,
        variadic,
        instance_sets,
        work.batch_graph,
        checks,
    )
    cfg.sync_params()
    with eb.input_checks(checks):
        cfg.mbs = cfg.plan_all(cfg.graphs)[0]  # timed in the rounds, warm here
    traced_before = cfg.trace_count
    t0 = time.perf_counter()
    with jax.profiler.TraceAnnotation("edbatch.warmup"):
        for k in range(len(cfg.graphs)):  # every shape once: compiles happen here
            cfg.run_one(k)
    cfg.warmup_s = time.perf_counter() - t0
    cfg.executables = cfg.trace_count - traced_before
    cfg.sync_params()
    return cfg


def run_benchmarks(
    work: Workload,
    policies: Sequence[str],
    layouts: Sequence[str],
    modes: Sequence[str],
    batch_size: int,
    num_batches: int = 10,
    warmup: int = 2,
    seed: int = 0,
    unbatched_instances: int = 0,
    progress=None,
    engines: Sequence[str] = ("fused",),
    max_lanes: int = 512,
    op_calls: bool = False,
    rounds: int = 3,
    floor: bool = False,
    shards: Sequence[int] = (1,),
    optimizer: str = "adam",
    checks: Sequence[str] = ("on",),
    profile: int = 0,
) -> list[BenchResult]:
    """Measures every (policy, layout, mode) on ``num_batches`` training mini-batches.

    Args:
      work: the workload (model and data).
      policies: policy names (``"depth"``, ``"agenda"``, ``"typewise"``,
        ``"fsm"``, a policy file) to compare.
      layouts: a subset of :data:`LAYOUTS`.
      modes: ``"infer"`` and/or ``"train"``.
      batch_size: instances per mini-batch.
      num_batches: timed mini-batches per configuration.
      warmup: mini-batches (of other shapes) run first; their compilations are
        the warm-up cost.
      rounds: timed rounds. In each, every configuration re-plans (schedule,
        layout) and runs its ``num_batches`` mini-batches, configurations
        taking turns in a rotating order; each reported time is the median
        over rounds of the per-mini-batch mean, so that a slow spell of a
        shared machine does not fall on one configuration only.
      unbatched_instances: if > 0, also time node-by-node execution on this
        many instances (policy ``"none"``).
      progress: optional callable(str) for status lines.
      engines: a subset of :data:`edbatch_jax.training.ENGINES`.
      max_lanes: the fused engine's widest chunk.
      op_calls: also measure the op-call bound of each (policy, mode): the
        schedule's batched op calls alone (:func:`edbatch_jax.apps.op_calls.op_calls_ms`).
      floor: also measure the compute floor of each mode
        (:func:`edbatch_jax.apps.op_calls.plan_flops` per instance at
        :func:`edbatch_jax.apps.op_calls.matmul_gflops`).
      shards: data-parallel shard counts to measure: with ``n > 1`` every
        mini-batch is split into ``n`` shards run on the first ``n`` devices
        (:mod:`edbatch_jax.training.parallel`; on a CPU ask for the devices first with
        :func:`edbatch_jax.training.parallel.use_cpu_devices`). Batches, lower bound
        and gathers are then summed over the shards.
      optimizer: the training configurations' optimizer, a key of
        :data:`OPTIMIZERS`.
      checks: ``"on"`` and/or ``"off"``: measure every configuration with
        the library's input checks, without them, or both
        (:func:`checks_cost` then gives their share of a rebuilt step).
      profile: if > 0, after the timed rounds, profile this many cached
        mini-batches of every one-device configuration
        (:func:`edbatch_jax.apps.profile.profile_calls`; needs
        :func:`~edbatch_jax.apps.profile.start_hlo_dump` before JAX
        compiled anything) into :attr:`BenchResult.profile`.
    """
    if rounds < 1 or num_batches < 1:
        raise ValueError(f"rounds and num_batches must be at least 1, got {rounds} and {num_batches}")
    shards = sorted(set(int(n) for n in shards))
    if not shards or shards[0] < 1:
        raise ValueError(f"shard counts must be at least 1, got {shards}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    if not checks or any(c not in ("on", "off") for c in checks):
        raise ValueError(f"checks must be 'on' and/or 'off', got {list(checks)}")
    check_modes = [c == "on" for c in dict.fromkeys(checks)]
    shard_devices(shards[-1])  # enough devices, or a clear error before anything runs
    if "train" in modes and shards[-1] > 1 and any(op.stochastic for op in work.model.ops.values()):
        raise ValueError(
            "training over shards of a stochastic model (dropout): sharded steps draw no per-node keys yet, so "
            "dropout would be silently off; measure it on one device (shards 1)"
        )
    say = progress or (lambda s: None)
    model = work.model
    params0 = model.init(jax.random.PRNGKey(seed))
    variadic = variadic_ops(model.ops)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(work.train))
    chunks = [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)]
    if not chunks:
        raise ValueError(f"{work.name}: {len(work.train)} training instances make no mini-batch of {batch_size}")
    need = warmup + num_batches
    if len(chunks) < need:
        chunks = (chunks * (need // max(len(chunks), 1) + 1))[:need]
    instance_sets = [[work.train[j] for j in c] for c in chunks[:need]]
    backend = jax.default_backend()
    results = []
    bounds: dict[tuple, float] = {}  # (policy, mode) -> instances/s: layouts and engines do not change it
    # shared per (engine, mode): a configuration compiles only what is new
    # all configurations' plans stay cached, since they take turns (each round adds the plans of its two
    # overlapped runs' fresh mini-batches, which are the least recently used ones by the next round)
    cached = len(policies) * len(layouts) * (need + 3 * num_batches) + 1
    shared = {
        (e, mode, k): make_engine(e, model.ops, max_lanes, cached)
        for e in engines
        for mode in modes
        for k in range(shards[-1])
    }

    def construct(sets, n, on=True):
        t0 = time.perf_counter()
        with jax.profiler.TraceAnnotation("edbatch.construct"), eb.input_checks(on):
            out = [tuple(work.batch_graph(p) for p in split_instances(x, n)) for x in sets]
        return out, (time.perf_counter() - t0) / len(sets) * 1e3

    graphs = {n: construct(instance_sets, n)[0] for n in shards}  # timed in the rounds
    construct_samples = {(n, on): [] for n in shards for on in check_modes}

    configs = []
    for engine_name, policy_name, layout, mode, n, on in itertools.product(
        engines, policies, layouts, modes, shards, check_modes
    ):
        configs.append(
            _prepare(
                work,
                shared,
                graphs,
                instance_sets,
                engine_name,
                policy_name,
                layout,
                mode,
                n,
                params0,
                variadic,
                warmup,
                say,
                optimizer,
                on,
            )
        )

    # Timed rounds: every configuration runs its mini-batches (and re-plans them) once per round, in an order
    # that rotates between rounds, so that a slow spell of a shared machine falls on all configurations alike.
    for r in range(rounds):
        turn = configs[r % len(configs) :] + configs[: r % len(configs)]
        say(f"round {r + 1} of {rounds}")
        for n, on in construct_samples:
            construct_samples[(n, on)].append(construct(instance_sets[warmup:], n, on)[1])
        for cfg in turn:
            cfg.time_round(warmup, num_batches)

    profiles: dict[int, StepProfile] = {}
    if profile:  # after the timed rounds: a trace slows what it watches
        for cfg in configs:
            if cfg.shards == 1:
                say(f"profiling {cfg.engine_name} {cfg.label}/{cfg.layout} {cfg.mode}")
                turn = itertools.cycle(range(warmup, warmup + num_batches))
                label = f"{work.name} {cfg.engine_name} {cfg.label}/{cfg.layout} {cfg.mode}"
                with eb.input_checks(cfg.checks):
                    profiles[id(cfg)] = profile_calls(lambda: cfg.run_one(next(turn)), profile, label)
                cfg.sync_params()

    gflops = matmul_gflops() if floor else 0.0
    flops: dict[str, float] = {}  # mode -> FLOPs per instance: the real nodes do not depend on policy or layout
    for cfg in configs:
        construct_ms = float(np.median(construct_samples[(cfg.shards, cfg.checks)]))
        plans = []  # per shard, its plans of the timed mini-batches
        for k, (engine, device) in enumerate(zip(cfg.engines, cfg.devices)):
            with jax.default_device(device):
                plans.append(
                    [engine.plan(cfg.params[k], ms[k].graph, ms[k].schedule, ms[k].layout) for ms in cfg.mbs[warmup:]]
                )
        if op_calls and cfg.shards == 1 and (cfg.label, cfg.mode) not in bounds:
            with jax.profiler.TraceAnnotation("edbatch.op_calls"):
                bounds[(cfg.label, cfg.mode)] = batch_size / (
                    op_calls_ms(cfg.engines[0], plans[0], cfg.params[0], cfg.mode == "train") / 1e3
                )
        if floor and cfg.mode not in flops:
            with jax.profiler.TraceAnnotation("edbatch.flops"):
                total = 0.0
                for k, (engine, device) in enumerate(zip(cfg.engines, cfg.devices)):
                    with jax.default_device(device):
                        total += plan_flops(engine, plans[k], cfg.params[k], cfg.mode == "train")
                flops[cfg.mode] = total / batch_size
        timed = [m for ms in cfg.mbs[warmup:] for m in ms]
        per_mb = lambda values: float(np.sum(values)) / len(cfg.mbs[warmup:])
        schedule_ms, layout_ms, engine_plan_ms, execute_ms, overlapped_ms, threaded_ms = (
            float(np.median(v))
            for v in (
                cfg.schedule_ms,
                cfg.layout_ms,
                cfg.engine_plan_ms,
                cfg.execute_ms,
                cfg.overlapped_ms,
                cfg.threaded_ms,
            )
        )
        rebuilt_ms = construct_ms + schedule_ms + layout_ms + engine_plan_ms + execute_ms
        results.append(
            BenchResult(
                model=work.name,
                policy=cfg.label,
                layout=cfg.layout,
                mode=cfg.mode,
                engine=cfg.engine_name,
                batch_size=batch_size,
                hidden=int(getattr(model, "hidden", 0)),
                backend=backend,
                instances_per_s=batch_size / (execute_ms / 1e3),
                instances_per_s_rebuilt=batch_size / (rebuilt_ms / 1e3),
                construct_ms=construct_ms,
                schedule_ms=schedule_ms,
                layout_ms=layout_ms,
                execute_ms=execute_ms,
                engine_plan_ms=engine_plan_ms,
                batches_per_minibatch=per_mb([m.schedule.num_batches for m in timed]),
                lower_bound=per_mb([eb.lower_bound(m.graph) for m in timed]),
                gathers_per_minibatch=per_mb([p.num_gathers for ps in plans for p in ps]),
                gathered_bytes_per_minibatch=per_mb([p.gathered_bytes for ps in plans for p in ps]),
                executables=cfg.executables,
                warmup_s=cfg.warmup_s,
                compiles_after_warmup=cfg.compiles_after_warmup,
                peak_rss_mb=_peak_rss_mb(),
                op_calls_instances_per_s=bounds.get((cfg.label, cfg.mode), 0.0),
                rounds=rounds,
                execute_ms_rounds=[round(x, 3) for x in cfg.execute_ms],
                overlapped_ms=overlapped_ms,
                instances_per_s_overlapped=batch_size / (overlapped_ms / 1e3),
                threaded_ms=threaded_ms,
                instances_per_s_threaded=batch_size / (threaded_ms / 1e3),
                flops_per_instance=flops.get(cfg.mode, 0.0),
                matmul_gflops=gflops,
                floor_instances_per_s=gflops * 1e9 / flops[cfg.mode] if floor and flops[cfg.mode] else 0.0,
                shards=cfg.shards,
                optimizer=optimizer if cfg.mode == "train" else "",
                checks="on" if cfg.checks else "off",
                profile=profiles.get(id(cfg)),
            )
        )

    if unbatched_instances > 0:
        results.extend(
            _unbatched(
                work,
                graphs[shards[0]][0][0],
                params0,
                modes,
                unbatched_instances,
                float(np.median(next(v for (n, _), v in construct_samples.items() if n == shards[0]))),
                batch_size,
                backend,
            )
        )
    return results


def _unbatched(work, graph, params, modes, count, construct_ms, batch_size, backend):
    """Node-by-node execution of ``count`` instances (the no-batching baseline)."""
    sub = eb.batch_graphs(eb.unbatch_graph(graph)[:count])
    losses = sub.nodes_of_type("loss")
    ops = work.model.ops
    out = []
    for mode in modes:
        if mode == "train":
            fn = lambda: jax.grad(lambda p: eb.run_unbatched(ops, p, sub, outputs=losses)["loss"].sum())(params)
        else:
            fn = lambda: eb.run_unbatched(ops, params, sub, outputs=losses)["loss"].sum()
        t0 = time.perf_counter()
        _block(fn())  # warm-up: compiles one executable per op type
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        _block(fn())
        per_instance_ms = (time.perf_counter() - t0) / count * 1e3
        out.append(
            BenchResult(
                model=work.name,
                policy="none",
                layout="-",
                mode=mode,
                engine="-",
                batch_size=batch_size,
                hidden=int(getattr(work.model, "hidden", 0)),
                backend=backend,
                instances_per_s=1e3 / per_instance_ms,
                instances_per_s_rebuilt=1e3 / (per_instance_ms + construct_ms / batch_size),
                construct_ms=construct_ms,
                schedule_ms=0.0,
                layout_ms=0.0,
                execute_ms=per_instance_ms * batch_size,
                engine_plan_ms=0.0,
                batches_per_minibatch=float(graph.num_nodes),
                lower_bound=float(eb.lower_bound(graph)),
                gathers_per_minibatch=0.0,
                gathered_bytes_per_minibatch=0.0,
                executables=0,
                warmup_s=warm,
                compiles_after_warmup=0,
                peak_rss_mb=_peak_rss_mb(),
            )
        )
    return out


def format_table(results: Sequence[BenchResult]) -> str:
    """A fixed-width text table of results."""
    width = max([14] + [len(r.engine_label) + 1 for r in results])  # the engine and policy columns fit their labels
    pw = max([9] + [len(r.policy) + 1 for r in results])
    head = (
        f"{'engine':<{width}}{'policy':<{pw}}{'layout':<8}{'mode':<6}{'inst/s':>9}{'rebuilt':>9}{'overlap':>9}{'thread':>8}{'build':>7}{'sched':>7}{'layout':>7}"
        f"{'eplan':>7}{'exec ms':>9}{'±%':>4}{'batches':>8}{'LB':>6}{'xLB':>6}{'gathers':>8}{'KB gath':>9}"
        f"{'exes':>6}{'warm s':>7}{'new':>4}"
    )
    with_checks = any(r.checks != "on" for r in results)
    if with_checks:
        head += f"{'chk':>4}"
    with_bound = any(r.op_calls_instances_per_s for r in results)
    if with_bound:
        head += f"{'opcall':>7}{'%opc':>6}"
    with_floor = any(r.floor_instances_per_s for r in results)
    if with_floor:
        head += f"{'MFLOP':>7}{'floor':>7}{'%flr':>6}"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.engine_label:<{width}}{r.policy:<{pw}}{r.layout:<8}{r.mode:<6}{r.instances_per_s:>9.0f}{r.instances_per_s_rebuilt:>9.0f}"
            f"{r.instances_per_s_overlapped:>9.0f}{r.instances_per_s_threaded:>8.0f}"
            f"{r.construct_ms:>7.1f}{r.schedule_ms:>7.1f}{r.layout_ms:>7.1f}{r.engine_plan_ms:>7.1f}{r.execute_ms:>9.1f}"
            f"{r.spread_pct:>4.0f}"
            f"{r.batches_per_minibatch:>8.1f}{r.lower_bound:>6.1f}"
            f"{r.batches_per_minibatch / max(r.lower_bound, 1):>6.2f}"
            f"{r.gathers_per_minibatch:>8.1f}{r.gathered_bytes_per_minibatch / 1024:>9.0f}{r.executables:>6d}"
            f"{r.warmup_s:>7.1f}{r.compiles_after_warmup:>4d}"
            + (f"{r.checks:>4}" if with_checks else "")
            + (f"{r.op_calls_instances_per_s:>7.0f}{100 * r.op_calls_fraction:>6.0f}" if with_bound else "")
            + (
                f"{r.flops_per_instance / 1e6:>7.2f}{r.floor_instances_per_s:>7.0f}{100 * r.floor_fraction:>6.0f}"
                if with_floor
                else ""
            )
        )
    return "\n".join(lines)


def checks_cost(results: Sequence[BenchResult]) -> list[dict[str, Any]]:
    """What the input checks add to a rebuilt step, per configuration measured with them and without.

    Pairs each result with checks on with the one of the same engine, policy,
    layout, mode and shards with checks off. The checks run on the host, in
    construction, scheduling, layout and the engine's plan; execution is the
    same program. So the cost is the difference of the host phases' medians,
    as a share of the rebuilt step with checks on.

    Returns:
      One dict per pair: ``engine``, ``policy``, ``layout``, ``mode``,
      ``host_ms_on``, ``host_ms_off``, ``rebuilt_ms_on`` and
      ``fraction`` (``(host_ms_on - host_ms_off) / rebuilt_ms_on``).
    """
    key = lambda r: (r.engine_label, r.policy, r.layout, r.mode, r.shards, r.batch_size, r.model)
    off = {key(r): r for r in results if r.checks == "off"}
    out = []
    for r in results:
        o = off.get(key(r)) if r.checks == "on" else None
        if o is None:
            continue
        rebuilt = r.host_ms + r.execute_ms
        out.append(
            dict(
                model=r.model,
                engine=r.engine_label,
                policy=r.policy,
                layout=r.layout,
                mode=r.mode,
                host_ms_on=r.host_ms,
                host_ms_off=o.host_ms,
                rebuilt_ms_on=rebuilt,
                fraction=(r.host_ms - o.host_ms) / max(rebuilt, 1e-9),
            )
        )
    return out


def format_checks_cost(results: Sequence[BenchResult]) -> str:
    """The :func:`checks_cost` pairs as a table ("" when no configuration ran both ways)."""
    pairs = checks_cost(results)
    if not pairs:
        return ""
    lines = [f"{'input checks':<40}{'host on':>9}{'host off':>9}{'rebuilt':>9}{'cost %':>8}"]
    for p in pairs:
        label = f"{p['engine']}/{p['policy']}/{p['layout']}/{p['mode']}"
        lines.append(
            f"{label:<40}{p['host_ms_on']:>9.2f}{p['host_ms_off']:>9.2f}{p['rebuilt_ms_on']:>9.2f}"
            f"{100 * p['fraction']:>8.2f}"
        )
    return "\n".join(lines)


def plot_results(results: Sequence[BenchResult], path: str, title: str = "") -> None:
    """A bar chart of instances per second per configuration (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.engine_label}/{r.policy}/{r.layout}/{r.mode}" for r in results]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(results)), 4))
    colors = ["tab:blue" if r.mode == "infer" else "tab:orange" for r in results]
    ax.bar(range(len(results)), [r.instances_per_s for r in results], color=colors)
    ax.set_xticks(range(len(results)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("instances / s (cached mini-batches)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def format_profiles(results: Sequence[BenchResult]) -> str:
    """The profiles of ``results`` (those that have one) as a Markdown table, with the host's planning of a rebuilt
    mini-batch (construction, schedule, layout, engine plan) as a share of a rebuilt step beside them."""
    rows = [r for r in results if r.profile is not None]
    if not rows:
        return ""
    table = format_profile_table([r.profile for r in rows]).splitlines()
    table[0] += " planning ms | planning share of a rebuilt step |"
    table[1] += "---|---|"
    for k, r in enumerate(rows):
        planning = r.construct_ms + r.schedule_ms + r.layout_ms + r.engine_plan_ms
        table[k + 2] += f" {planning:.2f} | {100 * planning / (planning + r.execute_ms):.0f} % |"
    return "\n".join(table)


def to_json(results: Sequence[BenchResult]) -> list[dict[str, Any]]:
    """The ``--json`` objects (one per configuration)."""
    out = []
    for r in results:
        d = dataclasses.asdict(r)
        d["planning_fraction"] = r.planning_fraction
        d["planning_fraction_overlapped"] = r.planning_fraction_overlapped
        d["planning_fraction_threaded"] = r.planning_fraction_threaded
        d["op_calls_fraction"] = r.op_calls_fraction
        d["floor_fraction"] = r.floor_fraction
        d["spread_pct"] = r.spread_pct
        d["profile"] = r.profile.to_json() if r.profile is not None else None
        out.append(d)
    return out
