"""Tree-LSTM training end to end, and the demo command."""

import re

import jax
import numpy as np
import optax

import edbatch_jax as eb
from edbatch_jax.apps import cli
from edbatch_jax.training import Trainer, make_minibatch
from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
from edbatch_jax.zoo.models.treelstm import TreeLSTM


def test_training_lowers_the_loss_and_beats_the_majority_class():
    train, dev = synthetic_sst(512, seed=0), synthetic_sst(128, seed=1)
    vocab = Vocabulary.build(train)
    model = TreeLSTM(vocab_size=len(vocab), hidden=32, embed=32)
    batches = [make_minibatch(model.batch_graph(train[i : i + 64], vocab)) for i in range(0, 512, 64)]
    dev_batches = [make_minibatch(model.batch_graph(dev[i : i + 64], vocab)) for i in range(0, 128, 64)]
    trainer = Trainer(eb.StepwiseEngine(model.ops), model.init(jax.random.PRNGKey(0)), optax.adam(0.01))
    before = trainer.evaluate(dev_batches)
    losses = [trainer.step(batches[k % len(batches)]) for k in range(48)]
    after = trainer.evaluate(dev_batches)
    assert np.mean(losses[-8:]) < 0.6 * np.mean(losses[:8])
    assert after["loss"] < before["loss"]
    majority = np.bincount(np.concatenate([b.root_labels for b in dev_batches])).max() / 128
    assert after["root_accuracy"] > majority + 0.1


def test_demo_prints_policies_lower_bound_and_accuracy(capsys):
    assert (
        cli.main(
            [
                "demo",
                "--steps",
                "30",
                "--num-train",
                "256",
                "--num-dev",
                "128",
                "--hidden",
                "32",
                "--eval-batches",
                "2",
                "--unbatched-trees",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = {
        m.group(1): m.groups()
        for m in re.finditer(
            r"^(none|depth|agenda|typewise)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
            out,
            re.M,
        )
    }
    assert set(rows) == {"none", "depth", "agenda", "typewise"}, out
    majority = float(re.search(r"majority class ([\d.]+)", out).group(1))
    for policy, (_, batches, lb, ratio, infer, train, acc) in rows.items():
        assert float(batches) >= float(lb) > 0
        assert float(infer) > 0 and float(train) > 0
        assert float(acc) > majority, (policy, out)
    # on trees the type-wise greedy meets the lower bound; agenda and depth need far more
    assert rows["typewise"][1] == rows["typewise"][2]
    assert float(rows["agenda"][1]) > 1.5 * float(rows["agenda"][2])
    # every policy evaluates the same model: same accuracy
    assert len({r[-1] for r in rows.values()}) == 1


def test_vectorised_batch_graph_equals_builder_graphs():
    trees = synthetic_sst(7, seed=5)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(vocab_size=50)
    fast = model.batch_graph(trees, vocab)
    slow = eb.batch_graphs([model.tree_graph(t, vocab.encode(t)) for t in trees])
    eb.validate_graph(fast)
    assert fast.num_instances == slow.num_instances == 7
    names = lambda g: [g.op_types[t] for t in g.node_type]
    assert names(fast) == names(slow)
    np.testing.assert_array_equal(fast.arg_ptr, slow.arg_ptr)
    np.testing.assert_array_equal(fast.arg_idx, slow.arg_idx)
    np.testing.assert_array_equal(fast.instance, slow.instance)
    for v in range(fast.num_nodes):
        a, b = fast.payload(v), slow.payload(v)
        assert (a is None and b is None) or int(a) == int(b)
