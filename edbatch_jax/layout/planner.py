"""Memory layout planning: batched operands as contiguous slices (ED-Batch section 6).

The engine stores node states in concatenated buffers and runs every batch as
one call: it reads each operand list (for every lane, the state of that lane's
node's ``p``-th argument) and writes the batch's outputs. An operand list that
occupies consecutive rows *in lane order* is read with one slice; any other is
gathered row by row. :func:`plan_layout` chooses one global order of the nodes
(each buffer stores its nodes in that order) so that as many operand lists as
possible are slices:

1. **Adjacency.** Every batch's nodes are consecutive (always satisfiable:
   batches are disjoint, and the tree is built with them,
   :meth:`~edbatch_jax.layout.PQTree.from_blocks`). Batches whose nodes no
   operand reads (loss nodes, say) stay out of the PQ-tree and follow its
   order, batch by batch.
2. **Consecutive operands.** Every operand set is offered to a
   :class:`~edbatch_jax.layout.PQTree` (largest first); a set that cannot be
   made consecutive together with those accepted so far is dropped (that
   operand will be gathered); a set that cuts three batches or more (holds
   some but not all of their nodes) is dropped without a reduction, since
   batches are consecutive. The tree's leaves are classes of twins (nodes
   of one batch that lie in exactly the same offered sets), which accepts
   exactly what a tree over the nodes would, on a universe 20-60x smaller
   (lattices, trees).
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
import functools
import time
from collections.abc import Collection
from typing import NamedTuple

import numpy as np

from edbatch_jax.graph import Graph, ensure_valid
from edbatch_jax.layout.kernels import align_batches, flat_operand_lists
from edbatch_jax.layout.pqtree import PQTree
from edbatch_jax.scheduling.schedule import Schedule, graph_fingerprint, schedule_fingerprint

__all__ = ["LayoutPlan", "plan_layout", "operand_lists"]


@dataclasses.dataclass(frozen=True, eq=False)
class LayoutPlan:
    """A global order of the nodes for the engine's state buffers.

    Attributes:
      position: int32 ``[N]``, the rank of every node in the order.
      num_operands: operand lists per mini-batch (one per batch and operand
        position; one per batch for variable-arity ops).
      accepted, dropped: operand sets the PQ-tree accepted / refused.
      seconds: planning time (host).
      num_gathers: operand lists that are not slices under this order
        (counted on first access, outside ``seconds``).
      gathered_rows: rows those gathers read (real lanes only).
      fingerprint: ``(graph fingerprint, schedule fingerprint)`` of the
        graph and schedule it was planned for
        (:func:`~edbatch_jax.scheduling.schedule.graph_fingerprint`,
        :func:`~edbatch_jax.scheduling.schedule.schedule_fingerprint`); the
        engine refuses it with another schedule or graph. ``None`` for a plan
        made by hand (not checked).
    """

    position: np.ndarray
    num_operands: int
    accepted: int
    dropped: int
    seconds: float
    _operands: tuple | None = dataclasses.field(default=None, repr=False)  # (schedule, operand lists)
    fingerprint: tuple[bytes, bytes] | None = dataclasses.field(default=None, repr=False, compare=False)

    @functools.cached_property
    def _gathers(self) -> tuple[int, int]:
        if self._operands is None:
            raise ValueError(
                "this LayoutPlan was not made by plan_layout, so it cannot count its gathers; the engine's "
                "plan for it does (Engine.plan(...).num_gathers)"
            )
        return _count_gathers(self.position, *self._operands)

    @property
    def num_gathers(self) -> int:
        """Operand lists that are not slices under this order (conservative; counted once, on first access)."""
        return self._gathers[0]

    @property
    def gathered_rows(self) -> int:
        """Rows the gathered operand lists read (real lanes only)."""
        return self._gathers[1]

    def __repr__(self) -> str:
        counted = self._operands is not None
        gathers = f"gathers={self.num_gathers}/{self.num_operands}, " if counted else f"operands={self.num_operands}, "
        rows = f"rows gathered={self.gathered_rows}, " if counted else ""
        return f"LayoutPlan(nodes={self.position.shape[0]}, {gathers}{rows}{self.seconds * 1e3:.1f} ms)"


def _argsort(key: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of integer keys in ``[0, bound)``; keys that fit 16 bits take NumPy's radix sort."""
    return np.argsort(key.astype(np.uint16) if bound <= 1 << 16 else key, kind="stable")


def _sort(key: np.ndarray, bound: int) -> np.ndarray:
    """The integer keys in ``[0, bound)``, sorted, as int64 (16-bit keys by radix sort)."""
    if bound <= 1 << 16:
        return np.sort(key.astype(np.uint16), kind="stable").astype(np.int64)
    return np.sort(key, kind="stable")


def _counted(key: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct integer keys in ``[0, bound)``, ascending (int64), and how often each occurs."""
    key = _sort(key, bound)
    starts = np.flatnonzero(np.append(True, key[1:] != key[:-1])) if key.size else np.zeros(0, np.int64)
    return key[starts], np.diff(np.append(starts, key.size))


class _OperandLists(NamedTuple):
    """Every batch's operand lists, flat: list ``i`` has entries ``ptr[i]:ptr[i+1]``."""

    batch: np.ndarray  # [L] the batch that reads list i
    ptr: np.ndarray  # [L + 1]
    lane: np.ndarray  # [M] the lane (index in its batch) an entry belongs to
    arg: np.ndarray  # [M] the node it reads


def _flat_operand_lists(graph: Graph, schedule: Schedule, variadic: Collection[str] | None) -> _OperandLists:
    """The operand lists of :func:`operand_lists`, flat (one compiled pass:
    :func:`~edbatch_jax.layout.kernels.flat_operand_lists`)."""
    arity = graph.arity
    if variadic is None:  # types with more than one distinct (type, arity) pair
        span = int(arity.max(initial=0)) + 1
        seen = np.zeros(graph.num_types * span, bool)
        seen[graph.node_type.astype(np.int64) * span + arity] = True
        var = seen.reshape(graph.num_types, span).sum(axis=1) > 1
    else:
        var = np.array([t in variadic for t in graph.op_types], dtype=bool)
    batch, ptr, lane, arg = flat_operand_lists(
        graph.arg_ptr, graph.arg_idx, schedule.node_order, schedule.batch_ptr, schedule.batch_type, var
    )
    return _OperandLists(batch, ptr, lane, arg)


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


def _twin_classes(
    batch_of: np.ndarray, node: np.ndarray, set_id: np.ndarray, members: np.ndarray
) -> tuple[np.ndarray, int]:
    """Groups ``members`` into classes of twins: nodes of one batch that lie in exactly the same sets.

    Twins are interchangeable under consecutiveness constraints (an order
    meeting some constraints can put twins side by side and still meet
    them), so the PQ-tree runs over classes: it accepts exactly the sets it
    would accept over nodes, on a much smaller universe.

    Args:
      batch_of: int ``[N]``, the batch of every node.
      node, set_id: int ``[M]``, set memberships (``node`` lies in set ``set_id``),
        ``set_id`` non-decreasing.
      members: the nodes to classify.

    Returns:
      int64 ``[N]`` class of every node (``-1`` outside ``members``),
      numbered in the order of first appearance in ``members``; the number
      of classes.
    """
    n = batch_of.shape[0]
    num_sets = int(set_id.max(initial=-1)) + 2  # set ids shifted by one: 0 pads a row
    order = _argsort(node, n)  # stable: every node's sets stay ascending
    node, set_id = node[order], set_id[order]
    count = np.bincount(node, minlength=n)
    width = int(count.max(initial=0))
    if members.size * (width + 1) > 4 * (node.size + members.size) + (1 << 16):
        # a node in many sets (read by many batches): a dense row per member would be quadratic
        return _twin_classes_sparse(batch_of, node, set_id, count, members)
    slot = np.arange(node.size) - (np.cumsum(count) - count)[node]
    signature = np.zeros((n, width + 1), np.int64)  # [batch, sets + 1 ascending, 0...]
    signature[:, 0] = batch_of
    signature[node, slot + 1] = set_id + 1
    rows = signature[members]
    new_row = np.ones(members.size, bool)
    bound = (int(batch_of.max(initial=0)) + 1) * num_sets**width
    if bound < 2**63:  # a row packs into one int64 key
        key = rows[:, 0]
        for column in range(1, width + 1):
            key = key * num_sets + rows[:, column]
        order = _argsort(key, bound)  # rows sorted, equal rows in ``members`` order
        key = key[order]
        new_row[1:] = key[1:] != key[:-1]
    else:
        order = np.lexsort(rows.T[::-1])
        rows = rows[order]
        new_row[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    group = np.cumsum(new_row) - 1  # sorted-row group of each entry of ``order``
    first = order[new_row]  # first member of every group
    renumber = np.empty(first.size, np.int64)
    renumber[np.argsort(first, kind="stable")] = np.arange(first.size)
    cls = np.full(n, -1, np.int64)
    cls[members[order]] = renumber[group]
    return cls, int(first.size)


def _twin_classes_sparse(
    batch_of: np.ndarray, node: np.ndarray, set_id: np.ndarray, count: np.ndarray, members: np.ndarray
) -> tuple[np.ndarray, int]:
    """:func:`_twin_classes` in memory linear in the memberships: the same classes, the same numbers.

    Refines a label per member one set position at a time: first its batch;
    at position ``j``, the members in more than ``j`` sets take a fresh label
    per distinct (label, ``j``-th set); the others keep theirs. Two members
    end with one label exactly when their batches and set lists are equal.
    Each position costs work in the members that reach it, so the whole is
    linear in the memberships (``node``, ``set_id``: sorted by node, each
    node's sets ascending; ``count``: sets per node).
    """
    n = batch_of.shape[0]
    start = np.cumsum(count) - count
    _, label = np.unique(batch_of[members], return_inverse=True)
    label = label.astype(np.int64)
    depth = count[members]
    active = np.flatnonzero(depth > 0)
    span, top, j = int(set_id.max(initial=0)) + 1, int(label.max(initial=-1)) + 1, 0
    while active.size:
        key = label[active] * span + set_id[start[members[active]] + j]
        _, fresh = np.unique(key, return_inverse=True)
        label[active] = top + fresh
        top += int(fresh.max()) + 1
        j += 1
        active = active[depth[active] > j]
    # classes numbered in the order of first appearance in ``members``
    _, first, group = np.unique(label, return_index=True, return_inverse=True)
    renumber = np.empty(first.size, np.int64)
    renumber[np.argsort(first, kind="stable")] = np.arange(first.size)
    cls = np.full(n, -1, np.int64)
    cls[members] = renumber[group.reshape(-1)]
    return cls, int(first.size)


def _batches_cut(set_id: np.ndarray, batch: np.ndarray, num_sets: int, widths: np.ndarray) -> np.ndarray:
    """int ``[num_sets]``: per set of distinct nodes (entry ``k`` in set ``set_id[k]``, a node of batch
    ``batch[k]``), the batches it holds some but not all nodes of (``widths``: nodes per batch)."""
    num_batches = widths.size
    pair, count = _counted(set_id.astype(np.int64) * num_batches + batch, num_sets * num_batches)
    return np.bincount(pair[count < widths[pair % num_batches]] // num_batches, minlength=num_sets)


def _distinct_per_set(item: np.ndarray, set_id: np.ndarray, num_sets: int) -> list[list[int]]:
    """The distinct items (non-negative ints) of every set (``item[k]`` lies in set ``set_id[k]``), as lists."""
    span = int(item.max(initial=0)) + 1
    key, _ = _counted(set_id.astype(np.int64) * span + item, num_sets * span)
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
    graph = ensure_valid(graph, "one Graph to plan a layout for")
    t0 = time.perf_counter()
    n = graph.num_nodes
    batch_of = schedule.batch_of_node(n)
    lists = _flat_operand_lists(graph, schedule, variadic)
    num_lists = lists.batch.size
    ptr = lists.ptr
    list_sizes = np.diff(ptr)
    entry_list = np.repeat(np.arange(num_lists), list_sizes)

    # per list: does it read a node twice (then it is never a slice), does it read one producer batch
    entry, times = _counted(entry_list * max(n, 1) + lists.arg, num_lists * max(n, 1))
    distinct = np.ones(num_lists, bool)
    distinct[entry[times > 1] // max(n, 1)] = False
    producer = batch_of[lists.arg]
    one_producer = np.zeros(num_lists, bool)
    if num_lists:
        one_producer = np.minimum.reduceat(producer, ptr[:-1]) == np.maximum.reduceat(producer, ptr[:-1])

    # universe order: by batch, then instances largest first, then id
    sizes = np.bincount(graph.instance, minlength=graph.num_instances)
    inst_rank = np.empty(graph.num_instances, np.int64)
    inst_rank[np.argsort(-sizes, kind="stable")] = np.arange(graph.num_instances)
    lane_rank = inst_rank[graph.instance]
    num_ranks = max(graph.num_instances, 1)
    initial = _argsort(batch_of.astype(np.int64) * num_ranks + lane_rank, schedule.num_batches * num_ranks)
    # batches none of whose nodes is ever read (loss nodes, say) only need to be consecutive: they stay
    # out of the PQ-tree and follow its order, batch by batch
    is_operand = np.zeros(n, bool)
    is_operand[lists.arg] = True
    read_batch = np.bincount(batch_of, weights=is_operand, minlength=schedule.num_batches) > 0
    in_tree = read_batch[batch_of[initial]]
    members = initial[in_tree]

    # sets offered to the PQ-tree, largest first: lists of two or more distinct nodes (a shorter one is
    # always a slice; one over every node in the tree is always consecutive). Batches are consecutive, so
    # a consecutive set cuts at most two of them (at its ends; it holds the others whole or not at all):
    # one that cuts three or more is refused without a reduction. The tree runs over classes of twin
    # nodes with respect to the sets it is offered.
    accepted = (list_sizes < 2) & distinct
    accepted |= distinct & (list_sizes == members.size)
    offer = distinct & ~accepted
    in_offered = offer[entry_list]
    offer[_batches_cut(entry_list[in_offered], batch_of[lists.arg[in_offered]], num_lists, schedule.widths) > 2] = False
    offered = [i for i in np.argsort(-list_sizes, kind="stable").tolist() if offer[i]]
    in_offered = offer[entry_list]
    node_in_set, set_of_node = lists.arg[in_offered], entry_list[in_offered]
    cls, num_classes = _twin_classes(batch_of, node_in_set, set_of_node, members)
    # every batch is consecutive: members come batch by batch, so each batch's classes are a range
    class_batch = np.empty(num_classes, np.int64)
    class_batch[cls[members]] = batch_of[members]
    bounds = np.searchsorted(class_batch, np.arange(schedule.num_batches + 1)).tolist()
    tree = PQTree.from_blocks(range(num_classes), [range(s, e) for s, e in zip(bounds[:-1], bounds[1:])])
    list_classes = _distinct_per_set(cls[node_in_set], set_of_node, num_lists)
    for i in offered:
        accepted[i] = tree.reduce(list_classes[i])
    class_rank = np.empty(num_classes, np.int64)
    class_rank[np.asarray(tree.frontier(), dtype=np.int64)] = np.arange(num_classes)
    members = members[_argsort(class_rank[cls[members]], num_classes)]
    position = np.empty(n, np.int64)
    position[np.concatenate([members, initial[~in_tree]])] = np.arange(n)

    position = _align(position, schedule, lists, accepted, one_producer, lane_rank)
    return LayoutPlan(
        position=position.astype(np.int32),
        num_operands=num_lists,
        accepted=int(accepted.sum()),
        dropped=int((~accepted).sum()),
        seconds=time.perf_counter() - t0,
        _operands=(schedule, lists),
        fingerprint=(graph_fingerprint(graph), schedule_fingerprint(schedule)),
    )


def _align(position, schedule, lists, accepted, one_producer, lane_rank) -> np.ndarray:
    """Step 3: lane orders and operand orders, batch by batch in schedule order.

    For every batch that reads something: its lanes follow its anchor (the
    accepted, consecutive operand whose rows are most pinned already), else
    instances largest first (``lane_rank``); then every accepted operand read
    from one producer batch and not pinned yet is permuted to follow the
    lanes. Rows only move inside a batch or inside an accepted operand set. A
    batch's own nodes are never pinned before its turn (only the batches that
    read them pin them, and those come later).

    A batch that reads no accepted operand has no anchor and permutes
    nothing, so all such batches are ordered at once first (vectorised). The
    others go one by one in a compiled kernel
    (:func:`~edbatch_jax.layout.kernels.align_batches`).
    """
    pos = position.copy()
    reads = np.bincount(lists.batch, minlength=schedule.num_batches) > 0
    reads_accepted = np.bincount(lists.batch, weights=accepted, minlength=schedule.num_batches) > 0
    _order_lanes(pos, schedule, lane_rank, reads & ~reads_accepted)
    return align_batches(
        pos,
        np.flatnonzero(reads_accepted),
        schedule.node_order,
        schedule.batch_ptr,
        np.searchsorted(lists.batch, np.arange(schedule.num_batches + 1)),
        lists.ptr,
        lists.lane,
        lists.arg,
        accepted,
        accepted & one_producer,
        lane_rank.astype(np.int64),
    )


def _order_lanes(pos: np.ndarray, schedule: Schedule, lane_rank: np.ndarray, batches: np.ndarray) -> None:
    """Re-orders, in place, the rows of every batch in the mask ``batches`` by ``lane_rank``, ties by row.

    A batch's rows are consecutive; they stay the same rows.
    """
    in_batches = np.repeat(batches, schedule.widths)
    if not in_batches.any():
        return
    nodes = schedule.node_order[in_batches]
    widths = schedule.widths[batches]
    starts = np.cumsum(widths) - widths
    batch = np.repeat(np.arange(widths.size), widths)
    rows = pos[nodes]
    first = np.minimum.reduceat(rows, starts)
    offset = rows - first[batch]
    ranks, span = lane_rank[nodes], int(widths.max())
    num_ranks = int(ranks.max()) + 1
    if widths.size * num_ranks * span < 2**63:
        order = _argsort((batch * num_ranks + ranks) * span + offset, widths.size * num_ranks * span)
    else:
        order = np.lexsort((offset, ranks, batch))
    pos[nodes[order]] = first[batch] + np.arange(nodes.size) - starts[batch]


def _count_gathers(position: np.ndarray, schedule: Schedule, lists: _OperandLists) -> tuple[int, int]:
    """Operand lists that are not slices under ``position`` (their rows, entries in lane order, are not
    a run), and the rows they read."""
    num_lists = lists.batch.size
    if not num_lists:
        return 0, 0
    sizes = np.diff(lists.ptr)
    entry_list = np.repeat(np.arange(num_lists), sizes)
    batch = lists.batch[entry_list]
    reader = schedule.node_order[schedule.batch_ptr[batch] + lists.lane]
    # a batch's rows are consecutive, so a lane's rank is its row minus the batch's first row
    first_row = np.minimum.reduceat(position[schedule.node_order], schedule.batch_ptr[:-1])
    lane_rank = position[reader] - first_row[batch]
    order = np.argsort(entry_list * (int(schedule.widths.max()) + 1) + lane_rank, kind="stable")
    rows, entry_list = position[lists.arg[order]], entry_list[order]
    broken = np.zeros(num_lists, bool)
    broken[entry_list[1:][(np.diff(rows) != 1) & (entry_list[1:] == entry_list[:-1])]] = True
    return int(broken.sum()), int(sizes[broken].sum())
