"""The bundled SST models beyond Tree-LSTM: Tree-GRU, MV-RNN, double-typed Tree-LSTM.

For each model: batched values and gradients equal the unbatched reference,
the vectorised ``batch_graph`` equals the builder graphs, a short training run
lowers the loss, and the schedules against the lower bound.
"""

import functools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.training import Trainer, make_minibatch
from edbatch_jax.zoo.data.sst import Tree, Vocabulary, read_sst, synthetic_sst
from edbatch_jax.zoo.models.double_treelstm import DoubleTreeLSTM, internal_choice, tree_fingerprint
from edbatch_jax.zoo.models.mvrnn import MVRNN
from edbatch_jax.zoo.models.treegru import TreeGRU

SST = Path(__file__).resolve().parents[2] / "shared" / "data" / "trees"
TOL = dict(rtol=2e-5, atol=2e-5)
MODELS = {"treegru": TreeGRU, "mvrnn": MVRNN, "double_treelstm": DoubleTreeLSTM}
HIDDEN = 16
VOCAB_SIZE = 1024  # token ids are taken modulo it: one parameter shape for every data set
CAPACITY = 2048  # state-buffer rows: enough for the largest graph here, so buffers never grow


@functools.cache
def _kit(name: str):
    """One model, its ops, initial parameters and one engine per model, shared by the tests.

    Every test of a model runs the same compiled steps: same parameter shapes,
    same buffer capacities (compilation dominates the runtime of this file).
    """
    model = MODELS[name](vocab_size=VOCAB_SIZE, hidden=HIDDEN, embed=HIDDEN)
    ops = model.ops
    return model, ops, model.init(jax.random.PRNGKey(0)), eb.StepwiseEngine(ops, min_capacity=CAPACITY)


def _trees(data: str) -> list[Tree]:
    if data == "synthetic":
        return synthetic_sst(6, seed=25)  # 92 tree nodes (two 2-token trees), height up to 9
    return read_sst(SST / "dev.txt", limit=3)


def _assert_trees_close(a, b, **tol):
    chex.assert_trees_all_equal_structs(a, b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def _objective(out):
    """The summed loss of all loss nodes (f32 scalar)."""
    return out["loss"].sum()


@functools.cache
def _reference(name: str, data: str):
    """The graph, and the unbatched objective, its gradients and the cell states."""
    model, ops, params, _ = _kit(name)
    trees = _trees(data)
    graph = model.batch_graph(trees, Vocabulary.build(trees))
    loss_nodes = graph.nodes_of_type("loss")
    cell_nodes = np.flatnonzero(graph.node_type != graph.type_id("loss"))
    value, grads = jax.value_and_grad(lambda p: _objective(eb.run_unbatched(ops, p, graph, outputs=loss_nodes)))(params)
    states = eb.run_unbatched(ops, params, graph, outputs=cell_nodes)
    return graph, (value, grads, states)


def _check_against_unbatched(name: str, data: str, policy: str):
    _, _, params, engine = _kit(name)
    graph, (v0, g0, s0) = _reference(name, data)
    sched = eb.schedule(graph, policy)
    eb.validate_schedule(graph, sched)
    loss_nodes = graph.nodes_of_type("loss")
    cell_nodes = np.flatnonzero(graph.node_type != graph.type_id("loss"))
    v1, g1 = jax.value_and_grad(lambda p: _objective(engine.run(p, graph, sched, outputs=loss_nodes)))(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)
    _assert_trees_close(engine.run(params, graph, sched, outputs=cell_nodes), s0, **TOL)
    # every parameter is used: no all-zero gradient leaf (the embedding rows of absent words aside)
    for path, g in jax.tree_util.tree_leaves_with_path(g0):
        assert np.any(np.asarray(g) != 0), (name, jax.tree_util.keystr(path))


# ----------------------------------------------------------------- batched == unbatched
@pytest.mark.parametrize("policy", ["agenda", "typewise"])
@pytest.mark.parametrize("name", list(MODELS))
def test_values_and_grads_match_unbatched_on_synthetic_trees(name, policy):
    _check_against_unbatched(name, "synthetic", policy)


@pytest.mark.skipif(not (SST / "dev.txt").exists(), reason="SST data folder not present")
@pytest.mark.parametrize("name", list(MODELS))
def test_values_and_grads_match_unbatched_on_real_sst(name):
    _check_against_unbatched(name, "sst", "typewise")


# ----------------------------------------------------------------- graph construction
def _small_trees():
    """Seven synthetic trees with a one-node tree (a lone preterminal) among them."""
    trees = synthetic_sst(7, seed=5)
    return trees[:4] + [Tree(labels=[3], left=[-1], right=[-1], tokens=("alone",))] + trees[4:]


@pytest.mark.parametrize("name", list(MODELS))
def test_vectorised_batch_graph_equals_builder_graphs(name):
    trees = _small_trees()
    vocab = Vocabulary.build(trees)
    model = MODELS[name](vocab_size=50)
    fast = model.batch_graph(trees, vocab)
    slow = eb.batch_graphs([model.tree_graph(t, vocab.encode(t)) for t in trees])
    eb.validate_graph(fast)
    assert fast.op_types == model.op_types
    assert fast.num_instances == slow.num_instances == len(trees)
    names = lambda g: [g.op_types[t] for t in g.node_type]
    assert names(fast) == names(slow)
    np.testing.assert_array_equal(fast.arg_ptr, slow.arg_ptr)
    np.testing.assert_array_equal(fast.arg_idx, slow.arg_idx)
    np.testing.assert_array_equal(fast.instance, slow.instance)
    for v in range(fast.num_nodes):
        a, b = fast.payload(v), slow.payload(v)
        assert (a is None and b is None) or (a.dtype == b.dtype == np.int32 and int(a) == int(b)), v
    # the root's loss node ends every instance
    ends = np.flatnonzero(np.r_[fast.instance[1:] != fast.instance[:-1], True])
    assert np.all(fast.node_type[ends] == fast.type_id("loss"))
    assert [int(fast.payload(v)) for v in ends] == [int(t.labels[-1]) for t in trees]
    with pytest.raises(eb.GraphError, match="empty batch"):
        model.batch_graph([], vocab)


def test_double_typed_choice_depends_on_seed_tree_and_node_only():
    trees = synthetic_sst(40, seed=2)
    vocab = Vocabulary.build(trees)
    model = DoubleTreeLSTM(vocab_size=len(vocab))
    choice = internal_choice(trees, seed=0)
    binary = np.concatenate([t.left for t in trees]) >= 0
    assert 0.4 < choice[binary].mean() < 0.6  # both cells in use, about equally
    # the same tree gets the same cells at any position in any batch
    split = np.cumsum([t.num_nodes for t in trees])[:-1]
    per_tree = np.split(choice, split)
    shuffled = np.random.default_rng(0).permutation(len(trees))
    again = internal_choice([trees[i] for i in shuffled], seed=0)
    again = np.split(again, np.cumsum([trees[i].num_nodes for i in shuffled])[:-1])
    for pos, i in enumerate(shuffled):
        np.testing.assert_array_equal(again[pos], per_tree[i])
    # and batch_graph uses it: internal_a is type 1, internal_b type 2
    inner = trees[3].left >= 0
    graph = model.batch_graph(trees[3:4], vocab)
    np.testing.assert_array_equal(graph.node_type[0::2][inner] - 1, per_tree[3][inner])
    # another seed, another assignment; labels do not enter the fingerprint
    assert not np.array_equal(internal_choice(trees, seed=1)[binary], choice[binary])
    t = trees[0]
    relabelled = Tree(labels=(t.labels + 1) % 5, left=t.left, right=t.right, tokens=t.tokens)
    assert tree_fingerprint(relabelled) == tree_fingerprint(t)


# ----------------------------------------------------------------- training
@pytest.mark.parametrize("name", list(MODELS))
def test_short_training_lowers_the_loss(name):
    model, _, params, engine = _kit(name)
    train = synthetic_sst(256, seed=0)
    vocab = Vocabulary.build(train)
    batches = [make_minibatch(model.batch_graph(train[i : i + 32], vocab), "typewise") for i in range(0, 256, 32)]
    fresh = jax.tree.map(lambda x: jnp.asarray(np.array(x)), params)  # a copy: the update donates its params
    trainer = Trainer(engine, fresh, optax.adam(0.01))
    losses = [trainer.step(batches[k % len(batches)]) for k in range(40)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-8:]) < 0.7 * np.mean(losses[:8]), losses
    print(f"{name}: loss ratio last 8 / first 8 = {np.mean(losses[-8:]) / np.mean(losses[:8]):.3f}")


# ----------------------------------------------------------------- schedules
def _batch_counts(name):
    trees = synthetic_sst(64, seed=0)
    vocab = Vocabulary.build(trees)
    graph = _kit(name)[0].batch_graph(trees, vocab)
    counts = {"lower_bound": eb.lower_bound(graph)}
    for policy in ("depth", "agenda", "typewise"):
        sched = eb.schedule(graph, policy)
        eb.validate_schedule(graph, sched)
        counts[policy] = sched.num_batches
    return counts


@pytest.mark.parametrize("name", ["treegru", "mvrnn"])
def test_typewise_meets_the_lower_bound_with_one_internal_type(name):
    counts = _batch_counts(name)
    print(name, counts)
    assert counts["typewise"] == counts["lower_bound"], counts
    assert counts["agenda"] > counts["lower_bound"], counts


def test_double_typed_schedules_are_valid_and_above_the_lower_bound():
    counts = _batch_counts("double_treelstm")
    print(counts)
    # observed (64 synthetic trees, seed 0): lower bound 33, typewise 38, agenda 116, depth 64
    assert min(counts["depth"], counts["agenda"], counts["typewise"]) >= counts["lower_bound"], counts
