"""Two-layer BiLSTM sequence tagger (WikiNER), shaped like the ED-Batch benchmark.

Two stacked forward LSTMs and two stacked backward LSTMs run over the word
embeddings; every token gets a tag loss on ``O tanh(Hm [f_t; b_t])``, with
``f_t``, ``b_t`` the layer-2 forward and backward states of the token.

Graph of one sentence of ``T`` tokens (op types :data:`BILSTM_OP_TYPES`); node
ids are local to the sentence, sentences are concatenated in order, and ids
are a topological order (every operand has a smaller id):

* ``0 .. 3``: ``init`` nodes, the learned initial states of forward layer 1,
  backward layer 1, forward layer 2 and backward layer 2 (no operands;
  payload: that index ``0 .. 3``, a row of one parameter table, so the four
  initial states are distinct parameters but one batchable op type);
* ``4 + t``: ``embed`` node of token ``t`` (payload: the word id), read by
  both layer-1 cells of the token;
* ``4 + T + t``: ``fwd1`` cell of token ``t``, reads (``fwd1`` of ``t - 1``,
  or init 0; ``embed`` of ``t``);
* ``4 + 2T + (T - 1 - t)``: ``bwd1`` cell of token ``t`` (backward cells are
  numbered in their processing order, last token first), reads (``bwd1`` of
  ``t + 1``, or init 1; ``embed`` of ``t``);
* ``4 + 3T + t``: ``fwd2`` cell, reads (``fwd2`` of ``t - 1``, or init 2;
  ``fwd1`` of ``t``; ``bwd1`` of ``t``);
* ``4 + 4T + (T - 1 - t)``: ``bwd2`` cell, reads (``bwd2`` of ``t + 1``, or
  init 3; ``fwd1`` of ``t``; ``bwd1`` of ``t``);
* ``4 + 5T + t``: ``loss`` node, reads (``fwd2`` of ``t``; ``bwd2`` of
  ``t``); payload: the tag.

A layer-2 cell is one node with three operands: its input ``[f1_t; b1_t]`` is
concatenated inside the cell, so there is no separate concatenation node. A
sentence has ``4 + 6T`` nodes; its last node is the loss of its last token.

Cells (``flax.linen``), H = hidden size, E = embedding size:

* embed: ``x = Embed[word]``.
* LSTM cell (all four have their own parameters): ``i, f, o, u = W [x; h] + b``
  with ``x`` the embedding (layer 1) or ``[h_f1; h_b1]`` (layer 2) and
  ``h, c`` the previous state of the same layer and direction;
  ``c' = σ(i) ⊙ tanh(u) + σ(f) ⊙ c``; ``h' = σ(o) ⊙ tanh(c')``.
* loss: ``logits = O tanh(Hm [h_f2; h_b2] + b_m) + b_o`` (5 tags) and the
  softmax cross-entropy against the tag.

States: ``{"x": f32[E]}`` for embed nodes, ``{"h": f32[H], "c": f32[H]}`` for
init and LSTM nodes, ``{"loss": f32[], "logits": f32[C]}`` for loss nodes.

The embedding and LSTM cells live in :mod:`edbatch_jax.zoo.models.cells` (shared
with the chain language model) and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax import nnx

from edbatch_jax.graph import Graph
from edbatch_jax.zoo.models.base import CellSpec, EmbeddingModel, lstm_state
from edbatch_jax.zoo.models.cells import (
    EmbedCell,
    LossCell,
    LSTMCell,
    NNXEmbedCell,
    NNXLossCell,
    NNXLSTMCell,
    embed_spec,
    lstm_spec,
)
from edbatch_jax.zoo.models.graphs import (
    check_nonempty,
    check_sequences,
    instance_graph,
    padded_csr,
    sequence_layout,
    token_positions,
)

__all__ = [
    "BILSTM_OP_TYPES",
    "BiLSTMTagger",
    "EmbedCell",
    "InitTableCell",
    "LSTMCell",
    "TaggerLossCell",
    "NNXEmbedCell",
    "NNXInitTableCell",
    "NNXLSTMCell",
    "NNXTaggerLossCell",
    "token_positions",
]

BILSTM_OP_TYPES = ("init", "embed", "fwd1", "bwd1", "fwd2", "bwd2", "loss")
"""Op types of a BiLSTM tagger graph, in type-id order."""


class InitTableCell(nn.Module):
    """Learned initial states: index (int32 scalar) -> row ``index`` of ``{"h", "c"}`` tables ``[K, H]``."""

    hidden: int
    num_states: int = 1

    @nn.compact
    def __call__(self, index):
        h0 = self.param("h0", nn.initializers.zeros, (self.num_states, self.hidden))
        c0 = self.param("c0", nn.initializers.zeros, (self.num_states, self.hidden))
        return {"h": h0[index], "c": c0[index]}


class TaggerLossCell(nn.Module):
    """Tag loss: tag (int32 scalar), forward and backward states -> ``{"loss", "logits"}``.

    ``logits = O tanh(Hm [h_f; h_b] + b_m) + b_o``, the output layer being a
    :class:`~edbatch_jax.zoo.models.cells.LossCell`.
    """

    hidden: int
    num_tags: int = 5

    @nn.compact
    def __call__(self, tag, fwd, bwd):
        h = jnp.tanh(nn.Dense(self.hidden, name="hm")(jnp.concatenate([fwd["h"], bwd["h"]], axis=-1)))
        return LossCell(self.num_tags, name="classifier")(tag, {"h": h})


class NNXInitTableCell(nnx.Module):
    """:class:`InitTableCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, num_states: int = 1):
        self.h0 = nnx.Param(jnp.zeros((num_states, hidden)))
        self.c0 = nnx.Param(jnp.zeros((num_states, hidden)))

    def __call__(self, index):
        return {"h": self.h0[...][index], "c": self.c0[...][index]}


class NNXTaggerLossCell(nnx.Module):
    """:class:`TaggerLossCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, num_tags: int = 5, *, rngs: nnx.Rngs):
        self.hm = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.classifier = NNXLossCell(hidden, num_tags, rngs=rngs)

    def __call__(self, tag, fwd, bwd):
        h = jnp.tanh(self.hm(jnp.concatenate([fwd["h"], bwd["h"]], axis=-1)))
        return self.classifier(tag, {"h": h})


@dataclasses.dataclass(frozen=True)
class BiLSTMTagger(EmbeddingModel):
    """The two-layer BiLSTM tagger: its cells, their ops, parameter init, and graphs.

    Attributes (``vocab_size``, ``hidden``, ``embed``: those of
    :class:`~edbatch_jax.zoo.models.base.EmbeddingModel`; ``hidden`` is also the
    size of the ``Hm`` layer):
      num_tags: tag classes (5 for WikiNER).
    """

    num_tags: int = 5

    op_types = BILSTM_OP_TYPES

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the four initial states, the embedding, four LSTMs (own parameters), the loss."""
        h, state, x = self.hidden, lstm_state(self.hidden), {"x": (self.embed,)}
        # an LSTM reads (its previous state, the embedding) in layer 1, (its previous state, fwd1, bwd1) in layer 2
        inputs = {"fwd1": [x], "bwd1": [x], "fwd2": [state, state], "bwd2": [state, state]}
        return {
            "init": CellSpec(InitTableCell(h, num_states=4), lambda rngs: NNXInitTableCell(h, num_states=4)),
            "embed": embed_spec(self.vocab_size, self.embed),
            **{name: lstm_spec(h, states) for name, states in inputs.items()},
            "loss": CellSpec(
                TaggerLossCell(h, self.num_tags),
                lambda rngs: NNXTaggerLossCell(h, self.num_tags, rngs=rngs),
                operands=(state, state),
            ),
        }

    def batch_graph(self, sentences: Sequence, vocab) -> Graph:
        """The batched graph of tagged sentences (one instance per sentence).

        Args:
          sentences: :class:`~edbatch_jax.zoo.data.tags.Sentence` objects.
          vocab: a :class:`~edbatch_jax.zoo.data.tags.WordVocabulary` (``encode``).
        """
        check_nonempty(sentences, "sentences")
        words = vocab.encode_all(sentences)  # every token in one pass, then one view per sentence
        ends = np.cumsum([len(s.tokens) for s in sentences])
        return self.graph_from_ids(np.split(words, ends[:-1]), [s.tags for s in sentences])

    def graph_from_ids(self, word_ids: Sequence[np.ndarray], tags: Sequence[np.ndarray]) -> Graph:
        """The batched graph of sentences given as word id and tag arrays, built vectorised.

        Raises:
          GraphError: an empty batch, an empty sentence, or words and tags of
            different lengths.
        """
        lengths = check_sequences(word_ids, tags, "sentence")
        n = lengths.shape[0]
        sizes, t, b, length = sequence_layout(lengths, 4, 6)
        rev = length - 1 - t
        # node of token t in block j: embed, fwd1, bwd1, fwd2, bwd2, loss (backward blocks reversed)
        pos = [b + 4 + j * length + (rev if j in (2, 4) else t) for j in range(6)]
        first, last = t == 0, t == length - 1
        num_nodes = int(sizes.sum())
        seg_len = np.stack([np.full(n, 4), *([lengths] * 6)], axis=1).ravel()
        node_type = np.repeat(np.tile(np.arange(7, dtype=np.int32), n), seg_len)
        args = np.full((num_nodes, 3), -1, np.int64)
        args[pos[1], 0] = np.where(first, b + 0, pos[1] - 1)
        args[pos[2], 0] = np.where(last, b + 1, pos[2] - 1)
        args[pos[3], 0] = np.where(first, b + 2, pos[3] - 1)
        args[pos[4], 0] = np.where(last, b + 3, pos[4] - 1)
        for j in (1, 2):
            args[pos[j], 1] = pos[0]
        for j in (3, 4):
            args[pos[j], 1] = pos[1]
            args[pos[j], 2] = pos[2]
        args[pos[5], 0] = pos[3]
        args[pos[5], 1] = pos[4]
        words = (np.concatenate([np.asarray(w) for w in word_ids]).astype(np.int64) % self.vocab_size).astype(np.int32)
        labels = np.concatenate([np.asarray(y) for y in tags]).astype(np.int32)
        payloads = (np.tile(np.arange(4, dtype=np.int32), n), words, None, None, None, None, labels)
        return instance_graph(node_type, *padded_csr(args), sizes, payloads, self.op_types)
