"""Compiled kernels of the frontier simulation (Numba): the per-batch walks every dynamic policy drives.

The ready nodes of every op type live in one int32 array ``slots`` of ``N``
entries: type ``t`` owns the segment that starts where the counts of the
types before it end (a node is listed once, when it becomes ready), its
ready nodes are ``slots[head[t]:tail[t]]`` and those it already ran lie
before ``head[t]``. A batch costs work proportional to it and its consumers.
Kernels run without the GIL (``nogil``) and are cached on disk; nothing here
is jittable by JAX.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["clear_type", "priority_schedule", "ready_slots", "release_pairs", "rule_schedule", "take_ready"]


@numba.njit(cache=True, nogil=True)
def take_ready(t, limit, child_ptr, child_idx, node_type, left, slots, head, tail, counts, out):
    """Runs the ready nodes of type ``t`` (the ``limit`` lowest ids; ``limit < 0``: all of them).

    Writes their ids, ascending, to ``out[:k]`` and returns ``k``. Updates in
    place ``left`` (int32 ``[N]``: arguments not run yet), ``slots``, ``head``,
    ``tail`` (int64 ``[T]``) and ``counts`` (int64 ``[T]``: ready nodes per type).
    """
    h, e = head[t], tail[t]
    slots[h:e].sort()
    k = e - h if limit < 0 or limit > e - h else limit
    for i in range(k):
        out[i] = slots[h + i]
    head[t] = h + k
    counts[t] -= k
    for i in range(k):
        v = out[i]
        for j in range(child_ptr[v], child_ptr[v + 1]):
            c = child_idx[j]
            left[c] -= 1
            if left[c] == 0:  # its last argument ran
                ct = node_type[c]
                slots[tail[ct]] = c
                tail[ct] += 1
                counts[ct] += 1
    return k


@numba.njit(cache=True, nogil=True)
def _forced_type(unbatchable, counts):
    """The lowest ready unbatchable type (bool ``[T]``), whose nodes run one at a time before any decision; -1:
    none."""
    for u in range(counts.shape[0]):
        if unbatchable[u] and counts[u] > 0:
            return u
    return -1


@numba.njit(cache=True, nogil=True)
def priority_schedule(
    priority,
    unbatchable,
    child_ptr,
    child_idx,
    node_type,
    left,
    slots,
    head,
    tail,
    counts,
    batch_type,
    batch_ptr,
    order,
):
    """A whole schedule by a fixed priority per type: the ready type with the lowest ``priority`` (float64
    ``[T]``; ties to the lower id) runs all its ready nodes; a ready unbatchable type (bool ``[T]``) runs first,
    its lowest id alone. Writes ``batch_type[:B]``, ``batch_ptr[:B + 1]`` and ``order[:N]``; returns ``B``
    (fewer nodes than ``N`` were run when the graph has a cycle)."""
    n, num_types = node_type.shape[0], priority.shape[0]
    done, b = 0, 0
    batch_ptr[0] = 0
    while done < n:
        t = _forced_type(unbatchable, counts)
        limit = 1 if t >= 0 else -1
        if t < 0:
            best = np.inf
            for u in range(num_types):
                if counts[u] > 0 and (t < 0 or priority[u] < best):
                    t, best = u, priority[u]
        if t < 0:
            break
        k = take_ready(t, limit, child_ptr, child_idx, node_type, left, slots, head, tail, counts, order[done:])
        done += k
        batch_type[b] = t
        b += 1
        batch_ptr[b] = done
    return b


@numba.njit(cache=True, nogil=True)
def clear_type(t, nodes, child_ptr, child_idx, node_type, clear, stack):
    """Type ``t`` clears from ``nodes`` (of type ``t``, just run) down through the nodes of other types whose
    arguments all cleared it; returns how many type-``t`` nodes had all their arguments clear it.

    ``clear``: int32 ``[N]``, per node the arguments that have not cleared ``t`` (decremented in place);
    ``stack``: int32 ``[N]`` scratch. Each node clears a type once, so a schedule costs ``O(T * E)``.
    """
    sp = 0
    for i in range(nodes.shape[0]):
        stack[sp] = nodes[i]
        sp += 1
    gained = 0
    while sp:
        sp -= 1
        v = stack[sp]
        for j in range(child_ptr[v], child_ptr[v + 1]):
            c = child_idx[j]
            clear[c] -= 1
            if clear[c] == 0:
                if node_type[c] == t:
                    gained += 1  # its type-t ancestors all ran: c joins TF_t
                else:
                    stack[sp] = c  # every type-t node at or above c ran
                    sp += 1
    return gained


@numba.njit(cache=True, nogil=True)
def release_pairs(nodes, ptr, dst, left):
    """Fires the pairs ``(v, dst[ptr[v]:ptr[v + 1]])`` of ``nodes``; returns the targets whose ``left``
    (int32 ``[N]``, decremented in place) reached 0."""
    gained = 0
    for i in range(nodes.shape[0]):
        v = nodes[i]
        for j in range(ptr[v], ptr[v + 1]):
            w = dst[j]
            left[w] -= 1
            if left[w] == 0:
                gained += 1
    return gained


@numba.njit(cache=True, nogil=True)
def closure_counters(order, arg_ptr, arg_idx, node_type, num_types):
    """int32 ``[T, N]``: per type ``t`` and node ``x``, the arguments of ``x`` with a type-``t`` node at or
    above them. ``order``: int ``[N]``, a topological order (arguments first). One sweep over the edges
    carrying per node the types at or above it as bitsets (64 types per word)."""
    n = node_type.shape[0]
    words = (num_types + 63) // 64
    above = np.zeros((n, words), np.uint64)
    counters = np.zeros((num_types, n), np.int32)
    one = np.uint64(1)
    for i in range(n):
        v = order[i]
        t = node_type[v]
        above[v, t // 64] |= one << np.uint64(t % 64)
        for e in range(arg_ptr[v], arg_ptr[v + 1]):
            a = arg_idx[e]
            for w in range(words):
                bits = above[a, w]
                above[v, w] |= bits
                while bits:
                    low = bits & (~bits + one)  # the lowest set bit
                    k = 0
                    while (low >> np.uint64(k)) != one:
                        k += 1
                    counters[w * 64 + k, v] += 1
                    bits ^= low
    return counters


@numba.njit(cache=True, nogil=True)
def _typewise_choice(counts, tw_counts):
    """The ready type with the largest ``|F_t| / |TF_t|`` (ties: larger ``|F_t|``, then lower id)."""
    best, best_ratio, best_ready = -1, -1.0, 0
    for t in range(counts.shape[0]):
        ready = counts[t]
        if ready > 0:
            ratio = ready / max(tw_counts[t], 1)
            if ratio > best_ratio or (ratio == best_ratio and ready > best_ready):
                best, best_ratio, best_ready = t, ratio, ready
    return best


@numba.njit(cache=True, nogil=True)
def rule_schedule(
    unbatchable,
    perm,
    encoding,
    keys,
    actions,
    fallback,
    track,
    clear,
    stack,
    tw_counts,
    child_ptr,
    child_idx,
    node_type,
    left,
    slots,
    head,
    tail,
    counts,
    batch_type,
    batch_ptr,
    order,
):
    """A whole schedule by a table from encoded states to op types (an FSM policy), or by the type-wise rule.

    A ready unbatchable type (bool ``[T]``, graph type ids) runs first, its
    lowest id alone. Otherwise the state of the ready counts is encoded in the
    policy's type ids (``perm``: int64 ``[K]``, the graph type id of each policy
    type, -1 for a type the graph lacks) as ``encoding`` says (0 ``set``, 1
    ``sort``, 2 ``max``, 3 ``sort_complete``; -1: no table, the type-wise rule
    decides), as the integer whose base-``(2K + 1)`` digits are the state
    tuple's ids plus one; it is looked up in ``keys`` (int64 ``[M]``, sorted),
    and a hit runs ``actions`` (int64 ``[M]``, policy type ids). A miss runs the
    fallback: 0 the last type of the state, 1 the first, 2 the type-wise rule.
    ``track``: maintain ``tw_counts`` (``|TF_t|``, int64 ``[T]``) with ``clear``
    (int32 ``[T, N]``) and ``stack`` as :func:`clear_type` does.

    Writes ``batch_type[:B]``, ``batch_ptr[:B + 1]`` and ``order[:N]``; returns
    ``(B, hits, decisions)``.
    """
    n, k = node_type.shape[0], perm.shape[0]
    base = 2 * k + 1
    state = np.empty(k + 1, np.int64)
    cp = np.zeros(k, np.int64)
    done, b, hits, decisions = 0, 0, 0, 0
    batch_ptr[0] = 0
    while done < n:
        t = _forced_type(unbatchable, counts)
        limit = 1 if t >= 0 else -1
        if t < 0:
            if encoding < 0:
                t = _typewise_choice(counts, tw_counts)
            else:
                decisions += 1
                m = 0
                for i in range(k):
                    cp[i] = counts[perm[i]] if perm[i] >= 0 else 0
                    if cp[i] > 0:
                        state[m] = i
                        m += 1
                if m == 0:
                    break
                if encoding == 1 or encoding == 3:  # by count, largest first; ties: lower id (insertion sort)
                    for i in range(1, m):
                        x = state[i]
                        j = i - 1
                        while j >= 0 and cp[state[j]] < cp[x]:
                            state[j + 1] = state[j]
                            j -= 1
                        state[j + 1] = x
                    if encoding == 3:
                        for i in range(m):
                            g = perm[state[i]]
                            if counts[g] == tw_counts[g]:
                                state[i] += k
                elif encoding == 2:  # the set, then the first type of the largest count
                    a = 0
                    for i in range(k):
                        if cp[i] > cp[a]:
                            a = i
                    state[m] = a
                    m += 1
                key = 0
                for i in range(m):
                    key = key * base + state[i] + 1
                j = np.searchsorted(keys, key)
                if j < keys.shape[0] and keys[j] == key:
                    hits += 1
                    t = perm[actions[j]]
                elif fallback == 2:
                    t = _typewise_choice(counts, tw_counts)
                elif fallback == 1:
                    t = perm[state[0] % k]
                else:
                    t = perm[state[m - 1] % k]
        if t < 0:
            break
        got = take_ready(t, limit, child_ptr, child_idx, node_type, left, slots, head, tail, counts, order[done:])
        if track:
            gained = clear_type(t, order[done : done + got], child_ptr, child_idx, node_type, clear[t], stack)
            tw_counts[t] += gained - got
        done += got
        batch_type[b] = t
        b += 1
        batch_ptr[b] = done
    return b, hits, decisions


@numba.njit(cache=True, nogil=True)
def ready_slots(node_type, left, num_types):
    """The initial ready set: ``(slots int32 [N], head int64 [T], tail int64 [T], counts int64 [T])``, the
    nodes without arguments (``left == 0``) in each type's segment, ascending ids. O(N + T)."""
    n = node_type.shape[0]
    per_type = np.zeros(num_types, np.int64)
    counts = np.zeros(num_types, np.int64)
    for v in range(n):
        per_type[node_type[v]] += 1
        if left[v] == 0:
            counts[node_type[v]] += 1
    head = np.zeros(num_types, np.int64)
    for t in range(1, num_types):
        head[t] = head[t - 1] + per_type[t - 1]
    tail = head.copy()
    slots = np.empty(n, np.int32)
    for v in range(n):
        if left[v] == 0:
            t = node_type[v]
            slots[tail[t]] = v
            tail[t] += 1
    return slots, head, tail, counts
