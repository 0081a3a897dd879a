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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from edbatch_jax.engine.flax_ops import NNXCells, linen_op
from edbatch_jax.engine.ops import Op
from edbatch_jax.graph import Graph, GraphBuilder, GraphError
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.zoo.data.sst import Tree, Vocabulary

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


def leaf_lstm(embed, iou, word):
    """Leaf equations, given the layers ``embed`` and ``iou`` (Linen or NNX)."""
    i, o, u = jnp.split(iou(embed(word)), 3, axis=-1)
    c = jax.nn.sigmoid(i) * jnp.tanh(u)
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


def internal_lstm(iou, f_left, f_right, left, right):
    """Binary Tree-LSTM equations, given the layers ``iou``, ``f_left``, ``f_right``."""
    i, o, u = jnp.split(iou(jnp.concatenate([left["h"], right["h"]], axis=-1)), 3, axis=-1)
    f_l = jax.nn.sigmoid(f_left(left["h"]))
    f_r = jax.nn.sigmoid(f_right(right["h"]))
    c = jax.nn.sigmoid(i) * jnp.tanh(u) + f_l * left["c"] + f_r * right["c"]
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


def classify(out, label, h):
    """``{"loss": f32[], "logits": f32[C]}`` of the output layer ``out`` on features ``h``."""
    logits = out(h)
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, label), "logits": logits}


class LeafCell(nn.Module):
    """Preterminal cell: word id (int32 scalar) -> ``{"h", "c"}`` (f32 [H] each)."""

    vocab_size: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, word):
        return leaf_lstm(
            nn.Embed(self.vocab_size, self.embed, name="embed"), nn.Dense(3 * self.hidden, name="iou"), word
        )


class InternalCell(nn.Module):
    """Binary cell: two child states -> ``{"h", "c"}``; no payload."""

    hidden: int

    @nn.compact
    def __call__(self, payload, left, right):
        del payload
        dense = lambda n, name: nn.Dense(n, name=name)
        return internal_lstm(
            dense(3 * self.hidden, "iou"), dense(self.hidden, "f_left"), dense(self.hidden, "f_right"), left, right
        )


class LossCell(nn.Module):
    """Per-node classifier: label (int32 scalar), state -> ``{"loss": f32[], "logits": f32[C]}``."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, label, state):
        return classify(nn.Dense(self.num_classes, name="out"), label, state["h"])


class NNXLeafCell(nnx.Module):
    """:class:`LeafCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.iou = nnx.Linear(embed, 3 * hidden, rngs=rngs)

    def __call__(self, word):
        return leaf_lstm(self.embed, self.iou, word)


class NNXInternalCell(nnx.Module):
    """:class:`InternalCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.iou = nnx.Linear(2 * hidden, 3 * hidden, rngs=rngs)
        self.f_left = nnx.Linear(hidden, hidden, rngs=rngs)
        self.f_right = nnx.Linear(hidden, hidden, rngs=rngs)

    def __call__(self, payload, left, right):
        del payload
        return internal_lstm(self.iou, self.f_left, self.f_right, left, right)


class NNXLossCell(nnx.Module):
    """:class:`LossCell` in ``flax.nnx`` (reads ``state["h"]``, or ``state[key]``); the same parameter names."""

    def __init__(self, hidden: int, num_classes: int = 5, *, key: str = "h", rngs: nnx.Rngs):
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.key = key

    def __call__(self, label, state):
        return classify(self.out, label, state[self.key])


def binary_tree_batch_graph(
    trees: Sequence[Tree],
    vocab: Vocabulary,
    vocab_size: int,
    op_types: tuple[str, ...],
    internal_type: np.ndarray | None = None,
) -> Graph:
    """The batched graph of several SST trees for a leaf / internal / loss model, built vectorised.

    Tree node ``k`` of the ``i``-th tree becomes cell node ``2 (o_i + k)`` and
    loss node ``2 (o_i + k) + 1``, with ``o_i`` the nodes of the trees before
    it; one instance per tree. Leaf payloads are int32 word ids modulo
    ``vocab_size``, loss payloads the int32 labels; internal nodes carry none.

    Args:
      trees: the trees (post-order, root last).
      vocab: maps tokens to ids.
      vocab_size: leaf word ids are taken modulo it.
      op_types: the model's op types: ``op_types[0]`` is the leaf type and
        ``op_types[-1]`` the loss type; the ones between are internal types.
      internal_type: int ``[total nodes]``, the op type id of every tree node
        (read only at binary nodes); ``None`` means every binary node has type
        id 1.

    Returns:
      The :class:`Graph`, with ``op_types`` as given (types without nodes
      included, their payload ``None``).

    Raises:
      GraphError: ``trees`` is empty.
    """
    if not trees:
        raise GraphError("batch_graph got an empty batch: no trees")
    sizes = np.fromiter(map(len, (t.tokens for t in trees)), np.int64, count=len(trees))  # nodes per tree
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    left = np.concatenate([t.left for t in trees])
    right = np.concatenate([t.right for t in trees])
    labels = np.concatenate([t.labels for t in trees]).astype(np.int32)
    words = vocab.encode_all(trees)
    g = np.arange(sizes.sum())
    binary = left >= 0
    loss_type = len(op_types) - 1
    node_type = np.empty(2 * g.size, np.int32)
    node_type[0::2] = np.where(binary, 1 if internal_type is None else internal_type, 0)
    node_type[1::2] = loss_type
    args = np.full((2 * g.size, 2), -1, np.int64)
    args[0::2] = np.where(binary[:, None], 2 * (offsets[:, None] + np.stack([left, right], 1)), -1)
    args[1::2, 0] = 2 * g
    arity = np.empty(2 * g.size, np.int64)
    arity[0::2] = 2 * binary  # a binary node reads its two children, a preterminal nothing
    arity[1::2] = 1  # a loss reads its node
    leaf_words = (words[~binary] % vocab_size).astype(np.int32)
    payloads = [None] * len(op_types)
    payloads[0], payloads[loss_type] = leaf_words, labels
    return Graph(
        node_type=node_type,
        arg_ptr=np.concatenate([[0], np.cumsum(arity)]).astype(np.int32),
        arg_idx=args[args >= 0].astype(np.int32),
        instance=np.repeat(np.arange(len(trees), dtype=np.int32), 2 * sizes),
        payload_row=payload_rows(node_type, len(op_types)),
        payloads=tuple(payloads),
        op_types=tuple(op_types),
        num_instances=len(trees),
    )


@dataclasses.dataclass(frozen=True)
class TreeLSTM:
    """The model: its cells, their ops, parameter init, and graph construction.

    Attributes:
      vocab_size: rows of the embedding table (token ids are taken modulo it).
      hidden: hidden size H (default 128, as in the reference benchmark).
      embed: embedding size (default 128).
      num_classes: sentiment classes (5 for SST).
    """

    vocab_size: int
    hidden: int = 128
    embed: int = 128
    num_classes: int = 5

    op_types = ("leaf", "internal", "loss")

    @property
    def cells(self) -> dict[str, nn.Module]:
        return {
            "leaf": LeafCell(self.vocab_size, self.embed, self.hidden),
            "internal": InternalCell(self.hidden),
            "loss": LossCell(self.num_classes),
        }

    @functools.cached_property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; each cell reads ``params[name]``."""
        return {name: linen_op(cell, name) for name, cell in self.cells.items()}

    def nnx_cells(self, *, rngs: nnx.Rngs) -> NNXCells:
        """The same cells as ``flax.nnx`` modules in an :class:`~edbatch_jax.NNXCells`.

        ``.ops`` and ``nnx.Param`` state."""
        return NNXCells.matching(
            self.ops,
            {
                "leaf": NNXLeafCell(self.vocab_size, self.embed, self.hidden, rngs=rngs),
                "internal": NNXInternalCell(self.hidden, rngs=rngs),
                "loss": NNXLossCell(self.hidden, self.num_classes, rngs=rngs),
            },
        )

    def init(self, rng: jax.Array) -> dict:
        """Parameters ``{"leaf": ..., "internal": ..., "loss": ...}`` (f32)."""
        k1, k2, k3 = jax.random.split(rng, 3)
        state = {"h": jnp.zeros(self.hidden), "c": jnp.zeros(self.hidden)}
        cells = self.cells
        return {
            "leaf": cells["leaf"].init(k1, jnp.int32(0))["params"],
            "internal": cells["internal"].init(k2, None, state, state)["params"],
            "loss": cells["loss"].init(k3, jnp.int32(0), state)["params"],
        }

    def tree_graph(self, tree: Tree, token_ids: np.ndarray) -> Graph:
        """The graph of one tree; ``token_ids`` int32 ``[n]`` per tree node (ignored for binary nodes)."""
        b = GraphBuilder()
        node_of = np.empty(tree.num_nodes, dtype=np.int64)
        for k in range(tree.num_nodes):
            if tree.left[k] < 0:
                v = b.add("leaf", payload=np.int32(token_ids[k] % self.vocab_size))
            else:
                v = b.add("internal", int(node_of[tree.left[k]]), int(node_of[tree.right[k]]))
            node_of[k] = v
            b.add("loss", v, payload=np.int32(tree.labels[k]))
        return b.build()

    def batch_graph(self, trees: Sequence[Tree], vocab: Vocabulary) -> Graph:
        """The batched graph of several trees (one instance per tree), built vectorised.

        Equal to ``batch_graphs([tree_graph(t, vocab.encode(t)) for t in trees])``
        (see :func:`binary_tree_batch_graph` for the node numbering).

        Raises:
          GraphError: ``trees`` is empty.
        """
        return binary_tree_batch_graph(trees, vocab, self.vocab_size, self.op_types)
