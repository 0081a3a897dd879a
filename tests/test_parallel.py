"""Data parallelism over host devices: shards of a mini-batch against the whole one, unbatched."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.training import Trainer, make_minibatch, unbatched_loss
from edbatch_jax.training.parallel import (
    ShardedTrainer,
    make_shards,
    shard_devices,
    sharded_loss,
    split_instances,
    use_cpu_devices,
)
from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
from edbatch_jax.zoo.models.treelstm import TreeLSTM

TOL = dict(rtol=2e-5, atol=2e-5)


def _assert_trees_close(a, b, **tol):
    chex.assert_trees_all_equal_structs(a, b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


@pytest.fixture(scope="module")
def setup():
    """Six small SST-like trees, a Tree-LSTM, and the unbatched loss and gradient of the whole mini-batch."""
    trees = sorted(synthetic_sst(24, seed=21), key=lambda t: len(str(t)))[:6]
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=len(vocab), hidden=8, embed=8)
    params = model.init(jax.random.PRNGKey(3))
    build = lambda part: model.batch_graph(part, vocab)
    whole = make_minibatch(build(trees), None)
    reference = jax.value_and_grad(lambda p: unbatched_loss(model.ops, p, whole))(params)
    return model, params, trees, build, reference


@pytest.fixture(scope="module")
def uneven_reference(setup):
    """The unbatched loss and gradient of the first five trees (shared by both engines' tests)."""
    model, params, trees, build, _ = setup
    whole = make_minibatch(build(trees[:5]), None)
    return jax.value_and_grad(lambda p: unbatched_loss(model.ops, p, whole))(params)


@pytest.fixture(scope="module")
def fused_engines(setup):
    """One fused engine per device, shared by the tests below (each compiles its programs once)."""
    return [eb.FusedEngine(setup[0].ops, max_lanes=4) for _ in shard_devices(2)]


def test_the_test_session_has_two_cpu_devices():
    # conftest.py asks for two; every test below relies on them
    assert len(jax.devices()) >= 2, "tests/conftest.py sets jax_num_cpu_devices before JAX starts"


def test_split_instances_keeps_order_and_balances():
    assert split_instances(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_instances(list(range(4)), 1) == [[0, 1, 2, 3]]
    assert split_instances(list(range(4)), 4) == [[0], [1], [2], [3]]
    with pytest.raises(ValueError, match="cannot split 2 instances into 3"):
        split_instances([0, 1], 3)
    with pytest.raises(ValueError, match="into 0"):
        split_instances([0, 1], 0)


def test_shard_devices_names_the_setting_when_too_few():
    assert shard_devices(2) == jax.devices()[:2]
    with pytest.raises(ValueError, match="jax_num_cpu_devices"):
        shard_devices(len(jax.devices()) + 1)
    use_cpu_devices(2)  # the backend is up with enough devices: nothing to do
    with pytest.raises(RuntimeError, match="jax_num_cpu_devices"):
        use_cpu_devices(len(jax.devices()) + 1)
    with pytest.raises(ValueError, match="at least 1"):
        use_cpu_devices(0)


@pytest.mark.parametrize("engine_kind", ["stepwise", "fused"])
def test_sharded_loss_and_grads_equal_the_whole_minibatch_unbatched(
    setup, uneven_reference, fused_engines, engine_kind
):
    """Each shard divides by the whole mini-batch's instance count: the shards add up to the mean over all."""
    model, params, trees, build, (v0, g0) = setup
    devices = shard_devices(2)
    shards = make_shards(trees, 2, build, "agenda")
    assert [s.graph.num_instances for s in shards] == [3, 3]
    engines = fused_engines if engine_kind == "fused" else [eb.StepwiseEngine(model.ops) for _ in devices]
    trainer = ShardedTrainer(engines, jax.tree.map(jnp.copy, params), optax.sgd(0.1), devices)
    v1, g1 = trainer.loss_and_grads(shards)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)
    assert jax.tree.leaves(g1)[0].devices() == {devices[0]}
    v2 = sharded_loss(trainer.engines, trainer.replicas, shards, devices)
    np.testing.assert_allclose(v2, v0, **TOL)
    uneven = make_shards(trees[:5], 2, build, "agenda")  # 3 + 2: still the mean over all five
    v3, g3 = trainer.loss_and_grads(uneven)
    v4, g4 = uneven_reference
    np.testing.assert_allclose(v3, v4, **TOL)
    _assert_trees_close(g3, g4, **TOL)


def test_shards_run_on_their_own_devices(setup, fused_engines):
    model, params, trees, build, _ = setup
    devices = shard_devices(2)
    trainer = ShardedTrainer(fused_engines, jax.tree.map(jnp.copy, params), optax.sgd(0.1), devices)
    built = [e.plans_built for e in fused_engines]
    shards = trainer.prepare(make_shards(trees[1:], 2, build, "agenda"))
    assert [e.plans_built - b for e, b in zip(fused_engines, built)] == [1, 1]
    for engine, replica, shard, device in zip(fused_engines, trainer.replicas, shards, devices):
        assert jax.tree.leaves(replica)[0].devices() == {device}
        plan = engine.plan(replica, shard.graph, shard.schedule, shard.layout)  # cached by prepare
        assert plan.tables.ints.devices() == {device}
        with jax.default_device(device):
            bufs = engine._forward(plan, replica)
        assert jax.tree.leaves(bufs)[0].devices() == {device}
    assert [e.plans_built - b for e, b in zip(fused_engines, built)] == [1, 1]


def test_sharded_steps_follow_the_unsharded_trainer(setup, fused_engines):
    """Two optax steps on two shards give the parameters of two steps on the whole mini-batch."""
    model, params, trees, build, _ = setup
    devices = shard_devices(2)
    orders = [trees[k:] + trees[:k] for k in range(2)]
    batches = [make_shards(t, 2, build, "agenda", "planned") for t in orders]
    wholes = [eb.training.resolve_layout("planned", make_minibatch(build(t), "agenda")) for t in orders]
    sharded = ShardedTrainer(fused_engines, jax.tree.map(jnp.copy, params), optax.adam(1e-2), devices)
    plain = Trainer(fused_engines[0], jax.tree.map(jnp.copy, params), optax.adam(1e-2))
    for shards, whole in zip(batches, wholes):
        np.testing.assert_allclose(sharded.step(shards), plain.step(whole), **TOL)
    _assert_trees_close(sharded.params, plain.params, rtol=1e-4, atol=1e-5)
    _assert_trees_close(sharded.replicas[1], sharded.params, rtol=0, atol=0)
    for shards in batches:  # the shard plans' tables padded to what the whole mini-batches grew: compiles
        sharded.step(shards)
    before = [e.trace_count for e in fused_engines]
    for shards in batches:  # the same shapes again: nothing new to compile
        sharded.step(shards)
    assert [e.trace_count for e in fused_engines] == before


def test_sharded_trainer_rejects_mismatched_shards(setup):
    model, params, trees, build, _ = setup
    devices = shard_devices(2)
    trainer = ShardedTrainer(
        [eb.StepwiseEngine(model.ops) for _ in devices], jax.tree.map(jnp.copy, params), optax.sgd(0.1), devices
    )
    with pytest.raises(ValueError, match="3 shards for 2 engines"):
        trainer.loss_and_grads(make_shards(trees, 3, build, "agenda"))
    with pytest.raises(ValueError, match="no shards"):
        trainer.step(())
    with pytest.raises(ValueError, match="2 engines for 1 devices"):
        ShardedTrainer(trainer.engines, params, optax.sgd(0.1), devices[:1])
    with pytest.raises(ValueError, match="at least one engine"):
        ShardedTrainer([], params, optax.sgd(0.1))


def test_assigned_parameters_reach_every_device(setup):
    """``trainer.params = p`` (e.g. restored from a checkpoint) is copied to the first device and replicated."""
    model, params, trees, build, _ = setup
    devices = shard_devices(2)
    trainer = ShardedTrainer(
        [eb.StepwiseEngine(model.ops) for _ in devices], jax.tree.map(jnp.copy, params), optax.sgd(0.1), devices
    )
    restored = jax.tree.map(lambda x: np.asarray(x) + 1.0, params)  # host arrays, as a checkpoint gives
    trainer.params = restored
    for replica, device in zip(trainer.replicas, devices):
        assert jax.tree.leaves(replica)[0].devices() == {device}
        _assert_trees_close(replica, restored, rtol=0, atol=0)
    assert trainer.replicas[0] is trainer.params
