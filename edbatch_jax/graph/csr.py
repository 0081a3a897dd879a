"""Compressed-sparse-row helpers over node ids: the one home of the library's adjacency arithmetic.

All host-side, vectorised NumPy or a compiled kernel (no Python loop over nodes); none is jittable.
"""

from __future__ import annotations

import numpy as np

from edbatch_jax.graph.kernels import concat_rows, group_by_source, type_ranks

__all__ = ["csr_by_source", "csr_rows", "payload_rows"]


def payload_rows(node_type: np.ndarray, num_types: int) -> np.ndarray:
    """int32 ``[N]``: the rank of each node among the nodes of its type (one compiled pass,
    :func:`~edbatch_jax.graph.kernels.type_ranks`); ``node_type`` ids in ``0..num_types - 1``."""
    node_type = np.asarray(node_type)
    if node_type.dtype.kind not in "iu":
        node_type = node_type.astype(np.int64)
    return type_ranks(node_type, int(num_types))


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
