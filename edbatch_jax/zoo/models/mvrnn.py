"""Matrix-vector RNN (MV-RNN, Socher et al. 2012) sentiment classifier (SST).

Every phrase is a vector ``v`` (f32 ``[H]``) and a matrix ``M`` (f32 ``[H, H]``).
The graph of one tree is numbered as for :class:`~edbatch_jax.zoo.models.treelstm.TreeLSTM`:
every preterminal is a ``leaf`` node (payload: the word id), every binary node
an ``internal`` node reading its two children, and every non-terminal
(preterminals included) also gets a ``loss`` node (payload: the node's label)
reading its state. Tree node ``k`` becomes cell node ``2k`` and loss node
``2k + 1``, so the root's loss node is the last node of the instance.

Cells (``flax.linen``), H = hidden size (the vector embedding size is ``embed``,
projected to H when it differs):

* leaf: two table lookups::

    v = Embed[word]                                # f32 [H]
    M = Mtab[word mod R]                           # f32 [H, H]

  with ``R = min(matrix_vocab, vocab_size)`` rows in the matrix table (the
  full ``vocab_size x H x H`` table would not fit in memory for a real
  vocabulary), each initialised to ``I + N(0, 0.01²)``.
* internal (left child ``(v_l, M_l)``, right child ``(v_r, M_r)``)::

    v = tanh(W_v [M_l v_r; M_r v_l] + b_v)         # W_v: f32 [H, 2H]
    M = W_M [M_l; M_r]                             # W_M: f32 [H, 2H], no bias

  ``W_M`` is initialised to ``[I, I] / 2 + N(0, 0.01²)``, so a parent's matrix
  starts as the mean of its children's (it stays near the identity however
  deep the tree).
* loss: ``logits = W_o v + b_o`` (5 classes) and the softmax cross-entropy
  against the label.

States: ``{"v": f32[H], "M": f32[H, H]}`` for leaf and internal nodes (one
shared buffer), ``{"loss": f32[], "logits": f32[C]}`` for loss nodes.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from edbatch_jax.zoo.models.base import CellSpec, SSTTreeModel
from edbatch_jax.zoo.models.cells import NNXLossCell, classify

__all__ = ["MVLeafCell", "MVInternalCell", "MVLossCell", "NNXMVLeafCell", "NNXMVInternalCell", "MVRNN"]

NOISE = 0.01
"""Standard deviation of the noise added to the identity initialisations."""


def _identity_plus_noise(key, shape, dtype=jnp.float32):
    """``[..., H, H]``: identity matrices plus ``N(0, NOISE²)`` noise."""
    return jnp.broadcast_to(jnp.eye(shape[-1], dtype=dtype), shape) + NOISE * jax.random.normal(key, shape, dtype)


def _half_identity_pair_plus_noise(key, shape, dtype=jnp.float32):
    """``[H, 2H]``: ``[I, I] / 2`` plus ``N(0, NOISE²)`` noise."""
    h = shape[0]
    return 0.5 * jnp.tile(jnp.eye(h, dtype=dtype), (1, 2)) + NOISE * jax.random.normal(key, shape, dtype)


class MVLeafCell(nn.Module):
    """Preterminal cell: word id (int32 scalar) -> ``{"v": f32[H], "M": f32[H, H]}``.

    Attributes:
      vocab_size: rows of the vector table.
      matrix_rows: rows of the matrix table; word ``w`` uses ``Mtab[w mod matrix_rows]``.
      embed: vector embedding size (projected to ``hidden`` when it differs).
      hidden: hidden size H.
    """

    vocab_size: int
    matrix_rows: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, word):
        proj = nn.Dense(self.hidden, use_bias=False, name="proj") if self.embed != self.hidden else None
        table = self.param("matrices", _identity_plus_noise, (self.matrix_rows, self.hidden, self.hidden))
        return mv_leaf(nn.Embed(self.vocab_size, self.embed, name="embed"), proj, table, word)


class MVInternalCell(nn.Module):
    """Binary cell: two child states ``{"v", "M"}`` -> ``{"v": f32[H], "M": f32[H, H]}``; no payload."""

    hidden: int

    @nn.compact
    def __call__(self, payload, left, right):
        del payload
        w_m = self.param("mat", _half_identity_pair_plus_noise, (self.hidden, 2 * self.hidden))
        return mv_internal(nn.Dense(self.hidden, name="vec"), w_m, left, right)


class MVLossCell(nn.Module):
    """Per-node classifier on ``v``: label (int32 scalar), state -> ``{"loss": f32[], "logits": f32[C]}``."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, label, state):
        return classify(nn.Dense(self.num_classes, name="out"), label, state["v"])


def mv_leaf(embed, proj, matrices, word):
    """Leaf equations: ``v = proj(embed(word))`` (``proj`` may be ``None``), ``M = matrices[word mod rows]``."""
    v = embed(word)
    if proj is not None:
        v = proj(v)
    return {"v": v, "M": matrices[word % matrices.shape[0]]}


def mv_internal(vec, w_m, left, right):
    """Binary MV-RNN equations, given the layer ``vec`` and the matrix ``w_m`` f32 ``[H, 2H]``."""
    v = jnp.tanh(vec(jnp.concatenate([left["M"] @ right["v"], right["M"] @ left["v"]], axis=-1)))
    return {"v": v, "M": w_m @ jnp.concatenate([left["M"], right["M"]], axis=0)}


class NNXMVLeafCell(nnx.Module):
    """:class:`MVLeafCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, matrix_rows: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.proj = nnx.Linear(embed, hidden, use_bias=False, rngs=rngs) if embed != hidden else None
        self.matrices = nnx.Param(_identity_plus_noise(rngs.params(), (matrix_rows, hidden, hidden)))

    def __call__(self, word):
        return mv_leaf(self.embed, self.proj, self.matrices[...], word)


class NNXMVInternalCell(nnx.Module):
    """:class:`MVInternalCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.vec = nnx.Linear(2 * hidden, hidden, rngs=rngs)
        self.mat = nnx.Param(_half_identity_pair_plus_noise(rngs.params(), (hidden, 2 * hidden)))

    def __call__(self, payload, left, right):
        del payload
        return mv_internal(self.vec, self.mat[...], left, right)


@dataclasses.dataclass(frozen=True)
class MVRNN(SSTTreeModel):
    """The MV-RNN model: its cells, their ops, parameter init, and graph construction.

    ``init(rng)["leaf"]["matrices"]`` is f32 ``[matrix_rows, H, H]``,
    ``init(rng)["internal"]["mat"]`` f32 ``[H, 2H]``.

    Attributes (``vocab_size``, ``hidden``, ``embed``, ``num_classes``: those of
    :class:`~edbatch_jax.zoo.models.base.SSTTreeModel`; every state matrix is
    ``H x H``, and the vector embedding is projected to H when ``embed`` differs):
      matrix_vocab: at most this many word matrices (default 256): word ``w``
        (already modulo ``vocab_size``) uses matrix ``w mod min(matrix_vocab,
        vocab_size)``.
    """

    matrix_vocab: int = 256

    def __post_init__(self):
        if self.vocab_size < 1 or self.matrix_vocab < 1:
            raise ValueError(f"vocab_size and matrix_vocab must be >= 1, got {self.vocab_size}, {self.matrix_vocab}")

    @property
    def matrix_rows(self) -> int:
        """Rows of the word-matrix table: ``min(matrix_vocab, vocab_size)``."""
        return min(self.matrix_vocab, self.vocab_size)

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the MV leaf and internal cells and the classifier on ``v``."""
        v, rows, e, h, c = self.vocab_size, self.matrix_rows, self.embed, self.hidden, self.num_classes
        state = {"v": (h,), "M": (h, h)}
        return {
            "leaf": CellSpec(
                MVLeafCell(v, rows, e, h), lambda rngs: NNXMVLeafCell(v, rows, e, h, rngs=rngs), payload_bounds=v
            ),
            "internal": CellSpec(
                MVInternalCell(h), lambda rngs: NNXMVInternalCell(h, rngs=rngs), operands=(state, state), payload=False
            ),
            "loss": CellSpec(
                MVLossCell(c), lambda rngs: NNXLossCell(h, c, key="v", rngs=rngs), operands=({"v": (h,)},)
            ),
        }
