"""Pretrained word embeddings from a GloVe-format text file, for the words of a vocabulary.

A GloVe file holds one word per line followed by its vector, fields separated
by spaces::

  the 0.418 0.24968 -0.41242 ...
  , 0.013441 0.23682 -0.16899 ...

(a first line of two integers, word2vec's ``count dim`` header, is skipped;
``.gz`` files are read through gzip). :func:`read_glove` streams the file
once and keeps only the vectors of the words asked for, so a file of millions
of lines costs the memory of the vocabulary's rows: every line's field count
is checked (a byte count, cheap), and the values of the kept lines are parsed
with NumPy in blocks of lines. Lines of other words are not parsed further.
A word missing from the file may take the vector of its lower-case form
(``lowercase=True``: SST is cased, GloVe 6B is not). A line whose word holds
spaces (a few lines of GloVe 840B, such as ``. . .``) is read as such: the
last ``dim`` fields are the vector.

:func:`load_embeddings` puts the vectors into a parameter pytree: into every
embedding table (a leaf ``embedding`` under a key ``embed``, as
``flax.linen.Embed`` names it) with one row per vocabulary id; rows of words
the file lacks keep their values. Nothing is downloaded.

Errors are :class:`EmbeddingFileError` (an
:class:`~edbatch_jax.errors.EdbatchError`), naming the file and line: a
line with another number of values than the embedding size (the model's, or
the first line's), a value that is not a finite float.

This module is pure NumPy/Python; it does not import JAX.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edbatch_jax.errors import EdbatchError

__all__ = ["EmbeddingFileError", "EmbeddingReport", "embedding_tables", "load_embeddings", "read_glove"]

_BLOCK = 4096  # kept lines parsed per NumPy call


class EmbeddingFileError(EdbatchError):
    """A pretrained-embedding file that cannot be read: the message names the file, the line and what was expected."""


@dataclasses.dataclass(frozen=True)
class EmbeddingReport:
    """What :func:`load_embeddings` did.

    Attributes:
      path: the embedding file.
      dim: the embedding size.
      words: vocabulary words looked up (the unknown token aside).
      found: how many of them got a vector from the file.
      lowercased: how many of those took the vector of their lower-case form.
      tables: the paths (``"leaf/embed/embedding"``) of the tables written.
    """

    path: str
    dim: int
    words: int
    found: int
    lowercased: int
    tables: tuple[str, ...]

    def as_dict(self) -> dict:
        """The report as a JSON-ready dict."""
        return {**dataclasses.asdict(self), "tables": list(self.tables)}


def _is_float(field: bytes) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def read_glove(
    path: str | os.PathLike, words: Sequence[str], dim: int | None = None, *, lowercase: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The vectors of ``words`` in a GloVe-format text file.

    Args:
      path: the file (``.gz``: gzip-compressed).
      words: the words to look up (e.g. a vocabulary's tokens).
      dim: the expected embedding size; ``None``: the first line's.
      lowercase: a word missing from the file takes the vector of its
        lower-case form, when the file has that.

    Returns:
      ``(vectors, found, lowercased)``: f32 ``[len(words), dim]`` (zero rows
      for words not found), bool ``[len(words)]`` which were found, bool
      ``[len(words)]`` which of those by their lower-case form. The first line
      for a word wins.

    Raises:
      EmbeddingFileError: no such file; a line (numbered from 1) of another
        number of values than ``dim`` (or than the first line's), or with a
        value that is not a finite float; no vector at all with ``dim`` unknown.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EmbeddingFileError(f"{path}: no such embedding file")
    exact: dict[bytes, list[int]] = {}
    lower: dict[bytes, list[int]] = {}
    for i, w in enumerate(words):
        exact.setdefault(w.encode("utf-8"), []).append(i)
        if lowercase and w.lower() != w:
            lower.setdefault(w.lower().encode("utf-8"), []).append(i)
    expected = "the model's embedding size" if dim is not None else "the size of line 1"
    slots: list[tuple] = []  # per kept line: the indices of the words it is the vector of, as is and lower-cased
    blocks: list[np.ndarray] = []
    block: list[bytes] = []
    block_lines: list[int] = []

    def parse() -> None:
        try:
            values = np.array(b" ".join(block).split(), dtype=np.float32).reshape(len(block), dim)
        except ValueError:
            values = None
        bad = None if values is None else np.flatnonzero(~np.isfinite(values).all(axis=1))
        if values is None or bad.size:  # name the first bad line
            for line_no, text in zip(block_lines, block):
                for field in text.split():
                    if not _is_float(field) or not np.isfinite(float(field)):
                        value = field.decode("utf-8", "replace")
                        raise EmbeddingFileError(f"{path}:{line_no}: {value!r} is not a finite float")
            raise EmbeddingFileError(f"{path}:{block_lines[0]}-{block_lines[-1]}: values NumPy cannot read as floats")
        blocks.append(values)
        block.clear()
        block_lines.clear()

    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.rstrip()
            if not line:
                continue
            if line_no == 1:
                head = line.split()
                if len(head) == 2 and head[0].isdigit() and head[1].isdigit():
                    if dim is None or int(head[1]) == dim:
                        continue  # word2vec's "count dim" header
            if dim is None:
                dim = len(line.split()) - 1
                if dim < 1:
                    raise EmbeddingFileError(f"{path}:{line_no}: a word and no values; expected a word then floats")
            word, _, rest = line.partition(b" ")
            count = rest.count(b" ") + 1 if rest else 0
            if count != dim:
                fields = line.split()
                word, count = fields[0], len(fields) - 1
                if count > dim and not _is_float(fields[1]):  # a word with spaces: the vector is the tail
                    word, count = b" ".join(fields[: len(fields) - dim]), dim
                if count != dim:
                    raise EmbeddingFileError(f"{path}:{line_no}: {count} values, expected {dim} ({expected})")
                rest = b" ".join(fields[len(fields) - dim :])
            hit, hit_lower = exact.pop(word, ()), lower.pop(word, ())
            if not hit and not hit_lower:
                continue
            slots.append((hit, hit_lower))
            block.append(rest)
            block_lines.append(line_no)
            if len(block) == _BLOCK:
                parse()
    if dim is None:
        raise EmbeddingFileError(f"{path}: no vectors; expected lines of a word then floats")
    if block:
        parse()
    kept = np.concatenate(blocks) if blocks else np.zeros((0, dim), np.float32)
    vectors = np.zeros((len(words), dim), np.float32)
    found = np.zeros(len(words), bool)
    lowercased = np.zeros(len(words), bool)
    for k, (indices, _) in enumerate(slots):  # exact forms first: a lower-case form fills only what is left
        if indices:
            vectors[list(indices)] = kept[k]
            found[list(indices)] = True
    for k, (_, indices) in enumerate(slots):
        free = [i for i in indices if not found[i]]
        if free:
            vectors[free] = kept[k]
            found[free] = lowercased[free] = True
    return vectors, found, lowercased


def embedding_tables(params: Mapping, rows: int) -> list[tuple[str, ...]]:
    """Key paths of the embedding tables of ``rows`` rows in a parameter pytree of nested mappings.

    A table is a 2-D leaf named ``embedding`` under a key ``embed`` (``flax.linen.Embed``).
    """
    found = []

    def walk(tree: Any, keys: tuple[str, ...]) -> None:
        if isinstance(tree, Mapping):
            for k, v in tree.items():
                walk(v, (*keys, str(k)))
        elif keys[-2:] == ("embed", "embedding") and np.ndim(tree) == 2 and np.shape(tree)[0] == rows:
            found.append(keys)

    walk(params, ())
    return found


def _replace(tree: Mapping, keys: tuple[str, ...], value: Any) -> dict:
    out = dict(tree)
    out[keys[0]] = value if len(keys) == 1 else _replace(tree[keys[0]], keys[1:], value)
    return out


def load_embeddings(
    params: Mapping, id_to_token: Sequence[str], path: str | os.PathLike, *, lowercase: bool = True
) -> tuple[dict, EmbeddingReport]:
    """``params`` with the pretrained vectors of a GloVe file in the rows of its embedding tables.

    Args:
      params: a parameter pytree of nested mappings (a model's ``init``).
      id_to_token: the vocabulary's tokens in id order (id 0, the unknown
        token, is left as it is); the tables are those of
        ``len(id_to_token)`` rows (:func:`embedding_tables`).
      path: the GloVe-format file (:func:`read_glove`).
      lowercase: see :func:`read_glove`.

    Returns:
      ``(params, report)``: a copy of ``params`` whose tables are NumPy
      arrays with the found words' rows replaced (other rows keep their
      values), and an :class:`EmbeddingReport`.

    Raises:
      EmbeddingFileError: see :func:`read_glove` (the expected size is the
        tables'); ``params`` has no table of that many rows.
    """
    path = os.fspath(path)
    rows = len(id_to_token)
    tables = embedding_tables(params, rows)
    if not tables:
        raise EmbeddingFileError(
            f"{path}: the model has no embedding table of {rows} rows (one per vocabulary word) to load it into"
        )
    words = list(id_to_token[1:])
    out = dict(params)
    report = None
    for keys in tables:
        table = out
        for k in keys:
            table = table[k]
        table = np.array(table, dtype=np.float32)  # a copy
        if report is None or report.dim != table.shape[1]:
            vectors, found, lowercased = read_glove(path, words, table.shape[1], lowercase=lowercase)
            report = EmbeddingReport(
                path,
                table.shape[1],
                len(words),
                int(found.sum()),
                int(lowercased.sum()),
                tuple("/".join(k) for k in tables),
            )
        table[1:][found] = vectors[found]
        out = _replace(out, keys, table)
    return out, report
