"""Trees whose nodes have any number of children: SST trees read as n-ary, and a synthetic generator.

An :class:`NaryTree` is in post-order (children before their parent, the
root last), its children in CSR form. Words sit at the leaves (nodes without
children), as in SST's constituency trees; every node has a sentiment label.
The Child-Sum Tree-LSTM (:mod:`edbatch_jax.zoo.models.childsum`) reads them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np

from edbatch_jax.zoo.data.sst import NUM_LABELS, Tree, word_polarity

__all__ = ["MAX_CHILDREN", "NaryTree", "check_child_links", "synthetic_nary_trees"]

MAX_CHILDREN = 8
"""Most children of a node in :func:`synthetic_nary_trees`."""


def check_child_links(counts: np.ndarray, child_idx: np.ndarray) -> None:
    """Checks that CSR child lists (``counts`` int ``[N]`` children per node, ``child_idx`` int ``[N - 1]``) make
    one tree in post-order: children precede parents, every node but the root (the last) is a child once.

    Raises:
      ValueError: naming the first node that breaks it.
    """
    n = counts.shape[0]
    if child_idx.size != n - 1:
        raise ValueError(f"a tree of {n} nodes has {n - 1} parent links, got {child_idx.size}")
    parent = np.repeat(np.arange(n), counts)
    bad = np.flatnonzero((child_idx < 0) | (child_idx >= parent))
    if bad.size:
        raise ValueError(f"node {parent[bad[0]]} has child {child_idx[bad[0]]}: children precede parents")
    seen = np.bincount(child_idx, minlength=n)
    if np.any(seen[:-1] != 1) or seen[-1] != 0:
        k = int(np.flatnonzero(np.r_[seen[:-1] != 1, seen[-1] != 0])[0])
        raise ValueError(f"node {k} is a child {seen[k]} times; every node but the root (last) is one once")


@dataclasses.dataclass(frozen=True, eq=False)
class NaryTree:
    """A labelled tree in post-order whose nodes have any number of children.

    Attributes:
      child_ptr: int32 ``[n + 1]``: node ``k``'s children are
        ``child_idx[child_ptr[k]:child_ptr[k + 1]]``.
      child_idx: int32 ``[n - 1]``: local node ids, each smaller than its
        parent's, every node but the root a child exactly once.
      labels: int32 ``[n]``, the label of every node in ``0..4``.
      tokens: the word of every leaf (a node without children), ``None`` at
        the other nodes.

    Raises:
      ValueError: the arrays do not describe such a tree (the message says
        which field and node).
    """

    child_ptr: np.ndarray
    child_idx: np.ndarray
    labels: np.ndarray
    tokens: tuple[str | None, ...]

    def __post_init__(self):
        for name in ("child_ptr", "child_idx", "labels"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"NaryTree.{name} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
            object.__setattr__(self, name, arr.astype(np.int32))
        object.__setattr__(self, "tokens", tuple(self.tokens))
        n = len(self.tokens)
        if n == 0:
            raise ValueError("an NaryTree must have at least one node")
        if self.labels.shape != (n,) or self.child_ptr.shape != (n + 1,):
            raise ValueError(
                f"NaryTree fields disagree on the node count: tokens {n}, labels {self.labels.shape[0]}, "
                f"child_ptr {self.child_ptr.shape[0]} (n + 1)"
            )
        counts = np.diff(self.child_ptr)
        if self.child_ptr[0] != 0 or np.any(counts < 0) or self.child_ptr[-1] != self.child_idx.size:
            raise ValueError("NaryTree.child_ptr must rise from 0 to len(child_idx)")
        check_child_links(counts, self.child_idx)
        if np.any((self.labels < 0) | (self.labels >= NUM_LABELS)):
            raise ValueError(f"NaryTree labels must be in 0..{NUM_LABELS - 1}")
        leaf = counts == 0
        has_token = np.fromiter((t is not None for t in self.tokens), bool, count=n)
        if not np.array_equal(leaf, has_token):
            k = int(np.flatnonzero(leaf != has_token)[0])
            raise ValueError(f"node {k}: leaves (no children) carry a word, other nodes none")

    @classmethod
    def from_sst(cls, tree: Tree) -> NaryTree:
        """An SST (binary) tree read as n-ary: every internal node has its two children, left then right."""
        inner = tree.left >= 0
        counts = np.where(inner, 2, 0)
        ptr = np.zeros(tree.num_nodes + 1, np.int32)
        np.cumsum(counts, out=ptr[1:])
        idx = np.stack([tree.left[inner], tree.right[inner]], axis=1).reshape(-1)
        return cls(ptr, idx, tree.labels, tree.tokens)

    @property
    def num_nodes(self) -> int:
        """Number of nodes."""
        return len(self.tokens)

    @property
    def num_children(self) -> np.ndarray:
        """int32 ``[n]``: the children of every node (0 at leaves)."""
        return np.diff(self.child_ptr)

    @property
    def words(self) -> tuple[str, ...]:
        """The words at the leaves, in post-order (left to right)."""
        return tuple(t for t in self.tokens if t is not None)

    @property
    def root(self) -> int:
        """The root's id (the last node)."""
        return self.num_nodes - 1


_ARITY_WEIGHTS = [1.0 / k**1.5 for k in range(2, MAX_CHILDREN + 1)]


def _grow(rng: random.Random, width: int, out: list, words: list, polarity: list, pos: list) -> tuple[int, int]:
    """Appends a subtree over ``width`` leaves to ``out`` (post-order); returns its root id and value."""
    if width == 1:
        w = words[pos[0]]
        pos[0] += 1
        out.append(([], f"w{w}", polarity[pos[0] - 1]))
        return len(out) - 1, polarity[pos[0] - 1]
    if rng.random() < 0.05:  # a unary node now and then (one child), as dependency trees have
        sizes = [width]
    else:
        most = min(MAX_CHILDREN, width)
        k = rng.choices(range(2, most + 1), weights=_ARITY_WEIGHTS[: most - 1])[0]
        cuts = sorted(rng.sample(range(1, width), k - 1))
        sizes = [b - a for a, b in zip([0, *cuts], [*cuts, width])]
    kids = [_grow(rng, s, out, words, polarity, pos) for s in sizes]
    first = out[kids[0][0]]
    if len(kids) > 1 and first[1] in ("w7", "w13"):  # a negator flips the rest
        value = -sum(v for _, v in kids[1:])
    else:
        value = sum(v for _, v in kids)
    out.append(([c for c, _ in kids], None, value))
    return len(out) - 1, value


def synthetic_nary_trees(num_trees: int, *, seed: int = 0, vocab_size: int = 1000) -> list[NaryTree]:
    """Random sentiment trees whose nodes have 0 to :data:`MAX_CHILDREN` children.

    * Sentence lengths are uniform in ``2..40`` words, drawn Zipf-distributed
      from ``"w0" .. f"w{vocab_size - 1}"`` as in
      :func:`~edbatch_jax.zoo.data.sst.synthetic_sst`.
    * A node over ``w`` words splits them into ``k`` contiguous non-empty
      parts: ``k = 1`` with probability 0.05, else ``k`` in ``2..min(8, w)``
      with probability proportional to ``k ** -1.5``.
    * Labels are learnable as in ``synthetic_sst``: a word's fixed polarity
      in ``-2..2``, a node's value the sum of its children's (negated after
      a negator word ``"w7"`` or ``"w13"`` as its first child), binned into
      ``0..4``.

    The same ``seed`` gives the same trees.
    """
    if num_trees < 0:
        raise ValueError(f"num_trees must be >= 0, got {num_trees}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 41, size=num_trees)
    zipf = 1.0 / np.arange(1, vocab_size + 1)
    cdf = np.cumsum(zipf / zipf.sum())
    words = np.minimum(np.searchsorted(cdf, rng.random(int(lengths.sum()))), vocab_size - 1)
    polarity = word_polarity(words).tolist()
    words = words.tolist()
    py_rng = random.Random(int(rng.integers(2**63)))
    trees, start = [], 0
    for length in lengths.tolist():
        out: list = []
        _grow(py_rng, length, out, words[start : start + length], polarity[start : start + length], [0])
        start += length
        counts = np.array([len(c) for c, _, _ in out], np.int32)
        ptr = np.zeros(len(out) + 1, np.int32)
        np.cumsum(counts, out=ptr[1:])
        idx = np.array([k for c, _, _ in out for k in c], np.int32)
        values = np.array([v for _, _, v in out])
        labels = np.digitize(values, [-2, 0, 1, 3]).astype(np.int32)  # <=-3, -2..-1, 0, 1..2, >=3
        trees.append(NaryTree(ptr, idx, labels, tuple(t for _, t, _ in out)))
    return trees


def nary_sizes(trees: Sequence[NaryTree]) -> np.ndarray:
    """int64 ``[B]``: the nodes of every tree."""
    return np.fromiter((t.num_nodes for t in trees), np.int64, count=len(trees))
