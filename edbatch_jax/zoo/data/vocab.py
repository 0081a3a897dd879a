"""The word vocabulary of every zoo dataset: tokens to int32 ids, id 0 the unknown token.

One :class:`Vocabulary` serves the SST trees (:class:`~edbatch_jax.zoo.data.sst.Tree`)
and the WikiNER sentences (:class:`~edbatch_jax.zoo.data.tags.Sentence`): both
offer ``words`` (what :meth:`Vocabulary.build` counts) and ``tokens`` (what
:meth:`Vocabulary.encode` maps to ids: a tree's tokens are its nodes', ``None``
at a binary node, a sentence's tokens are its words). ``sst.Vocabulary`` and
``tags.WordVocabulary`` are this class.

This module is pure NumPy/Python; it does not import JAX.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

__all__ = ["Tokenised", "UNK_TOKEN", "Vocabulary"]

UNK_TOKEN = "<unk>"
"""The token with id 0 in every :class:`Vocabulary`."""


class Tokenised(Protocol):
    """What a :class:`Vocabulary` reads of a tree or a sentence."""

    @property
    def words(self) -> Sequence[str]:
        """The words, left to right (counted by :meth:`Vocabulary.build`)."""
        ...

    @property
    def tokens(self) -> Sequence[str | None]:
        """The tokens to encode, one id each; ``None`` (a tree's binary node) is encoded as ``-1``."""
        ...


class Vocabulary:
    """Maps tokens to int ids; id 0 is :data:`UNK_TOKEN`, used for unknown tokens.

    Build one from trees or sentences with :meth:`build`, or from a list of
    words in id order with ``Vocabulary(words)`` (``words[k]`` gets id ``k + 1``).
    """

    def __init__(self, words: Iterable[str]):
        self._itos: tuple[str, ...] = (UNK_TOKEN,) + tuple(words)
        self._stoi = {w: i for i, w in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            raise ValueError(f"Vocabulary words must be unique and must not contain {UNK_TOKEN!r}.")
        self._codes: dict[str | None, int] = {**self._stoi, None: -1}  # what encode maps tokens to

    @classmethod
    def build(cls, items: Iterable[Tokenised], max_size: int | None = None, min_count: int = 1) -> Vocabulary:
        """The words of ``items`` (trees or sentences) by descending frequency, ties alphabetically.

        The result is deterministic: it does not depend on the order of ``items``.

        Args:
          items: the trees or sentences to count words in.
          max_size: if given, the size of the vocabulary, :data:`UNK_TOKEN`
            included (the ``max_size - 1`` most frequent words are kept).
          min_count: words seen fewer times than this are left out.

        Returns:
          The vocabulary.

        Raises:
          ValueError: ``max_size < 1``.
        """
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be >= 1 (room for {UNK_TOKEN!r}), got {max_size}.")
        counts = collections.Counter()
        for item in items:
            counts.update(item.words)
        counts.pop(UNK_TOKEN, None)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - 1]
        return cls(words)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: str) -> bool:
        return token in self._stoi

    @property
    def id_to_token(self) -> tuple[str, ...]:
        """All tokens in id order; ``id_to_token[0] == UNK_TOKEN``."""
        return self._itos

    def lookup(self, token: str) -> int:
        """The id of ``token``, 0 (:data:`UNK_TOKEN`) if it is unknown."""
        return self._stoi.get(token, 0)

    def encode(self, item: Tokenised) -> np.ndarray:
        """The ids of the tokens of a tree or a sentence.

        Returns:
          int32 ``[len(item.tokens)]``: a tree's ``[num_nodes]``, the token id of
          each preterminal (0 for an unknown token) and -1 for each binary node;
          a sentence's ``[T]``, the id of every word (0 for an unknown word).
        """
        tokens = item.tokens
        return np.fromiter(map(self._codes.get, tokens, itertools.repeat(0)), dtype=np.int32, count=len(tokens))

    def encode_all(self, items: Sequence[Tokenised]) -> np.ndarray:
        """``np.concatenate([self.encode(x) for x in items])``, in one pass over all their tokens.

        Returns:
          int32 ``[total tokens]``: the token ids of every item, item after item
          (0 for an unknown token, -1 for each binary node of a tree).
        """
        tokens = list(itertools.chain.from_iterable(x.tokens for x in items))
        return np.fromiter(map(self._codes.get, tokens, itertools.repeat(0)), dtype=np.int32, count=len(tokens))

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)})"
