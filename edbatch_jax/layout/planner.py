"""Memory layout planning: batched operands as contiguous slices (ED-Batch section 6).

The engine stores node states in concatenated buffers and runs every batch as
one call: it reads each operand list (for every lane, the state of that lane's
node's ``p``-th argument) and writes the batch's outputs. An operand list that
occupies consecutive rows *in lane order* is read with one slice; any other is
gathered row by row. :func:`plan_layout` chooses one global order of the nodes
(each buffer stores its nodes in that order) so that as many operand lists as
possible are slices:

1. **Adjacency.** Every batch's nodes are consecutive (always satisfiable:
   batches are disjoint). Batches whose nodes no operand reads (loss nodes,
   say) stay out of the PQ-tree and follow its order, batch by batch.
2. **Consecutive operands.** Every operand set is offered to a
   :class:`~edbatch_jax.layout.PQTree` (largest first); a set that cannot be
   made consecutive together with those accepted so far is dropped (that
   operand will be gathered). The tree's leaves are classes of twins (nodes
   of one batch that lie in exactly the same sets), which accepts exactly
   what a tree over the nodes would, on a universe 10-15x smaller.
3. **Alignment.** In schedule order, every batch picks its lane order: if an
   accepted operand's states are already ordered (pinned), lanes follow that
   order; then every accepted operand whose states come from one producer
   batch and are still free is re-ordered to follow the lanes. The PQ-tree
   fixes which rows a set occupies; alignment only permutes a set inside its
   own rows, so consecutiveness is kept. Instances are laid out largest
   first, so the nested operand sets of variable-length chains come out as
   prefixes.

The plan is buffer-agnostic: a set consecutive in the global order stays
consecutive in every buffer (a buffer keeps a subset of the nodes, in the
global order). ``num_gathers`` counts, conservatively, the operand lists that
are not consecutive and increasing in the global order; the engine reports
the exact count for its buffers.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Collection, NamedTuple

import numpy as np

from edbatch_jax.graph import Graph, _csr_rows
from edbatch_jax.layout.pqtree import PQTree
from edbatch_jax.scheduling.schedule import Schedule

__all__ = ["LayoutPlan", "plan_layout", "operand_lists"]


@dataclasses.dataclass(frozen=True, eq=False)
class LayoutPlan:
    """A global order of the nodes for the engine's state buffers.

    Attributes:
      position: int32 ``[N]``, the rank of every node in the order.
      num_operands: operand lists per mini-batch (one per batch and operand
        position; one per batch for variable-arity ops).
      num_gathers: operand lists that are not slices under this order.
      gathered_rows: rows those gathers read (real lanes only).
      accepted, dropped: operand sets the PQ-tree accepted / refused.
      seconds: planning time (host).
    """

    position: np.ndarray
    num_operands: int
    num_gathers: int
    gathered_rows: int
    accepted: int
    dropped: int
    seconds: float

    def __repr__(self) -> str:
        return (
            f"LayoutPlan(nodes={self.position.shape[0]}, gathers={self.num_gathers}/{self.num_operands}, "
            f"rows gathered={self.gathered_rows}, {self.seconds * 1e3:.1f} ms)"
        )


class _OperandLists(NamedTuple):
    """Every batch's operand lists, flat: list ``i`` has entries ``ptr[i]:ptr[i+1]``."""

    batch: np.ndarray  # [L] the batch that reads list i
    ptr: np.ndarray  # [L + 1]
    lane: np.ndarray  # [M] the lane (index in its batch) an entry belongs to
    arg: np.ndarray  # [M] the node it reads


def _flat_operand_lists(graph: Graph, schedule: Schedule, variadic: Collection[str] | None) -> _OperandLists:
    """The operand lists of :func:`operand_lists`, vectorised: no loop over batches."""
    arity = graph.arity
    if variadic is None:  # types with more than one distinct (type, arity) pair
        span = int(arity.max(initial=0)) + 1
        pairs = np.unique(graph.node_type.astype(np.int64) * span + arity)
        var = np.bincount(pairs // span, minlength=graph.num_types) > 1
    else:
        var = np.array([t in variadic for t in graph.op_types], dtype=bool)
    nodes = schedule.node_order
    arg, slot = _csr_rows(graph.arg_ptr, graph.arg_idx, nodes)  # slot: index into node_order
    batch = np.repeat(np.arange(schedule.num_batches), schedule.widths)[slot]
    lane = slot - schedule.batch_ptr[batch]
    counts = arity[nodes]
    position = np.arange(arg.size) - np.repeat(np.cumsum(counts) - counts, counts)
    position[var[graph.node_type[nodes[slot]]]] = 0  # one flat list per variable-arity batch
    order = np.lexsort((position, batch))  # stable: lanes stay in order inside a list
    batch, position, lane, arg = batch[order], position[order], lane[order], arg[order]
    new_list = np.ones(arg.size, bool)
    new_list[1:] = (batch[1:] != batch[:-1]) | (position[1:] != position[:-1])
    starts = np.flatnonzero(new_list)
    return _OperandLists(batch[starts], np.append(starts, arg.size), lane.astype(np.int32), arg.astype(np.int32))


def operand_lists(graph: Graph, schedule: Schedule, variadic: Collection[str] | None = None):
    """The operand lists of every batch, as the engine reads them.

    For a fixed-arity op, one list per argument position (the ``p``-th
    argument of every lane); for a variable-arity op, one flat list (all
    arguments of every lane, lane by lane). ``variadic`` names the
    variable-arity op types; by default a type whose nodes do not all have
    the same arity.

    Returns:
      ``[(batch index, lane_of_entry int32 [M], args int32 [M]), ...]``, the
      lanes in the schedule's node order, by batch and argument position.
    """
    lists = _flat_operand_lists(graph, schedule, variadic)
    return [(int(b), lists.lane[s:e], lists.arg[s:e]) for b, s, e in zip(lists.batch, lists.ptr[:-1], lists.ptr[1:])]


def _twin_classes(batch_of: np.ndarray, node: np.ndarray, set_id: np.ndarray, members: np.ndarray) -> tuple[np.ndarray, int]:
    """Groups ``members`` into classes of twins: nodes of one batch that lie in exactly the same sets.

    Twins are interchangeable under consecutiveness constraints (an order
    meeting some constraints can put twins side by side and still meet
    them), so the PQ-tree runs over classes: it accepts exactly the sets it
    would accept over nodes, on a universe 10-15x smaller for trees and
    lattices.

    Args:
      batch_of: int ``[N]``, the batch of every node.
      node, set_id: int ``[M]``, set memberships (``node`` lies in set ``set_id``).
      members: the nodes to classify.

    Returns:
      int64 ``[N]`` class of every node (``-1`` outside ``members``),
      numbered in the order of first appearance in ``members``; the number
      of classes.
    """
    n = batch_of.shape[0]
    order = np.lexsort((set_id, node))
    node, set_id = node[order], set_id[order]
    count = np.bincount(node, minlength=n)
    slot = np.arange(node.size) - (np.cumsum(count) - count)[node]
    signature = np.full((n, int(count.max(initial=0)) + 1), -1, np.int64)
    signature[:, 0] = batch_of
    signature[node, slot + 1] = set_id
    rows = signature[members]
    order = np.lexsort(rows.T[::-1])  # rows sorted, equal rows in ``members`` order
    new_row = np.ones(order.size, bool)
    new_row[1:] = np.any(rows[order[1:]] != rows[order[:-1]], axis=1)
    group = np.cumsum(new_row) - 1  # sorted-row group of each entry of ``order``
    first = order[new_row]  # first member of every group
    renumber = np.empty(first.size, np.int64)
    renumber[np.argsort(first, kind="stable")] = np.arange(first.size)
    cls = np.full(n, -1, np.int64)
    cls[members[order]] = renumber[group]
    return cls, int(first.size)


def _distinct_per_set(item: np.ndarray, set_id: np.ndarray, num_sets: int) -> list[list[int]]:
    """The distinct items (non-negative ints) of every set (``item[k]`` lies in set ``set_id[k]``), as lists."""
    span = int(item.max(initial=0)) + 1
    key = np.unique(set_id.astype(np.int64) * span + item)
    bounds = np.searchsorted(key // span, np.arange(num_sets + 1)).tolist()
    items = (key % span).tolist()
    return [items[s:e] for s, e in zip(bounds[:-1], bounds[1:])]


def plan_layout(graph: Graph, schedule: Schedule, variadic: Collection[str] | None = None) -> LayoutPlan:
    """Plans the buffer order of ``graph`` under ``schedule`` (host-side).

    Args:
      graph: the batched graph.
      schedule: a valid schedule of it.
      variadic: variable-arity op type names (see :func:`operand_lists`).

    Returns:
      A :class:`LayoutPlan`; pass it to ``eb.run(..., layout=plan)``.
    """
    t0 = time.perf_counter()
    n = graph.num_nodes
    batch_of = schedule.batch_of_node(n)
    lists = _flat_operand_lists(graph, schedule, variadic)
    num_lists = lists.batch.size
    ptr = lists.ptr
    list_sizes = np.diff(ptr)
    entry_list = np.repeat(np.arange(num_lists), list_sizes)

    # per list: does it read a node twice (then it is never a slice), does it read one producer batch
    order = np.lexsort((lists.arg, entry_list))
    repeat = (lists.arg[order][1:] == lists.arg[order][:-1]) & (entry_list[order][1:] == entry_list[order][:-1])
    distinct = np.ones(num_lists, bool)
    distinct[entry_list[order][1:][repeat]] = False
    producer = batch_of[lists.arg]
    one_producer = np.zeros(num_lists, bool)
    if num_lists:
        one_producer = np.minimum.reduceat(producer, ptr[:-1]) == np.maximum.reduceat(producer, ptr[:-1])

    # universe order: by batch, then instances largest first, then id
    sizes = np.bincount(graph.instance, minlength=graph.num_instances)
    inst_rank = np.empty(graph.num_instances, np.int64)
    inst_rank[np.lexsort((np.arange(graph.num_instances), -sizes))] = np.arange(graph.num_instances)
    initial = np.lexsort((np.arange(n), inst_rank[graph.instance], batch_of))
    # batches none of whose nodes is ever read (loss nodes, say) only need to be consecutive: they stay
    # out of the PQ-tree and follow its order, batch by batch
    is_operand = np.zeros(n, bool)
    is_operand[lists.arg] = True
    read_batch = np.bincount(batch_of, weights=is_operand, minlength=schedule.num_batches) > 0
    in_tree = read_batch[batch_of[initial]]

    # sets offered to the PQ-tree, largest first: lists of two or more distinct nodes (a shorter one is
    # always a slice); the tree runs over classes of twin nodes
    offer = distinct & (list_sizes >= 2)
    offered = [i for i in np.argsort(-list_sizes, kind="stable").tolist() if offer[i]]
    accepted = (list_sizes < 2) & distinct
    members = initial[in_tree]
    in_offered = offer[entry_list]
    cls, num_classes = _twin_classes(batch_of, lists.arg[in_offered], entry_list[in_offered], members)
    tree = PQTree(range(num_classes))
    batch_classes = _distinct_per_set(cls[members], batch_of[members], schedule.num_batches)
    for b in np.flatnonzero(read_batch).tolist():
        tree.reduce(batch_classes[b])
    list_classes = _distinct_per_set(cls[lists.arg], entry_list, num_lists)
    for i in offered:
        accepted[i] = tree.reduce(list_classes[i])
    class_rank = np.empty(num_classes, np.int64)
    class_rank[np.asarray(tree.frontier(), dtype=np.int64)] = np.arange(num_classes)
    members = members[np.argsort(class_rank[cls[members]], kind="stable")]
    position = np.empty(n, np.int64)
    position[np.concatenate([members, initial[~in_tree]])] = np.arange(n)

    position = _align(position, schedule, lists, accepted, one_producer, inst_rank[graph.instance])
    gathers, rows = _count_gathers(position, schedule, lists)
    return LayoutPlan(
        position=position.astype(np.int32),
        num_operands=num_lists,
        num_gathers=gathers,
        gathered_rows=rows,
        accepted=int(accepted.sum()),
        dropped=int((~accepted).sum()),
        seconds=time.perf_counter() - t0,
    )


_WIDE = 100  # mean entries read per batch above which alignment works on arrays rather than lists


def _align(position, schedule, lists, accepted, one_producer, lane_rank) -> np.ndarray:
    """Step 3: lane orders and operand orders, batch by batch in schedule order.

    For every batch: its lanes follow its anchor (the accepted, consecutive
    operand whose rows are most pinned already), else, if none of its nodes
    is pinned, instances largest first (``lane_rank``); then every accepted
    operand read from one producer batch and not pinned yet is permuted to
    follow the lanes. Rows only move inside a batch or inside an accepted
    operand set.

    Two implementations of the same steps: on plain lists when batches are
    narrow (lattices, sequences: a NumPy call costs more than a step), on
    arrays when they are wide (trees, random DAGs). They give the same order.
    """
    wide = lists.arg.size > _WIDE * max(schedule.num_batches, 1)
    return (_align_arrays if wide else _align_lists)(position, schedule, lists, accepted, one_producer, lane_rank)


def _align_lists(position, schedule, lists, accepted, one_producer, lane_rank) -> np.ndarray:
    """:func:`_align` on plain lists."""
    pos = position.tolist()
    pinned = [False] * len(pos)
    lane_rank = lane_rank.tolist()
    node_order = schedule.node_order.tolist()
    batch_ptr = schedule.batch_ptr.tolist()
    ptr = lists.ptr.tolist()
    lane_of, arg_of = lists.lane.tolist(), lists.arg.tolist()
    accepted, one_producer = accepted.tolist(), one_producer.tolist()
    first_list = np.searchsorted(lists.batch, np.arange(schedule.num_batches + 1)).tolist()
    for b in range(schedule.num_batches):
        own = range(first_list[b], first_list[b + 1])
        if not own:
            continue  # reads nothing: its lanes keep the PQ-tree's order
        nodes = node_order[batch_ptr[b] : batch_ptr[b + 1]]
        anchor, most = -1, 0.0
        for i in own:
            if not accepted[i]:
                continue
            args = arg_of[ptr[i] : ptr[i + 1]]
            share = sum(map(pinned.__getitem__, args)) / len(args)
            if share > most:
                rows = [pos[a] for a in args]
                if max(rows) - min(rows) == len(rows) - 1:
                    anchor, most = i, share
        lane_key = None
        if anchor >= 0:
            lane_key = [len(pos)] * len(nodes)
            for lane, a in zip(lane_of[ptr[anchor] : ptr[anchor + 1]], arg_of[ptr[anchor] : ptr[anchor + 1]]):
                lane_key[lane] = min(lane_key[lane], pos[a])
                pinned[a] = True
        elif not any(map(pinned.__getitem__, nodes)):
            lane_key = [lane_rank[v] for v in nodes]
        rows = [pos[v] for v in nodes]
        if lane_key is not None:
            for (_, _, v), row in zip(sorted(zip(lane_key, rows, nodes)), sorted(rows)):
                pos[v] = row
        base = min(rows)
        lane_pos = [pos[v] - base for v in nodes]  # a batch's rows are consecutive
        changed = anchor >= 0
        for i in own:
            if not accepted[i] or not one_producer[i]:
                continue
            args = arg_of[ptr[i] : ptr[i + 1]]
            if any(map(pinned.__getitem__, args)):
                continue
            lane_order = [lane_pos[lane] for lane in lane_of[ptr[i] : ptr[i + 1]]]
            for (_, _, a), row in zip(sorted(zip(lane_order, range(len(args)), args)), sorted(pos[a] for a in args)):
                pos[a] = row
                pinned[a] = True
            changed = True
        if changed:
            for v in nodes:
                pinned[v] = True
    return np.asarray(pos, dtype=np.int64)


def _align_arrays(position, schedule, lists, accepted, one_producer, lane_rank) -> np.ndarray:
    """:func:`_align` on arrays."""
    pos = position.copy()
    pinned = np.zeros(pos.size, bool)
    ptr, arg, lane = lists.ptr, lists.arg, lists.lane
    size = np.diff(ptr)
    first_list = np.searchsorted(lists.batch, np.arange(schedule.num_batches + 1)).tolist()
    for b in range(schedule.num_batches):
        l0, l1 = first_list[b], first_list[b + 1]
        if l0 == l1:
            continue
        nodes = schedule.node_order[schedule.batch_ptr[b] : schedule.batch_ptr[b + 1]]
        e0 = ptr[l0]
        args, offsets = arg[e0 : ptr[l1]], ptr[l0:l1] - e0
        rows = pos[args]
        share = np.add.reduceat(pinned[args], offsets) / size[l0:l1]
        span = np.maximum.reduceat(rows, offsets) - np.minimum.reduceat(rows, offsets)
        anchors = accepted[l0:l1] & (share > 0) & (span == size[l0:l1] - 1)
        lane_key = None
        if anchors.any():
            i = l0 + int(np.argmax(np.where(anchors, share, -1.0)))  # the first of the most pinned
            lane_key = np.full(nodes.size, pos.size, np.int64)
            np.minimum.at(lane_key, lane[ptr[i] : ptr[i + 1]], pos[arg[ptr[i] : ptr[i + 1]]])
            pinned[arg[ptr[i] : ptr[i + 1]]] = True
        elif not pinned[nodes].any():
            lane_key = lane_rank[nodes]
        node_rows = pos[nodes]
        if lane_key is not None:
            node_rows[np.lexsort((node_rows, lane_key))] = np.sort(node_rows)
            pos[nodes] = node_rows
        lane_pos = node_rows - node_rows.min()  # a batch's rows are consecutive
        changed = lane_key is not None and bool(anchors.any())
        for i in (l0 + np.flatnonzero(accepted[l0:l1] & one_producer[l0:l1])).tolist():
            a = arg[ptr[i] : ptr[i + 1]]
            if pinned[a].any():
                continue
            pos[a[np.argsort(lane_pos[lane[ptr[i] : ptr[i + 1]]], kind="stable")]] = np.sort(pos[a])
            pinned[a] = True
            changed = True
        if changed:
            pinned[nodes] = True
    return pos


def _count_gathers(position: np.ndarray, schedule: Schedule, lists: _OperandLists) -> tuple[int, int]:
    """Operand lists that are not slices under ``position`` (their rows, entries in lane order, are not
    a run), and the rows they read."""
    num_lists = lists.batch.size
    if not num_lists:
        return 0, 0
    entry_list = np.repeat(np.arange(num_lists), np.diff(lists.ptr))
    batch = lists.batch[entry_list]
    reader = schedule.node_order[schedule.batch_ptr[batch] + lists.lane]
    # a batch's rows are consecutive, so a lane's rank is its row minus the batch's first row
    first_row = np.minimum.reduceat(position[schedule.node_order], schedule.batch_ptr[:-1])
    lane_rank = position[reader] - first_row[batch]
    order = np.lexsort((np.arange(entry_list.size), lane_rank, entry_list))
    rows, entry_list = position[lists.arg[order]], entry_list[order]
    broken = np.zeros(num_lists, bool)
    broken[entry_list[1:][(np.diff(rows) != 1) & (entry_list[1:] == entry_list[:-1])]] = True
    return int(broken.sum()), int(np.diff(lists.ptr)[broken].sum())
