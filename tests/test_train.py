"""edbatch train: optax training with evaluation, metrics log and exact resume from orbax checkpoints."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from edbatch_jax.apps.cli import main
from edbatch_jax.training.loop import TrainConfig, train
from edbatch_jax.zoo.workloads import WORKLOADS, load_workload


class Interrupted(Exception):
    pass


def _work():
    return load_workload("treelstm", hidden=8, num_train=96, num_held_out=32)


def test_interrupted_run_resumes_to_exactly_the_uninterrupted_parameters(tmp_path):
    cfg = dict(steps=4, batch_size=16, checkpoint_every=2, eval_batches=1, lr=1e-2)
    full = train(_work(), TrainConfig(checkpoint_dir=str(tmp_path / "a"), **cfg))

    def crash(step, loss, rate):
        if step == 3:  # after the checkpoint of step 2, before the end
            raise Interrupted

    with pytest.raises(Interrupted):
        train(_work(), TrainConfig(checkpoint_dir=str(tmp_path / "b"), **cfg), progress=crash)
    resumed = train(_work(), TrainConfig(checkpoint_dir=str(tmp_path / "b"), **cfg), resume=True)
    assert resumed.resumed_from == 2 and resumed.step == full.step == 4
    assert resumed.losses == full.losses[2:]
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rebuilt_mini_batches_change_every_epoch_and_resume_exactly(tmp_path, monkeypatch):
    """rebuild: epoch 0 runs the cached run's mini-batches, later epochs new ones (planned during the run, on a
    worker thread); an interrupted run resumes to exactly the uninterrupted parameters."""
    import edbatch_jax.training.loop as train_module

    work = _work()
    per_epoch = len(work.minibatch_instances("train", 16))
    cfg = dict(steps=2 * per_epoch + 2, batch_size=16, checkpoint_every=per_epoch + 1, eval_batches=1, lr=1e-2)
    cfg.update(test=False, precompile=False)
    cached = train(_work(), TrainConfig(**cfg))
    engines = []
    make_engine = train_module.make_engine
    monkeypatch.setattr(
        train_module, "make_engine", lambda *a, **k: engines.append(make_engine(*a, **k)) or engines[-1]
    )
    full = train(_work(), TrainConfig(rebuild=True, checkpoint_dir=str(tmp_path / "a"), **cfg))
    assert full.losses[:per_epoch] == cached.losses[:per_epoch]  # epoch 0: the same mini-batches, same order
    assert full.losses[per_epoch:] != cached.losses[per_epoch:]  # then new ones
    assert engines[0].plans_built == cfg["steps"] + 1  # one plan per step (and one for the dev batch)

    def crash(step, loss, rate):
        if step == per_epoch + 3:  # in the second epoch, after the checkpoint at per_epoch + 1
            raise Interrupted

    with pytest.raises(Interrupted):
        train(_work(), TrainConfig(rebuild=True, checkpoint_dir=str(tmp_path / "b"), **cfg), progress=crash)
    resumed = train(_work(), TrainConfig(rebuild=True, checkpoint_dir=str(tmp_path / "b"), **cfg), resume=True)
    assert resumed.resumed_from == per_epoch + 1 and resumed.losses == full.losses[per_epoch + 1 :]
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(train_module.TrainConfigError, match="rebuild with shards"):
        TrainConfig(rebuild=True, shards=2).check()


def test_later_epochs_reuse_every_mini_batch_plan(monkeypatch):
    import edbatch_jax.training.loop as train_module

    engines = []
    make_engine = train_module.make_engine
    monkeypatch.setattr(
        train_module, "make_engine", lambda *a, **k: engines.append(make_engine(*a, **k)) or engines[-1]
    )
    # trees of one shape: compiled once; 20 training trees, one per mini-batch: more than the 16 plans cached
    work = load_workload("binary_tree", hidden=4, num_train=80, num_held_out=16)
    num_train = len(work.minibatches("train", 1))
    assert num_train > 16  # more mini-batches than an engine caches plans by default
    train(work, TrainConfig(steps=2 * num_train, batch_size=1, eval_batches=1, precompile=False))
    # one plan per training mini-batch and one for the held-out batch, built in the first epoch only
    assert engines[0].plans_built == num_train + 1


def test_train_command_lowers_the_loss_logs_and_beats_the_majority_class(tmp_path, capsys):
    log = tmp_path / "metrics.jsonl"
    assert (
        main(
            [
                "train",
                "--model",
                "treelstm",
                "--steps",
                "40",
                "--batch-size",
                "32",
                "--hidden",
                "32",
                "--lr",
                "0.02",
                "--eval-batches",
                "2",
                "--log",
                str(log),
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    first, last = map(float, [out.split("first")[1].split()[2].rstrip(","), out.split("last")[1].split()[2]])
    assert last < 0.8 * first
    acc = float(out.split("final held-out accuracy ")[1].split()[0])
    majority = float(out.split("majority class ")[-1].split(")")[0])
    assert acc > majority
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in records if "step" in r][:3] == [1, 2, 3]
    assert any("eval" in r for r in records)


def test_train_help_lists_every_model(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in WORKLOADS:
        assert name in text


def test_plan_ahead_prepares_each_item_after_the_previous_one_is_handed_out():
    from edbatch_jax.training import plan_ahead

    events = []

    def prepare(x):
        events.append(("prepare", x))
        return x * 10

    for y in plan_ahead(range(3), prepare):
        events.append(("use", y))
    # item k + 1 is prepared while the consumer's work on item k is in flight, never earlier
    assert events == [("prepare", 0), ("use", 0), ("prepare", 1), ("use", 10), ("prepare", 2), ("use", 20)]
    assert list(plan_ahead([], prepare)) == []

    def failing(x):
        if x == 1:
            raise ValueError(f"bad item {x}")
        return x

    it = plan_ahead(range(3), failing)
    assert next(it) == 0
    with pytest.raises(ValueError, match="bad item 1"):
        next(it)


def test_fit_builds_each_mini_batch_on_a_worker_and_trains_as_the_step_by_step_loop():
    """Trainer.fit: mini-batches built every step (new graphs, schedules, layouts), the next one on a worker
    thread while the current step runs; the same losses and parameters as building each before its step."""
    import threading

    import optax

    import edbatch_jax as eb
    from edbatch_jax.training import Trainer, make_minibatch, resolve_layout, variadic_ops

    work = _work()
    sets = work.minibatch_instances("train", 8, count=3)
    variadic = variadic_ops(work.model.ops)
    threads = []

    def build(xs):
        threads.append(threading.get_ident())
        return resolve_layout("planned", make_minibatch(work.batch_graph(xs), "agenda"), variadic)

    params = work.model.init(jax.random.PRNGKey(0))
    results = {}
    for overlap in (True, False):
        engine = eb.FusedEngine(work.model.ops, max_lanes=4)  # few lane buckets: faster compilation
        trainer = Trainer(engine, jax.tree.map(np.copy, params), optax.adam(1e-2))
        threads.clear()
        losses = trainer.fit(sets, build, overlap=overlap)
        results[overlap] = (losses, trainer.params, set(threads))
    (overlapped, p1, workers), (sequential, p2, callers) = results[True], results[False]
    assert len(overlapped) == 3 and overlapped == sequential and np.all(np.isfinite(overlapped))
    assert workers.isdisjoint({threading.get_ident()}) and callers == {threading.get_ident()}
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for overlap in (True, False):  # a build that returns no MiniBatch is named, not an AttributeError
        with pytest.raises(TypeError, match=r"build\(item 1\) returned a Graph"):
            trainer.fit(sets[:2], lambda xs: build(xs) if xs is sets[0] else work.batch_graph(xs), overlap=overlap)


def test_plan_ahead_in_the_background_runs_the_next_item_on_a_worker_while_the_consumer_works():
    import threading

    from edbatch_jax.training import plan_ahead

    caller = threading.get_ident()
    started = {k: threading.Event() for k in range(4)}
    events = []

    def background(x):
        assert threading.get_ident() != caller  # on the worker
        started[x].set()
        return x * 10

    def prepare(v):
        assert threading.get_ident() == caller  # the engine's part stays on the calling thread
        events.append(("prepare", v))
        return v + 1

    for y in plan_ahead(range(4), prepare, background=background):
        k = (y - 1) // 10
        if k + 1 < 4:  # item k + 1's background work started while the consumer holds item k (waits, no sleep)
            assert started[k + 1].wait(timeout=60)
        events.append(("use", y))
    assert events == [e for k in range(4) for e in (("prepare", 10 * k), ("use", 10 * k + 1))]
    assert list(plan_ahead([], prepare, background=background)) == []

    def failing(x):
        if x == 2:
            raise ValueError(f"bad item {x}")
        return x

    it = plan_ahead(range(5), lambda v: v, background=failing)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError, match="bad item 2"):
        next(it)

    drawn = []
    it = plan_ahead((drawn.append(k) or k for k in range(100)), lambda v: v, background=lambda x: x)
    assert next(it) == 0
    it.close()  # stopping early waits for the item in flight and draws no more
    assert drawn == [0, 1]


def test_training_on_mini_batches_planned_ahead_equals_the_plain_loop():
    import optax

    from edbatch_jax.training import Trainer, make_engine, make_minibatch, plan_ahead, resolve_layout, variadic_ops

    work = _work()
    graphs = work.minibatches("train", 16)[:4]
    variadic = variadic_ops(work.model.ops)
    build = lambda g: resolve_layout("planned", make_minibatch(g, "agenda"), variadic)
    results = []
    for ahead in ("no", "yes", "background"):
        engine = make_engine("fused", work.model.ops, max_lanes=4)  # few lane buckets: faster compilation
        trainer = Trainer(engine, work.model.init(jax.random.PRNGKey(0)), optax.adam(1e-2))
        batches = {
            "no": lambda: map(build, graphs),
            "yes": lambda: plan_ahead(graphs, lambda g: trainer.prepare(build(g))),
            "background": lambda: plan_ahead(graphs, trainer.prepare, background=build),
        }[ahead]()
        losses = [trainer.step(b) for b in batches]
        assert engine.plans_built == len(graphs)  # prepare's plan is the one the step runs
        results.append((losses, trainer.params))
    for other in results[1:]:
        assert other[0] == results[0][0]
        for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(other[1])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sharded_training_follows_the_unsharded_run():
    """``shards=2``: every step equals the unsharded step, up to float summation order."""
    work = load_workload("binary_tree", hidden=4, num_train=32, num_held_out=8)  # trees of one shape: few compiles
    # programs as the steps need them; no test-split evaluation (the dev one compares the runs' evaluations)
    cfg = dict(steps=2, batch_size=4, eval_batches=1, lr=1e-2, precompile=False, test=False)
    plain = train(work, TrainConfig(**cfg))
    sharded = train(work, TrainConfig(shards=2, **cfg))
    np.testing.assert_allclose(sharded.losses, plain.losses, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(sharded.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(sharded.evals[-1]["loss"], plain.evals[-1]["loss"], rtol=1e-3)
    with pytest.raises(ValueError, match="shards must be at least 1, got 0"):
        train(work, TrainConfig(shards=0, **cfg))


def test_make_minibatch_names_a_missing_loss_op_and_labels_only_integer_loss_payloads():
    import edbatch_jax as eb
    from edbatch_jax.training import make_minibatch

    def instance(loss_payload):
        b = eb.GraphBuilder()
        root = b.add("cell", b.add("leaf", payload=np.float32(1.0)))
        if loss_payload is not False:
            b.add("loss", root, payload=loss_payload)
        return b.build()

    with pytest.raises(eb.GraphError, match=r"no node of op type 'loss' \(its op types are \['leaf', 'cell'\]\)"):
        make_minibatch(eb.batch_graphs([instance(False)] * 2))
    labelled = make_minibatch(eb.batch_graphs([instance(np.int32(3)), instance(np.int32(1))]))
    np.testing.assert_array_equal(labelled.root_labels, [3, 1])
    unlabelled = make_minibatch(eb.batch_graphs([instance(None)] * 2))  # a loss node without a label
    np.testing.assert_array_equal(unlabelled.root_labels, [-1, -1])
    np.testing.assert_array_equal(unlabelled.loss_nodes, [2, 5])
