"""Double-typed binary Tree-LSTM (SST): two interchangeable internal cells.

The model of :class:`~edbatch_jax.zoo.models.treelstm.TreeLSTM`, except that every
binary node uses one of two identically shaped (separately parameterised)
internal cells, ``internal_a`` or ``internal_b``, picked pseudo-randomly per
node. The graph has four op types, ``("leaf", "internal_a", "internal_b",
"loss")``, which is what makes it a scheduling benchmark: a path from a leaf to
the root alternates between the two internal types at random, so the two types
compete for the same depth levels.

Cells (``flax.linen``), H = hidden size, E = embedding size (those of
:mod:`edbatch_jax.zoo.models.treelstm`):

* leaf: ``x = Embed[word]``; ``i, o, u = W x + b``; ``c = σ(i) ⊙ tanh(u)``;
  ``h = σ(o) ⊙ tanh(c)``.
* internal_a and internal_b (each its own ``W, b, U_l, b_l, U_r, b_r``):
  ``i, o, u = W [h_l; h_r] + b``; ``f_l = σ(U_l h_l + b_l)``,
  ``f_r = σ(U_r h_r + b_r)``; ``c = σ(i) ⊙ tanh(u) + f_l ⊙ c_l + f_r ⊙ c_r``;
  ``h = σ(o) ⊙ tanh(c)``.
* loss: ``logits = W_o h + b_o`` (5 classes) and the softmax cross-entropy.

Which cell a binary node uses (:func:`internal_choice`): node ``k`` (its
post-order index in its tree) of a tree with fingerprint ``F`` uses
``internal_b`` iff the top bit of ``splitmix64(seed · φ + F · c + k)`` is set
(``φ = 0x9E3779B97F4A7C15``, ``c = 0xBF58476D1CE4E5B9``, arithmetic modulo
2⁶⁴), where the fingerprint ``F`` is the CRC-32 of the tree's shape and words
(:func:`tree_fingerprint`; labels are not part of it). So the choice depends
on the model's ``seed``, the tree and the node only: never on the tree's
position in a batch, the vocabulary or the process (no Python ``hash``).

States: ``{"h": f32[H], "c": f32[H]}`` for leaf and internal nodes (one shared
buffer), ``{"loss": f32[], "logits": f32[C]}`` for loss nodes.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
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
from edbatch_jax.zoo.models.treelstm import (
    InternalCell,
    LeafCell,
    LossCell,
    NNXInternalCell,
    NNXLeafCell,
    NNXLossCell,
    binary_tree_batch_graph,
)

__all__ = ["DoubleTreeLSTM", "internal_choice", "tree_fingerprint"]

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB


def tree_fingerprint(tree: Tree) -> int:
    """A stable 32-bit fingerprint of a tree's shape and words (not its labels).

    The CRC-32 of ``left`` and ``right`` (little-endian int32) followed by the
    words joined by NUL bytes (UTF-8); the same in every process and platform.
    """
    data = (
        np.asarray(tree.left, "<i4").tobytes()
        + np.asarray(tree.right, "<i4").tobytes()
        + "\x00".join(tree.words).encode("utf-8")
    )
    return zlib.crc32(data)


def _coin(seed: int, fingerprint: int, k: int) -> int:
    """The choice for one node, in Python integers: 1 (``internal_b``) or 0 (``internal_a``)."""
    z = ((seed * _GOLDEN) + fingerprint * _C1 + k + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * _C1) & _MASK
    z = ((z ^ (z >> 27)) * _C2) & _MASK
    z ^= z >> 31
    return z >> 63


def _coins(seed: int, fingerprint: np.ndarray, k: np.ndarray) -> np.ndarray:
    """:func:`_coin` vectorised over uint64 arrays (wrapping arithmetic): int32 ``[n]``."""
    u = np.uint64
    with np.errstate(over="ignore"):
        z = u((seed * _GOLDEN + _GOLDEN) & _MASK) + fingerprint.astype(u) * u(_C1) + k.astype(u)
        z = (z ^ (z >> u(30))) * u(_C1)
        z = (z ^ (z >> u(27))) * u(_C2)
    z ^= z >> u(31)
    return (z >> u(63)).astype(np.int32)


def internal_choice(trees: Sequence[Tree], seed: int = 0) -> np.ndarray:
    """Which internal cell every node of ``trees`` uses, vectorised over nodes.

    Args:
      trees: the trees.
      seed: the model's seed.

    Returns:
      int32 ``[sum of num_nodes]`` (the trees' nodes concatenated in order):
      1 for ``internal_b``, 0 for ``internal_a`` (also given, and meaningless,
      at preterminals).
    """
    sizes = np.array([t.num_nodes for t in trees], dtype=np.int64)
    fingerprints = np.repeat(np.array([tree_fingerprint(t) for t in trees], dtype=np.uint64), sizes)
    local = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    return _coins(seed, fingerprints, local)


@dataclasses.dataclass(frozen=True)
class DoubleTreeLSTM:
    """The double-typed Tree-LSTM: cells, ops, parameter init, and graph construction.

    Attributes:
      vocab_size: rows of the embedding table (token ids are taken modulo it).
      hidden: hidden size H (default 128, as in the reference benchmark).
      embed: embedding size (default 128).
      num_classes: sentiment classes (5 for SST).
      seed: seed of the per-node choice between ``internal_a`` and
        ``internal_b`` (see the module docstring).
    """

    vocab_size: int
    hidden: int = 128
    embed: int = 128
    num_classes: int = 5
    seed: int = 0

    op_types = ("leaf", "internal_a", "internal_b", "loss")

    @property
    def cells(self) -> dict[str, nn.Module]:
        """Op type name -> Flax cell; ``internal_a`` and ``internal_b`` have the same shapes."""
        return {
            "leaf": LeafCell(self.vocab_size, self.embed, self.hidden),
            "internal_a": InternalCell(self.hidden),
            "internal_b": InternalCell(self.hidden),
            "loss": LossCell(self.num_classes),
        }

    @functools.cached_property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; each cell reads ``params[name]``."""
        return {name: linen_op(cell, name) for name, cell in self.cells.items()}

    def nnx_cells(self, *, rngs: nnx.Rngs) -> NNXCells:
        """The same cells as ``flax.nnx`` modules in an :class:`~edbatch_jax.NNXCells`."""
        cells = {
            "leaf": NNXLeafCell(self.vocab_size, self.embed, self.hidden, rngs=rngs),
            "internal_a": NNXInternalCell(self.hidden, rngs=rngs),
            "internal_b": NNXInternalCell(self.hidden, rngs=rngs),
            "loss": NNXLossCell(self.hidden, self.num_classes, rngs=rngs),
        }
        return NNXCells.matching(self.ops, cells)

    def init(self, rng: jax.Array) -> dict:
        """Parameters ``{"leaf", "internal_a", "internal_b", "loss"}`` (f32); the two internal cells differ.

        Args:
          rng: a PRNG key.
        """
        k1, k2, k3, k4 = jax.random.split(rng, 4)
        state = {"h": jnp.zeros(self.hidden), "c": jnp.zeros(self.hidden)}
        cells = self.cells
        return {
            "leaf": cells["leaf"].init(k1, jnp.int32(0))["params"],
            "internal_a": cells["internal_a"].init(k2, None, state, state)["params"],
            "internal_b": cells["internal_b"].init(k3, None, state, state)["params"],
            "loss": cells["loss"].init(k4, jnp.int32(0), state)["params"],
        }

    def tree_graph(self, tree: Tree, token_ids: np.ndarray) -> Graph:
        """The graph of one tree, built node by node (the readable reference).

        Args:
          tree: the tree.
          token_ids: int32 ``[tree.num_nodes]`` token id per tree node (ignored
            for binary nodes), e.g. ``vocab.encode(tree)``.
        """
        b = GraphBuilder()
        fingerprint = tree_fingerprint(tree)
        node_of = np.empty(tree.num_nodes, dtype=np.int64)
        for k in range(tree.num_nodes):
            if tree.left[k] < 0:
                v = b.add("leaf", payload=np.int32(token_ids[k] % self.vocab_size))
            else:
                cell = "internal_b" if _coin(self.seed, fingerprint, k) else "internal_a"
                v = b.add(cell, int(node_of[tree.left[k]]), int(node_of[tree.right[k]]))
            node_of[k] = v
            b.add("loss", v, payload=np.int32(tree.labels[k]))
        return b.build()

    def batch_graph(self, trees: Sequence[Tree], vocab: Vocabulary) -> Graph:
        """The batched graph of several trees (one instance per tree), built vectorised.

        Equal, node by node, to ``batch_graphs([tree_graph(t, vocab.encode(t))
        for t in trees])``: tree node ``k`` of the ``i``-th tree becomes cell
        node ``2 (o_i + k)`` and loss node ``2 (o_i + k) + 1``, with ``o_i`` the
        nodes of the trees before it. Its ``op_types`` are always
        :attr:`op_types` (the builder's follow first appearance).

        Raises:
          GraphError: ``trees`` is empty.
        """
        internal_type = 1 + internal_choice(trees, self.seed)  # 1: internal_a, 2: internal_b
        return binary_tree_batch_graph(trees, vocab, self.vocab_size, self.op_types, internal_type)
