"""Binary Tree-GRU sentiment classifier (SST), shaped like the ED-Batch benchmark.

Graph of one tree (post-order), exactly as for :class:`~edbatch_jax.zoo.models.treelstm.TreeLSTM`:
every preterminal is a ``leaf`` node (payload: the word id), every binary node
an ``internal`` node reading its two children, and every non-terminal
(preterminals included) also gets a ``loss`` node (payload: the node's label)
reading its state. Tree node ``k`` becomes cell node ``2k`` and loss node
``2k + 1``, so the root's loss node is the last node of the instance.

Cells (``flax.linen``), H = hidden size, E = embedding size, σ the logistic
sigmoid, ⊙ the elementwise product:

* leaf (a GRU step from a zero state; the reset gate has nothing to gate and is
  omitted)::

    x = Embed[word]                        # f32 [E]
    z = σ(W_z x + b_z)                     # f32 [H]
    n = tanh(W_n x + b_n)                  # f32 [H]
    h = (1 - z) ⊙ n

* internal (no word; one reset gate per child and a softmax-normalised update
  gate over the two children and the candidate)::

    g = [h_l; h_r]                                         # f32 [2H]
    r_l, r_r = split(σ(W_r g + b_r))                       # f32 [H] each
    n = tanh(W_n [r_l ⊙ h_l; r_r ⊙ h_r] + b_n)             # f32 [H]
    a_l, a_r, a_n = split(W_z g + b_z)                     # f32 [H] each
    z_l, z_r, z_n = softmax(a_l, a_r, a_n)                 # per hidden unit
    h = z_l ⊙ h_l + z_r ⊙ h_r + z_n ⊙ n

  The three update gates are positive and sum to one in every unit, so ``h``
  is a convex combination of the children's states and the candidate.
* loss: ``logits = W_o h + b_o`` (5 classes) and the softmax cross-entropy
  against the label (:class:`~edbatch_jax.zoo.models.treelstm.LossCell`).

States: ``{"h": f32[H]}`` for leaf and internal nodes (one shared buffer),
``{"loss": f32[], "logits": f32[C]}`` for loss nodes.
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
from edbatch_jax.graph import Graph, GraphBuilder
from edbatch_jax.zoo.data.sst import Tree, Vocabulary
from edbatch_jax.zoo.models.treelstm import LossCell, NNXLossCell, binary_tree_batch_graph

__all__ = ["GRULeafCell", "GRUInternalCell", "NNXGRULeafCell", "NNXGRUInternalCell", "TreeGRU"]


class GRULeafCell(nn.Module):
    """Preterminal cell: word id (int32 scalar) -> ``{"h": f32[H]}``."""

    vocab_size: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, word):
        dense = lambda name: nn.Dense(self.hidden, name=name)
        return leaf_gru(nn.Embed(self.vocab_size, self.embed, name="embed"), dense("update"), dense("cand"), word)


class GRUInternalCell(nn.Module):
    """Binary cell: two child states ``{"h": f32[H]}`` -> ``{"h": f32[H]}``; no payload."""

    hidden: int

    @nn.compact
    def __call__(self, payload, left, right):
        del payload
        h = self.hidden
        reset, cand, update = nn.Dense(2 * h, name="reset"), nn.Dense(h, name="cand"), nn.Dense(3 * h, name="update")
        return internal_gru(reset, cand, update, left, right)


def leaf_gru(embed, update, cand, word):
    """Leaf equations, given the layers (Linen or NNX)."""
    x = embed(word)
    z = jax.nn.sigmoid(update(x))
    return {"h": (1.0 - z) * jnp.tanh(cand(x))}


def internal_gru(reset, cand, update, left, right):
    """Binary Tree-GRU equations, given the layers (Linen or NNX)."""
    h_l, h_r = left["h"], right["h"]
    g = jnp.concatenate([h_l, h_r], axis=-1)
    r_l, r_r = jnp.split(jax.nn.sigmoid(reset(g)), 2, axis=-1)
    n = jnp.tanh(cand(jnp.concatenate([r_l * h_l, r_r * h_r], axis=-1)))
    z_l, z_r, z_n = jax.nn.softmax(update(g).reshape(3, h_l.shape[-1]), axis=0)
    return {"h": z_l * h_l + z_r * h_r + z_n * n}


class NNXGRULeafCell(nnx.Module):
    """:class:`GRULeafCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.update = nnx.Linear(embed, hidden, rngs=rngs)
        self.cand = nnx.Linear(embed, hidden, rngs=rngs)

    def __call__(self, word):
        return leaf_gru(self.embed, self.update, self.cand, word)


class NNXGRUInternalCell(nnx.Module):
    """:class:`GRUInternalCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.reset = nnx.Linear(2 * hidden, 2 * hidden, rngs=rngs)
        self.cand = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.update = nnx.Linear(2 * hidden, 3 * hidden, rngs=rngs)

    def __call__(self, payload, left, right):
        del payload
        return internal_gru(self.reset, self.cand, self.update, left, right)


@dataclasses.dataclass(frozen=True)
class TreeGRU:
    """The Tree-GRU model: its cells, their ops, parameter init, and graph construction.

    Attributes:
      vocab_size: rows of the embedding table (token ids are taken modulo it).
      hidden: hidden size H (default 128, as in the reference benchmark).
      embed: embedding size E (default 128).
      num_classes: sentiment classes (5 for SST).
    """

    vocab_size: int
    hidden: int = 128
    embed: int = 128
    num_classes: int = 5

    op_types = ("leaf", "internal", "loss")

    @property
    def cells(self) -> dict[str, nn.Module]:
        """Op type name -> Flax cell: leaf, internal, loss."""
        return {
            "leaf": GRULeafCell(self.vocab_size, self.embed, self.hidden),
            "internal": GRUInternalCell(self.hidden),
            "loss": LossCell(self.num_classes),
        }

    @functools.cached_property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; each cell reads ``params[name]``."""
        return {name: linen_op(cell, name) for name, cell in self.cells.items()}

    def nnx_cells(self, *, rngs: nnx.Rngs) -> NNXCells:
        """The same cells as ``flax.nnx`` modules in an :class:`~edbatch_jax.NNXCells`."""
        return NNXCells.matching(
            self.ops,
            {
                "leaf": NNXGRULeafCell(self.vocab_size, self.embed, self.hidden, rngs=rngs),
                "internal": NNXGRUInternalCell(self.hidden, rngs=rngs),
                "loss": NNXLossCell(self.hidden, self.num_classes, rngs=rngs),
            },
        )

    def init(self, rng: jax.Array) -> dict:
        """Parameters ``{"leaf": ..., "internal": ..., "loss": ...}`` (f32).

        Args:
          rng: a PRNG key.
        """
        k1, k2, k3 = jax.random.split(rng, 3)
        state = {"h": jnp.zeros(self.hidden)}
        cells = self.cells
        return {
            "leaf": cells["leaf"].init(k1, jnp.int32(0))["params"],
            "internal": cells["internal"].init(k2, None, state, state)["params"],
            "loss": cells["loss"].init(k3, jnp.int32(0), state)["params"],
        }

    def tree_graph(self, tree: Tree, token_ids: np.ndarray) -> Graph:
        """The graph of one tree, built node by node (the readable reference).

        Args:
          tree: the tree.
          token_ids: int32 ``[tree.num_nodes]`` token id per tree node (ignored
            for binary nodes), e.g. ``vocab.encode(tree)``.
        """
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
