"""Compiled host kernels of the bundled models' graph construction (Numba).

Like the other layers' kernels: compiled on first call, cached on disk
(``cache=True``), without the GIL (``nogil``: construction on a planning thread
overlaps the caller). Nothing here is jittable by JAX.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["binary_tree_arrays", "padded_to_csr"]


@numba.njit(cache=True, nogil=True)
def binary_tree_arrays(
    sizes: np.ndarray, left: np.ndarray, right: np.ndarray, internal_type: np.ndarray, num_types: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The index arrays of :func:`~edbatch_jax.zoo.models.graphs.binary_tree_graph` in one pass.

    Tree node ``k`` of tree ``i`` (children local to the tree, ``-1`` at a leaf)
    becomes node ``2 (o_i + k)`` (type 0 at a leaf, ``internal_type[o_i + k]`` at a
    binary node; int ``[nodes]``) and its loss node ``2 (o_i + k) + 1`` (type
    ``num_types - 1``). Returns int32 ``(node_type [N], arg_ptr [N + 1], arg_idx [E],
    instance [N], payload_row [N])`` with ``N`` twice the tree nodes. O(N).
    """
    n = left.shape[0]
    num_binary = 0
    for k in range(n):
        if left[k] >= 0:
            num_binary += 1
    node_type = np.empty(2 * n, np.int32)
    arg_ptr = np.empty(2 * n + 1, np.int32)
    arg_idx = np.empty(2 * num_binary + n, np.int32)
    instance = np.empty(2 * n, np.int32)
    payload_row = np.empty(2 * n, np.int32)
    seen = np.zeros(num_types, np.int32)
    loss = num_types - 1
    k, e, first = 0, 0, 0
    arg_ptr[0] = 0
    for i in range(sizes.shape[0]):
        for _ in range(sizes[i]):
            v = 2 * k
            if left[k] >= 0:
                t = internal_type[k]
                arg_idx[e] = 2 * (first + left[k])
                arg_idx[e + 1] = 2 * (first + right[k])
                e += 2
            else:
                t = 0
            node_type[v] = t
            if 0 <= t < num_types:
                payload_row[v] = seen[t]
                seen[t] += 1
            else:  # (graph validation names the node)
                payload_row[v] = -1
            instance[v] = i
            arg_ptr[v + 1] = e
            arg_idx[e] = v  # the loss node reads its tree node
            e += 1
            node_type[v + 1] = loss
            payload_row[v + 1] = seen[loss]
            seen[loss] += 1
            instance[v + 1] = i
            arg_ptr[v + 2] = e
            k += 1
        first += sizes[i]
    return node_type, arg_ptr, arg_idx, instance, payload_row


@numba.njit(cache=True, nogil=True)
def padded_to_csr(args: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR ``(arg_ptr int32 [N + 1], arg_idx int32 [M])`` of an int ``[N, k]`` table, negative entries
    dropped (padding). Two passes, O(N k)."""
    n, k = args.shape
    ptr = np.zeros(n + 1, np.int32)
    for v in range(n):
        c = 0
        for j in range(k):
            if args[v, j] >= 0:
                c += 1
        ptr[v + 1] = ptr[v] + c
    idx = np.empty(ptr[n], np.int32)
    e = 0
    for v in range(n):
        for j in range(k):
            if args[v, j] >= 0:
                idx[e] = args[v, j]
                e += 1
    return ptr, idx
