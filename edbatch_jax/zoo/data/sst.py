"""Stanford Sentiment Treebank (SST) trees: parsing, synthetic data, statistics.

The SST stores one PTB-style binary tree per line::

  (3 (2 It) (4 (4 (2 's) (4 (3 (2 a) (4 (3 lovely) (2 film))) ...)))

Every node carries a sentiment label in ``0..4``; leaves are tokens, and every
node is binary except the preterminals ``(label token)``.

A parsed :class:`Tree` is a set of flat NumPy arrays in post-order (children
before parents, root last), which is the layout dynamic-batching schedulers
want: the node ``i`` only ever depends on nodes ``< i``.

Their words map to ids with :class:`Vocabulary` (the zoo's one vocabulary,
:class:`edbatch_jax.zoo.data.vocab.Vocabulary`, re-exported here).

This module is pure NumPy/Python; it does not import JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Sequence

import numpy as np

from edbatch_jax.zoo.data.vocab import UNK_TOKEN, Vocabulary

__all__ = [
    "NUM_LABELS",
    "UNK_TOKEN",
    "Tree",
    "Vocabulary",
    "parse_tree",
    "read_sst",
    "synthetic_sst",
    "tree_stats",
    "word_polarity",
]

NUM_LABELS = 5
"""Number of sentiment classes (labels are ``0..4``)."""

# ---------------------------------------------------------------------------
# Tree
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tree:
    """One binary sentiment tree, nodes in post-order (root last).

    Node ``i`` is either a preterminal (``left[i] == right[i] == -1`` and
    ``tokens[i]`` is its token) or a binary node with children
    ``left[i] < i`` and ``right[i] < i`` (and ``tokens[i] is None``).

    Attributes:
      labels: int32 ``[n]``, the sentiment label (``0..4``) of every node,
        preterminals included.
      left: int32 ``[n]``, index of the left child; ``-1`` for preterminals.
      right: int32 ``[n]``, index of the right child; ``-1`` for preterminals.
      tokens: length-``n`` tuple; the token of a preterminal, ``None`` for a
        binary node.

    The arrays are made read-only. Two trees compare equal when all four fields
    are equal.
    """

    labels: np.ndarray
    left: np.ndarray
    right: np.ndarray
    tokens: tuple[str | None, ...]

    def __post_init__(self):
        fields = {}
        for name in ("labels", "left", "right"):
            arr = np.array(getattr(self, name), dtype=np.int32)  # copies
            if arr.ndim != 1:
                raise ValueError(f"Tree.{name} must be 1-D, got shape {arr.shape}.")
            arr.setflags(write=False)
            fields[name] = arr
        tokens = tuple(self.tokens)
        for name, value in fields.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "tokens", tokens)

        n = len(tokens)
        if n == 0:
            raise ValueError("A Tree must have at least one node.")
        labels, left, right = fields["labels"], fields["left"], fields["right"]
        if not labels.shape[0] == left.shape[0] == right.shape[0] == n:
            raise ValueError(
                "Tree fields have inconsistent lengths: "
                f"labels={labels.shape[0]}, left={left.shape[0]}, "
                f"right={right.shape[0]}, tokens={n}."
            )
        if np.any((labels < 0) | (labels >= NUM_LABELS)):
            raise ValueError(f"Tree labels must be in 0..{NUM_LABELS - 1}.")
        leaf = left < 0
        if not np.array_equal(leaf, right < 0):
            raise ValueError("A node must have either two children or none.")
        if any((tok is None) == is_leaf for tok, is_leaf in zip(tokens, leaf.tolist())):
            raise ValueError("tokens[i] must be a string exactly for the preterminals.")
        idx = np.arange(n)
        inner = ~leaf
        if np.any(left[inner] >= idx[inner]) or np.any(right[inner] >= idx[inner]):
            raise ValueError("Tree nodes must be in post-order (children < parent).")
        # Every node but the root is the child of exactly one node.
        children = np.concatenate([left[inner], right[inner]])
        if not np.array_equal(np.sort(children), np.arange(n - 1)):
            raise ValueError("Tree nodes must form a single tree with root n-1.")

    @classmethod
    def _trusted(cls, labels, left, right, tokens) -> Tree:
        """Builds a tree from lists already known to be valid (no checks)."""
        tree = object.__new__(cls)
        for name, value in (("labels", labels), ("left", left), ("right", right)):
            arr = np.array(value, dtype=np.int32)
            arr.setflags(write=False)
            object.__setattr__(tree, name, arr)
        object.__setattr__(tree, "tokens", tuple(tokens))
        return tree

    def __eq__(self, other):
        if not isinstance(other, Tree):
            return NotImplemented
        return (
            self.tokens == other.tokens
            and np.array_equal(self.labels, other.labels)
            and np.array_equal(self.left, other.left)
            and np.array_equal(self.right, other.right)
        )

    def __hash__(self):
        return hash((self.tokens, self.labels.tobytes(), self.left.tobytes(), self.right.tobytes()))

    @property
    def num_nodes(self) -> int:
        """Number of nodes ``n`` (preterminals and binary nodes)."""
        return len(self.tokens)

    @property
    def num_tokens(self) -> int:
        """Number of tokens (= preterminals); ``num_nodes == 2 * num_tokens - 1``."""
        return (self.num_nodes + 1) // 2

    @property
    def root(self) -> int:
        """Index of the root node, always ``num_nodes - 1``."""
        return self.num_nodes - 1

    @property
    def is_preterminal(self) -> np.ndarray:
        """bool ``[n]``, True for the preterminals ``(label token)``."""
        return self.left < 0

    @functools.cached_property
    def heights(self) -> np.ndarray:
        """int32 ``[n]``, height of every node (a preterminal has height 1).

        Computed on first use, then cached.
        """
        return _heights(self.left, self.right)

    @property
    def height(self) -> int:
        """Height of the tree (a single preterminal has height 1)."""
        return int(self.heights[-1])

    @property
    def words(self) -> tuple[str, ...]:
        """The tokens of the sentence, left to right."""
        # Post-order visits the leaves left to right.
        return tuple(tok for tok in self.tokens if tok is not None)

    def to_ptb(self) -> str:
        """Formats the tree as one PTB-style line, the inverse of `parse_tree`."""
        labels, left, right = (self.labels.tolist(), self.left.tolist(), self.right.tolist())
        parts: list[str] = []
        stack: list[int | str] = [self.root]  # Nodes to format, or literal text.
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                parts.append(item)
            elif self.tokens[item] is not None:
                parts.append(f"({labels[item]} {self.tokens[item]})")
            else:
                parts.append(f"({labels[item]} ")
                stack += [")", right[item], " ", left[item]]
        return "".join(parts)


def _heights(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Heights of post-order nodes (read-only); preterminals have height 1."""
    h = [0] * len(left)
    for i, (l, r) in enumerate(zip(left.tolist(), right.tolist())):
        h[i] = 1 if l < 0 else 1 + max(h[l], h[r])
    heights = np.asarray(h, dtype=np.int32)
    heights.setflags(write=False)
    return heights


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

# Only ASCII whitespace separates tokens: SST has tokens such as "8\xa01\\/2"
# with a non-breaking space inside.
_TOKEN_RE = re.compile(r"\(|\)|[^\s()]+", re.ASCII)
_LABELS = {str(k): k for k in range(NUM_LABELS)}


def parse_tree(line: str, *, source: str = "<string>", line_no: int = 0) -> Tree:
    """Parses one PTB-style SST tree, e.g. ``"(3 (2 a) (4 (3 lovely) (2 film)))"``.

    The parser is iterative (an explicit stack), so arbitrarily deep trees are
    fine. Tokens are separated by ASCII whitespace and parentheses only.

    Args:
      line: the tree, on one line.
      source: a name for the input (e.g. a file name), used in error messages.
      line_no: the line number, used in error messages.

    Returns:
      The :class:`Tree`, nodes in post-order.

    Raises:
      ValueError: ``"{source}:{line_no}: ..."`` for an empty line, unbalanced
        parentheses, a label that is not an integer ``0..4``, a node with zero,
        one (unary chain) or three or more children, a preterminal with more
        than one token, a node mixing tokens and subtrees, or trailing text.
    """
    toks = _TOKEN_RE.findall(line)
    num_toks = len(toks)

    def error(msg: str, at: int | None = None) -> ValueError:
        where = ""
        if at is not None and at < num_toks:
            col = [m.start() for m in _TOKEN_RE.finditer(line)][at] + 1
            where = f" (column {col})"
        return ValueError(f"{source}:{line_no}: {msg}{where}: {_snippet(line)}")

    if not toks:
        raise error("empty line, expected a tree")

    labels: list[int] = []
    left: list[int] = []
    right: list[int] = []
    tokens: list[str | None] = []
    # Open binary-node candidates: their labels and the indices of their
    # children parsed so far. Preterminals are consumed in one step.
    open_labels: list[int] = []
    open_children: list[list[int]] = []
    i = 0
    while i < num_toks:
        tok = toks[i]
        if i and not open_labels:  # The root is complete.
            if tok == ")":
                raise error("unbalanced parentheses: unexpected ')' after the end of the tree", i)
            raise error(f"trailing text {tok!r} after the end of the tree", i)
        if tok == "(":
            if i + 1 >= num_toks:
                raise error("unbalanced parentheses: unexpected end of line")
            label = _LABELS.get(toks[i + 1])
            if label is None:
                raise error(f"expected a label (an integer 0..{NUM_LABELS - 1}), got {toks[i + 1]!r}", i + 1)
            if i + 2 >= num_toks:
                raise error("unbalanced parentheses: unexpected end of line")
            word = toks[i + 2]
            if word == "(" or word == ")":  # A node with subtrees (or empty).
                open_labels.append(label)
                open_children.append([])
                i += 2
                continue
            # A preterminal: "(" label word ")".
            if i + 3 >= num_toks:
                raise error("unbalanced parentheses: unexpected end of line")
            close = toks[i + 3]
            if close == "(":
                raise error("a node mixes a token and a subtree", i + 3)
            if close != ")":
                raise error(f"a preterminal has more than one token ({word!r}, {close!r})", i + 3)
            left.append(-1)
            right.append(-1)
            tokens.append(word)
            i += 4
        elif tok == ")":
            if not open_labels:
                raise error("unbalanced parentheses: unexpected ')'", i)
            label = open_labels.pop()
            children = open_children.pop()
            if len(children) != 2:
                if not children:
                    raise error("a node has no children and no token", i)
                if len(children) == 1:
                    raise error("a unary node (a single subtree child) is not supported; SST trees are binary", i)
                raise error(f"a node has {len(children)} children; SST trees are binary", i)
            left.append(children[0])
            right.append(children[1])
            tokens.append(None)
            i += 1
        elif open_labels:
            raise error(f"a node mixes subtrees and a token ({tok!r})", i)
        else:
            raise error(f"expected '(' to start a tree, got {tok!r}", i)
        # A node was completed: record it and attach it to its parent.
        labels.append(label)
        if open_children:
            open_children[-1].append(len(labels) - 1)

    if open_labels:
        raise error(f"unbalanced parentheses: {len(open_labels)} unclosed '('")
    return Tree._trusted(labels, left, right, tokens)


def _snippet(line: str, width: int = 60) -> str:
    line = line.strip()
    return repr(line if len(line) <= width else line[:width] + "...")


def read_sst(path: str | os.PathLike, *, limit: int | None = None) -> list[Tree]:
    """Reads an SST file with one tree per line (blank lines are skipped).

    Args:
      path: the file, e.g. ``trees/train.txt``.
      limit: if given, read at most this many trees.

    Returns:
      The trees, in file order.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: ``"{path}:{line_no}: ..."`` for a malformed line (1-based line
        numbers).
    """
    path = os.fspath(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SST file not found: {path!r}")
    trees: list[Tree] = []
    if limit == 0:
        return trees
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            trees.append(parse_tree(line, source=path, line_no=line_no))
            if limit is not None and len(trees) >= limit:
                break
    return trees


# ---------------------------------------------------------------------------
# Synthetic SST-like data
# ---------------------------------------------------------------------------

# Number of SST train trees (8550 in all) with 0, 1, 2, ... tokens, measured
# once on trees/train.txt. The mean is 19.13 tokens, the range 2..52.
_SST_TRAIN_LENGTH_COUNTS = (
    0,
    0,
    40,
    96,
    154,
    154,
    232,
    220,
    229,
    265,
    298,
    305,
    308,
    319,
    334,
    353,
    334,
    327,
    342,
    351,
    325,
    312,
    317,
    296,
    290,
    259,
    238,
    223,
    226,
    171,
    157,
    158,
    151,
    124,
    123,
    99,
    69,
    54,
    61,
    38,
    31,
    40,
    24,
    24,
    20,
    18,
    11,
    3,
    8,
    8,
    4,
    4,
    3,
)

# How a span of L >= 3 tokens is split into (left, right) subtrees: with these
# probabilities the left part is one token (right-branching, 57% of SST train
# splits), or all but the last token (e.g. a final period, 19%); otherwise the
# split point is uniform. Calibrated so that the mean tree height, also per
# sentence length, matches SST train (10.8; 7.8 at 10 tokens, 11.6 at 20).
_P_SPLIT_RIGHT_BRANCHING = 0.4
_P_SPLIT_LEFT_BRANCHING = 0.15

# Word polarities: the most frequent words are neutral (function words);
# other words are neutral, mildly or strongly polar by a fixed hash of their
# index. A few frequent words are negators.
_NUM_FUNCTION_WORDS = 20
_NEGATORS = frozenset({7, 13})
# Cumulative probabilities of the polarities -2, -1, 0, +1 (the rest is +2)
# for the other words; with `_LABEL_BINS` this gives root and node label
# histograms close to SST train's.
_POLARITY_CDF = np.array([0.05, 0.17, 0.83, 0.95])
# Sentiment value of a phrase -> label: <= -3 -> 0, -2..-1 -> 1, 0 -> 2,
# 1..2 -> 3, >= 3 -> 4.
_LABEL_BINS = np.array([-2.5, -0.5, 0.5, 2.5])
_ZIPF_EXPONENT = 1.0


def word_polarity(word_ids: np.ndarray) -> np.ndarray:
    """The fixed latent polarity of synthetic words ``"w{id}"``.

    Args:
      word_ids: int array of any shape, word indices ``>= 0``.

    Returns:
      int32 array of the same shape, in ``-2..2``; 0 for the 20 most frequent
      words ``"w0" .. "w19"`` (function words, the negators among them).
    """
    ids = np.asarray(word_ids)
    if np.any(ids < 0):
        raise ValueError("word ids must be >= 0.")
    ids = ids.astype(np.uint64)
    # Knuth's multiplicative hash, mapped to [0, 1).
    u = ((ids * np.uint64(2654435761)) % np.uint64(2**32)) / 2.0**32
    polarity = np.searchsorted(_POLARITY_CDF, u, side="right").astype(np.int32)
    polarity -= 2
    polarity[ids < _NUM_FUNCTION_WORDS] = 0
    return polarity


def synthetic_sst(num_trees: int, *, seed: int = 0, vocab_size: int = 1000) -> list[Tree]:
    """Generates random binary sentiment trees with SST-like statistics.

    * Sentence lengths follow the SST train histogram (mean 19.1 tokens, range
      2..52); the tree shape mixes right-branching, left-branching and uniform
      splits so that heights match SST train (mean about 10.8).
    * Tokens are ``"w0" .. f"w{vocab_size - 1}"``, drawn from a Zipf law
      (``"w0"`` is the most frequent).
    * Labels are a deterministic, learnable function of the tree: word ``w``
      has a fixed polarity `word_polarity` in ``-2..2`` (mostly 0); a node's
      value is the sum of its children's values, except that a node whose left
      child is a negator (``"w7"``, ``"w13"``) gets the negated value of its
      right child; the label is the value binned as ``<= -3 -> 0``,
      ``-2..-1 -> 1``, ``0 -> 2``, ``1..2 -> 3``, ``>= 3 -> 4``.

    The same ``seed`` gives the same trees.

    Args:
      num_trees: number of trees.
      seed: seed for ``np.random.default_rng``.
      vocab_size: number of distinct words.

    Returns:
      ``num_trees`` trees.
    """
    if num_trees < 0:
        raise ValueError(f"num_trees must be >= 0, got {num_trees}.")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}.")
    rng = np.random.default_rng(seed)

    counts = np.asarray(_SST_TRAIN_LENGTH_COUNTS, dtype=np.float64)
    lengths = rng.choice(len(counts), size=num_trees, p=counts / counts.sum())
    total_tokens = int(lengths.sum())

    zipf = 1.0 / np.arange(1, vocab_size + 1) ** _ZIPF_EXPONENT
    cdf = np.cumsum(zipf / zipf.sum())
    words = np.minimum(np.searchsorted(cdf, rng.random(total_tokens)), vocab_size - 1)

    # The trees are grown top-down, one level at a time for all trees at once.
    # A node spanning tokens [lo, hi) of its tree, with r right turns on its
    # path from the root, has the post-order index 2 * hi - r - 2: the nodes
    # before it are its 2 * (hi - lo) - 2 descendants and the 2 * lo - r nodes
    # of the r maximal subtrees to its left.
    num_nodes = 2 * lengths - 1
    node_offset = np.cumsum(num_nodes) - num_nodes
    token_offset = np.cumsum(lengths) - lengths
    total_nodes = int(num_nodes.sum())
    left = np.full(total_nodes, -1, dtype=np.int32)  # Local child indices.
    right = np.full(total_nodes, -1, dtype=np.int32)
    node_word = np.full(total_nodes, -1, dtype=np.int64)

    tree = np.arange(num_trees)
    lo = np.zeros(num_trees, dtype=np.int64)
    hi = lengths.astype(np.int64)
    turns = np.zeros(num_trees, dtype=np.int64)
    levels = []  # (parent, left child, right child) global node indices.
    while tree.size:
        node = node_offset[tree] + 2 * hi - turns - 2
        leaf = hi - lo == 1
        node_word[node[leaf]] = words[token_offset[tree[leaf]] + lo[leaf]]
        inner = ~leaf
        tree, lo, hi, turns, node = (tree[inner], lo[inner], hi[inner], turns[inner], node[inner])
        # Split point: the left part gets k tokens, 1 <= k < hi - lo.
        mode = rng.random(tree.size)
        frac = rng.random(tree.size)
        frac[mode < _P_SPLIT_RIGHT_BRANCHING] = 0.0
        frac[mode >= 1.0 - _P_SPLIT_LEFT_BRANCHING] = 1.0 - 1e-9
        mid = lo + 1 + (frac * (hi - lo - 1)).astype(np.int64)
        left_child = node_offset[tree] + 2 * mid - turns - 2
        left[node] = left_child - node_offset[tree]
        right[node] = node - 1 - node_offset[tree]
        levels.append((node, left_child, node - 1))
        tree = np.concatenate([tree, tree])
        lo, hi = np.concatenate([lo, mid]), np.concatenate([mid, hi])
        turns = np.concatenate([turns, turns + 1])

    # Sentiment values, bottom-up.
    is_leaf = node_word >= 0
    values = np.where(is_leaf, word_polarity(np.maximum(node_word, 0)), 0)
    is_negator = is_leaf & np.isin(node_word, list(_NEGATORS))
    for parent, left_child, right_child in reversed(levels):
        values[parent] = np.where(
            is_negator[left_child], -values[right_child], values[left_child] + values[right_child]
        )
    labels = np.digitize(values, _LABEL_BINS).astype(np.int32)

    names = np.array([f"w{i}" for i in range(vocab_size)] + [None], dtype=object)
    tokens = names[node_word].tolist()  # node_word == -1 picks None.
    trees = []
    for start, end in zip(node_offset.tolist(), (node_offset + num_nodes).tolist()):
        trees.append(Tree._trusted(labels[start:end], left[start:end], right[start:end], tokens[start:end]))
    return trees


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def tree_stats(trees: Sequence[Tree]) -> dict:
    """Summary statistics of a list of trees.

    Returns:
      A dict with ``num_trees``; ``mean_tokens``, ``max_tokens``;
      ``mean_nodes`` (nodes per tree, preterminals included); ``mean_height``,
      ``max_height`` (a preterminal has height 1); ``root_label_hist`` and
      ``node_label_hist``, int64 ``[NUM_LABELS]`` label counts over the roots
      and over all nodes.
    """
    if not trees:
        raise ValueError("tree_stats needs at least one tree.")
    tokens = np.array([t.num_tokens for t in trees])
    nodes = np.array([t.num_nodes for t in trees])
    heights = np.array([t.height for t in trees])
    roots = np.array([t.labels[-1] for t in trees])
    all_labels = np.concatenate([t.labels for t in trees])
    return {
        "num_trees": len(trees),
        "mean_tokens": float(tokens.mean()),
        "max_tokens": int(tokens.max()),
        "mean_nodes": float(nodes.mean()),
        "mean_height": float(heights.mean()),
        "max_height": int(heights.max()),
        "root_label_hist": np.bincount(roots, minlength=NUM_LABELS),
        "node_label_hist": np.bincount(all_labels, minlength=NUM_LABELS),
    }
