"""Double-typed binary Tree-LSTM (SST): two interchangeable internal cells.

The model of :class:`~edbatch_jax.zoo.models.treelstm.TreeLSTM`, except that every
binary node uses one of two identically shaped (separately parameterised)
internal cells, ``internal_a`` or ``internal_b``, picked pseudo-randomly per
node. The graph has four op types, ``("leaf", "internal_a", "internal_b",
"loss")``, which is what makes it a scheduling benchmark: a path from a leaf to
the root alternates between the two internal types at random, so the two types
compete for the same depth levels.

Cells (``flax.linen``), H = hidden size, E = embedding size (those of
:mod:`edbatch_jax.zoo.models.cells`):

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
import zlib
from collections.abc import Sequence

import numpy as np

from edbatch_jax.zoo.data.sst import Tree
from edbatch_jax.zoo.models.base import CellSpec, SSTTreeModel
from edbatch_jax.zoo.models.cells import classifier_spec, tree_internal_spec, tree_leaf_spec

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
class DoubleTreeLSTM(SSTTreeModel):
    """The double-typed Tree-LSTM: cells, ops, parameter init, and graph construction.

    ``init(rng)`` gives the two internal cells different parameters.

    Attributes (``vocab_size``, ``hidden``, ``embed``, ``num_classes``: those of
    :class:`~edbatch_jax.zoo.models.base.SSTTreeModel`):
      seed: seed of the per-node choice between ``internal_a`` and
        ``internal_b`` (see the module docstring).
    """

    seed: int = 0

    op_types = ("leaf", "internal_a", "internal_b", "loss")

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell; ``internal_a`` and ``internal_b`` have the same shapes."""
        return {
            "leaf": tree_leaf_spec(self.vocab_size, self.embed, self.hidden),
            "internal_a": tree_internal_spec(self.hidden),
            "internal_b": tree_internal_spec(self.hidden),
            "loss": classifier_spec(self.hidden, self.num_classes),
        }

    def internal_ops(self, tree: Tree) -> list[str]:
        """``"internal_b"`` or ``"internal_a"`` for every node of ``tree`` (:func:`internal_choice`, node by node)."""
        fingerprint = tree_fingerprint(tree)
        return ["internal_b" if _coin(self.seed, fingerprint, k) else "internal_a" for k in range(tree.num_nodes)]

    def internal_types(self, trees: Sequence[Tree]) -> np.ndarray:
        """int32 ``[total nodes]``: 1 (``internal_a``) or 2 (``internal_b``) per node, :func:`internal_choice`."""
        return 1 + internal_choice(trees, self.seed)
