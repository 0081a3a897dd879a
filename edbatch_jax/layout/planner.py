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
   operand will be gathered).
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
from typing import Collection

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


def operand_lists(graph: Graph, schedule: Schedule, variadic: Collection[str] | None = None):
    """The operand lists of every batch, as the engine reads them.

    For a fixed-arity op, one list per argument position (the ``p``-th
    argument of every lane); for a variable-arity op, one flat list (all
    arguments of every lane, lane by lane). ``variadic`` names the
    variable-arity op types; by default a type whose nodes do not all have
    the same arity.

    Returns:
      ``[(batch index, lane_of_entry int32 [M], args int32 [M]), ...]``, the
      lanes in the schedule's node order.
    """
    arity = graph.arity
    if variadic is None:
        lo = np.full(graph.num_types, np.iinfo(np.int32).max)
        hi = np.full(graph.num_types, -1)
        np.minimum.at(lo, graph.node_type, arity)
        np.maximum.at(hi, graph.node_type, arity)
        var = lo != hi
    else:
        var = np.array([t in variadic for t in graph.op_types])
    out = []
    for b, (t, s, e) in enumerate(zip(schedule.batch_type, schedule.batch_ptr[:-1], schedule.batch_ptr[1:])):
        nodes = schedule.node_order[s:e]
        if var[t]:
            flat, seg = _csr_rows(graph.arg_ptr, graph.arg_idx, nodes)
            if flat.size:
                out.append((b, seg.astype(np.int32), flat.astype(np.int32)))
        else:
            k = int(arity[nodes[0]])
            base = graph.arg_ptr[nodes]
            lanes = np.arange(nodes.size, dtype=np.int32)
            for p in range(k):
                out.append((b, lanes, graph.arg_idx[base + p].astype(np.int32)))
    return out


def _is_run(pos: np.ndarray) -> bool:
    """Whether positions are consecutive and increasing."""
    return bool(pos.size == 0 or np.all(np.diff(pos) == 1))


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
    lists = operand_lists(graph, schedule, variadic)

    # universe order: by batch, then instances largest first, then id
    sizes = np.bincount(graph.instance, minlength=graph.num_instances)
    inst_rank = np.empty(graph.num_instances, np.int64)
    inst_rank[np.lexsort((np.arange(graph.num_instances), -sizes))] = np.arange(graph.num_instances)
    initial = np.lexsort((np.arange(n), inst_rank[graph.instance], batch_of))
    # batches none of whose nodes is ever read (loss nodes, say) only need to be consecutive: they stay
    # out of the PQ-tree and follow its order, batch by batch
    is_operand = np.zeros(n, bool)
    for _, _, args in lists:
        is_operand[args] = True
    read_batch = np.bincount(batch_of, weights=is_operand, minlength=schedule.num_batches) > 0
    in_tree = read_batch[batch_of[initial]]
    tree = PQTree(initial[in_tree].tolist())
    for b in np.flatnonzero(read_batch).tolist():
        tree.reduce(schedule.node_order[schedule.batch_ptr[b] : schedule.batch_ptr[b + 1]].tolist())
    accepted = np.zeros(len(lists), bool)
    by_size = sorted(range(len(lists)), key=lambda i: -lists[i][2].size)
    for i in by_size:
        args = lists[i][2]
        if np.unique(args).size != args.size:
            continue
        accepted[i] = args.size < 2 or tree.reduce(args.tolist())
    position = np.empty(n, np.int64)
    position[np.concatenate([np.asarray(tree.frontier(), dtype=np.int64), initial[~in_tree]])] = np.arange(n)

    # alignment, in schedule order
    pinned = np.zeros(n, bool)
    per_batch: dict[int, list[int]] = {}
    for i, (b, _, _) in enumerate(lists):
        per_batch.setdefault(b, []).append(i)
    for b, (s, e) in enumerate(zip(schedule.batch_ptr[:-1], schedule.batch_ptr[1:])):
        nodes = schedule.node_order[s:e]
        own = per_batch.get(b, [])
        lane_key = None
        # anchor: the accepted, consecutive operand whose order is most fixed already
        anchors = [i for i in own if accepted[i] and pinned[lists[i][2]].any() and _is_run(np.sort(position[lists[i][2]]))]
        if anchors:
            i = max(anchors, key=lambda i: pinned[lists[i][2]].mean())
            _, lane, args = lists[i]
            first = np.full(nodes.size, np.iinfo(np.int64).max)
            np.minimum.at(first, lane, position[args])
            lane_key = first
            pinned[args] = True
        changed = lane_key is not None
        if lane_key is None and own and not pinned[nodes].any():
            lane_key = inst_rank[graph.instance[nodes]]  # free lanes: instances largest first
        if lane_key is not None:
            slots = np.sort(position[nodes])
            position[nodes[np.lexsort((position[nodes], lane_key))]] = slots
        lane_pos = np.empty(nodes.size, np.int64)
        lane_pos[np.argsort(position[nodes], kind="stable")] = np.arange(nodes.size)
        for i in own:
            _, lane, args = lists[i]
            if not accepted[i] or pinned[args].any():
                continue
            if np.unique(batch_of[args]).size != 1:
                continue
            order = np.lexsort((np.arange(args.size), lane_pos[lane]))
            position[args[order]] = np.sort(position[args])
            pinned[args] = True
            changed = True
        if changed:
            pinned[nodes] = True

    # what the order achieves
    gathers = rows = 0
    for b, lane, args in lists:
        s, e = schedule.batch_ptr[b], schedule.batch_ptr[b + 1]
        nodes = schedule.node_order[s:e]
        lane_pos = np.empty(nodes.size, np.int64)
        lane_pos[np.argsort(position[nodes], kind="stable")] = np.arange(nodes.size)
        order = np.lexsort((np.arange(args.size), lane_pos[lane]))
        if not _is_run(position[args[order]]):
            gathers += 1
            rows += args.size
    return LayoutPlan(
        position=position.astype(np.int32),
        num_operands=len(lists),
        num_gathers=gathers,
        gathered_rows=rows,
        accepted=int(accepted.sum()),
        dropped=int((~accepted).sum()),
        seconds=time.perf_counter() - t0,
    )
