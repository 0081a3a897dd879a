"""Chain LSTM language model over sentences of varying length.

Every position predicts the next word (its id modulo ``num_classes - 1``);
the last position predicts the end token ``num_classes - 1``.

Graph of one sentence of ``T`` words (op types :data:`CHAIN_OP_TYPES`); node
ids are local to the sentence, sentences are concatenated in order, and ids
are a topological order (every operand has a smaller id):

* ``0``: the ``init`` node, the learned initial state (no operands);
* ``1 + t``: ``embed`` node of word ``t`` (payload: the word id);
* ``1 + T + t``: ``lstm`` cell, reads (``lstm`` of ``t - 1``, or the init
  node; ``embed`` of ``t``);
* ``1 + 2T + t``: ``loss`` node, reads ``lstm`` of ``t``; payload: the target,
  ``word[t + 1] % (num_classes - 1)``, or ``num_classes - 1`` for ``t = T - 1``.

A sentence has ``1 + 3T`` nodes; its last node is the loss of its last word.

Cells: the embedding and LSTM cells of :mod:`edbatch_jax.zoo.models.bilstm`, the
learned initial state of :mod:`edbatch_jax.zoo.models.lattice`, and the classifier
:class:`~edbatch_jax.zoo.models.treelstm.LossCell` (``logits = W_o h + b_o``).
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
from edbatch_jax.graph import Graph
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.zoo.models.bilstm import (
    EmbedCell,
    LSTMCell,
    NNXEmbedCell,
    NNXLSTMCell,
    _check_sequences,
    token_positions,
)
from edbatch_jax.zoo.models.lattice import InitCell, NNXInitCell
from edbatch_jax.zoo.models.treelstm import LossCell, NNXLossCell

__all__ = ["CHAIN_OP_TYPES", "ChainLM", "next_word_targets"]

CHAIN_OP_TYPES = ("init", "embed", "lstm", "loss")
"""Op types of a chain language-model graph, in type-id order."""


def next_word_targets(word_ids: np.ndarray, num_classes: int) -> np.ndarray:
    """int32 ``[T]``: the next word's id modulo ``num_classes - 1``, then the end token ``num_classes - 1``."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (a word class and the end token), got {num_classes}.")
    ids = np.asarray(word_ids, dtype=np.int64)
    return np.append(ids[1:] % (num_classes - 1), num_classes - 1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class ChainLM:
    """The chain LSTM language model: its cells, their ops, parameter init, and graphs.

    Attributes:
      vocab_size: rows of the embedding table (word ids are taken modulo it).
      hidden: hidden size H (default 128).
      embed: embedding size E (default 128).
      num_classes: output classes: ``num_classes - 1`` word classes (word id
        modulo ``num_classes - 1``) and the end token (default 512).
    """

    vocab_size: int
    hidden: int = 128
    embed: int = 128
    num_classes: int = 512

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a word class and the end token), got {self.num_classes}.")

    op_types = CHAIN_OP_TYPES

    @property
    def cells(self) -> dict[str, nn.Module]:
        return {
            "init": InitCell(self.hidden),
            "embed": EmbedCell(self.vocab_size, self.embed),
            "lstm": LSTMCell(self.hidden),
            "loss": LossCell(self.num_classes),
        }

    @functools.cached_property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; each cell reads ``params[name]``.

        Built once per model object (do not mutate it), so ``eb.run(model.ops, ...)``
        reuses the engine's compiled steps across calls.
        """
        return {name: linen_op(cell, name, arity=2 if name == "lstm" else None) for name, cell in self.cells.items()}

    def nnx_cells(self, *, rngs: nnx.Rngs) -> NNXCells:
        """The same cells as ``flax.nnx`` modules in an :class:`~edbatch_jax.NNXCells`."""
        cells = {
            "init": NNXInitCell(self.hidden),
            "embed": NNXEmbedCell(self.vocab_size, self.embed, rngs=rngs),
            "lstm": NNXLSTMCell(self.embed, self.hidden, rngs=rngs),
            "loss": NNXLossCell(self.hidden, self.num_classes, rngs=rngs),
        }
        return NNXCells.matching(self.ops, cells)

    def init(self, rng: jax.Array) -> dict:
        """Parameters ``{"init", "embed", "lstm", "loss"}`` (f32)."""
        keys = jax.random.split(rng, 4)
        cells = self.cells
        state = {"h": jnp.zeros(self.hidden), "c": jnp.zeros(self.hidden)}
        return {
            "init": cells["init"].init(keys[0], None)["params"],
            "embed": cells["embed"].init(keys[1], jnp.int32(0))["params"],
            "lstm": cells["lstm"].init(keys[2], None, state, {"x": jnp.zeros(self.embed)})["params"],
            "loss": cells["loss"].init(keys[3], jnp.int32(0), state)["params"],
        }

    def batch_graph(self, sentences: Sequence, vocab) -> Graph:
        """The batched graph of sentences (one instance per sentence); their tags are ignored.

        Args:
          sentences: :class:`~edbatch_jax.zoo.data.tags.Sentence` objects.
          vocab: a :class:`~edbatch_jax.zoo.data.tags.WordVocabulary` (``encode``).
        """
        return self.graph_from_ids([vocab.encode(s) for s in sentences])

    def graph_from_ids(self, word_ids: Sequence[np.ndarray]) -> Graph:
        """The batched graph of word id arrays, built vectorised.

        Targets come from the ids as given (before the modulo ``vocab_size``
        of the embedding lookup).

        Raises:
          GraphError: an empty batch or an empty sentence.
        """
        lengths = _check_sequences(word_ids, word_ids, "sentence")
        n = lengths.shape[0]
        sizes = 1 + 3 * lengths
        base = np.cumsum(sizes) - sizes
        sent, t = token_positions(lengths)
        b, length = base[sent], lengths[sent]
        embed, lstm, loss = (b + 1 + j * length + t for j in range(3))
        num_nodes = int(sizes.sum())
        seg_len = np.stack([np.ones(n, np.int64), lengths, lengths, lengths], axis=1).ravel()
        node_type = np.repeat(np.tile(np.arange(4, dtype=np.int32), n), seg_len)
        args = np.full((num_nodes, 2), -1, np.int64)
        args[lstm, 0] = np.where(t == 0, b, lstm - 1)
        args[lstm, 1] = embed
        args[loss, 0] = lstm
        arity = (args >= 0).sum(1)
        ids = np.concatenate([np.asarray(w, dtype=np.int64) for w in word_ids])
        words = (ids % self.vocab_size).astype(np.int32)
        end = self.num_classes - 1
        targets = np.where(t == length - 1, end, np.append(ids[1:], 0) % end).astype(np.int32)
        return Graph(
            node_type=node_type,
            arg_ptr=np.concatenate([[0], np.cumsum(arity)]).astype(np.int32),
            arg_idx=args[args >= 0].astype(np.int32),
            instance=np.repeat(np.arange(n, dtype=np.int32), sizes),
            payload_row=payload_rows(node_type, len(self.op_types)),
            payloads=(None, words, None, targets),
            op_types=self.op_types,
            num_instances=n,
        )
