"""Compiled host kernels of the bundled models' graph construction (Numba).

Like the other layers' kernels: compiled on first call, cached on disk
(``cache=True``), without the GIL (``nogil``: construction on a planning thread
overlaps the caller). Nothing here is jittable by JAX.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["binary_tree_arrays", "lattice_arrays", "padded_to_csr"]


@numba.njit(cache=True, nogil=True)
def binary_tree_arrays(
    sizes: np.ndarray, left: np.ndarray, right: np.ndarray, internal_type: np.ndarray, loss_type: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The node types and arguments of :func:`~edbatch_jax.zoo.models.graphs.binary_tree_graph` in one pass.

    Tree node ``k`` of tree ``i`` (children local to the tree, ``-1`` at a leaf)
    becomes node ``2 (o_i + k)`` (type 0 at a leaf, ``internal_type[o_i + k]`` at a
    binary node; int ``[nodes]``) and its loss node ``2 (o_i + k) + 1`` (type
    ``loss_type``). Returns int32 ``(node_type [N], arg_ptr [N + 1], arg_idx [E])`` with
    ``N`` twice the tree nodes. O(N).
    """
    n = left.shape[0]
    num_binary = 0
    for k in range(n):
        if left[k] >= 0:
            num_binary += 1
    node_type = np.empty(2 * n, np.int32)
    arg_ptr = np.empty(2 * n + 1, np.int32)
    arg_idx = np.empty(2 * num_binary + n, np.int32)
    k, e, first = 0, 0, 0
    arg_ptr[0] = 0
    for i in range(sizes.shape[0]):
        for _ in range(sizes[i]):
            v = 2 * k
            if left[k] >= 0:
                node_type[v] = internal_type[k]
                arg_idx[e] = 2 * (first + left[k])
                arg_idx[e + 1] = 2 * (first + right[k])
                e += 2
            else:
                node_type[v] = 0
            arg_ptr[v + 1] = e
            arg_idx[e] = v  # the loss node reads its tree node
            e += 1
            node_type[v + 1] = loss_type
            arg_ptr[v + 2] = e
            k += 1
        first += sizes[i]
    return node_type, arg_ptr, arg_idx


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


@numba.njit(cache=True, nogil=True)
def lattice_arrays(
    num_nodes: np.ndarray, num_arcs: np.ndarray, arc_src: np.ndarray, arc_dst: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """The node types and arguments of :meth:`~edbatch_jax.zoo.models.lattice.LatticeTagger.batch_graph` in
    one pass.

    Lattice ``i`` (``num_nodes[i]`` states, ``num_arcs[i]`` arcs, its arcs' local sources and
    destinations concatenated after the lattices before it) becomes, after the nodes of the lattices
    before it: its states (type 0 for state 0, else 3; each reads the arcs into it in arc order), its arcs
    (type 1 for a char arc, ``src == dst - 1``, else 2; each reads its source state) and a tag node per state
    (type 4, reading it). Returns ``(bad, node_type, arg_ptr, arg_idx)``: int32 ``[N]``, ``[N + 1]``,
    ``[E]``, or, if lattice ``bad`` (else -1) has an arc that is not forward within it, empty arrays.
    O(N + E).
    """
    total_nodes, total_edges = 0, 0
    for i in range(num_nodes.shape[0]):
        total_nodes += 2 * num_nodes[i] + num_arcs[i]
        total_edges += 2 * num_arcs[i] + num_nodes[i]
    node_type = np.empty(total_nodes, np.int32)
    arg_ptr = np.zeros(total_nodes + 1, np.int32)
    arg_idx = np.empty(total_edges, np.int32)
    base, e, a0 = 0, 0, 0
    for i in range(num_nodes.shape[0]):
        n, a = num_nodes[i], num_arcs[i]
        for j in range(a):  # (a Lattice checks this; a kernel does not read outside an array)
            if not (0 <= arc_src[a0 + j] < arc_dst[a0 + j] < n):
                return i, node_type[:0], arg_ptr[:1], arg_idx[:0]
        in_ptr = np.zeros(n + 1, np.int64)  # the arcs into each state, grouped by destination, in arc order
        for j in range(a):
            in_ptr[arc_dst[a0 + j] + 1] += 1
        for v in range(n):
            in_ptr[v + 1] += in_ptr[v]
        at = in_ptr[:-1].copy()
        into = np.empty(a, np.int64)
        for j in range(a):
            d = arc_dst[a0 + j]
            into[at[d]] = j
            at[d] += 1
        for k in range(2 * n + a):
            if k < n:  # a state
                node_type[base + k] = 0 if k == 0 else 3
                for q in range(in_ptr[k], in_ptr[k + 1]):
                    arg_idx[e] = base + n + into[q]
                    e += 1
            elif k < n + a:  # an arc
                j = k - n
                node_type[base + k] = 1 if arc_src[a0 + j] == arc_dst[a0 + j] - 1 else 2
                arg_idx[e] = base + arc_src[a0 + j]
                e += 1
            else:  # a state's tag
                node_type[base + k] = 4
                arg_idx[e] = base + (k - n - a)
                e += 1
            arg_ptr[base + k + 1] = e
        base += 2 * n + a
        a0 += a
    return -1, node_type, arg_ptr, arg_idx
