"""Compiled kernels of the engines' plans (Numba): operand rows and groups, the fused engine's flat index.

Runs without the GIL and is cached on disk; nothing here is jittable by JAX.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["batch_lanes", "chunks", "fill_operand_index", "fill_type_lanes", "operand_clash", "operand_rows"]


@numba.njit(cache=True, nogil=True, inline="always")
def _pow2_at_least(n):
    k = 1
    while k < n:
        k *= 2
    return k


@numba.njit(cache=True, nogil=True)
def batch_lanes(order, batch_ptr, node_slot, node_buffer, num_buffers):
    """Every batch's lanes in row order (:func:`~edbatch_jax.engine.rows.schedule_rows`), in one pass.

    Args:
      order: int ``[K]``, the scheduled nodes grouped by batch; batch_ptr: int64 ``[B + 1]``.
      node_slot, node_buffer: int ``[N]``, each node's row and buffer (a batch's rows distinct: one buffer).
      num_buffers: number of buffers.

    Returns:
      ``(broken, offset int64 [B], lanes int64 [B], lane_nodes int32 [K], out_buffer int64 [B], need int64
      [num_buffers])``: the first batch whose rows are not consecutive (-1 if none; the rest is then
      incomplete), each batch's first row, its width bucketed to a power of two, the nodes in row order, the
      buffer it writes, and the rows each buffer needs for those writes.
    """
    num_batches = batch_ptr.shape[0] - 1
    offset = np.zeros(num_batches, np.int64)
    lanes = np.zeros(num_batches, np.int64)
    out_buffer = np.zeros(num_batches, np.int64)
    lane_nodes = np.empty(order.shape[0], np.int32)
    need = np.zeros(num_buffers, np.int64)
    for b in range(num_batches):
        lo, hi = batch_ptr[b], batch_ptr[b + 1]
        first, last = node_slot[order[lo]], node_slot[order[lo]]
        for k in range(lo + 1, hi):
            r = node_slot[order[k]]
            first = min(first, r)
            last = max(last, r)
        if last - first != hi - lo - 1:  # distinct rows: consecutive iff max - min == width - 1
            return b, offset, lanes, lane_nodes, out_buffer, need
        for k in range(lo, hi):
            lane_nodes[lo + node_slot[order[k]] - first] = order[k]
        offset[b] = first
        lanes[b] = _pow2_at_least(hi - lo)
        out_buffer[b] = node_buffer[order[lo]]
        need[out_buffer[b]] = max(need[out_buffer[b]], first + lanes[b])
    return -1, offset, lanes, lane_nodes, out_buffer, need


@numba.njit(cache=True, nogil=True)
def operand_rows(
    arg_ptr,
    arg_idx,
    lane_nodes,
    batch_ptr,
    batch_type,
    node_slot,
    node_buffer,
    variadic,
    arity,
    lanes,
    allow_slices,
    row_bytes,
    need,
):
    """Every batch's operand rows and operand groups (:func:`~edbatch_jax.engine.rows.schedule_rows`), in one pass.

    Args:
      arg_ptr, arg_idx: the graph's arguments (CSR).
      lane_nodes: int32 ``[K]``, each batch's nodes in row order; batch_ptr: int64 ``[B + 1]``.
      batch_type: int ``[B]``; node_slot, node_buffer: int ``[N]``, each node's row and buffer.
      variadic: bool ``[T]``; arity: int64 ``[T]``, operands of a fixed-arity type.
      lanes: int64 ``[B]``, each batch's bucketed width; allow_slices: ``False`` gathers every group.
      row_bytes: int64 ``[num buffers]``, bytes of a row; need: int64 ``[num buffers]``, the rows each buffer
        needs, raised in place to cover the slices read (a slice reads its bucketed length).

    Returns:
      ``(edge_ptr int64 [B + 1], edge_rows int32 [E], edge_lane int32 [E], group_ptr int64 [B + 1],
      group_buffer int64 [G], group_slice bool [G], num_gathers, gathered_bytes)``: the operand rows lane by
      lane, the lane reading each, the operand groups (one per argument position of a fixed-arity batch, one
      per variable-arity batch), the buffer each reads, whether each is read as one slice (slices allowed and
      its rows consecutive and increasing), and the groups gathered and the bytes of their real rows.
    """
    num_batches = batch_type.shape[0]
    edge_ptr = np.zeros(num_batches + 1, np.int64)
    group_ptr = np.zeros(num_batches + 1, np.int64)
    for b in range(num_batches):
        total = 0
        for k in range(batch_ptr[b], batch_ptr[b + 1]):
            v = lane_nodes[k]
            total += arg_ptr[v + 1] - arg_ptr[v]
        edge_ptr[b + 1] = edge_ptr[b] + total
        t = batch_type[b]
        group_ptr[b + 1] = group_ptr[b] + (1 if variadic[t] else arity[t])
    num_edges, num_groups = edge_ptr[num_batches], group_ptr[num_batches]
    edge_rows = np.empty(num_edges, np.int32)
    edge_lane = np.empty(num_edges, np.int32)
    edge_node = np.empty(num_edges, np.int64)
    group_buffer = np.zeros(num_groups, np.int64)
    consecutive = np.ones(num_groups, np.bool_)
    num_gathers, gathered_bytes = 0, 0
    e = 0
    for b in range(num_batches):
        for k in range(batch_ptr[b], batch_ptr[b + 1]):
            v = lane_nodes[k]
            for j in range(arg_ptr[v], arg_ptr[v + 1]):
                a = arg_idx[j]
                edge_rows[e] = node_slot[a]
                edge_lane[e] = k - batch_ptr[b]
                edge_node[e] = a
                e += 1
        t = batch_type[b]
        stride = 1 if variadic[t] else max(arity[t], 1)
        lo, hi = edge_ptr[b], edge_ptr[b + 1]
        size = hi - lo if variadic[t] else batch_ptr[b + 1] - batch_ptr[b]  # the group's real rows
        length = _pow2_at_least(hi - lo) if variadic[t] else lanes[b]  # the rows its slice reads
        for g in range(group_ptr[b], group_ptr[b + 1]):
            first = lo + (g - group_ptr[b])
            buf = node_buffer[edge_node[first]]
            group_buffer[g] = buf
            x = first
            consecutive[g] = allow_slices
            while allow_slices and x + stride < hi:
                if edge_rows[x + stride] - edge_rows[x] != 1:
                    consecutive[g] = False
                    break
                x += stride
            if consecutive[g]:
                need[buf] = max(need[buf], edge_rows[first] + length)
            else:
                num_gathers += 1
                gathered_bytes += size * row_bytes[buf]
    return edge_ptr, edge_rows, edge_lane, group_ptr, group_buffer, consecutive, num_gathers, gathered_bytes


@numba.njit(cache=True, nogil=True)
def fill_operand_index(
    flat_idx, start, erows, lanes, chunk_ptr, edge_ptr, edge_rows, edge_lane, batch_type, variadic, arity, max_lanes
):
    """Writes every batch's operand rows into the fused engine's flat index array, in place.

    A fixed-arity batch's chunk ``c`` (``max_lanes`` lanes each) holds one run of ``lanes[c]`` rows per operand
    position from ``start[c]``; a variable-arity batch's single chunk holds its ``erows[c]`` segment ids (the
    lane of every argument; the padding ones the out-of-range lane ``lanes[c]``) and then its argument rows.

    Args:
      flat_idx: int32, the flat index array (written).
      start, erows, lanes: int ``[chunks]``, each chunk's first entry, argument rows (variable arity) and lanes.
      chunk_ptr: int ``[B]``, each batch's first chunk.
      edge_ptr, edge_rows, edge_lane: the schedule's operand rows (:class:`~edbatch_jax.engine.rows.ScheduleRows`).
      batch_type: int ``[B]``; variadic: bool ``[T]``; arity: int ``[T]``.
      max_lanes: lanes of a full chunk.
    """
    for b in range(batch_type.shape[0]):
        t = batch_type[b]
        lo, hi = edge_ptr[b], edge_ptr[b + 1]
        if variadic[t]:
            c = chunk_ptr[b]
            s = start[c]
            for i in range(erows[c]):
                flat_idx[s + i] = lanes[c]
            for e in range(lo, hi):
                local = e - lo
                flat_idx[s + local] = edge_lane[e]
                flat_idx[s + erows[c] + local] = edge_rows[e]
        else:
            a = max(arity[t], 1)
            for e in range(lo, hi):
                local = e - lo
                lane, j = local // a, local % a
                c = chunk_ptr[b] + lane // max_lanes
                flat_idx[start[c] + j * lanes[c] + lane % max_lanes] = edge_rows[e]


@numba.njit(cache=True, nogil=True)
def operand_clash(node_type, arg_ptr, arg_idx, type_buffer, variadic) -> tuple[int, int]:
    """Two edges ``(e1, e2)`` that pass the same operand position of one op type states of different buffers
    (``type_buffer``: int ``[T]``, each type's output buffer), or ``(-1, -1)``. A variadic type's arguments
    all count as position 0 (bool ``variadic [T]``). One pass over the edges, O(N + E + T * arity)."""
    n = node_type.shape[0]
    width = 1
    for v in range(n):
        k = arg_ptr[v + 1] - arg_ptr[v]
        if not variadic[node_type[v]] and k > width:
            width = k
    first = np.full((type_buffer.shape[0], width), -1, np.int64)  # per (type, position): its first edge
    for v in range(n):
        t = node_type[v]
        for e in range(arg_ptr[v], arg_ptr[v + 1]):
            p = 0 if variadic[t] else e - arg_ptr[v]
            f = first[t, p]
            if f < 0:
                first[t, p] = e
            elif type_buffer[node_type[arg_idx[e]]] != type_buffer[node_type[arg_idx[f]]]:
                return f, e
    return -1, -1


@numba.njit(cache=True, nogil=True)
def fill_type_lanes(
    sel,
    lanes,
    valid,
    c0,
    start,
    chunk_batch,
    desc,
    out_col,
    pay_col,
    flat_idx,
    batch_ptr,
    lane_nodes,
    payload_row,
    arity,
    table,
    prow,
):
    """The fused engine's rows of one op type's chunks, chunk after chunk, written in place.

    For each chunk ``c`` of ``sel`` (int ``[C]``, the type's chunks in order): its first row within the type,
    into ``desc[c, pay_col]``; per lane ``l`` (``lanes[c]`` of them, ``valid[c]`` real) of a fixed-arity type
    (``table``: int32 ``[rows, 2 + arity]``, or ``[0, 2]`` to skip) its validity, output row
    (``desc[c, out_col] + l``) and operand rows (read back from ``flat_idx`` at ``start[c]``); and, if ``prow``
    (int64 ``[rows]``, or ``[0]`` to skip) is given, the payload row of its node (lane ``c0[c] + l`` of the
    batch; padding lanes repeat the batch's first lane). Returns the rows used.
    """
    r = 0
    fixed = table.shape[0] > 0
    payload = prow.shape[0] > 0
    for i in range(sel.shape[0]):
        c = sel[i]
        desc[c, pay_col] = r
        for l in range(lanes[c]):
            if fixed:
                table[r, 0] = 1 if l < valid[c] else 0
                table[r, 1] = desc[c, out_col] + l
                for j in range(arity):
                    table[r, 2 + j] = flat_idx[start[c] + j * lanes[c] + l]
            if payload:
                lane = c0[c] + l if l < valid[c] else 0
                prow[r] = payload_row[lane_nodes[batch_ptr[chunk_batch[c]] + lane]]
            r += 1
    return r


@numba.njit(cache=True, nogil=True)
def chunks(batch_type, width, edge_ptr, variadic, max_lanes, fine):
    """The fused engine's chunks of every batch (:meth:`~edbatch_jax.engine.fused.FusedEngine._chunk_arrays`).

    A fixed-arity batch runs as chunks of at most ``max_lanes`` lanes, each bucketed to a power of two (or, with
    ``fine``, to ``3 * 2^k`` where that is at least the lanes and ``2^(k+2)`` is not); a variable-arity batch as
    one chunk whose argument rows are bucketed to a power of two. Returns ``(variable arity? bool [C], batch's
    first chunk int64 [B], batch int64 [C], first lane, valid lanes, lanes, edge rows: int64 [C])``.
    """
    num_batches = batch_type.shape[0]
    first = np.zeros(num_batches, np.int64)
    total = 0
    for b in range(num_batches):
        first[b] = total
        total += 1 if variadic[batch_type[b]] else (width[b] + max_lanes - 1) // max_lanes
    var_c = np.zeros(total, np.bool_)
    chunk_batch = np.zeros(total, np.int64)
    c0 = np.zeros(total, np.int64)
    valid = np.zeros(total, np.int64)
    lanes = np.zeros(total, np.int64)
    erows = np.zeros(total, np.int64)
    for b in range(num_batches):
        var = variadic[batch_type[b]]
        n = 1 if var else (width[b] + max_lanes - 1) // max_lanes
        for i in range(n):
            c = first[b] + i
            var_c[c] = var
            chunk_batch[c] = b
            c0[c] = 0 if var else i * max_lanes
            v = width[b] if var else min(max_lanes, width[b] - i * max_lanes)
            valid[c] = v
            p = _pow2_at_least(v)
            lanes[c] = p * 3 // 4 if fine and p >= 4 and p * 3 // 4 >= v else p
            erows[c] = _pow2_at_least(edge_ptr[b + 1] - edge_ptr[b]) if var else 0
    return var_c, first, chunk_batch, c0, valid, lanes, erows
