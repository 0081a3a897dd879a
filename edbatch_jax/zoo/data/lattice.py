"""Chinese NER character/word lattices: parsing, writing, synthetic data.

A lattice is a DAG over the ``L`` character positions of a sentence. Node 0 is
a start node with no incoming arcs; node ``i >= 1`` has exactly one *char* arc
from node ``i - 1`` (the ``i``-th character) and any number of *word* arcs from
earlier nodes ``j <= i - 2`` (a lexicon word covering characters ``j+1 .. i``).
Every arc carries an embedding id; char ids and word ids share one id space.
Every node carries a tag in ``0..17`` (node 0 has the start tag 0 in the real
data; most other nodes have the outside tag 3).

The files hold one whitespace-separated stream of integers::

  2                        number of lattices
  3                        lattice 0: number of nodes L
  0 3 3                    L tags
  0                        node 0: number of arcs into it (none)
  1 0 62                   node 1: 1 arc, from node 0 with id 62
  2 1 480 0 3395           node 2: char arc from 1 (id 480), word arc from 0
  ...                      lattice 1, ...

The arcs of a node are written as ``n_arcs from_1 id_1 from_2 id_2 ...``, char
arc first, then the word arcs by increasing source. The parser only relies on
the order of the tokens, not on the line breaks; line numbers are used for
error messages.

A parsed :class:`Lattice` is a set of flat NumPy arrays, the arcs sorted by
destination then source, which is the layout dynamic-batching schedulers want:
the arcs into node ``i`` only ever leave nodes ``< i``.

This module is pure NumPy/Python; it does not import JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "NUM_TAGS",
    "Lattice",
    "char_tag",
    "format_lattices",
    "lattice_stats",
    "parse_lattices",
    "read_lattices",
    "synthetic_lattices",
    "write_lattices",
]

NUM_TAGS = 18
"""Number of tags (tags are ``0..17``)."""

_START_TAG = 0  # The tag of node 0 in every real lattice, and nowhere else.
_OUTSIDE_TAG = 3  # The majority ('O'-like) tag: 84% of all real nodes.


# ---------------------------------------------------------------------------
# Lattice
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Lattice:
    """One character/word lattice; arcs sorted by destination, then source.

    Attributes:
      tags: int32 ``[L]``, the tag (``0..17``) of every node.
      arc_src: int32 ``[A]``, the source node of every arc.
      arc_dst: int32 ``[A]``, the destination node of every arc.
      arc_id: int32 ``[A]``, the embedding id (``>= 0``) of every arc.

    The constructor copies the arrays, sorts the arcs by ``(arc_dst, arc_src)``
    and makes the arrays read-only. It checks that ``L >= 1``; that every arc
    goes forward (``0 <= arc_src < arc_dst < L``, so ``arc_dst >= 1``); that no
    two arcs join the same pair of nodes; that every node ``i >= 1`` has
    exactly one char arc (from ``i - 1``); that ids are ``>= 0``; and that tags
    are in ``0..17``. Two lattices compare equal when all four fields are
    equal.

    Raises:
      ValueError: if one of the checks above fails.
    """

    tags: np.ndarray
    arc_src: np.ndarray
    arc_dst: np.ndarray
    arc_id: np.ndarray

    def __post_init__(self):
        fields = {}
        for name in ("tags", "arc_src", "arc_dst", "arc_id"):
            arr = np.array(getattr(self, name), dtype=np.int64)  # copies
            if arr.ndim != 1:
                raise ValueError(f"Lattice.{name} must be 1-D, got shape {arr.shape}.")
            fields[name] = arr
        tags, src, dst, ids = (fields["tags"], fields["arc_src"], fields["arc_dst"], fields["arc_id"])
        n = tags.shape[0]
        if n == 0:
            raise ValueError("A Lattice must have at least one node.")
        if not src.shape[0] == dst.shape[0] == ids.shape[0]:
            raise ValueError(
                "Lattice arc fields have inconsistent lengths: "
                f"arc_src={src.shape[0]}, arc_dst={dst.shape[0]}, "
                f"arc_id={ids.shape[0]}."
            )
        if np.any((tags < 0) | (tags >= NUM_TAGS)):
            bad = int(np.flatnonzero((tags < 0) | (tags >= NUM_TAGS))[0])
            raise ValueError(f"Lattice tags must be in 0..{NUM_TAGS - 1}; node {bad} has tag {int(tags[bad])}.")
        if np.any((dst < 1) | (dst >= n)):
            raise ValueError(f"Lattice arc destinations must be in 1..{n - 1} (node 0 has no incoming arcs).")
        if np.any((src < 0) | (src >= dst)):
            k = int(np.flatnonzero((src < 0) | (src >= dst))[0])
            raise ValueError(
                f"Lattice arcs must go forward (0 <= arc_src < arc_dst); got an arc {int(src[k])} -> {int(dst[k])}."
            )
        if np.any(ids < 0):
            raise ValueError("Lattice arc ids must be >= 0.")
        if max(n - 1, int(ids.max(initial=0))) > np.iinfo(np.int32).max:
            raise ValueError("Lattice node indices and arc ids must fit in int32.")
        order = np.lexsort((src, dst))
        src, dst, ids = src[order], dst[order], ids[order]
        same = (src[1:] == src[:-1]) & (dst[1:] == dst[:-1])
        if np.any(same):
            k = int(np.flatnonzero(same)[0])
            raise ValueError(f"Lattice has two arcs {int(src[k])} -> {int(dst[k])}; arcs must join distinct pairs.")
        num_char = np.bincount(dst[src == dst - 1], minlength=n)
        if n > 1 and np.any(num_char[1:] != 1):
            bad = int(np.flatnonzero(num_char[1:] != 1)[0]) + 1
            raise ValueError(f"Every node i >= 1 needs a char arc from node i - 1; node {bad} has none.")
        for name, value in (("tags", tags), ("arc_src", src), ("arc_dst", dst), ("arc_id", ids)):
            object.__setattr__(self, name, _frozen_int32(value))

    @classmethod
    def _trusted(cls, tags, arc_src, arc_dst, arc_id) -> Lattice:
        """Builds a lattice from sorted arrays already known to be valid."""
        lattice = object.__new__(cls)
        for name, value in (("tags", tags), ("arc_src", arc_src), ("arc_dst", arc_dst), ("arc_id", arc_id)):
            object.__setattr__(lattice, name, _frozen_int32(value))
        return lattice

    def __eq__(self, other):
        if not isinstance(other, Lattice):
            return NotImplemented
        return (
            np.array_equal(self.tags, other.tags)
            and np.array_equal(self.arc_src, other.arc_src)
            and np.array_equal(self.arc_dst, other.arc_dst)
            and np.array_equal(self.arc_id, other.arc_id)
        )

    def __hash__(self):
        return hash((self.tags.tobytes(), self.arc_src.tobytes(), self.arc_dst.tobytes(), self.arc_id.tobytes()))

    @property
    def num_nodes(self) -> int:
        """Number of nodes ``L`` (node 0 included)."""
        return int(self.tags.shape[0])

    @property
    def num_arcs(self) -> int:
        """Number of arcs ``A``, char and word arcs."""
        return int(self.arc_src.shape[0])

    @property
    def num_word_arcs(self) -> int:
        """Number of word arcs, ``num_arcs - (num_nodes - 1)``."""
        return self.num_arcs - (self.num_nodes - 1)

    @functools.cached_property
    def is_char(self) -> np.ndarray:
        """bool ``[A]``, True for the char arcs (``arc_src == arc_dst - 1``)."""
        return _readonly(self.arc_src == self.arc_dst - 1)

    @property
    def spans(self) -> np.ndarray:
        """int32 ``[A]``, ``arc_dst - arc_src``: 1 for char arcs, >= 2 for words."""
        return self.arc_dst - self.arc_src

    @functools.cached_property
    def char_ids(self) -> np.ndarray:
        """int32 ``[L]``, the id of the char arc into each node; -1 for node 0."""
        ids = np.full(self.num_nodes, -1, dtype=np.int32)
        is_char = self.is_char
        ids[self.arc_dst[is_char]] = self.arc_id[is_char]
        return _readonly(ids)

    @property
    def longest_path(self) -> int:
        """Number of arcs on the longest path, ``L - 1`` (the char chain).

        Every arc goes forward by at least one node, so no path is longer than
        the chain of char arcs ``0 -> 1 -> ... -> L - 1``.
        """
        return self.num_nodes - 1


def _frozen_int32(value) -> np.ndarray:
    arr = np.array(value, dtype=np.int32)
    arr.setflags(write=False)
    return arr


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------

# Only ASCII whitespace separates tokens.
_TOKEN_RE = re.compile(r"[^ \t\n\r\f\v]+")
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}", re.ASCII)


class _Tokens:
    """The integer tokens of a text, with 1-based line numbers for errors."""

    def __init__(self, text: str, source: str):
        self.text = text
        self.source = source
        toks = _TOKEN_RE.findall(text)
        self.num_tokens = len(toks)
        bad = next((k for k, t in enumerate(toks) if not _INT_RE.fullmatch(t)), None)
        if bad is not None:
            raise self.error(bad, f"expected an integer, got {toks[bad]!r}")
        self.values: list[int] = [int(t) for t in toks]

    def line_of(self, k: int) -> int:
        """The line of token ``k``; past the end, the line of the last token."""
        if not self.num_tokens:
            return 1
        k = min(k, self.num_tokens - 1)
        for j, match in enumerate(_TOKEN_RE.finditer(self.text)):
            if j == k:
                return self.text.count("\n", 0, match.start()) + 1
        raise AssertionError("unreachable")

    def error(self, k: int, msg: str) -> ValueError:
        return ValueError(f"{self.source}:{self.line_of(k)}: {msg}")


def parse_lattices(text: str, source: str = "<string>") -> list[Lattice]:
    """Parses lattices in the file format (see the module docstring).

    Tokens are integers separated by ASCII whitespace; line breaks are not
    significant. Lattice and node indices in messages are 0-based, line
    numbers 1-based.

    Args:
      text: the whole file.
      source: a name for the input (e.g. a file name), used in error messages.

    Returns:
      The lattices, in order.

    Raises:
      ValueError: ``"{source}:{line}: ..."`` for a token that is not an
        integer; a missing or negative lattice count; fewer lattices than
        declared (the input ends early) or tokens left after them; a lattice
        with no nodes; a tag outside ``0..17``; a negative arc count; an arc
        from a negative node or from a node at or after its destination (node
        0 has no arcs); a negative arc id; two arcs between the same nodes; or a node ``i >= 1`` without
        its char arc from ``i - 1``.
    """
    toks = _Tokens(text, source)
    vals = toks.values
    end = len(vals)
    if end == 0:
        raise toks.error(0, "empty input, expected the number of lattices")
    count = vals[0]
    if count < 0:
        raise toks.error(0, f"the number of lattices must be >= 0, got {count}")
    lattices: list[Lattice] = []
    p = 1

    def need(k: int, what: str):
        if k > end:
            raise toks.error(
                end, f"unexpected end of input in lattice {len(lattices)} of {count} declared: expected {what}"
            )

    for _ in range(count):
        lat = len(lattices)
        need(p + 1, "the number of nodes")
        num_nodes = vals[p]
        if num_nodes < 1:
            raise toks.error(p, f"lattice {lat}: the number of nodes must be >= 1, got {num_nodes}")
        p += 1
        need(p + num_nodes, f"{num_nodes} tags")
        tags = vals[p : p + num_nodes]
        for i, tag in enumerate(tags):
            if not 0 <= tag < NUM_TAGS:
                raise toks.error(p + i, f"lattice {lat}: node {i} has tag {tag}, expected 0..{NUM_TAGS - 1}")
        p += num_nodes
        src: list[int] = []
        dst: list[int] = []
        ids: list[int] = []
        for i in range(num_nodes):
            need(p + 1, f"the number of arcs into node {i}")
            num_arcs = vals[p]
            if num_arcs < 0:
                raise toks.error(p, f"lattice {lat}: node {i} has a negative number of arcs ({num_arcs})")
            node_tok = p
            p += 1
            need(p + 2 * num_arcs, f"{num_arcs} (source, id) pairs for node {i}")
            pairs = vals[p : p + 2 * num_arcs]
            sources = pairs[0::2]
            if i == 0 and num_arcs:
                raise toks.error(node_tok, f"lattice {lat}: node 0 has {num_arcs} incoming arcs, expected none")
            for k, (j, arc_id) in enumerate(zip(sources, pairs[1::2])):
                if j >= i or j < 0:
                    raise toks.error(
                        p + 2 * k,
                        f"lattice {lat}: node {i} has an arc from node {j}; arcs must come from nodes 0..{i - 1}",
                    )
                if arc_id < 0:
                    raise toks.error(p + 2 * k + 1, f"lattice {lat}: node {i} has an arc with the negative id {arc_id}")
            if len(set(sources)) != num_arcs:
                raise toks.error(node_tok, f"lattice {lat}: node {i} has two arcs from the same node")
            if i and i - 1 not in sources:
                raise toks.error(node_tok, f"lattice {lat}: node {i} has no char arc from node {i - 1}")
            order = sorted(range(num_arcs), key=sources.__getitem__)
            src += [sources[k] for k in order]
            dst += [i] * num_arcs
            ids += [pairs[2 * k + 1] for k in order]
            p += 2 * num_arcs
        if num_nodes > np.iinfo(np.int32).max or max(ids, default=0) > np.iinfo(np.int32).max:
            raise toks.error(p - 1, f"lattice {lat}: node count or arc id does not fit in int32")
        lattices.append(Lattice._trusted(tags, src, dst, ids))
    if p < end:
        raise toks.error(p, f"unexpected token {vals[p]} after the {count} declared lattices")
    return lattices


def read_lattices(path: str | os.PathLike) -> list[Lattice]:
    """Reads a lattice file, e.g. ``lattice/train.txt``.

    Args:
      path: the file.

    Returns:
      The lattices, in file order.

    Raises:
      FileNotFoundError: if ``path`` does not exist.
      ValueError: ``"{path}:{line}: ..."`` for malformed input; see
        `parse_lattices`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Lattice file not found: {path!r}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_lattices(text, source=path)


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def format_lattices(lattices: Iterable[Lattice]) -> str:
    """Formats lattices in the file format, the inverse of `parse_lattices`.

    The layout is the one of the real files: the count on the first line; per
    lattice, its number of nodes, its tags on one line, one line per node
    (``"n_arcs from id from id ..."``, char arc first, then the word arcs by
    increasing source; node 0 is ``"0 "``) and an empty line.

    Args:
      lattices: the lattices.

    Returns:
      The text, ending with a newline.
    """
    lattices = list(lattices)
    lines = [str(len(lattices))]
    for lattice in lattices:
        lines.append(str(lattice.num_nodes))
        lines.append(" ".join(map(str, lattice.tags.tolist())))
        src = lattice.arc_src.tolist()
        ids = lattice.arc_id.tolist()
        # Arcs into node i are arc_src[start[i]:start[i + 1]], by increasing
        # source, so the char arc (from i - 1) is the last one.
        start = np.searchsorted(lattice.arc_dst, np.arange(lattice.num_nodes + 1)).tolist()
        for i in range(lattice.num_nodes):
            lo, hi = start[i], start[i + 1]
            order = [hi - 1] + list(range(lo, hi - 1)) if hi > lo else []
            pairs = " ".join(f"{src[k]} {ids[k]}" for k in order)
            lines.append(f"{hi - lo} {pairs}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_lattices(lattices: Iterable[Lattice], path: str | os.PathLike) -> None:
    """Writes lattices to ``path`` in the file format (see `format_lattices`).

    The file is written atomically: to a temporary file in the same directory,
    then renamed over ``path``, so readers never see a partial file. An
    existing file keeps its permissions; a new one gets mode ``0o644``.

    Args:
      lattices: the lattices.
      path: the file to (over)write; its directory must exist.
    """
    path = os.fspath(path)
    text = format_lattices(lattices)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# ---------------------------------------------------------------------------
# Synthetic lattices
# ---------------------------------------------------------------------------

# All constants below were fitted once to the train split (lattice/train.txt:
# 1147 lattices, 50618 nodes, 76248 arcs).

# Number of train lattices with 0, 1, 2, ... nodes: mean 44.13, standard
# deviation 27.7, median 39, 90th percentile 83, range 3..211.
_TRAIN_NODE_COUNTS = (
    (
        0,
        0,
        0,
        3,
        4,
        6,
        4,
        5,
        10,
        7,
        9,
        18,
        15,
        25,
        16,
        14,
        13,
        17,
        27,
        23,
        20,
        23,
        25,
        12,
        14,
        17,
        18,
        29,
        17,
        17,
        19,
        26,
        19,
        15,
        17,
        17,
        17,
        17,
        16,
        21,
        18,
        14,
        15,
        23,
        11,
        15,
        15,
        17,
        16,
        16,
        11,
        21,
        14,
        12,
        9,
        13,
        8,
        7,
        10,
        11,
        9,
        11,
        6,
        10,
        7,
        13,
        4,
        7,
        11,
        7,
        5,
        5,
        10,
        12,
        7,
        4,
        6,
        4,
        3,
        7,
        2,
        7,
        2,
        6,
        2,
        5,
        4,
        8,
        5,
        5,
        2,
        3,
        3,
        5,
        4,
        3,
        2,
        4,
        4,
        0,
        5,
        3,
        3,
        3,
        1,
        4,
        2,
        1,
        1,
        1,
        2,
        3,
        1,
        0,
        1,
        2,
        1,
        2,
        2,
        0,
        1,
        0,
        0,
        2,
        0,
        0,
        1,
        2,
        1,
        0,
        2,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        2,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        1,
        1,
        0,
        1,
    )
    + (0,) * 48
    + (1,)
)

# Number of train nodes i >= 2 with 0, 1, 2, 3, 4 incoming word arcs (mean
# 0.55; node 1 can have none). 23.35 word arcs per lattice on average.
_TRAIN_WORD_ARCS_PER_NODE = (24533, 21110, 2388, 281, 12)

# Number of train word arcs spanning 2, 3, ..., 8 nodes.
_TRAIN_WORD_SPANS = (23045, 3011, 558, 122, 30, 5, 6)
_MIN_SPAN = 2
# The k word arcs of a node have distinct spans, drawn one after the other
# with these weights (spans 2..8) among the spans not drawn yet. Fitted so
# that the generated span histogram matches `_TRAIN_WORD_SPANS`: a second arc
# must take a longer span, so the weights favour span 2 more than the
# histogram does (96% of the train nodes with one word arc have span 2).
_SPAN_WEIGHTS = (100000, 3549, 443, 94, 23, 4, 5)

# Number of train nodes i >= 1 with tags 1, 2, ..., 17 (tag 0 is only ever
# the tag of node 0); tag 3 is 86% of them.
_TRAIN_TAG_COUNTS = (494, 494, 42337, 515, 1325, 515, 1134, 364, 1134, 603, 143, 143, 181, 7, 79, 2, 1)

# Embedding ids. Ids 0 and 1 are never used. Char ids are 2..2211 and word ids
# 2..10129, as in train; in both, ids were given in order of first appearance,
# so frequent items tend to have small ids (train medians: 265 for char arcs,
# 2946 for word arcs). Frequencies follow Zipf laws whose exponents match the
# rank-frequency slopes of train (0.74 for chars, 0.70 for words over the most
# frequent ones); the most frequent char is 3.8% of the char arcs in train.
_FIRST_ID = 2
_NUM_CHAR_IDS = 2210
_NUM_WORD_IDS = 10128
_CHAR_ZIPF_EXPONENT = 0.75
_WORD_ZIPF_EXPONENT = 0.7

# Hash salts of the fixed (seed-independent) tables.
_SALT_CHAR_ORDER = 1
_SALT_WORD_ORDER = 2
_SALT_CHAR_TAG = 3


def _hash_uniform(x: np.ndarray, salt: int) -> np.ndarray:
    """A fixed hash of non-negative ints to floats in ``[0, 1)`` (SplitMix64)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def _zipf_probs(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


@functools.cache
def _id_table(n: int, exponent: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
    """Zipf probabilities of ranks and the id of each rank (read-only).

    Ids are given in order of (simulated) first appearance: rank ``r`` first
    appears after an exponential time of rate ``p_r``.
    """
    probs = _zipf_probs(n, exponent)
    first_seen = -np.log1p(-_hash_uniform(np.arange(n), salt)) / probs
    rank_to_id = np.empty(n, dtype=np.int64)
    rank_to_id[np.argsort(first_seen, kind="stable")] = np.arange(n)
    rank_to_id += _FIRST_ID
    return _readonly(probs), _readonly(rank_to_id)


@functools.cache
def _char_tag_table() -> np.ndarray:
    """The tag of every char id ``0 .. _FIRST_ID + _NUM_CHAR_IDS - 1``.

    The chars are visited in a fixed hashed order; each goes to the tag other
    than 3 whose share of the char arcs is furthest below its train share, if
    the char's frequency fits in that gap, and to tag 3 otherwise. The tags of
    char arcs then follow the train tag distribution closely (tags rarer
    than any char are left to the noise).
    """
    probs, rank_to_id = _id_table(_NUM_CHAR_IDS, _CHAR_ZIPF_EXPONENT, _SALT_CHAR_ORDER)
    order = np.argsort(_hash_uniform(np.arange(_NUM_CHAR_IDS), _SALT_CHAR_TAG), kind="stable")
    gap = _tag_probs()  # Tags 1..17.
    gap[_OUTSIDE_TAG - 1] = -np.inf
    table = np.full(_FIRST_ID + _NUM_CHAR_IDS, _OUTSIDE_TAG, dtype=np.int32)
    for rank in order.tolist():
        t = int(gap.argmax())
        if probs[rank] <= gap[t]:
            gap[t] -= probs[rank]
            table[rank_to_id[rank]] = t + 1
    return _readonly(table)


def _tag_probs() -> np.ndarray:
    """Probabilities of the tags ``1..17`` of nodes ``i >= 1``."""
    counts = np.asarray(_TRAIN_TAG_COUNTS, dtype=np.float64)
    return counts / counts.sum()


def char_tag(char_ids: np.ndarray) -> np.ndarray:
    """The fixed tag of synthetic char ids, before noise (see `synthetic_lattices`).

    Args:
      char_ids: int array of any shape, char ids in ``0..2211``.

    Returns:
      int32 array of the same shape, tags in ``1..17``; mostly 3, the majority
      tag.
    """
    ids = np.asarray(char_ids)
    table = _char_tag_table()
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"char ids must be in 0..{table.shape[0] - 1}.")
    return table[ids]


def synthetic_lattices(
    num: int, seed: int = 0, *, tag_noise: float = 0.3, max_nodes: int | None = None
) -> list[Lattice]:
    """Generates random lattices with the statistics of the train split.

    * Node counts follow the train histogram (mean 44.1, median 39, range
      3..211).
    * Node ``i >= 2`` gets 0..4 word arcs (mean 0.55, as in train), with
      distinct spans in ``2..min(8, i)`` drawn from the train span histogram
      (86% span 2), so lattices have about 23.2 word arcs and 66.3 arcs in
      all (train: 23.3 and 66.5).
    * Char ids are in ``2..2211`` and word ids in ``2..10129`` (the train
      ranges), each from a Zipf law; frequent ids tend to be small.
    * Node 0 gets tag 0. Node ``i >= 1`` gets ``char_tag(c)`` of the id ``c``
      of its char arc with probability ``1 - tag_noise``, else a tag drawn
      from the train tag distribution. Either way the tags follow the train
      distribution (86% tag 3), and a model that reads the char ids can reach
      about ``1 - 0.26 * tag_noise`` accuracy (0.92 by default), above the
      majority class.

    The same ``seed`` gives the same lattices.

    Args:
      num: number of lattices.
      seed: seed for ``np.random.default_rng``.
      tag_noise: probability in ``[0, 1]`` that a tag ignores the char id.
      max_nodes: if given (``>= 3``), node counts are drawn from the train
        histogram restricted to ``3..max_nodes``.

    Returns:
      ``num`` lattices.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}.")
    if not 0.0 <= tag_noise <= 1.0:
        raise ValueError(f"tag_noise must be in [0, 1], got {tag_noise}.")
    counts = np.asarray(_TRAIN_NODE_COUNTS, dtype=np.float64)
    if max_nodes is not None:
        if max_nodes < 3:
            raise ValueError(f"max_nodes must be >= 3, got {max_nodes}.")
        counts = counts[: max_nodes + 1]
    rng = np.random.default_rng(seed)
    lengths = rng.choice(len(counts), size=num, p=counts / counts.sum())

    # All nodes of all lattices at once: node `pos` of lattice `lat`.
    total = int(lengths.sum())
    offsets = np.cumsum(lengths) - lengths
    lat = np.repeat(np.arange(num), lengths)
    pos = np.arange(total) - offsets[lat]

    # Char arcs and tags.
    char_probs, char_rank_to_id = _id_table(_NUM_CHAR_IDS, _CHAR_ZIPF_EXPONENT, _SALT_CHAR_ORDER)
    char_id = char_rank_to_id[rng.choice(_NUM_CHAR_IDS, size=total, p=char_probs)]
    noisy = rng.random(total) < tag_noise
    random_tag = 1 + rng.choice(NUM_TAGS - 1, size=total, p=_tag_probs())
    tags = np.where(noisy, random_tag, char_tag(char_id))
    tags[pos == 0] = _START_TAG

    # Word arcs: node i draws k from the train histogram, then k distinct
    # spans <= i, weighted by the train span histogram (Gumbel top-k).
    k_counts = np.asarray(_TRAIN_WORD_ARCS_PER_NODE, dtype=np.float64)
    num_words = rng.choice(len(k_counts), size=total, p=k_counts / k_counts.sum())
    weights = np.asarray(_SPAN_WEIGHTS, dtype=np.float64)
    spans = np.arange(_MIN_SPAN, _MIN_SPAN + len(weights))
    keys = np.log(weights) + rng.gumbel(size=(total, len(spans)))
    keys[spans[None, :] > pos[:, None]] = -np.inf
    ranked = np.argsort(-keys, axis=1, kind="stable")
    num_words = np.minimum(num_words, (spans[None, :] <= pos[:, None]).sum(1))
    take = np.arange(len(spans))[None, :] < num_words[:, None]
    word_node = np.broadcast_to(np.arange(total)[:, None], take.shape)[take]
    word_span = spans[ranked[take]]
    word_probs, word_rank_to_id = _id_table(_NUM_WORD_IDS, _WORD_ZIPF_EXPONENT, _SALT_WORD_ORDER)
    word_id = word_rank_to_id[rng.choice(_NUM_WORD_IDS, size=word_node.size, p=word_probs)]

    # All arcs, as global node indices, sorted by (destination, source).
    has_char = pos > 0
    char_node = np.flatnonzero(has_char)
    dst = np.concatenate([char_node, word_node])
    src = np.concatenate([char_node - 1, word_node - word_span])
    ids = np.concatenate([char_id[has_char], word_id])
    order = np.lexsort((src, dst))
    dst, src, ids = dst[order], src[order], ids[order]
    arc_start = np.searchsorted(dst, offsets)
    arc_end = np.searchsorted(dst, offsets + lengths)

    lattices = []
    for i, (n0, n1, a0, a1) in enumerate(
        zip(offsets.tolist(), (offsets + lengths).tolist(), arc_start.tolist(), arc_end.tolist())
    ):
        lattices.append(Lattice._trusted(tags[n0:n1], src[a0:a1] - n0, dst[a0:a1] - n0, ids[a0:a1]))
    return lattices


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def lattice_stats(lattices: Sequence[Lattice]) -> dict:
    """Summary statistics of a list of lattices.

    Returns:
      A dict with ``num_lattices``; ``num_nodes``, ``num_arcs`` (totals);
      ``mean_nodes``, ``min_nodes``, ``max_nodes``; ``mean_arcs``,
      ``mean_word_arcs`` (per lattice); ``word_arcs_per_node`` (word arcs per
      node ``i >= 1``); ``max_span`` (the largest ``dst - src``, 1 without word
      arcs); ``span_hist`` (int64 ``[max_span + 1]``, arc counts by span; index
      1 counts the char arcs); ``longest_path`` (the most arcs on a path,
      ``max_nodes - 1``); ``max_id`` (the largest arc id, -1 without arcs);
      ``tag_counts`` (int64 ``[NUM_TAGS]``, over all nodes); ``majority_tag``
      and ``majority_fraction`` (its share of all nodes).
    """
    if not lattices:
        raise ValueError("lattice_stats needs at least one lattice.")
    nodes = np.array([l.num_nodes for l in lattices])
    arcs = np.array([l.num_arcs for l in lattices])
    spans = np.concatenate([l.spans for l in lattices]).astype(np.int64)
    max_id = max((int(l.arc_id.max()) for l in lattices if l.num_arcs), default=-1)
    tag_counts = np.bincount(np.concatenate([l.tags for l in lattices]), minlength=NUM_TAGS)
    word_arcs = arcs - (nodes - 1)
    return {
        "num_lattices": len(lattices),
        "num_nodes": int(nodes.sum()),
        "num_arcs": int(arcs.sum()),
        "mean_nodes": float(nodes.mean()),
        "min_nodes": int(nodes.min()),
        "max_nodes": int(nodes.max()),
        "mean_arcs": float(arcs.mean()),
        "mean_word_arcs": float(word_arcs.mean()),
        "word_arcs_per_node": float(word_arcs.sum() / max(1, (nodes - 1).sum())),
        "max_span": int(spans.max(initial=1)),
        "span_hist": np.bincount(spans, minlength=2),
        "longest_path": int(nodes.max()) - 1,
        "max_id": max_id,
        "tag_counts": tag_counts,
        "majority_tag": int(tag_counts.argmax()),
        "majority_fraction": float(tag_counts.max() / tag_counts.sum()),
    }
