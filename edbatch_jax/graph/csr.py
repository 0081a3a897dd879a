"""Compressed-sparse-row helpers over node ids: the one home of the library's adjacency arithmetic.

All host-side, vectorised NumPy or a compiled kernel (no Python loop over nodes); none is jittable.
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.graph.kernels import concat_rows, group_by_source

__all__ = ["csr_by_source", "csr_rows", "payload_rows"]


def payload_rows(node_type: np.ndarray, num_types: int) -> np.ndarray:
    """Rank of each node among the nodes of its type (vectorised)."""
    if num_types <= 8:  # a mask per type costs less than a stable sort
        rows = np.empty(node_type.shape[0], np.int32)
        for t in range(num_types):
            mask = node_type == t
            rows[mask] = np.arange(np.count_nonzero(mask), dtype=np.int32)
        return rows
    order = np.argsort(node_type, kind="stable")
    counts = np.bincount(node_type, minlength=num_types)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rows = np.empty_like(node_type)
    rows[order] = np.arange(node_type.shape[0], dtype=np.int32) - np.repeat(starts, counts).astype(np.int32)
    return rows.astype(np.int32)


def csr_rows(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated CSR rows ``values[ptr[r]:ptr[r+1]]`` for ``r`` in ``rows``.

    Returns ``(flat, segment)`` where ``segment[k]`` (int32) is the position in ``rows``
    that ``flat[k]`` came from. One compiled pass
    (:func:`~edbatch_jax.graph.kernels.concat_rows`).
    """
    rows = np.asarray(rows)
    if rows.dtype.kind not in "iu":
        rows = rows.astype(np.int64)
    return concat_rows(np.asarray(ptr), np.asarray(values), rows)


def csr_by_source(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Groups pairs ``(src[k], dst[k])`` by source: ``(ptr int32 [num_nodes+1], dst int32 [M])``.

    The targets of ``u`` are ``dst[ptr[u]:ptr[u+1]]`` in their original order
    (a stable counting sort, compiled: :func:`~edbatch_jax.graph.kernels.group_by_source`).
    """
    src, dst = np.asarray(src), np.asarray(dst)
    if src.dtype.kind not in "iu":
        src = src.astype(np.int64)
    if dst.dtype.kind not in "iu":
        dst = dst.astype(np.int64)
    return group_by_source(src, dst, int(num_nodes))
