"""BiLSTM tagger and chain LSTM language model: graphs, batched = unbatched values and gradients, training."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.engine import engine_for
from edbatch_jax.training import Trainer, make_minibatch, root_loss_nodes
from edbatch_jax.zoo.data.tags import WordVocabulary, read_tagged, synthetic_tagged
from edbatch_jax.zoo.models.bilstm import BILSTM_OP_TYPES, BiLSTMTagger
from edbatch_jax.zoo.models.chain import CHAIN_OP_TYPES, ChainLM, next_word_targets

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "tags" / "dev.txt"
TOL = dict(rtol=2e-5, atol=2e-5)
VOCAB = 512  # embedding rows; word ids are taken modulo it, so one model serves every vocabulary

# One model object per workload: its ops (and so its compiled steps) are shared by all tests.
TAGGER = BiLSTMTagger(vocab_size=VOCAB, hidden=16, embed=16)
CHAIN = ChainLM(vocab_size=VOCAB, hidden=16, embed=16, num_classes=64)


@pytest.fixture(scope="module")
def synthetic():
    sents = synthetic_tagged(3, seed=1, max_length=9)
    return sents, WordVocabulary.build(synthetic_tagged(200, seed=1))


@pytest.fixture(scope="module")
def real():
    if not DEV.exists():
        pytest.skip("WikiNER data not present")
    dev = read_tagged(DEV)
    return [s for s in dev if 3 <= len(s) <= 9][:3], WordVocabulary.build(dev)


def _check_against_unbatched(model, graph, policies=("agenda", "typewise")):
    """Loss-node states, and gradients of the summed loss, of eb.run equal eb.run_unbatched."""
    eb.validate_graph(graph)
    assert graph.op_types == model.op_types
    params = model.init(jax.random.PRNGKey(0))
    losses = graph.nodes_of_type("loss")
    ops = model.ops

    def summed(run):
        def f(p):
            out = run(p)
            return out["loss"].sum(), out

        return jax.value_and_grad(f, has_aux=True)

    (v0, out0), g0 = summed(lambda p: eb.run_unbatched(ops, p, graph, outputs=losses))(params)
    for policy in policies:
        sched = eb.schedule(graph, policy)
        eb.validate_schedule(graph, sched)
        (v1, out1), g1 = summed(lambda p: eb.run(ops, p, graph, sched, outputs=losses))(params)
        np.testing.assert_allclose(v1, v0, **TOL)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), out1, out0)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g1, g0)


def _assert_same_graph(a: eb.Graph, b: eb.Graph):
    """Same nodes (op type names), operands, instances and payloads."""
    np.testing.assert_array_equal(np.array(a.op_types)[a.node_type], np.array(b.op_types)[b.node_type])
    np.testing.assert_array_equal(a.arg_ptr, b.arg_ptr)
    np.testing.assert_array_equal(a.arg_idx, b.arg_idx)
    np.testing.assert_array_equal(a.instance, b.instance)
    assert a.num_instances == b.num_instances
    for name in b.op_types:
        pa, pb = a.payloads[a.type_id(name)], b.payloads[b.type_id(name)]
        assert (pa is None) == (pb is None), name
        if pa is not None:
            np.testing.assert_array_equal(pa, pb)
            assert pa.dtype == pb.dtype == np.int32


def _train(model, graph, steps=30):
    """Losses of ``steps`` Adam steps on one mini-batch."""
    batch = make_minibatch(graph, "agenda")
    assert all(graph.op_types[graph.node_type[v]] == "loss" for v in root_loss_nodes(graph))
    trainer = Trainer(engine_for(model.ops), model.init(jax.random.PRNGKey(1)), optax.adam(0.01))
    return [trainer.step(batch) for _ in range(steps)]


# ----------------------------------------------------------------------------- BiLSTM tagger
def _naive_tagger_graph(words, tags, vocab_size):
    """One sentence built node by node, following the documented layout."""
    b = eb.GraphBuilder()
    T = len(words)
    init = [b.add("init", payload=np.int32(k)) for k in range(4)]
    emb = [b.add("embed", payload=np.int32(w % vocab_size)) for w in words]

    def chain(op, start, order, inputs):
        out, prev = [None] * T, start
        for t in order:
            prev = out[t] = b.add(op, prev, *inputs(t))
        return out

    fwd1 = chain("fwd1", init[0], range(T), lambda t: [emb[t]])
    bwd1 = chain("bwd1", init[1], reversed(range(T)), lambda t: [emb[t]])
    fwd2 = chain("fwd2", init[2], range(T), lambda t: [fwd1[t], bwd1[t]])
    bwd2 = chain("bwd2", init[3], reversed(range(T)), lambda t: [fwd1[t], bwd1[t]])
    for t in range(T):
        b.add("loss", fwd2[t], bwd2[t], payload=np.int32(tags[t]))
    return b.build()


def test_tagger_graph_layout(synthetic):
    sents, vocab = synthetic
    graph = TAGGER.batch_graph(sents, vocab)
    eb.validate_graph(graph)
    naive = eb.batch_graphs([_naive_tagger_graph(vocab.encode(s), s.tags, VOCAB) for s in sents])
    _assert_same_graph(graph, naive)
    lengths = np.array([len(s) for s in sents])
    assert graph.num_nodes == (4 + 6 * lengths).sum() and graph.op_types == BILSTM_OP_TYPES
    assert len(BILSTM_OP_TYPES) <= 8
    last = np.cumsum(4 + 6 * lengths) - 1
    np.testing.assert_array_equal(root_loss_nodes(graph), last)
    T = lengths[0]
    assert list(graph.args(4 + 2 * T)) == [1, 4 + T - 1]  # bwd1 of the last token: init 1, its embedding
    assert list(graph.args(4 + 5 * T)) == [4 + 3 * T, 4 + 5 * T - 1]  # loss of token 0: fwd2 of 0, bwd2 of 0
    assert np.all(graph.arg_idx < graph.edge_dst())  # ids are a topological order
    # the tag of the last token of every sentence is the payload of the sentence's last node
    np.testing.assert_array_equal(
        graph.payloads[graph.type_id("loss")][graph.payload_row[last]], [s.tags[-1] for s in sents]
    )


def test_tagger_graph_errors():
    with pytest.raises(eb.GraphError, match="empty batch"):
        TAGGER.graph_from_ids([], [])
    with pytest.raises(eb.GraphError, match="empty batch: no sentences"):
        TAGGER.batch_graph([], None)
    with pytest.raises(eb.GraphError, match="sentence 1: 2 words and 1 labels"):
        TAGGER.graph_from_ids([np.array([1]), np.array([1, 2])], [np.array([0]), np.array([0])])
    with pytest.raises(eb.GraphError, match="sentence 0: 0 words"):
        TAGGER.graph_from_ids([np.array([], np.int32)], [np.array([], np.int32)])
    with pytest.raises(eb.GraphError, match="sentence 1: its words and labels must be sequences, got int64"):
        TAGGER.graph_from_ids([np.array([1]), np.int64(3)], [np.array([0]), np.array([0])])


def test_tagger_batched_equals_unbatched_on_synthetic_sentences(synthetic):
    sents, vocab = synthetic
    _check_against_unbatched(TAGGER, TAGGER.batch_graph(sents, vocab))


def test_tagger_batched_equals_unbatched_on_real_sentences(real):
    sents, vocab = real
    _check_against_unbatched(TAGGER, TAGGER.batch_graph(sents, vocab), policies=("agenda",))


def test_tagger_training_lowers_the_loss(synthetic):
    sents, vocab = synthetic
    losses = _train(TAGGER, TAGGER.batch_graph(sents, vocab))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.3 * losses[0], losses


def test_tagger_parameters_are_distinct_per_layer_and_direction():
    params = TAGGER.init(jax.random.PRNGKey(0))
    assert set(params) == set(BILSTM_OP_TYPES)
    assert params["init"]["h0"].shape == (4, 16)
    assert params["fwd1"]["gates"]["kernel"].shape == (16 + 16, 64)  # [embedding; h]
    assert params["fwd2"]["gates"]["kernel"].shape == (16 + 16 + 16, 64)  # [h_f1; h_b1; h]
    assert not np.allclose(params["fwd1"]["gates"]["kernel"], params["bwd1"]["gates"]["kernel"])
    assert TAGGER.ops is TAGGER.ops  # built once: eb.run(model.ops, ...) reuses compiled steps


# ----------------------------------------------------------------------------- chain LM
def _naive_chain_graph(words, vocab_size, num_classes):
    b = eb.GraphBuilder()
    prev = b.add("init")
    emb = [b.add("embed", payload=np.int32(w % vocab_size)) for w in words]
    cells = []
    for e in emb:
        prev = b.add("lstm", prev, e)
        cells.append(prev)
    for t, c in enumerate(cells):
        target = (words[t + 1] % (num_classes - 1)) if t + 1 < len(words) else num_classes - 1
        b.add("loss", c, payload=np.int32(target))
    return b.build()


def test_chain_graph_layout(synthetic):
    sents, vocab = synthetic
    graph = CHAIN.batch_graph(sents, vocab)
    eb.validate_graph(graph)
    naive = eb.batch_graphs([_naive_chain_graph(vocab.encode(s), VOCAB, CHAIN.num_classes) for s in sents])
    _assert_same_graph(graph, naive)
    lengths = np.array([len(s) for s in sents])
    assert graph.op_types == CHAIN_OP_TYPES and graph.num_nodes == (1 + 3 * lengths).sum()
    np.testing.assert_array_equal(root_loss_nodes(graph), np.cumsum(1 + 3 * lengths) - 1)
    assert next_word_targets(np.array([5, 70, 3]), 64).tolist() == [70 % 63, 3, 63]
    with pytest.raises(eb.GraphError, match="empty batch"):
        CHAIN.graph_from_ids([])
    with pytest.raises(ValueError, match="num_classes"):
        ChainLM(vocab_size=10, num_classes=1)


def test_chain_batched_equals_unbatched_on_synthetic_sentences(synthetic):
    sents, vocab = synthetic
    _check_against_unbatched(CHAIN, CHAIN.batch_graph(sents, vocab))


def test_chain_batched_equals_unbatched_on_real_sentences(real):
    sents, vocab = real
    _check_against_unbatched(CHAIN, CHAIN.batch_graph(sents, vocab), policies=("agenda",))


def test_chain_training_lowers_the_loss(synthetic):
    sents, vocab = synthetic
    losses = _train(CHAIN, CHAIN.batch_graph(sents, vocab))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
