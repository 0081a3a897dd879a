"""Child-Sum Tree-LSTM (Tai et al., 2015) over n-ary trees: a forget gate per child.

Graph of one :class:`~edbatch_jax.zoo.data.nary.NaryTree` (post-order): every
leaf is a ``leaf`` node (payload: the word id), every node with children a
``node`` node reading all of them (any number: a variable-arity op), and
every tree node also gets a ``loss`` node (payload: its label). Tree node
``k`` becomes cell node ``2k`` and loss node ``2k + 1``, so the root's loss
node is the last node of the instance.

Cells (``flax.linen``, with ``flax.nnx`` twins), H = hidden size:

* leaf: ``x = Embed[word]``; ``i, o, u = W x + b``; ``c = σ(i) ⊙ tanh(u)``;
  ``h = σ(o) ⊙ tanh(c)`` (the Child-Sum equations with no children).
* node, per child ``k`` (the op's ``edge``, one vmapped call over every child
  of a batch): ``f_k = σ(U_f h_k + b_f)``, message ``{"h": h_k, "fc": f_k ⊙ c_k}``;
  the messages summed; then ``i, o, u = U h̃ + b`` with ``h̃ = Σ_k h_k``,
  ``c = σ(i) ⊙ tanh(u) + Σ_k f_k ⊙ c_k``, ``h = σ(o) ⊙ tanh(c)``. As in
  constituency trees, words sit at the leaves only, so the ``W x`` terms of
  the paper's internal-node equations are zero.
* loss: ``logits = W_o h + b_o`` (5 classes) and the softmax cross-entropy.

States: ``{"h": f32[H], "c": f32[H]}`` for leaf and node (one buffer),
``{"loss": f32[], "logits": f32[C]}`` for loss nodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from edbatch_jax.graph import Graph
from edbatch_jax.zoo.data.nary import NaryTree, nary_sizes
from edbatch_jax.zoo.data.vocab import Vocabulary
from edbatch_jax.zoo.models.base import CellSpec, EmbeddingModel, lstm_state
from edbatch_jax.zoo.models.cells import classifier_spec, tree_leaf_spec
from edbatch_jax.zoo.models.graphs import check_nonempty, instance_graph

__all__ = ["ChildSumCell", "ChildSumTreeLSTM", "NNXChildSumCell", "childsum_message", "childsum_node", "nary_graph"]


def childsum_message(forget, child):
    """One child's message, given the forget layer (to ``H``): ``{"h": h_k, "fc": σ(U_f h_k + b_f) ⊙ c_k}``."""
    return {"h": child["h"], "fc": jax.nn.sigmoid(forget(child["h"])) * child["c"]}


def childsum_node(iou, summed):
    """The node equations on the summed messages, given the layer ``iou`` (to ``3H``): ``{"h", "c"}`` f32 ``[H]``."""
    i, o, u = jnp.split(iou(summed["h"]), 3, axis=-1)
    c = jax.nn.sigmoid(i) * jnp.tanh(u) + summed["fc"]
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


class ChildSumCell(nn.Module):
    """Child-Sum node cell: ``edge(payload, child)`` per child, ``__call__(payload, summed)`` per node; no payload."""

    hidden: int

    def setup(self):
        self.iou = nn.Dense(3 * self.hidden)
        self.forget = nn.Dense(self.hidden)

    def edge(self, payload, child):
        del payload
        return childsum_message(self.forget, child)

    def __call__(self, payload, summed):
        del payload
        return childsum_node(self.iou, summed)


class NNXChildSumCell(nnx.Module):
    """The NNX twin of :class:`ChildSumCell` (the same parameter tree)."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.iou = nnx.Linear(hidden, 3 * hidden, rngs=rngs)
        self.forget = nnx.Linear(hidden, hidden, rngs=rngs)

    def edge(self, payload, child):
        del payload
        return childsum_message(self.forget, child)

    def __call__(self, payload, summed):
        del payload
        return childsum_node(self.iou, summed)


def nary_graph(
    sizes: np.ndarray,
    child_ptr: np.ndarray,
    child_idx: np.ndarray,
    labels: np.ndarray,
    leaf_ids: np.ndarray,
    op_types: tuple[str, ...],
) -> Graph:
    """The batched graph of n-ary trees with a loss node per tree node, built vectorised.

    Tree node ``k`` of the ``i``-th tree becomes cell node ``2 (o_i + k)`` and
    loss node ``2 (o_i + k) + 1``, ``o_i`` the nodes of the trees before it.

    Args:
      sizes: int ``[B]``, the nodes of every tree.
      child_ptr: int ``[N + 1]``: the children of all trees' nodes in CSR
        (global node order), ``child_idx`` local to each tree.
      child_idx: int ``[N - B]``.
      labels: int ``[N]``.
      leaf_ids: int32 ``[leaves]``, the payload of every leaf in node order.
      op_types: ``(leaf, node, loss)`` type names.
    """
    n = int(sizes.sum())
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    kids = np.diff(child_ptr)
    counts = np.empty(2 * n, np.int64)
    counts[0::2], counts[1::2] = kids, 1
    arg_ptr = np.zeros(2 * n + 1, np.int32)
    np.cumsum(counts, out=arg_ptr[1:])
    arg_idx = np.empty(int(arg_ptr[-1]), np.int32)
    parent = np.repeat(np.arange(n), kids)
    within = np.arange(parent.size) - child_ptr[parent]
    arg_idx[arg_ptr[2 * parent] + within] = 2 * (offsets[parent] + child_idx)
    arg_idx[arg_ptr[1::2][:n]] = 2 * np.arange(n)
    node_type = np.empty(2 * n, np.int32)
    node_type[0::2] = np.where(kids > 0, 1, 0)
    node_type[1::2] = 2
    payloads = (np.asarray(leaf_ids, np.int32), None, np.asarray(labels, np.int32))
    return instance_graph(node_type, arg_ptr, arg_idx, 2 * sizes, payloads, op_types)


@dataclasses.dataclass(frozen=True)
class ChildSumTreeLSTM(EmbeddingModel):
    """The Child-Sum Tree-LSTM sentiment classifier of n-ary trees: cells, ops, init, graph construction.

    Attributes: ``vocab_size``, ``hidden``, ``embed`` (those of
    :class:`~edbatch_jax.zoo.models.base.EmbeddingModel`), ``num_classes``
    (5) and ``dropout`` (of the leaves' embeddings and the classifier's
    input, in training steps given a PRNG key).
    """

    num_classes: int = 5
    dropout: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    op_types = ("leaf", "node", "loss")

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the leaf cell, the Child-Sum node cell (sums per-child messages), the classifier."""
        state = lstm_state(self.hidden)
        return {
            "leaf": tree_leaf_spec(self.vocab_size, self.embed, self.hidden, self.dropout),
            "node": CellSpec(
                ChildSumCell(self.hidden),
                lambda rngs: NNXChildSumCell(self.hidden, rngs=rngs),
                operands=(state,),
                payload=False,
                aggregate="sum",
                edge=True,
            ),
            "loss": classifier_spec(self.hidden, self.num_classes, self.dropout),
        }

    def batch_graph(self, trees: Sequence[NaryTree], vocab: Vocabulary) -> Graph:
        """The batched graph of several n-ary trees (one instance per tree), built vectorised.

        Leaf payloads are int32 word ids (modulo ``vocab_size``), loss
        payloads the labels; ``node`` nodes carry none.

        Raises:
          GraphError: ``trees`` is empty.
        """
        check_nonempty(trees, "trees")
        sizes = nary_sizes(trees)
        counts = np.concatenate([t.num_children for t in trees])
        child_ptr = np.zeros(counts.size + 1, np.int64)
        np.cumsum(counts, out=child_ptr[1:])
        child_idx = np.concatenate([t.child_idx for t in trees]).astype(np.int64)
        labels = np.concatenate([t.labels for t in trees])
        words = vocab.encode_all(trees)
        leaf_ids = (words[counts == 0] % self.vocab_size).astype(np.int32)
        return nary_graph(sizes, child_ptr, child_idx, labels, leaf_ids, self.op_types)
