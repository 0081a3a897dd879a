"""The Child-Sum Tree-LSTM workload: batched == unbatched == an independent plain-JAX implementation.

Values and gradients, under the agenda and FSM policies, with and without
the PQ-tree layout, in both engines; its NNX twin; its n-ary trees (synthetic
and SST read as n-ary).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import edbatch_jax as eb
from edbatch_jax.zoo.data.nary import MAX_CHILDREN, NaryTree, synthetic_nary_trees
from edbatch_jax.zoo.data.sst import read_sst, synthetic_sst
from edbatch_jax.zoo.data.vocab import Vocabulary
from edbatch_jax.zoo.models.childsum import ChildSumTreeLSTM
from edbatch_jax.zoo.workloads import load_workload

SST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "trees")


def plain_childsum_losses(params, tree: NaryTree, word_ids: np.ndarray) -> jax.Array:
    """Per-node cross-entropy losses of one tree by the Child-Sum equations of Tai et al. (2015), in plain JAX.

    Reads the raw parameter arrays; shares no code with the library.
    """
    leaf, node, out = params["leaf"], params["node"], params["loss"]["out"]
    dense = lambda layer, x: x @ layer["kernel"] + layer["bias"]
    h, c, losses = {}, {}, []
    for k in range(tree.num_nodes):
        kids = tree.child_idx[tree.child_ptr[k] : tree.child_ptr[k + 1]].tolist()
        if not kids:
            x = leaf["embed"]["embedding"][word_ids[k]]
            i, o, u = jnp.split(dense(leaf["iou"], x), 3)
            c[k] = jax.nn.sigmoid(i) * jnp.tanh(u)
        else:
            h_sum = sum(h[j] for j in kids)
            i, o, u = jnp.split(dense(node["iou"], h_sum), 3)
            forget = [jax.nn.sigmoid(dense(node["forget"], h[j])) * c[j] for j in kids]
            c[k] = jax.nn.sigmoid(i) * jnp.tanh(u) + sum(forget)
        h[k] = jax.nn.sigmoid(o) * jnp.tanh(c[k])
        logits = dense(out, h[k])
        losses.append(jax.nn.logsumexp(logits) - logits[tree.labels[k]])
    return jnp.stack(losses)


@pytest.fixture(scope="module")
def setup():
    # small trees (the plain implementation is one traced recursion), with nodes of one to many children
    pool = [t for t in synthetic_nary_trees(60, seed=3) if len(t.words) <= 14]
    wide = next(t for t in pool if t.num_children.max() >= 5)
    trees = [wide] + [t for t in pool if t is not wide][:3]
    vocab = Vocabulary.build(trees)
    model = ChildSumTreeLSTM(vocab_size=len(vocab), hidden=6, embed=5)
    params = model.init(jax.random.PRNGKey(1))
    graph = model.batch_graph(trees, vocab)
    return trees, vocab, model, params, graph


@pytest.fixture(scope="module")
def reference(setup):
    """Loss and gradients of the plain-JAX implementation (jitted: the tree recursion is traced once) and of
    unbatched execution."""
    trees, vocab, model, params, graph = setup
    plain = jax.jit(jax.value_and_grad(lambda p: _plain_total(p, trees, vocab, model)))(params)
    losses = np.flatnonzero(graph.node_type == graph.op_types.index("loss"))
    unbatched = jax.value_and_grad(lambda p: eb.run_unbatched(model.ops, p, graph, outputs=losses)["loss"].sum())
    return plain, unbatched(params)


def _plain_total(params, trees, vocab, model):
    total = 0.0
    for t in trees:
        ids = vocab.encode(t) % model.vocab_size
        total = total + plain_childsum_losses(params, t, ids).sum()
    return total


def test_synthetic_trees_have_zero_to_eight_children():
    trees = synthetic_nary_trees(300, seed=0)
    counts = np.concatenate([t.num_children for t in trees])
    assert counts.min() == 0 and counts.max() == MAX_CHILDREN
    assert {1, 2, 3, 4}.issubset(set(np.unique(counts).tolist()))
    labels = np.concatenate([t.labels for t in trees])
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3, 4}
    again = synthetic_nary_trees(300, seed=0)
    assert all(np.array_equal(a.child_idx, b.child_idx) and a.tokens == b.tokens for a, b in zip(trees, again))


def test_sst_tree_read_as_nary_keeps_children_and_labels():
    tree = synthetic_sst(1, seed=4)[0]
    nary = NaryTree.from_sst(tree)
    inner = np.flatnonzero(tree.left >= 0)
    for k in inner.tolist():
        assert nary.child_idx[nary.child_ptr[k] : nary.child_ptr[k + 1]].tolist() == [tree.left[k], tree.right[k]]
    assert np.array_equal(nary.labels, tree.labels) and nary.words == tree.words


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(child_ptr=[0, 0, 0, 1], child_idx=[0]), "2 parent links"),
        (dict(child_ptr=[0, 0, 1, 2], child_idx=[0, 2]), "children precede parents"),
        (dict(child_ptr=[0, 0, 0, 2], child_idx=[0, 0]), "child 2 times"),
    ],
)
def test_malformed_nary_trees_are_refused(bad, match):
    fields = dict(child_ptr=[0, 0, 0, 2], child_idx=[0, 1], labels=[2, 2, 2], tokens=("a", "b", None))
    fields.update(bad)
    with pytest.raises(ValueError, match=match):
        arrays = [np.array(fields[k]) for k in ("child_ptr", "child_idx", "labels")]
        NaryTree(*arrays, fields["tokens"])


def test_graph_matches_the_trees(setup):
    trees, vocab, model, params, graph = setup
    assert graph.num_instances == len(trees)
    assert graph.num_nodes == 2 * sum(t.num_nodes for t in trees)
    node = graph.op_types.index("node")
    arity = graph.arity[graph.node_type == node]
    want = np.concatenate([t.num_children[t.num_children > 0] for t in trees])
    assert np.array_equal(arity, want)


@pytest.fixture(scope="module")
def engines(setup):
    """One engine of each kind for the module (its compiled programs serve every schedule of the graph)."""
    model = setup[2]
    # max_lanes=4: few lane buckets, faster compilation (wider batches run as chunks)
    return {"stepwise": eb.StepwiseEngine(model.ops), "fused": eb.FusedEngine(model.ops, max_lanes=4)}


# every engine, policy and layout, each pair of them together (pairwise covering: 4 runs instead of 8)
@pytest.mark.parametrize(
    "engine_name, policy, layout",
    [("stepwise", "agenda", False), ("stepwise", "fsm", True), ("fused", "agenda", True), ("fused", "fsm", False)],
)
def test_batched_equals_unbatched_equals_plain_jax(setup, reference, engines, engine_name, policy, layout):
    trees, vocab, model, params, graph = setup
    (vp, gp), (vu, gu) = reference
    assert graph.arity.max() >= 5
    pol = eb.resolve_policy(policy, model.op_types, shipped=load_workload("childsum_treelstm").policy_path)
    sched = eb.schedule(graph, pol)
    plan_layout = eb.plan_layout(graph, sched) if layout else None
    losses = np.flatnonzero(graph.node_type == graph.op_types.index("loss"))
    engine = engines[engine_name]
    batched = lambda p: engine.run(p, graph, sched, outputs=losses, layout=plan_layout)["loss"].sum()
    vb, gb = jax.value_and_grad(batched)(params)
    np.testing.assert_allclose(vb, vp, rtol=1e-5)
    np.testing.assert_allclose(vu, vp, rtol=1e-5)
    for g in (gb, gu):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), g, gp)
    # the training path (value_and_grad without autodiff tracing, stored residuals in the fused engine)
    plan = engine.plan(params, graph, sched, plan_layout)
    slots = plan.node_slot[losses]
    buf = int(plan.node_buffer[losses[0]])

    def loss_grad(bufs):
        return jax.value_and_grad(lambda b: b[buf]["loss"][slots].sum())(bufs)

    def loss_grad_ct(bufs):
        loss, ct = loss_grad(bufs)
        return loss, tuple(c if i == buf else None for i, c in enumerate(ct))

    vt, gt = engine.value_and_grad(plan, params, loss_grad_ct)
    np.testing.assert_allclose(vt, vp, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), gt, gp)


def test_nnx_cells_match_the_linen_model(setup):
    trees, vocab, model, params, graph = setup
    cells = model.nnx_cells(rngs=nnx.Rngs(0))
    _, state = nnx.split(cells, nnx.Param)
    linen_params = jax.tree.map(jnp.asarray, nnx.to_pure_dict(state))
    sched = eb.schedule(graph, "agenda")
    losses = np.flatnonzero(graph.node_type == graph.op_types.index("loss"))
    got = jax.grad(lambda p: eb.run(cells.ops, p, graph, sched, outputs=losses)["loss"].sum())(state)
    want = jax.jit(jax.grad(lambda p: _plain_total(p, trees, vocab, model)))(linen_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), nnx.to_pure_dict(got), want)


def test_workload_loads_synthetic_and_batches_per_lower_bound():
    wl = load_workload("childsum_treelstm", num_train=64, num_held_out=64)
    graph = wl.minibatches("train", count=1)[0]
    sched = eb.schedule(graph, wl.resolve_policy("fsm"))
    assert sched.num_batches == eb.lower_bound(graph)  # the shipped policy reaches the lower bound here


@pytest.mark.skipif(not os.path.isdir(SST), reason="needs ../shared/data (real SST trees)")
def test_workload_reads_sst_as_nary():
    wl = load_workload("childsum_treelstm", data=SST)
    first = read_sst(os.path.join(SST, "train.txt"), limit=1)[0]
    assert wl.train[0].words == first.words
    assert np.array_equal(wl.train[0].labels, first.labels)
