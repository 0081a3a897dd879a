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
  against the label (:class:`~edbatch_jax.zoo.models.cells.LossCell`).

States: ``{"h": f32[H]}`` for leaf and internal nodes (one shared buffer),
``{"loss": f32[], "logits": f32[C]}`` for loss nodes.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from edbatch_jax.zoo.models.base import CellSpec, SSTTreeModel, hidden_state
from edbatch_jax.zoo.models.cells import classifier_spec

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
class TreeGRU(SSTTreeModel):
    """The Tree-GRU model: its cells, their ops, parameter init, and graph construction.

    Attributes: ``vocab_size``, ``hidden``, ``embed``, ``num_classes``, those of
    :class:`~edbatch_jax.zoo.models.base.SSTTreeModel`.
    """

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the GRU leaf and internal cells and the classifier."""
        v, e, h = self.vocab_size, self.embed, self.hidden
        state = hidden_state(h)
        return {
            "leaf": CellSpec(GRULeafCell(v, e, h), lambda rngs: NNXGRULeafCell(v, e, h, rngs=rngs), payload_bounds=v),
            "internal": CellSpec(
                GRUInternalCell(h),
                lambda rngs: NNXGRUInternalCell(h, rngs=rngs),
                operands=(state, state),
                payload=False,
            ),
            "loss": classifier_spec(h, self.num_classes),
        }
