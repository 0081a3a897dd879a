"""Ahead-of-time compilation: ``Engine.precompile`` and ``Trainer.precompile`` compile, without running anything,
exactly the programs later steps run; those steps then compile nothing, neither a trace nor in XLA."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import optax
import pytest

from edbatch_jax.training import Trainer, make_engine, make_minibatch, resolve_layout, variadic_ops
from edbatch_jax.training.loop import TrainConfig, train
from edbatch_jax.zoo.workloads import load_workload


@contextlib.contextmanager
def _xla_compiles():
    """Counts the programs XLA compiles, or loads from the persistent compilation cache, inside the block (a list:
    one entry per program)."""
    seen = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            seen.append(duration)

    def hits(event, **kwargs):
        if event == "/jax/compilation_cache/cache_hits":
            seen.append(0.0)

    jax.monitoring.register_event_duration_secs_listener(listener)
    jax.monitoring.register_event_listener(hits)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
        jax.monitoring.unregister_event_listener(hits)


def _batches(work, layout: str):
    """Mini-batches of different sizes, the largest last: without precompilation, it grows the engine's sizes."""
    variadic = variadic_ops(work.model.ops)
    graphs = [work.batch_graph(work.train[:n]) for n in (2, 4)]
    return [resolve_layout(layout, make_minibatch(g, "agenda"), variadic) for g in graphs]


def _trainer(work, engine_name):
    engine = make_engine(engine_name, work.model.ops, max_lanes=4)  # few lane buckets: faster compilation
    return Trainer(engine, work.model.init(jax.random.PRNGKey(0)), optax.adam(1e-2))


@pytest.mark.parametrize("engine_name,layout", [("fused", "planned"), ("stepwise", "dynet")])
def test_precompiled_training_steps_compile_nothing_and_train_the_same(engine_name, layout):
    work = load_workload("treelstm", hidden=4, num_train=16, num_held_out=4)
    batches = _batches(work, layout)
    ahead, plain = _trainer(work, engine_name), _trainer(work, engine_name)
    assert ahead.precompile(batches) > 0
    assert ahead.precompile(batches) == 0  # compiled once
    traced = ahead.engine.trace_count
    with _xla_compiles() as during_steps:
        ahead_losses = [ahead.step(b) for b in batches]
    assert during_steps == [] and ahead.engine.trace_count == traced
    with _xla_compiles() as during_plain:
        plain_losses = [plain.step(b) for b in batches]
    assert during_plain  # the counter sees the compilations a plain run makes
    assert ahead_losses == plain_losses
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(ahead.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("engine_name", ["fused", "stepwise"])
def test_precompiled_inference_runs_without_compiling(engine_name):
    work = load_workload("treelstm", hidden=4, num_train=16, num_held_out=4)
    batches = _batches(work, "dynet")
    engine = make_engine(engine_name, work.model.ops, max_lanes=4)
    params = work.model.init(jax.random.PRNGKey(0))
    plans = [engine.plan(params, b.graph, b.schedule, b.layout) for b in batches]
    assert sum(engine.precompile(params, p) for p in plans) > 0
    assert sum(engine.precompile(params, p) for p in plans) == 0  # compiled once
    traced = engine.trace_count
    with _xla_compiles() as during:
        jax.block_until_ready([engine.execute(p, params) for p in plans])
    assert during == [] and engine.trace_count == traced


def test_precompile_refuses_a_cotangent_mask_of_the_wrong_length_and_an_empty_list():
    work = load_workload("treelstm", hidden=4, num_train=16, num_held_out=4)
    batch = _batches(work, "dynet")[0]
    trainer = _trainer(work, "fused")
    plan = trainer.engine.plan(trainer.params, batch.graph, batch.schedule)
    with pytest.raises(ValueError, match="cotangents has 5 entries for a plan of"):
        trainer.engine.precompile(trainer.params, plan, [True] * 5)
    with pytest.raises(ValueError, match="no mini-batches"):
        trainer.precompile([])


def test_train_precompiles_every_mini_batch_it_will_run():
    work = load_workload("treelstm", hidden=4, num_train=24, num_held_out=8)
    cfg = dict(steps=4, batch_size=6, eval_batches=1, engine="stepwise")  # four mini-batches, small: few widths
    with _xla_compiles() as compiles:
        ahead = train(work, TrainConfig(**cfg), progress=lambda step, loss, rate: compiles.append(("step", step)))
    assert ahead.precompiled > 0 and ahead.precompile_s > 0
    steps = [i for i, c in enumerate(compiles) if isinstance(c, tuple)]
    assert len(steps) == 4 and steps[0] > 0  # precompilation compiled before the first step
    # after the first step's progress call, nothing compiles until the evaluation after the last step
    assert [c for c in compiles[steps[0] : steps[-1]] if not isinstance(c, tuple)] == []


def test_a_process_trainer_precompiles_its_own_update_programs_and_its_steps_compile_nothing():
    """``ProcessTrainer.precompile`` compiles the programs its steps run (flatten for the all-reduce, apply the
    reduced vector) in place of the one-process update, which its steps never call (a group of one process)."""
    from edbatch_jax.training.distributed import ProcessTrainer

    work = load_workload("treelstm", hidden=4, num_train=16, num_held_out=4)
    batches = _batches(work, "dynet")
    engine = make_engine("stepwise", work.model.ops, max_lanes=4)
    trainer = ProcessTrainer(engine, work.model.init(jax.random.PRNGKey(0)), optax.adam(1e-2))
    plain = Trainer(
        make_engine("stepwise", work.model.ops, max_lanes=4), work.model.init(jax.random.PRNGKey(0)), optax.adam(1e-2)
    )
    assert trainer.precompile(batches) == plain.precompile(batches) + 1  # two update programs instead of one
    assert trainer.precompile(batches) == 0
    with _xla_compiles() as during:
        losses = [trainer.step(b) for b in batches]
    assert during == []
    assert not any(key[0] == id(trainer._update) for key in trainer._compiled)  # not compiled for nothing
    np.testing.assert_allclose(losses, [plain.step(b) for b in batches], rtol=1e-6)
