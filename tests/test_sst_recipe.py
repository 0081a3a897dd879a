"""The SST recipe: root fine-grained and binary accuracy on dev, the test split with the best-dev parameters,
early stopping, Adagrad and L2 weight decay, pretrained GloVe embeddings."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

import edbatch_jax.training.loop as loop
from edbatch_jax.apps.cli import main
from edbatch_jax.engine.checks import NonFiniteError
from edbatch_jax.errors import EdbatchError
from edbatch_jax.training import make_engine, make_minibatch
from edbatch_jax.training.loop import TrainConfig, TrainConfigError, evaluate_nodes, make_optimizer, train
from edbatch_jax.zoo.data.embeddings import EmbeddingFileError, read_glove
from edbatch_jax.zoo.data.sentiment import root_sentiment_metrics
from edbatch_jax.zoo.data.sst import parse_tree
from edbatch_jax.zoo.workloads import load_workload

WORDS = ("good", "bad", "film", "The", "plot", "dull")


def _line(rng: np.random.Generator) -> str:
    """A PTB line of one tree of a fixed shape ((a b) c): every mini-batch has the same graph, compiled once."""
    labels, words = rng.integers(0, 5, 5), rng.choice(WORDS, 3)
    return f"({labels[0]} ({labels[1]} ({labels[2]} {words[0]}) ({labels[3]} {words[1]})) ({labels[4]} {words[2]}))"


def _lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [_line(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def work():
    """A Tree-LSTM workload (hidden 4) over hand-made trees of one shape: 8 train, 8 dev, 8 test."""
    trees = [parse_tree(x) for x in _lines(24, seed=0)]
    base = load_workload("treelstm", hidden=4, num_train=8, num_held_out=8)
    from edbatch_jax.zoo.data.sst import Vocabulary

    vocab = Vocabulary.build(trees[:8])
    model = dataclasses.replace(base.model, vocab_size=len(vocab))
    return dataclasses.replace(
        base,
        model=model,
        vocab=vocab,
        batch_graph=lambda xs: model.batch_graph(xs, vocab),
        train=trees[:8],
        held_out=trees[8:],
        dev=trees[8:16],
        test=trees[16:],
    )


# ------------------------------------------------------------------------------------------------ metrics
def _reference_metrics(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float, int]:
    """Fine-grained and binary accuracy, one root at a time (the summed-probability rule)."""
    fine = binary = count = 0
    for row, label in zip(logits, labels):
        p = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
        fine += int(np.argmax(row) == label)
        if label != 2:
            count += 1
            binary += int((p[3] + p[4] > p[0] + p[1]) == (label >= 3))
    return fine / len(labels), binary / count, count


def test_root_metrics_match_a_root_by_root_computation_and_leave_neutral_roots_out():
    logits = np.array(
        [
            [3.0, 0.0, 0.0, 0.0, 0.0],  # label 0: right, negative
            [0.0, 0.0, 2.5, 2.0, 2.0],  # label 2 (neutral): right fine-grained, no binary vote
            [0.0, 2.0, 0.0, 1.9, 1.9],  # label 3: argmax 1 (wrong) but p(3)+p(4) > p(0)+p(1): positive, right
            [0.0, 0.0, 0.0, 0.0, 5.0],  # label 1: wrong both ways
            [9.0, 1.0, 1.0, 0.0, 0.0],  # label 2: wrong fine-grained (argmax 0), no binary vote
        ]
    )
    labels = np.array([0, 2, 3, 1, 2])
    m = root_sentiment_metrics(logits, labels)
    assert m == {"roots": 5, "root_accuracy": 0.4, "root_binary_accuracy": 2 / 3, "root_binary_count": 3}
    fine, binary, count = _reference_metrics(logits, labels)
    assert (m["root_accuracy"], m["root_binary_accuracy"], m["root_binary_count"]) == (fine, binary, count)
    # the other rule: argmax over the non-neutral classes (row 2's argmax, class 1, is negative)
    assert root_sentiment_metrics(logits, labels, binary="argmax")["root_binary_accuracy"] == 1 / 3
    rng = np.random.default_rng(3)
    logits, labels = rng.normal(size=(200, 5)) * 2, rng.integers(0, 5, 200)
    m = root_sentiment_metrics(logits, labels)
    np.testing.assert_allclose(
        (m["root_accuracy"], m["root_binary_accuracy"], m["root_binary_count"]), _reference_metrics(logits, labels)
    )
    only_neutral = root_sentiment_metrics(np.zeros((2, 5)), np.array([2, 2]))
    assert only_neutral["root_binary_accuracy"] is None and only_neutral["root_binary_count"] == 0


def test_evaluation_scores_the_root_of_every_tree(work):
    """evaluate_nodes picks each tree's root among the loss nodes: the same numbers as the roots' logits."""
    engine = make_engine("stepwise", work.model.ops)
    params, _ = work.initial_params(jax.random.PRNGKey(1))
    batches = [make_minibatch(g, "agenda") for g in work.minibatches("dev", 3, keep_remainder=True)]
    assert [b.graph.num_instances for b in batches] == [3, 3, 2]
    m = evaluate_nodes(engine, params, batches, work.root_metrics)
    logits, labels = [], []
    for b, trees in zip(batches, work.minibatch_instances("dev", 3, keep_remainder=True)):
        roots = np.cumsum([2 * t.num_nodes for t in trees]) - 1  # a cell and a loss node per tree node, root last
        logits.append(np.asarray(engine.run(params, b.graph, b.schedule, roots)["logits"]))
        labels.append([t.labels[-1] for t in trees])
    fine, binary, count = _reference_metrics(np.concatenate(logits), np.concatenate(labels))
    assert m["roots"] == 8 and m["root_binary_count"] == count
    assert m["root_accuracy"] == pytest.approx(fine) and m["root_binary_accuracy"] == pytest.approx(binary)
    assert 0 <= m["accuracy"] <= 1 and m["loss"] > 0  # the all-nodes metrics stay


# ------------------------------------------------------------------------------------------------ training
def test_early_stopping_keeps_the_best_dev_parameters_for_the_test_split(work, tmp_path, monkeypatch):
    """Dev scores 0.5, 0.7, 0.6, 0.6 (scripted): with patience 2 the run stops after epoch 3, and the test split
    is evaluated once, with the parameters the epoch-1 evaluation saw, which differ from the final ones."""
    scripted = iter([0.5, 0.7, 0.6, 0.6])
    calls = []  # (split size, params) of every evaluation

    def metrics(logits, labels):
        m = root_sentiment_metrics(logits, labels)
        return {**m, "root_accuracy": next(scripted, m["root_accuracy"])}

    evaluate = loop.evaluate_nodes

    def recording(engine, params, batches, root_metrics=None):
        calls.append(jax.tree.map(np.array, params))
        return evaluate(engine, params, batches, root_metrics)

    monkeypatch.setattr(loop, "evaluate_nodes", recording)
    log = tmp_path / "log.jsonl"
    cfg = TrainConfig(epochs=10, patience=2, batch_size=4, eval_batches=0, lr=0.05, precompile=False, log_path=str(log))
    result = train(dataclasses.replace(work, metrics=metrics), cfg)
    assert result.stopped_early and result.step == 8  # 2 steps per epoch, epochs 0-3
    assert [m["root_accuracy"] for m in result.evals] == [0.5, 0.7, 0.6, 0.6]
    assert result.best["epoch"] == 1 and result.best["step"] == 4
    assert len(calls) == 5  # four dev evaluations, then the test split
    for a, b in zip(jax.tree.leaves(calls[1]), jax.tree.leaves(calls[4])):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(calls[1]), jax.tree.leaves(result.best_params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert any(
        not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(calls[1]), jax.tree.leaves(result.params))
    )
    evals = [json.loads(x)["eval"] for x in log.read_text().splitlines() if "eval" in json.loads(x)]
    assert [e["split"] for e in evals] == ["dev"] * 4 + ["test"]
    for e in evals:
        assert {"loss", "accuracy", "majority", "step", "epoch", "root_accuracy", "root_binary_accuracy"} <= set(e)
        assert e["roots"] == 8
    test = evals[-1]
    assert (test["step"], test["epoch"], test["params"]) == (4, 1, "best_dev") and test == result.test


def test_adagrad_and_weight_decay_reach_the_trainer(work, monkeypatch):
    made = []
    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda *a: made.append(a) or real(*a))
    cfg = TrainConfig(
        steps=2, batch_size=4, eval_batches=1, optimizer="adagrad", weight_decay=1e-3, lr=0.05, lr_schedule="constant"
    )
    result = train(work, dataclasses.replace(cfg, precompile=False, test=False))
    assert made[0][0] == "adagrad" and made[0][2] == 1e-3 and made[0][1](5) == 0.05
    assert len(result.losses) == 2 and np.isfinite(result.losses).all() and result.test is None
    # L2 as in Tai et al.: with zero gradients, decay alone moves every parameter by -lr * wd * param (SGD)
    params = {"w": np.array([1.0, -2.0], np.float32)}
    sgd = make_optimizer("sgd", 0.1, 0.5)
    updates, _ = sgd.update({"w": np.zeros(2, np.float32)}, sgd.init(params), params)
    np.testing.assert_allclose(updates["w"], [-0.05, 0.1])
    adagrad = make_optimizer("adagrad", 0.1, 0.5)
    updates, _ = adagrad.update({"w": np.zeros(2, np.float32)}, adagrad.init(params), params)
    assert (np.sign(updates["w"]) == [-1, 1]).all()  # toward zero
    assert isinstance(make_optimizer("adam", 0.1), optax.GradientTransformation)


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ({"patience": 0}, "patience must be at least 1"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"lr_schedule": "linear"}, "lr_schedule must be one of"),
    ],
)
def test_settings_out_of_range_name_themselves(work, setting, match):
    with pytest.raises(TrainConfigError, match=match):
        train(work, TrainConfig(**setting))


# ------------------------------------------------------------------------------------------------ embeddings
def _glove(path, rows: dict[str, list[float]]) -> str:
    path.write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in rows.items()))
    return str(path)


def test_glove_vectors_go_into_the_embedding_rows_of_their_words(work, tmp_path):
    dim = work.model.embed
    vectors = {w: list(np.arange(dim) + 10.0 * k) for k, w in enumerate(["zebra", "good", "the", "film"])}
    path = _glove(tmp_path / "glove.txt", vectors)
    fresh, report = work.initial_params(jax.random.PRNGKey(0))
    params, report = work.initial_params(jax.random.PRNGKey(0), path)
    table, before = np.asarray(params["leaf"]["embed"]["embedding"]), np.asarray(fresh["leaf"]["embed"]["embedding"])
    vocab = work.vocab
    np.testing.assert_array_equal(table[vocab.lookup("good")], vectors["good"])
    np.testing.assert_array_equal(table[vocab.lookup("film")], vectors["film"])
    np.testing.assert_array_equal(table[vocab.lookup("The")], vectors["the"])  # by its lower-case form
    untouched = [i for i, w in enumerate(vocab.id_to_token) if w not in ("good", "film", "The")]
    np.testing.assert_array_equal(table[untouched], before[untouched])  # <unk>, bad, plot, dull: random init
    assert report == {
        "path": path,
        "dim": dim,
        "words": len(vocab) - 1,
        "found": 3,
        "lowercased": 1,
        "tables": ["leaf/embed/embedding"],
    }
    for a, b in zip(jax.tree.leaves(params["internal"]), jax.tree.leaves(fresh["internal"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_glove_reader_streams_a_header_spaced_words_and_keeps_the_first_line_of_a_word(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("5 2\nfilm 1 2\n. . . 7 8\nfilm 3 4\nother 5 6\n")
    vectors, found, lowercased = read_glove(path, ["film", ". . .", "Other", "missing"])
    np.testing.assert_array_equal(vectors, [[1, 2], [7, 8], [5, 6], [0, 0]])
    assert found.tolist() == [True, True, True, False] and lowercased.tolist() == [False, False, True, False]


@pytest.mark.parametrize(
    ("third_line", "match"),
    [
        ("film 1.0 2.0", r"glove\.txt:3: 2 values, expected 3"),
        ("film 1.0 2.0 3.0 4.0", r"glove\.txt:3: 4 values, expected 3"),
        ("film 1.0 abc 3.0", r"glove\.txt:3: 'abc' is not a finite float"),
        ("film 1.0 nan 3.0", r"glove\.txt:3: 'nan' is not a finite float"),
    ],
)
def test_a_bad_glove_line_raises_the_library_error_naming_file_and_line(tmp_path, third_line, match):
    path = tmp_path / "glove.txt"
    path.write_text(f"good 0.1 0.2 0.3\nbad 0.4 0.5 0.6\n{third_line}\n")
    with pytest.raises(EmbeddingFileError, match=match) as caught:
        read_glove(path, ["good", "film"])  # dim from line 1
    assert isinstance(caught.value, EdbatchError)
    with pytest.raises(EmbeddingFileError, match=r"glove\.txt:1: 3 values, expected 4 \(the model's embedding size\)"):
        read_glove(path, ["good"], dim=4)
    with pytest.raises(EmbeddingFileError, match="no such embedding file"):
        read_glove(tmp_path / "absent.txt", ["good"])


# ------------------------------------------------------------------------------------------------ the command
def test_train_command_reports_dev_and_test_root_accuracy_with_the_recipe_options(tmp_path, capsys):
    data = tmp_path / "trees"
    data.mkdir()
    for name, seed in (("train", 0), ("dev", 1), ("test", 2)):
        (data / f"{name}.txt").write_text("\n".join(_lines(8, seed)) + "\n")
    glove = _glove(tmp_path / "glove.txt", {"good": [0.5] * 4, "dull": [-0.5] * 4, "unseen": [1.0] * 4})
    log = tmp_path / "log.jsonl"
    argv = ["train", "--model", "treelstm", "--data", str(data), "--hidden", "4", "--batch-size", "4"]
    argv += ["--epochs", "2", "--eval-batches", "0", "--optimizer", "adagrad", "--weight-decay", "1e-4"]
    argv += ["--lr", "0.05", "--lr-schedule", "constant", "--patience", "3", "--embeddings", glove]
    argv += ["--log", str(log), "--no-precompile", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "8 train / 8 dev / 8 test instances" in out and "2 epochs (4 steps)" in out
    assert "pretrained embeddings: 2 of 6 vocabulary words found" in out
    assert "root accuracy" in out and "test with the best dev parameters" in out
    records = [json.loads(x) for x in log.read_text().splitlines()]
    assert records[0]["embeddings"]["found"] == 2
    evals = [r["eval"] for r in records if "eval" in r]
    assert [e["split"] for e in evals] == ["dev", "dev", "test"]
    assert all(e["roots"] == 8 and 0 <= e["root_accuracy"] <= 1 for e in evals)

    bad = tmp_path / "bad.txt"
    bad.write_text("good 1 2 3 4\nbad 1 2 3\n")
    with pytest.raises(SystemExit, match=r"bad\.txt:2: 3 values, expected 4"):
        main([*argv[: argv.index("--embeddings") + 1], str(bad), "--steps", "1", "--quiet"])


def test_debug_checks_stop_a_run_at_the_first_non_finite_state(work):
    """``TrainConfig(debug_checks=True)``: NaN embeddings are named by node, op type and instance."""
    import jax

    class NaNEmbeddings:  # the workload, its initial embedding table all NaN
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def initial_params(self, rng, embeddings=None):
            params, report = self._inner.initial_params(rng, embeddings)
            leaf = dict(params["leaf"])
            leaf["embed"] = jax.tree.map(lambda a: a * np.nan, leaf["embed"])
            return {**params, "leaf": leaf}, report

    cfg = TrainConfig(steps=1, batch_size=4, eval_batches=1, precompile=False, debug_checks=True, test=False)
    with pytest.raises(NonFiniteError, match=r"node \d+ \(op 'leaf', instance \d+\)"):
        train(NaNEmbeddings(work), cfg)


def test_sharded_training_of_a_model_with_dropout_is_refused(work):
    dropped = dataclasses.replace(work, model=dataclasses.replace(work.model, dropout=0.5))
    with pytest.raises(TrainConfigError, match="dropout"):
        train(dropped, TrainConfig(steps=1, batch_size=4, shards=2, precompile=False))
