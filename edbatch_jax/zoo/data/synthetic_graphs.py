"""Synthetic graph-shaped inputs of the ED-Batch benchmarks: N-d grids, random DAGs, perfect binary trees.

Every generator has the form ``(num, seed, **settings) -> instances``, is
vectorised NumPy (no Python loop over cells, arcs or tree nodes), and gives
the same instances for the same seed. Every instance carries learnable
synthetic labels (a fixed function of its random token ids), so the bundled
models can be trained on them.

* :func:`synthetic_grids`: N-d LSTM grids (:class:`Grid`), 1-D of length
  10-50, 2-D of 3-5 x 20-25, 3-D of 2-4 x 2-4 x 10-15 cells (inclusive
  ranges, uniform); a token id per cell, label ``token % num_classes``.
* :func:`synthetic_dags`: random DAGs (:class:`RandomDAG`) of 200 states,
  each with 4 incoming arcs from distinct states among the previous 30
  (state ``i < 4`` has ``i``), of type ``a`` (90%) or ``b`` (10%), a token
  id per arc; a state's label is the most frequent class ``token %
  num_classes`` among its incoming arcs (ties: the smallest class; state 0,
  without arcs: class 0).
* :func:`synthetic_binary_trees`: perfect binary trees
  (:class:`PerfectTree`) of depth 5-7 (32-128 leaves, 63-255 nodes), a token
  id per leaf; labels follow the SST-like rule of
  :func:`~edbatch_jax.zoo.data.sst.synthetic_sst` without negation: a leaf's
  value is :func:`~edbatch_jax.zoo.data.sst.word_polarity` of its token, a node's
  value the sum of its children's, binned into 5 classes.

This module is pure NumPy/Python; it does not import JAX.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from edbatch_jax.zoo.data.sst import NUM_LABELS, word_polarity

# Tree node value -> class, as in the SST-like generator: <= -3 -> 0,
# -2..-1 -> 1, 0 -> 2, 1..2 -> 3, >= 3 -> 4.
_TREE_LABEL_BINS = np.array([-2.5, -0.5, 0.5, 2.5])

__all__ = [
    "GRID_SIZES",
    "Grid",
    "PerfectTree",
    "RandomDAG",
    "perfect_tree_structure",
    "synthetic_binary_trees",
    "synthetic_dags",
    "synthetic_grids",
]

GRID_SIZES = {1: ((10, 50),), 2: ((3, 5), (20, 25)), 3: ((2, 4), (2, 4), (10, 15))}
"""Reference grid sizes: number of dimensions -> inclusive (min, max) extent of every dimension."""


def _frozen(value, dtype=np.int32) -> np.ndarray:
    arr = np.array(value, dtype=dtype)
    arr.setflags(write=False)
    return arr


def _check_non_negative(name: str, arr: np.ndarray) -> None:
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0; entry {int(np.flatnonzero(arr < 0)[0])} is {int(arr[arr < 0][0])}.")


# ---------------------------------------------------------------------------
# N-d grids
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """An N-d grid of cells, in row-major (C) order.

    Attributes:
      shape: the extent of every dimension (``N >= 1`` positive ints).
      tokens: int32 ``[P]``, the token id (``>= 0``) of every cell, ``P = prod(shape)``.
      labels: int32 ``[P]``, the class (``>= 0``) of every cell.
    """

    shape: tuple[int, ...]
    tokens: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        shape = tuple(int(s) for s in self.shape)
        if not shape or min(shape) < 1:
            raise ValueError(f"Grid.shape must be one or more positive extents, got {self.shape}.")
        tokens, labels = _frozen(self.tokens), _frozen(self.labels)
        p = int(np.prod(shape))
        if tokens.shape != (p,) or labels.shape != (p,):
            raise ValueError(
                f"a grid of shape {shape} needs {p} tokens and labels, got {tokens.shape} and {labels.shape}."
            )
        _check_non_negative("Grid.tokens", tokens)
        _check_non_negative("Grid.labels", labels)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "labels", labels)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def num_cells(self) -> int:
        return int(self.tokens.shape[0])


def synthetic_grids(
    num: int,
    seed: int = 0,
    *,
    ndim: int = 2,
    sizes: Sequence[tuple[int, int]] | None = None,
    num_tokens: int = 100,
    num_classes: int = NUM_LABELS,
) -> list[Grid]:
    """Random N-d grids; each extent uniform in its inclusive range.

    Args:
      num: number of grids.
      seed: seed for ``np.random.default_rng``.
      ndim: 1, 2 or 3 (the reference sizes :data:`GRID_SIZES`), or any
        ``N >= 1`` with ``sizes`` given.
      sizes: ``N`` inclusive ``(min, max)`` extents (default ``GRID_SIZES[ndim]``).
      num_tokens: token ids are uniform in ``0 .. num_tokens - 1``.
      num_classes: labels are ``token % num_classes``.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}.")
    if sizes is None:
        if ndim not in GRID_SIZES:
            raise ValueError(f"no reference sizes for ndim={ndim}; give sizes (known: {sorted(GRID_SIZES)}).")
        sizes = GRID_SIZES[ndim]
    sizes = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    if sizes.shape[0] != ndim or np.any(sizes[:, 0] < 1) or np.any(sizes[:, 1] < sizes[:, 0]):
        raise ValueError(f"sizes must be {ndim} ranges (min, max) with 1 <= min <= max, got {sizes.tolist()}.")
    if num_tokens < 1 or num_classes < 1:
        raise ValueError(f"num_tokens and num_classes must be >= 1, got {num_tokens} and {num_classes}.")
    rng = np.random.default_rng(seed)
    shapes = rng.integers(sizes[:, 0], sizes[:, 1] + 1, size=(num, ndim))
    cells = shapes.prod(axis=1)
    tokens = rng.integers(0, num_tokens, size=int(cells.sum()))
    labels = tokens % num_classes
    ends = np.cumsum(cells).tolist()
    starts = [0] + ends[:-1]
    return [Grid(tuple(s), tokens[a:b], labels[a:b]) for s, a, b in zip(shapes.tolist(), starts, ends)]


# ---------------------------------------------------------------------------
# Random DAGs
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class RandomDAG:
    """States ``0 .. S-1`` joined by typed arcs going forward; arcs sorted by destination, then source.

    Attributes:
      labels: int32 ``[S]``, the class of every state.
      arc_src: int32 ``[A]``, the source state of every arc.
      arc_dst: int32 ``[A]``, the destination state (``arc_src < arc_dst``).
      arc_type: int32 ``[A]``, 0 (type ``a``) or 1 (type ``b``).
      arc_token: int32 ``[A]``, the token id (``>= 0``) of every arc.

    State 0 has no incoming arcs; every other state needs at least one.
    """

    labels: np.ndarray
    arc_src: np.ndarray
    arc_dst: np.ndarray
    arc_type: np.ndarray
    arc_token: np.ndarray

    def __post_init__(self):
        labels = _frozen(self.labels)
        arcs = [np.asarray(getattr(self, f), dtype=np.int64) for f in ("arc_src", "arc_dst", "arc_type", "arc_token")]
        src, dst, typ, tok = arcs
        s = labels.shape[0]
        if labels.ndim != 1 or s < 1:
            raise ValueError("a RandomDAG needs a 1-D label array with at least one state.")
        if any(a.ndim != 1 or a.shape != src.shape for a in arcs):
            raise ValueError("arc_src, arc_dst, arc_type and arc_token must be 1-D of one length.")
        _check_non_negative("RandomDAG.labels", labels)
        _check_non_negative("RandomDAG.arc_token", tok)
        if np.any((src < 0) | (src >= dst) | (dst >= s)):
            k = int(np.flatnonzero((src < 0) | (src >= dst) | (dst >= s))[0])
            raise ValueError(f"arcs must go forward inside 0..{s - 1}; arc {k} is {int(src[k])} -> {int(dst[k])}.")
        if np.any((typ != 0) & (typ != 1)):
            raise ValueError("arc_type must be 0 (a) or 1 (b).")
        indeg = np.bincount(dst, minlength=s)
        if np.any(indeg[1:] == 0):
            bad = int(np.flatnonzero(indeg[1:] == 0)[0]) + 1
            raise ValueError(f"every state but 0 needs an incoming arc; state {bad} has none.")
        order = np.lexsort((src, dst))
        for name, a in zip(("arc_src", "arc_dst", "arc_type", "arc_token"), arcs):
            object.__setattr__(self, name, _frozen(a[order]))
        object.__setattr__(self, "labels", labels)

    @property
    def num_states(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_arcs(self) -> int:
        return int(self.arc_src.shape[0])


def synthetic_dags(
    num: int,
    seed: int = 0,
    *,
    num_states: int = 200,
    arcs_per_state: int = 4,
    window: int = 30,
    p_second_type: float = 0.1,
    num_tokens: int = 100,
    num_classes: int = NUM_LABELS,
) -> list[RandomDAG]:
    """Random DAGs with the ED-Batch reference settings (defaults).

    State ``i`` gets ``min(arcs_per_state, i)`` arcs from distinct states drawn
    uniformly among ``max(0, i - window) .. i - 1``; an arc is of type ``b``
    with probability ``p_second_type``, else ``a``; its token id is uniform in
    ``0 .. num_tokens - 1``. Labels: see the module docstring.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}.")
    if num_states < 1 or not 1 <= arcs_per_state <= window:
        raise ValueError(
            f"need num_states >= 1 and 1 <= arcs_per_state <= window, got {num_states}, {arcs_per_state}, {window}."
        )
    if not 0.0 <= p_second_type <= 1.0:
        raise ValueError(f"p_second_type must be in [0, 1], got {p_second_type}.")
    if num_tokens < 1 or num_classes < 1:
        raise ValueError(f"num_tokens and num_classes must be >= 1, got {num_tokens} and {num_classes}.")
    rng = np.random.default_rng(seed)
    state = np.tile(np.arange(num_states), num)  # local state id of every (instance, state) row
    source = state[:, None] - 1 - np.arange(window)[None, :]  # candidate sources, nearest first
    keys = rng.random(source.shape)
    keys[source < 0] = np.inf
    ranked = np.argsort(keys, axis=1, kind="stable")
    take = np.arange(window)[None, :] < np.minimum(arcs_per_state, state)[:, None]
    row = np.broadcast_to(np.arange(state.shape[0])[:, None], take.shape)[take]  # global state of every arc
    src = np.take_along_axis(source, ranked, axis=1)[take]
    order = np.lexsort((src, row))
    row, src = row[order], src[order]
    dst = state[row]
    typ = (rng.random(row.shape[0]) < p_second_type).astype(np.int64)
    tok = rng.integers(0, num_tokens, size=row.shape[0])
    counts = np.bincount(row * num_classes + tok % num_classes, minlength=state.shape[0] * num_classes)
    labels = counts.reshape(-1, num_classes).argmax(axis=1)
    arc_end = np.searchsorted(row, np.arange(1, num + 1) * num_states).tolist()
    arc_start = [0] + arc_end[:-1]
    return [
        RandomDAG(labels[i * num_states : (i + 1) * num_states], src[a:b], dst[a:b], typ[a:b], tok[a:b])
        for i, (a, b) in enumerate(zip(arc_start, arc_end))
    ]


# ---------------------------------------------------------------------------
# Perfect binary trees
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def perfect_tree_structure(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """``(left, right)`` int32 ``[2^(depth+1) - 1]``: children of a perfect tree's nodes in post-order.

    A leaf has ``-1`` children; the leaves are the nodes with ``left == -1``,
    left to right; the root is the last node. Read-only, cached.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}.")
    left = right = np.array([-1], dtype=np.int64)
    for _ in range(depth):
        size = left.shape[0]
        left = np.concatenate([left, np.where(left >= 0, left + size, -1), [size - 1]])
        right = np.concatenate([right, np.where(right >= 0, right + size, -1), [2 * size - 1]])
    return _frozen(left), _frozen(right)


@functools.lru_cache(maxsize=32)
def _perfect_tree_heights(depth: int) -> np.ndarray:
    """int64 ``[2^(depth+1) - 1]``: height of every post-order node (leaves 0, root ``depth``)."""
    height = np.zeros(1, dtype=np.int64)
    for d in range(1, depth + 1):
        height = np.concatenate([height, height, [d]])
    height.setflags(write=False)
    return height


@dataclasses.dataclass(frozen=True, eq=False)
class PerfectTree:
    """A perfect binary tree of ``depth`` levels below the root, nodes in post-order.

    Attributes:
      depth: ``>= 0``; the tree has ``2^depth`` leaves and ``2^(depth+1) - 1`` nodes.
      tokens: int32 ``[2^depth]``, the token id (``>= 0``) of every leaf, left to right.
      labels: int32 ``[2^(depth+1) - 1]``, the class of every node, in post-order.
    """

    depth: int
    tokens: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        depth = int(self.depth)
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}.")
        tokens, labels = _frozen(self.tokens), _frozen(self.labels)
        if tokens.shape != (2**depth,) or labels.shape != (2 ** (depth + 1) - 1,):
            raise ValueError(
                f"a perfect tree of depth {depth} needs {2**depth} tokens and {2 ** (depth + 1) - 1} labels, "
                f"got {tokens.shape} and {labels.shape}."
            )
        _check_non_negative("PerfectTree.tokens", tokens)
        _check_non_negative("PerfectTree.labels", labels)
        object.__setattr__(self, "depth", depth)
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "labels", labels)

    @property
    def num_nodes(self) -> int:
        return int(self.labels.shape[0])

    @property
    def left(self) -> np.ndarray:
        return perfect_tree_structure(self.depth)[0]

    @property
    def right(self) -> np.ndarray:
        return perfect_tree_structure(self.depth)[1]


def synthetic_binary_trees(
    num: int, seed: int = 0, *, min_depth: int = 5, max_depth: int = 7, num_tokens: int = 100
) -> list[PerfectTree]:
    """Random perfect binary trees, depth uniform in ``min_depth .. max_depth``.

    Leaf tokens are uniform in ``0 .. num_tokens - 1``; labels: see the
    module docstring (5 classes).
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}.")
    if not 0 <= min_depth <= max_depth:
        raise ValueError(f"need 0 <= min_depth <= max_depth, got {min_depth}, {max_depth}.")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}.")
    rng = np.random.default_rng(seed)
    depths = rng.integers(min_depth, max_depth + 1, size=num)
    leaves = 2**depths
    tokens = rng.integers(0, num_tokens, size=int(leaves.sum()))
    ends = np.cumsum(leaves)
    leaf_tokens = np.split(tokens, ends[:-1])
    labels: list = [None] * num
    for d in np.unique(depths).tolist():  # all trees of one depth at once, one level at a time
        which = np.flatnonzero(depths == d)
        left, right = perfect_tree_structure(d)
        values = np.zeros((which.size, left.shape[0]), dtype=np.int64)
        is_leaf = left < 0
        values[:, is_leaf] = word_polarity(np.stack([leaf_tokens[i] for i in which]))
        height = _perfect_tree_heights(d)
        for k in range(1, d + 1):  # bottom-up, one level of all these trees at a time
            inner = np.flatnonzero(height == k)
            values[:, inner] = values[:, left[inner]] + values[:, right[inner]]
        binned = np.digitize(values, _TREE_LABEL_BINS)
        for row, i in enumerate(which.tolist()):
            labels[i] = binned[row]
    return [PerfectTree(int(d), t, y) for d, t, y in zip(depths.tolist(), leaf_tokens, labels)]
