"""Compiled kernels of the layout planner (Numba): the operand lists and the batch-by-batch alignment of step 3.

Runs without the GIL and is cached on disk; nothing here is jittable by JAX.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["align_batches", "flat_operand_lists"]


@numba.njit(cache=True, nogil=True)
def align_batches(
    pos, batches, node_order, batch_ptr, first_list, ptr, lane_of, arg_of, accepted, permutable, lane_rank
):
    """Lane orders and operand orders of ``batches`` (int ``[K]``, in schedule order), in place on ``pos``.

    For every batch: its lanes follow its anchor (the first of the most pinned
    accepted operand lists whose rows are a run), else ``lane_rank``; then
    every ``permutable`` list with no pinned node is permuted to follow the
    lanes. Rows only move inside the batch or inside the list's rows.

    Args:
      pos: int64 ``[N]``, the global order (rank of every node), updated.
      node_order, batch_ptr: the schedule (batch ``b`` runs ``node_order[batch_ptr[b]:batch_ptr[b + 1]]``).
      first_list: int ``[B + 1]``, batch ``b`` reads the lists ``first_list[b]:first_list[b + 1]``.
      ptr, lane_of, arg_of: the operand lists, flat (list ``i``: entries ``ptr[i]:ptr[i + 1]``, the lane
        each entry belongs to and the node it reads).
      accepted, permutable: bool ``[L]``.
      lane_rank: int64 ``[N]``, the lane order of a batch without an anchor.
    """
    n = pos.shape[0]
    pinned = np.zeros(n, np.bool_)
    for k in range(batches.shape[0]):
        b = batches[k]
        s, e = batch_ptr[b], batch_ptr[b + 1]
        width = e - s
        anchor, most = -1, 0.0
        for i in range(first_list[b], first_list[b + 1]):
            if not accepted[i]:
                continue
            count = 0
            lo, hi = n, -1
            for j in range(ptr[i], ptr[i + 1]):
                a = arg_of[j]
                count += pinned[a]
                lo = min(lo, pos[a])
                hi = max(hi, pos[a])
            share = count / (ptr[i + 1] - ptr[i])
            if share > most and hi - lo == ptr[i + 1] - ptr[i] - 1:
                anchor, most = i, share
        lane_key = np.empty(width, np.int64)
        if anchor >= 0:
            lane_key[:] = n
            for j in range(ptr[anchor], ptr[anchor + 1]):
                a = arg_of[j]
                lane_key[lane_of[j]] = min(lane_key[lane_of[j]], pos[a])
                pinned[a] = True
        else:
            for lane in range(width):
                lane_key[lane] = lane_rank[node_order[s + lane]]
        base = n
        for lane in range(width):
            base = min(base, pos[node_order[s + lane]])
        key = np.empty(width, np.int64)  # by lane key, ties by row (rows are distinct)
        for lane in range(width):
            key[lane] = lane_key[lane] * width + (pos[node_order[s + lane]] - base)
        order = np.argsort(key)
        for r in range(width):
            pos[node_order[s + order[r]]] = base + r
        changed = anchor >= 0
        for i in range(first_list[b], first_list[b + 1]):
            if not permutable[i]:
                continue
            lo_j, hi_j = ptr[i], ptr[i + 1]
            free = True
            for j in range(lo_j, hi_j):
                if pinned[arg_of[j]]:
                    free = False
                    break
            if not free:
                continue
            size = hi_j - lo_j
            key = np.empty(size, np.int64)  # by the reader's lane position, ties by entry
            rows = np.empty(size, np.int64)
            for j in range(size):
                key[j] = (pos[node_order[s + lane_of[lo_j + j]]] - base) * size + j
                rows[j] = pos[arg_of[lo_j + j]]
            order = np.argsort(key)
            rows.sort()
            for r in range(size):
                a = arg_of[lo_j + order[r]]
                pos[a] = rows[r]
                pinned[a] = True
            changed = True
        if changed:
            for lane in range(width):
                pinned[node_order[s + lane]] = True
    return pos


@numba.njit(cache=True, nogil=True)
def flat_operand_lists(arg_ptr, arg_idx, node_order, batch_ptr, batch_type, variadic):
    """Every batch's operand lists, flat (:func:`~edbatch_jax.layout.planner.operand_lists`): for a fixed-arity
    batch one list per argument position (the lanes that have it, in order), for a variable-arity one (every
    argument, lane by lane); batches in order, positions ascending; empty lists left out.

    Returns ``(batch int64 [L], ptr int64 [L + 1], lane int32 [M], arg int32 [M])``.
    """
    num_batches = batch_type.shape[0]
    total = 0
    for k in range(node_order.shape[0]):
        v = node_order[k]
        total += arg_ptr[v + 1] - arg_ptr[v]
    batch = np.empty(total, np.int64)
    ptr = np.zeros(total + 1, np.int64)
    lane = np.empty(total, np.int32)
    arg = np.empty(total, np.int32)
    m, num_lists = 0, 0
    for b in range(num_batches):
        s, e = batch_ptr[b], batch_ptr[b + 1]
        if variadic[batch_type[b]]:
            start = m
            for k in range(s, e):
                v = node_order[k]
                for j in range(arg_ptr[v], arg_ptr[v + 1]):
                    lane[m] = k - s
                    arg[m] = arg_idx[j]
                    m += 1
            if m > start:
                batch[num_lists] = b
                num_lists += 1
                ptr[num_lists] = m
            continue
        most = 0
        for k in range(s, e):
            v = node_order[k]
            most = max(most, arg_ptr[v + 1] - arg_ptr[v])
        for p in range(most):
            for k in range(s, e):
                v = node_order[k]
                if arg_ptr[v + 1] - arg_ptr[v] > p:
                    lane[m] = k - s
                    arg[m] = arg_idx[arg_ptr[v] + p]
                    m += 1
            batch[num_lists] = b
            num_lists += 1
            ptr[num_lists] = m
    return batch[:num_lists], ptr[: num_lists + 1], lane, arg
