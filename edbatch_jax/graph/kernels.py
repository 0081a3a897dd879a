"""Compiled host kernels of the graph layer (Numba): the sequential walks NumPy cannot vectorise.

A kernel runs in machine code without the GIL (``nogil``), so planning on a
worker thread overlaps the calling thread. Each is compiled on its first
call and cached on disk (``cache=True``: later processes load it). Inputs
are validated graphs' int32 arrays; nothing here is jittable by JAX.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = [
    "arity_mismatch",
    "concat_rows",
    "consumers",
    "first_defect",
    "group_by_source",
    "hash_bytes",
    "kahn_depth",
    "kahn_order",
    "type_ranks",
]


@numba.njit(cache=True, nogil=True)
def _kahn(ptr: np.ndarray, child_idx: np.ndarray, arity: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """Kahn's algorithm over the reverse adjacency in CSR form (``child_idx[ptr[u]:ptr[u + 1]]`` read ``u``; a
    node reading ``u`` twice is listed twice and counted twice in ``arity``): ``(queue, taken, depth, left)``,
    the nodes in the order taken (``queue[:taken]``), each node's longest path in edges from a node without
    arguments, and the arguments each node still waits for (> 0 on and below a cycle). O(N + E)."""
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
    return queue, tail, depth, left


@numba.njit(cache=True, nogil=True)
def kahn_depth(ptr: np.ndarray, child_idx: np.ndarray, arity: np.ndarray) -> np.ndarray:
    """int32 ``[N]``: the longest path (in edges) from a node without arguments, -1 on and below a cycle.

    Kahn's algorithm (:func:`_kahn`) over the reverse adjacency in CSR form. O(N + E).
    """
    _, _, depth, left = _kahn(ptr, child_idx, arity)
    for v in range(depth.shape[0]):
        if left[v] > 0:
            depth[v] = -1
    return depth


@numba.njit(cache=True, nogil=True)
def kahn_order(ptr: np.ndarray, child_idx: np.ndarray, arity: np.ndarray) -> np.ndarray:
    """int32: the nodes in the order Kahn's algorithm takes them (arguments before their readers; the
    nodes without arguments first, ascending), shorter than ``N`` when a cycle leaves nodes behind.
    The reverse adjacency as :func:`kahn_depth` reads it. O(N + E)."""
    queue, taken, _, _ = _kahn(ptr, child_idx, arity)
    return queue[:taken]


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


@numba.njit(cache=True, nogil=True)
def type_ranks(node_type: np.ndarray, num_types: int) -> np.ndarray:
    """int32 ``[N]``: the rank of every node among the nodes of its type (-1 for a type id outside
    ``0..num_types - 1``). One pass, O(N + T)."""
    seen = np.zeros(num_types, np.int32)
    rows = np.empty(node_type.shape[0], np.int32)
    for v in range(node_type.shape[0]):
        t = node_type[v]
        if 0 <= t < num_types:
            rows[v] = seen[t]
            seen[t] += 1
        else:  # (no read outside the counters: graph validation names such a node)
            rows[v] = -1
    return rows


@numba.njit(cache=True, nogil=True)
def first_defect(
    node_type: np.ndarray,
    num_types: int,
    instance: np.ndarray,
    num_instances: int,
    arg_ptr: np.ndarray,
    arg_idx: np.ndarray,
    payload_row: np.ndarray,
) -> tuple[int, int]:
    """The first broken index invariant of a graph whose field lengths and CSR offsets are checked:
    ``(kind, index)`` with kind 0 none, 1 an op type id out of range (node), 2 an instance id out of range
    (node), 3 an argument id out of range (edge), 4 a payload row that is not the node's rank within its
    type (node), 5 an argument that is not an earlier node (node; a cycle is possible). In that order of
    kinds, so that a later check never reads what an earlier one refused. One pass per kind, O(N + E)."""
    n = node_type.shape[0]
    for v in range(n):
        if node_type[v] < 0 or node_type[v] >= num_types:
            return 1, v
    for v in range(n):
        if instance[v] < 0 or instance[v] >= num_instances:
            return 2, v
    for e in range(arg_idx.shape[0]):
        if arg_idx[e] < 0 or arg_idx[e] >= n:
            return 3, e
    seen = np.zeros(num_types, np.int64)
    for v in range(n):
        t = node_type[v]
        if payload_row[v] != seen[t]:
            return 4, v
        seen[t] += 1
    for v in range(n):
        for e in range(arg_ptr[v], arg_ptr[v + 1]):
            if arg_idx[e] >= v:
                return 5, v
    return 0, -1


@numba.njit(cache=True, nogil=True)
def arity_mismatch(node_type: np.ndarray, arg_ptr: np.ndarray, want: np.ndarray) -> int:
    """The first node whose argument count does not fit its type's ``want`` (int64 ``[T]``: the arity, or -1
    for at least one argument), or -1. O(N)."""
    for v in range(node_type.shape[0]):
        k = arg_ptr[v + 1] - arg_ptr[v]
        w = want[node_type[v]]
        if (w < 0 and k < 1) or (w >= 0 and k != w):
            return v
    return -1


_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)


@numba.njit(cache=True, nogil=True, inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@numba.njit(cache=True, nogil=True, inline="always")
def _avalanche(h):
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


@numba.njit(cache=True, nogil=True)
def hash_bytes(data: np.ndarray) -> tuple[int, int]:
    """A 128-bit non-cryptographic hash of a contiguous uint8 array (two uint64): XXH64's rounds over four
    lanes of 8-byte words, finished twice with different seeds. Several GB/s; detects changed or mismatched
    arrays, not an adversary. O(len(data))."""
    n = data.shape[0]
    words = data[: n - n % 8].view(np.uint64)
    acc = np.empty(4, np.uint64)
    acc[0] = _P1 + _P2
    acc[1] = _P2
    acc[2] = np.uint64(0)
    acc[3] = np.uint64(0) - _P1
    m = words.shape[0]
    full = m - m % 4
    a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
    for i in range(0, full, 4):
        a0 = _rotl(a0 + words[i] * _P2, 31) * _P1
        a1 = _rotl(a1 + words[i + 1] * _P2, 31) * _P1
        a2 = _rotl(a2 + words[i + 2] * _P2, 31) * _P1
        a3 = _rotl(a3 + words[i + 3] * _P2, 31) * _P1
    h = _rotl(a0, 1) + _rotl(a1, 7) + _rotl(a2, 12) + _rotl(a3, 18) + np.uint64(n)
    for i in range(full, m):
        h = _rotl(h ^ (_rotl(words[i] * _P2, 31) * _P1), 27) * _P1 + _P3
    for i in range(n - n % 8, n):
        h = _rotl(h ^ (np.uint64(data[i]) * _P3), 11) * _P1
    lo = _avalanche(h ^ a0 ^ _rotl(a2, 29))
    hi = _avalanche((h + _P3) ^ _rotl(a1, 17) ^ _rotl(a3, 41))
    return lo, hi


@numba.njit(cache=True, nogil=True)
def consumers(arg_ptr: np.ndarray, arg_idx: np.ndarray, num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """The reverse adjacency: ``(ptr int32 [N + 1], child int32 [E])``, the nodes reading ``u`` being
    ``child[ptr[u]:ptr[u + 1]]`` in edge order (a node reading ``u`` twice listed twice). O(N + E)."""
    ptr = np.zeros(num_nodes + 1, np.int32)
    for e in range(arg_idx.shape[0]):
        ptr[arg_idx[e] + 1] += 1
    for v in range(num_nodes):
        ptr[v + 1] += ptr[v]
    at = ptr[:-1].copy()
    child = np.empty(arg_idx.shape[0], np.int32)
    for v in range(num_nodes):
        for e in range(arg_ptr[v], arg_ptr[v + 1]):
            u = arg_idx[e]
            child[at[u]] = v
            at[u] += 1
    return ptr, child
