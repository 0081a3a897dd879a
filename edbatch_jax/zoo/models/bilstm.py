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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from edbatch_jax.engine.flax_ops import NNXCells, linen_op
from edbatch_jax.engine.ops import Op
from edbatch_jax.graph import Graph, GraphError
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.zoo.models.lattice import lstm_step
from edbatch_jax.zoo.models.treelstm import LossCell, NNXLossCell

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


class EmbedCell(nn.Module):
    """Word id (int32 scalar) -> ``{"x": f32[E]}``."""

    vocab_size: int
    embed: int

    @nn.compact
    def __call__(self, word):
        return {"x": nn.Embed(self.vocab_size, self.embed, name="embed")(word)}


class InitTableCell(nn.Module):
    """Learned initial states: index (int32 scalar) -> row ``index`` of ``{"h", "c"}`` tables ``[K, H]``."""

    hidden: int
    num_states: int = 1

    @nn.compact
    def __call__(self, index):
        h0 = self.param("h0", nn.initializers.zeros, (self.num_states, self.hidden))
        c0 = self.param("c0", nn.initializers.zeros, (self.num_states, self.hidden))
        return {"h": h0[index], "c": c0[index]}


def _features(state) -> jax.Array:
    """The input features a state offers to an LSTM cell: ``x`` (embeddings) or ``h``."""
    return state["x"] if "x" in state else state["h"]


class LSTMCell(nn.Module):
    """LSTM step: previous ``{"h", "c"}`` and input states -> ``{"h", "c"}``; no payload.

    The input is the concatenation of the operands' features (``x`` of an
    embedding, ``h`` of an LSTM state), so a cell may read several inputs; the
    op's arity is ``1 + number of inputs``.
    """

    hidden: int

    @nn.compact
    def __call__(self, payload, prev, *inputs):
        del payload
        x = jnp.concatenate([_features(s) for s in inputs] + [prev["h"]], axis=-1)
        return lstm_step(nn.Dense(4 * self.hidden, name="gates"), x, prev["c"])


class TaggerLossCell(nn.Module):
    """Tag loss: tag (int32 scalar), forward and backward states -> ``{"loss", "logits"}``.

    ``logits = O tanh(Hm [h_f; h_b] + b_m) + b_o``, the output layer being a
    :class:`~edbatch_jax.zoo.models.treelstm.LossCell`.
    """

    hidden: int
    num_tags: int = 5

    @nn.compact
    def __call__(self, tag, fwd, bwd):
        h = jnp.tanh(nn.Dense(self.hidden, name="hm")(jnp.concatenate([fwd["h"], bwd["h"]], axis=-1)))
        return LossCell(self.num_tags, name="classifier")(tag, {"h": h})


class NNXEmbedCell(nnx.Module):
    """:class:`EmbedCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)

    def __call__(self, word):
        return {"x": self.embed(word)}


class NNXInitTableCell(nnx.Module):
    """:class:`InitTableCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, num_states: int = 1):
        self.h0 = nnx.Param(jnp.zeros((num_states, hidden)))
        self.c0 = nnx.Param(jnp.zeros((num_states, hidden)))

    def __call__(self, index):
        return {"h": self.h0[...][index], "c": self.c0[...][index]}


class NNXLSTMCell(nnx.Module):
    """:class:`LSTMCell` in ``flax.nnx``: ``in_features`` is the summed width of the inputs' features."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.gates = nnx.Linear(in_features + hidden, 4 * hidden, rngs=rngs)

    def __call__(self, payload, prev, *inputs):
        del payload
        x = jnp.concatenate([_features(s) for s in inputs] + [prev["h"]], axis=-1)
        return lstm_step(self.gates, x, prev["c"])


class NNXTaggerLossCell(nnx.Module):
    """:class:`TaggerLossCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, num_tags: int = 5, *, rngs: nnx.Rngs):
        self.hm = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.classifier = NNXLossCell(hidden, num_tags, rngs=rngs)

    def __call__(self, tag, fwd, bwd):
        h = jnp.tanh(self.hm(jnp.concatenate([fwd["h"], bwd["h"]], axis=-1)))
        return self.classifier(tag, {"h": h})


def token_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sentence, position)`` int64 ``[sum(lengths)]`` of every token of concatenated sentences."""
    lengths = np.asarray(lengths, dtype=np.int64)
    sentence = np.repeat(np.arange(lengths.shape[0]), lengths)
    return sentence, np.arange(sentence.shape[0]) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def _check_sequences(word_ids: Sequence[np.ndarray], labels: Sequence[np.ndarray], what: str) -> np.ndarray:
    if len(word_ids) == 0:
        raise GraphError(f"batch_graph got an empty batch: no {what}")
    if len(word_ids) != len(labels):
        raise GraphError(f"batch_graph got {len(word_ids)} word sequences but {len(labels)} label sequences")
    lengths = np.array([np.shape(w)[0] for w in word_ids], dtype=np.int64)
    bad = np.flatnonzero((lengths == 0) | (lengths != [np.shape(y)[0] for y in labels]))
    if bad.size:
        k = int(bad[0])
        raise GraphError(
            f"{what} {k}: {lengths[k]} words and {np.shape(labels[k])[0]} labels (need as many, at least one)"
        )
    return lengths


@dataclasses.dataclass(frozen=True)
class BiLSTMTagger:
    """The two-layer BiLSTM tagger: its cells, their ops, parameter init, and graphs.

    Attributes:
      vocab_size: rows of the embedding table (word ids are taken modulo it).
      hidden: hidden size H (default 128, as in the reference benchmark); also
        the size of the ``Hm`` layer.
      embed: embedding size E (default 128).
      num_tags: tag classes (5 for WikiNER).
    """

    vocab_size: int
    hidden: int = 128
    embed: int = 128
    num_tags: int = 5

    op_types = BILSTM_OP_TYPES

    @property
    def cells(self) -> dict[str, nn.Module]:
        cells = {"init": InitTableCell(self.hidden, num_states=4), "embed": EmbedCell(self.vocab_size, self.embed)}
        for name in ("fwd1", "bwd1", "fwd2", "bwd2"):
            cells[name] = LSTMCell(self.hidden)
        cells["loss"] = TaggerLossCell(self.hidden, self.num_tags)
        return cells

    @functools.cached_property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; each cell reads ``params[name]``.

        Built once per model object (do not mutate it), so ``eb.run(model.ops, ...)``
        reuses the engine's compiled steps across calls.
        """
        arity = {"fwd1": 2, "bwd1": 2, "fwd2": 3, "bwd2": 3}
        return {name: linen_op(cell, name, arity=arity.get(name)) for name, cell in self.cells.items()}

    def nnx_cells(self, *, rngs: nnx.Rngs) -> NNXCells:
        """The same cells as ``flax.nnx`` modules in an :class:`~edbatch_jax.NNXCells`."""
        h = self.hidden
        cells = {
            "init": NNXInitTableCell(h, num_states=4),
            "embed": NNXEmbedCell(self.vocab_size, self.embed, rngs=rngs),
        }
        for name, width in (("fwd1", self.embed), ("bwd1", self.embed), ("fwd2", 2 * h), ("bwd2", 2 * h)):
            cells[name] = NNXLSTMCell(width, h, rngs=rngs)
        cells["loss"] = NNXTaggerLossCell(h, self.num_tags, rngs=rngs)
        return NNXCells.matching(self.ops, cells)

    def init(self, rng: jax.Array) -> dict:
        """Parameters, one entry per op type (f32)."""
        keys = dict(zip(self.op_types, jax.random.split(rng, len(self.op_types))))
        cells = self.cells
        state = {"h": jnp.zeros(self.hidden), "c": jnp.zeros(self.hidden)}
        x = {"x": jnp.zeros(self.embed)}
        params = {
            "init": cells["init"].init(keys["init"], jnp.int32(0))["params"],
            "embed": cells["embed"].init(keys["embed"], jnp.int32(0))["params"],
            "loss": cells["loss"].init(keys["loss"], jnp.int32(0), state, state)["params"],
        }
        for name in ("fwd1", "bwd1"):
            params[name] = cells[name].init(keys[name], None, state, x)["params"]
        for name in ("fwd2", "bwd2"):
            params[name] = cells[name].init(keys[name], None, state, state, state)["params"]
        return params

    def batch_graph(self, sentences: Sequence, vocab) -> Graph:
        """The batched graph of tagged sentences (one instance per sentence).

        Args:
          sentences: :class:`~edbatch_jax.zoo.data.tags.Sentence` objects.
          vocab: a :class:`~edbatch_jax.zoo.data.tags.WordVocabulary` (``encode``).
        """
        return self.graph_from_ids([vocab.encode(s) for s in sentences], [s.tags for s in sentences])

    def graph_from_ids(self, word_ids: Sequence[np.ndarray], tags: Sequence[np.ndarray]) -> Graph:
        """The batched graph of sentences given as word id and tag arrays, built vectorised.

        Raises:
          GraphError: an empty batch, an empty sentence, or words and tags of
            different lengths.
        """
        lengths = _check_sequences(word_ids, tags, "sentence")
        n = lengths.shape[0]
        sizes = 4 + 6 * lengths
        base = np.cumsum(sizes) - sizes
        sent, t = token_positions(lengths)
        b, length = base[sent], lengths[sent]
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
        arity = (args >= 0).sum(1)
        words = (np.concatenate([np.asarray(w) for w in word_ids]).astype(np.int64) % self.vocab_size).astype(np.int32)
        labels = np.concatenate([np.asarray(y) for y in tags]).astype(np.int32)
        return Graph(
            node_type=node_type,
            arg_ptr=np.concatenate([[0], np.cumsum(arity)]).astype(np.int32),
            arg_idx=args[args >= 0].astype(np.int32),
            instance=np.repeat(np.arange(n, dtype=np.int32), sizes),
            payload_row=payload_rows(node_type, len(self.op_types)),
            payloads=(np.tile(np.arange(4, dtype=np.int32), n), words, None, None, None, None, labels),
            op_types=self.op_types,
            num_instances=n,
        )
