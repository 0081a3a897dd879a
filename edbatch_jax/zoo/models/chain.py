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

Cells (all of :mod:`edbatch_jax.zoo.models.cells`): the embedding and LSTM
cells (those of the BiLSTM tagger), the learned initial state (that of the
lattice taggers), and the classifier :class:`~edbatch_jax.zoo.models.cells.LossCell`
(``logits = W_o h + b_o``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from edbatch_jax.graph import Graph
from edbatch_jax.zoo.models.base import CellSpec, EmbeddingModel
from edbatch_jax.zoo.models.cells import classifier_spec, embed_spec, init_spec, lstm_spec
from edbatch_jax.zoo.models.graphs import check_sequences, instance_graph, padded_csr, sequence_layout

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
class ChainLM(EmbeddingModel):
    """The chain LSTM language model: its cells, their ops, parameter init, and graphs.

    Attributes (``vocab_size``, ``hidden``, ``embed``: those of
    :class:`~edbatch_jax.zoo.models.base.EmbeddingModel`):
      num_classes: output classes: ``num_classes - 1`` word classes (word id
        modulo ``num_classes - 1``) and the end token (default 512).
    """

    num_classes: int = 512

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 (a word class and the end token), got {self.num_classes}.")

    op_types = CHAIN_OP_TYPES

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the initial state, the embedding, the LSTM, the next-word classifier."""
        return {
            "init": init_spec(self.hidden),
            "embed": embed_spec(self.vocab_size, self.embed),
            "lstm": lstm_spec(self.hidden, [{"x": (self.embed,)}]),  # reads (its previous state, the embedding)
            "loss": classifier_spec(self.hidden, self.num_classes),
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
        lengths = check_sequences(word_ids, word_ids, "sentence")
        n = lengths.shape[0]
        sizes, t, b, length = sequence_layout(lengths, 1, 3)
        embed, lstm, loss = (b + 1 + j * length + t for j in range(3))
        num_nodes = int(sizes.sum())
        seg_len = np.stack([np.ones(n, np.int64), lengths, lengths, lengths], axis=1).ravel()
        node_type = np.repeat(np.tile(np.arange(4, dtype=np.int32), n), seg_len)
        args = np.full((num_nodes, 2), -1, np.int64)
        args[lstm, 0] = np.where(t == 0, b, lstm - 1)
        args[lstm, 1] = embed
        args[loss, 0] = lstm
        ids = np.concatenate([np.asarray(w, dtype=np.int64) for w in word_ids])
        words = (ids % self.vocab_size).astype(np.int32)
        end = self.num_classes - 1
        targets = np.where(t == length - 1, end, np.append(ids[1:], 0) % end).astype(np.int32)
        return instance_graph(node_type, *padded_csr(args), sizes, (None, words, None, targets), self.op_types)
