"""WikiNER tagged sentences: parsing, vocabularies, split, synthetic data.

The files hold one sentence per line, tokens separated by single spaces, each
token a word and its tag joined by ``|``::

  Founding|O member|O Kojima|I-PER Minoru|I-PER played|O guitar|O ...

The tag is what follows the *last* ``|`` of a token, so a word may contain
``|`` itself. The WikiNER tag set has five tags (:data:`WIKINER_TAGS`): the
outside tag ``O`` (84% of the tokens) and four entity tags.

Only a development file exists (1696 sentences, 39007 tokens, 8504 distinct
words); :func:`split_sentences` carves a held-out part out of it. Words map to
ids with :class:`WordVocabulary`, the zoo's one vocabulary
(:class:`edbatch_jax.zoo.data.vocab.Vocabulary`); tags with :class:`TagVocabulary`.

This module is pure NumPy/Python; it does not import JAX.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

from edbatch_jax.zoo.data.vocab import UNK_TOKEN, Vocabulary

__all__ = [
    "NUM_TAGS",
    "UNK_TOKEN",
    "WIKINER_TAGS",
    "Sentence",
    "TagVocabulary",
    "WordVocabulary",
    "format_tagged",
    "parse_tagged",
    "read_tagged",
    "split_sentences",
    "synthetic_tagged",
    "tagged_stats",
    "word_tag",
]

WIKINER_TAGS = ("O", "I-PER", "I-LOC", "I-ORG", "I-MISC")
"""The WikiNER tags in id order; ``O`` (outside) has id 0."""

NUM_TAGS = len(WIKINER_TAGS)
"""Number of WikiNER tags (5)."""

# Only ASCII whitespace separates tokens (as in the SST and lattice readers).
_TOKEN_RE = re.compile(r"[^ \t\n\r\f\v]+")
_SPACE_RE = re.compile(r"[ \t\n\r\f\v]")


# ---------------------------------------------------------------------------
# Sentence and vocabularies
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sentence:
    """One tagged sentence.

    Attributes:
      words: the ``T >= 1`` words, non-empty strings without ASCII whitespace.
      tags: int32 ``[T]``, the tag id (``>= 0``) of every word; read-only.

    Two sentences compare equal when their words and tags are equal.

    Raises:
      ValueError: no words, a length mismatch, a negative tag, or an empty word
        or one containing whitespace.
    """

    words: tuple[str, ...]
    tags: np.ndarray

    def __post_init__(self):
        words = tuple(self.words)
        tags = np.array(self.tags, dtype=np.int64)  # copies
        if tags.ndim != 1:
            raise ValueError(f"Sentence.tags must be 1-D, got shape {tags.shape}.")
        if not words:
            raise ValueError("A Sentence must have at least one word.")
        if len(words) != tags.shape[0]:
            raise ValueError(f"Sentence has {len(words)} words but {tags.shape[0]} tags.")
        for k, w in enumerate(words):
            if not isinstance(w, str) or not w or _SPACE_RE.search(w):
                raise ValueError(f"Sentence word {k} must be a non-empty string without whitespace, got {w!r}.")
        if np.any(tags < 0) or np.any(tags > np.iinfo(np.int32).max):
            k = int(np.flatnonzero((tags < 0) | (tags > np.iinfo(np.int32).max))[0])
            raise ValueError(f"Sentence tags must be >= 0 int32 ids; word {k} has tag {int(tags[k])}.")
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "tags", _frozen_int32(tags))

    @classmethod
    def _trusted(cls, words, tags) -> Sentence:
        """Builds a sentence from values already known to be valid (no checks)."""
        sentence = object.__new__(cls)
        object.__setattr__(sentence, "words", tuple(words))
        object.__setattr__(sentence, "tags", _frozen_int32(tags))
        return sentence

    def __len__(self) -> int:
        return len(self.words)

    @property
    def tokens(self) -> tuple[str, ...]:
        """The tokens a :class:`~edbatch_jax.zoo.data.vocab.Vocabulary` encodes: the words."""
        return self.words

    def __eq__(self, other):
        if not isinstance(other, Sentence):
            return NotImplemented
        return self.words == other.words and np.array_equal(self.tags, other.tags)

    def __hash__(self):
        return hash((self.words, self.tags.tobytes()))


def _frozen_int32(value) -> np.ndarray:
    arr = np.array(value, dtype=np.int32)
    arr.setflags(write=False)
    return arr


class TagVocabulary:
    """The tag set: tag names in id order (default :data:`WIKINER_TAGS`).

    Unlike words, tags have no unknown id: :meth:`lookup` of a tag outside the
    set raises ``KeyError``.
    """

    def __init__(self, names: Iterable[str] = WIKINER_TAGS):
        self._names = tuple(names)
        self._ids = {t: i for i, t in enumerate(self._names)}
        if not self._names or len(self._ids) != len(self._names):
            raise ValueError(f"tag names must be a non-empty list of distinct names, got {self._names}.")

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._ids

    def lookup(self, name: str) -> int:
        """The id of tag ``name``; ``KeyError`` naming the known tags if it is not one."""
        try:
            return self._ids[name]
        except KeyError:
            raise KeyError(f"unknown tag {name!r}; the tags are {list(self._names)}") from None

    def name(self, tag_id: int) -> str:
        return self._names[tag_id]

    def __repr__(self) -> str:
        return f"TagVocabulary({list(self._names)})"


WordVocabulary = Vocabulary
"""The word vocabulary of the tagged sentences: :class:`~edbatch_jax.zoo.data.vocab.Vocabulary` (the same class)."""


# ---------------------------------------------------------------------------
# Parsing and formatting
# ---------------------------------------------------------------------------


def _parse_line(line: str, source: str, line_no: int, tags: TagVocabulary) -> Sentence:
    words, ids = [], []
    for k, match in enumerate(_TOKEN_RE.finditer(line)):
        tok = match.group()
        word, bar, tag = tok.rpartition("|")
        where = f"{source}:{line_no}: token {k + 1} {tok!r} (column {match.start() + 1})"
        if not bar:
            raise ValueError(f"{where}: expected WORD|TAG, there is no '|'")
        if not word:
            raise ValueError(f"{where}: empty word before '|'")
        if tag not in tags:
            raise ValueError(f"{where}: unknown tag {tag!r}; the tags are {list(tags.names)}")
        words.append(word)
        ids.append(tags.lookup(tag))
    return Sentence._trusted(words, ids)


def parse_tagged(text: str, source: str = "<string>", tags: TagVocabulary | None = None) -> list[Sentence]:
    """Parses tagged sentences, one per line (blank lines are skipped).

    Args:
      text: the whole file.
      source: a name for the input (e.g. a file name), used in error messages.
      tags: the tag set (default: the WikiNER tags).

    Returns:
      The sentences, in order.

    Raises:
      ValueError: ``"{source}:{line}: ..."`` (1-based line numbers) for a token
        without ``|``, an empty word, or a tag outside the tag set.
    """
    tags = TagVocabulary() if tags is None else tags
    return [
        _parse_line(line, source, line_no, tags)
        for line_no, line in enumerate(text.split("\n"), start=1)
        if line.strip(" \t\n\r\f\v")
    ]


def read_tagged(
    path: str | os.PathLike, *, limit: int | None = None, tags: TagVocabulary | None = None
) -> list[Sentence]:
    """Reads a tagged file, e.g. ``tags/dev.txt``.

    Args:
      path: the file (UTF-8).
      limit: if given, read at most this many sentences.
      tags: the tag set (default: the WikiNER tags).

    Returns:
      The sentences, in file order.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: ``"{path}:{line}: ..."`` for a line that is not UTF-8 or is
        malformed (see :func:`parse_tagged`).
    """
    path = os.fspath(path)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tagged sentence file not found: {path!r}")
    tags = TagVocabulary() if tags is None else tags
    out: list[Sentence] = []
    if limit == 0:
        return out
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip(" \t\n\r\f\v"):
                continue
            out.append(_parse_line(line, path, line_no, tags))
            if limit is not None and len(out) >= limit:
                break
    return out


def format_tagged(sentences: Iterable[Sentence], tags: TagVocabulary | None = None) -> str:
    """The file text of ``sentences`` (the inverse of :func:`parse_tagged`), ending with a newline."""
    names = (TagVocabulary() if tags is None else tags).names
    lines = [" ".join(f"{w}|{names[t]}" for w, t in zip(s.words, s.tags.tolist())) for s in sentences]
    return "".join(line + "\n" for line in lines)


def split_sentences(
    sentences: Sequence[Sentence], held_out_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Sentence], list[Sentence]]:
    """A random train / held-out split (there is only one WikiNER file).

    ``round(held_out_fraction * n)`` sentences, drawn with
    ``np.random.default_rng(seed)``, are held out; both parts keep the input
    order. The same ``seed`` gives the same split.

    Returns:
      ``(train, held_out)``.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}.")
    n = len(sentences)
    num_held = int(round(held_out_fraction * n))
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:num_held]] = True
    return [s for s, h in zip(sentences, held) if not h], [s for s, h in zip(sentences, held) if h]


# ---------------------------------------------------------------------------
# Synthetic WikiNER-like sentences
# ---------------------------------------------------------------------------

# Number of dev sentences (1696 in all) with 0, 1, 2, ... words, measured once
# on tags/dev.txt: mean 23.0, median 20, 90th percentile 40, range 1..144.
_DEV_LENGTH_COUNTS = (
    (
        0,
        2,
        21,
        0,
        5,
        9,
        18,
        17,
        47,
        50,
        46,
        48,
        63,
        68,
        57,
        74,
        51,
        71,
        71,
        62,
        78,
        65,
        47,
        60,
        54,
        64,
        50,
        27,
        38,
        36,
        31,
        31,
        26,
        24,
        22,
        26,
        14,
        17,
        14,
        16,
        17,
        14,
        16,
        12,
        9,
        6,
        8,
        8,
        7,
        7,
        6,
        2,
        2,
        8,
        3,
        6,
        3,
        3,
        7,
        3,
        1,
        2,
        1,
        5,
        1,
        1,
        1,
        1,
        3,
        0,
        0,
        1,
        0,
        1,
        0,
        1,
        0,
        2,
        0,
        0,
        3,
        1,
        0,
        1,
        0,
        0,
        1,
        0,
        0,
        1,
    )
    + (0,) * 54
    + (1,)
)

# Number of dev tokens with each tag of WIKINER_TAGS (O, PER, LOC, ORG, MISC).
_DEV_TAG_COUNTS = (32576, 1634, 1447, 1958, 1392)

# Word frequencies: a Zipf law over 20000 words with exponent 0.97 gives about
# 8600 distinct words in 39k tokens (dev: 8504; rank-frequency slope 0.87).
_VOCAB_SIZE = 20000
_ZIPF_EXPONENT = 0.97
# The most frequent synthetic words are function words, always tagged O (the
# 25 most frequent dev words are punctuation and function words).
_NUM_FUNCTION_WORDS = 25
# A word's tag is a fixed function of its id; in dev 97% of the tokens carry
# their word's majority tag, so by default 5% of the tags are redrawn.
_TAG_NOISE = 0.05
_SALT_WORD_TAG = 11


def _hash_uniform(x: np.ndarray, salt: int) -> np.ndarray:
    """A fixed hash of non-negative ints to floats in ``[0, 1)`` (SplitMix64)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


@functools.lru_cache(maxsize=8)
def _zipf_probs(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    p = p / p.sum()
    p.setflags(write=False)
    return p


@functools.lru_cache(maxsize=8)
def _word_tag_table(vocab_size: int) -> np.ndarray:
    """The tag of every synthetic word id ``0 .. vocab_size - 1`` (read-only).

    The words after the function words are visited in a fixed hashed order;
    each goes to the entity tag whose share of the tokens is furthest below
    its dev share, if the word's frequency fits in that gap, and to ``O``
    otherwise. Token tags then follow the dev tag marginals closely.
    """
    probs = _zipf_probs(vocab_size, _ZIPF_EXPONENT)
    counts = np.asarray(_DEV_TAG_COUNTS, dtype=np.float64)
    gap = counts / counts.sum()
    gap[0] = -np.inf  # O takes whatever is left
    table = np.zeros(vocab_size, dtype=np.int32)
    order = _NUM_FUNCTION_WORDS + np.argsort(
        _hash_uniform(np.arange(_NUM_FUNCTION_WORDS, vocab_size), _SALT_WORD_TAG), kind="stable"
    )
    for w in order.tolist():
        t = int(gap.argmax())
        if probs[w] <= gap[t]:
            gap[t] -= probs[w]
            table[w] = t
    table.setflags(write=False)
    return table


def word_tag(word_ids: np.ndarray, vocab_size: int = _VOCAB_SIZE) -> np.ndarray:
    """The fixed tag of synthetic words ``"w{id}"`` before noise (see :func:`synthetic_tagged`).

    Args:
      word_ids: int array of any shape, ids in ``0 .. vocab_size - 1``.
      vocab_size: the generator's ``vocab_size``.

    Returns:
      int32 array of the same shape; 0 (``O``) for the 25 most frequent words.
    """
    ids = np.asarray(word_ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"word ids must be in 0..{vocab_size - 1}.")
    return _word_tag_table(vocab_size)[ids]


def synthetic_tagged(
    num: int,
    seed: int = 0,
    *,
    vocab_size: int = _VOCAB_SIZE,
    tag_noise: float = _TAG_NOISE,
    max_length: int | None = None,
) -> list[Sentence]:
    """Random tagged sentences with the statistics of the WikiNER dev file.

    * Lengths follow the dev histogram (mean 23.0, median 20, range 1..144).
    * Words are ``"w0" .. f"w{vocab_size - 1}"`` from a Zipf law (exponent
      0.97; ``"w0"`` is the most frequent), about 8600 distinct words per
      39k tokens with the default ``vocab_size`` (dev: 8504).
    * A word's tag is the fixed :func:`word_tag` of its id with probability
      ``1 - tag_noise``, else a tag drawn from the dev marginals; either way
      the tags follow the dev marginals (84% ``O``), and a tagger that reads
      the words can learn them.

    Entities are single words, not the multi-word runs of the real data.

    Args:
      num: number of sentences.
      seed: seed for ``np.random.default_rng``; the same seed gives the same sentences.
      vocab_size: number of distinct words (``>= 1``).
      tag_noise: probability in ``[0, 1]`` that a tag ignores the word.
      max_length: if given (``>= 1``), lengths are drawn from the dev
        histogram restricted to ``1..max_length``.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}.")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}.")
    if not 0.0 <= tag_noise <= 1.0:
        raise ValueError(f"tag_noise must be in [0, 1], got {tag_noise}.")
    counts = np.asarray(_DEV_LENGTH_COUNTS, dtype=np.float64)
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}.")
        counts = counts[: max_length + 1]
    rng = np.random.default_rng(seed)
    lengths = rng.choice(len(counts), size=num, p=counts / counts.sum())
    total = int(lengths.sum())
    cdf = np.cumsum(_zipf_probs(vocab_size, _ZIPF_EXPONENT))
    words = np.minimum(np.searchsorted(cdf, rng.random(total), side="right"), vocab_size - 1)
    marginals = np.asarray(_DEV_TAG_COUNTS, dtype=np.float64)
    noisy = rng.random(total) < tag_noise
    random_tags = rng.choice(NUM_TAGS, size=total, p=marginals / marginals.sum())
    tags = np.where(noisy, random_tags, word_tag(words, vocab_size)).astype(np.int32)
    names = np.array([f"w{i}" for i in range(vocab_size)], dtype=object)[words].tolist()
    ends = np.cumsum(lengths).tolist()
    starts = [0] + ends[:-1]
    return [Sentence._trusted(names[a:b], tags[a:b]) for a, b in zip(starts, ends)]


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def tagged_stats(sentences: Sequence[Sentence], num_tags: int = NUM_TAGS) -> dict:
    """Summary statistics of tagged sentences.

    Returns:
      A dict with ``num_sentences``, ``num_tokens``; ``mean_length``,
      ``median_length``, ``min_length``, ``max_length``; ``num_word_types``
      (distinct words); ``tag_counts`` (int64 ``[num_tags]``) and
      ``tag_fractions`` (f64 ``[num_tags]``); ``majority_tag`` and
      ``majority_fraction``.
    """
    if not sentences:
        raise ValueError("tagged_stats needs at least one sentence.")
    lengths = np.array([len(s) for s in sentences])
    tags = np.concatenate([s.tags for s in sentences])
    tag_counts = np.bincount(tags, minlength=num_tags)
    return {
        "num_sentences": len(sentences),
        "num_tokens": int(lengths.sum()),
        "mean_length": float(lengths.mean()),
        "median_length": float(np.median(lengths)),
        "min_length": int(lengths.min()),
        "max_length": int(lengths.max()),
        "num_word_types": len({w for s in sentences for w in s.words}),
        "tag_counts": tag_counts,
        "tag_fractions": tag_counts / tag_counts.sum(),
        "majority_tag": int(tag_counts.argmax()),
        "majority_fraction": float(tag_counts.max() / tag_counts.sum()),
    }
