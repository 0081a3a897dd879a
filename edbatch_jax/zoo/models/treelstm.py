"""Binary Tree-LSTM sentiment classifier (SST), shaped like the ED-Batch benchmark.

Graph of one tree (post-order): every preterminal is a ``leaf`` node (payload:
the word id), every binary node an ``internal`` node reading its two children,
and every non-terminal (preterminals included) also gets a ``loss`` node
(payload: the node's label) reading its state. The root's loss node is the
last node of the instance.

Cells (``flax.linen``), H = hidden size, E = embedding size:

* leaf: ``x = Embed[word]``; ``i, o, u = W x + b``; ``c = σ(i) ⊙ tanh(u)``;
  ``h = σ(o) ⊙ tanh(c)``.
* internal: ``i, o, u = W [h_l; h_r] + b``; ``f_l = σ(U_l h_l + b_l)``,
  ``f_r = σ(U_r h_r + b_r)``; ``c = σ(i) ⊙ tanh(u) + f_l ⊙ c_l + f_r ⊙ c_r``;
  ``h = σ(o) ⊙ tanh(c)``.
* loss: ``logits = W_o h + b_o`` (5 classes) and the softmax cross-entropy
  against the label.

States: ``{"h": f32[H], "c": f32[H]}`` for leaf and internal nodes (one shared
buffer), ``{"loss": f32[], "logits": f32[C]}`` for loss nodes.

The cells (and :func:`binary_tree_batch_graph`) live in
:mod:`edbatch_jax.zoo.models.cells` (and :mod:`~edbatch_jax.zoo.models.graphs`),
shared with the other models; they are re-exported here.
"""

from __future__ import annotations

import dataclasses

from edbatch_jax.zoo.models.base import CellSpec, SSTTreeModel
from edbatch_jax.zoo.models.cells import (
    InternalCell,
    LeafCell,
    LossCell,
    NNXInternalCell,
    NNXLeafCell,
    NNXLossCell,
    classifier_spec,
    tree_internal_spec,
    tree_leaf_spec,
)
from edbatch_jax.zoo.models.graphs import binary_tree_batch_graph

__all__ = [
    "LeafCell",
    "InternalCell",
    "LossCell",
    "NNXLeafCell",
    "NNXInternalCell",
    "NNXLossCell",
    "TreeLSTM",
    "binary_tree_batch_graph",
]


@dataclasses.dataclass(frozen=True)
class TreeLSTM(SSTTreeModel):
    """The model: its cells, their ops, parameter init, and graph construction.

    Attributes: ``vocab_size``, ``hidden``, ``embed``, ``num_classes``, ``dropout`` (of the leaves' embeddings
    and the classifier's input), those of :class:`~edbatch_jax.zoo.models.base.SSTTreeModel`.
    """

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the Tree-LSTM leaf and internal cells and the classifier."""
        return {
            "leaf": tree_leaf_spec(self.vocab_size, self.embed, self.hidden, self.dropout),
            "internal": tree_internal_spec(self.hidden),
            "loss": classifier_spec(self.hidden, self.num_classes, self.dropout),
        }
