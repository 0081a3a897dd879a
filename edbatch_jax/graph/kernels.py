"""Compiled host kernels of the graph layer (Numba): the sequential walks NumPy cannot vectorise.

A kernel runs in machine code without the GIL (``nogil``), so planning on a
worker thread overlaps the calling thread. Each is compiled on its first
call and cached on disk (``cache=True``: later processes load it). Inputs
are validated graphs' int32 arrays; nothing here is jittable by JAX.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["concat_rows", "group_by_source", "kahn_depth"]


@numba.njit(cache=True, nogil=True)
def kahn_depth(ptr: np.ndarray, child_idx: np.ndarray, arity: np.ndarray) -> np.ndarray:
    """int32 ``[N]``: the longest path (in edges) from a node without arguments, -1 on and below a cycle.

    Kahn's algorithm over the reverse adjacency in CSR form (``child_idx[ptr[u]:ptr[u + 1]]``
    read ``u``; a node reading ``u`` twice is listed twice and counted twice in ``arity``).
    O(N + E).
    """
    n = arity.shape[0]
    left = arity.astype(np.int32)
    depth = np.zeros(n, np.int32)
    queue = np.empty(n, np.int32)
    tail = 0
    for v in range(n):
        if left[v] == 0:
            queue[tail] = v
            tail += 1
    head = 0
    while head < tail:
        v = queue[head]
        head += 1
        d = depth[v] + 1
        for e in range(ptr[v], ptr[v + 1]):
            c = child_idx[e]
            if d > depth[c]:
                depth[c] = d
            left[c] -= 1
            if left[c] == 0:
                queue[tail] = c
                tail += 1
    for v in range(n):
        if left[v] > 0:
            depth[v] = -1
    return depth


@numba.njit(cache=True, nogil=True)
def concat_rows(ptr: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``values[ptr[r]:ptr[r + 1]]`` for ``r`` in ``rows``, concatenated, and for each entry its position in
    ``rows`` (int32): :func:`~edbatch_jax.graph.csr.csr_rows`. One pass, O(len(rows) + entries)."""
    total = 0
    for i in range(rows.shape[0]):
        total += ptr[rows[i] + 1] - ptr[rows[i]]
    flat = np.empty(total, values.dtype)
    segment = np.empty(total, np.int32)
    k = 0
    for i in range(rows.shape[0]):
        for j in range(ptr[rows[i]], ptr[rows[i] + 1]):
            flat[k] = values[j]
            segment[k] = i
            k += 1
    return flat, segment


@numba.njit(cache=True, nogil=True)
def group_by_source(src: np.ndarray, dst: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(src[k], dst[k])`` grouped by source, each group in the pairs' order (a stable counting sort):
    ``(ptr int32 [num_nodes + 1], dst int32 [M])``, :func:`~edbatch_jax.graph.csr.csr_by_source`. O(M + N)."""
    ptr = np.zeros(num_nodes + 1, np.int32)
    for k in range(src.shape[0]):
        ptr[src[k] + 1] += 1
    for v in range(num_nodes):
        ptr[v + 1] += ptr[v]
    at = ptr[:-1].copy()
    out = np.empty(src.shape[0], np.int32)
    for k in range(src.shape[0]):
        out[at[src[k]]] = dst[k]
        at[src[k]] += 1
    return ptr, out
