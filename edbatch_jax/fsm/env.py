"""The batching MDP as fixed-shape JAX arrays (ED-Batch section 4).

A :class:`BatchingEnv` holds one graph (or, stacked, several graphs padded to
common sizes) in a form where one environment step costs work proportional to
the batch it runs, not to the graph:

* ``children[u]``: the consumers of node ``u`` (one entry per argument edge),
  padded with the sentinel ``N``;
* ``near_children[u]``: the same-type nodes that have ``u`` among their
  maximal same-type ancestors (see
  :func:`~edbatch_jax.scheduling.typewise.maximal_same_type_edges`), padded
  with ``N``;
* per-type ready queues in one flat array: type ``t`` owns
  ``queue[offset[t] : offset[t] + capacity[t]]``; every node is appended to
  its type's queue exactly once, when its last argument has run, so the ready
  nodes of ``t`` are ``queue[offset[t] + head[t] : offset[t] + tail[t]]``.

An :class:`EnvState` keeps, per node, the arguments not yet run (``pending``)
and the maximal same-type ancestors not yet run (``near_pending``), and per
type the queue pointers and ``|TF_t|``. The action "type ``a``" runs every
ready node of ``a`` in chunks of :data:`CHUNK` nodes: it decrements the
counters of their children, appends the children that became ready to their
queues (their places found by a one-hot over the types, or pairwise among the
chunk's consumers when the types outnumber them: hundreds of op types cost a
step no more), and counts the nodes that entered ``TF_a``. Its reward is
``-1 + |F_a| / |TF_a|`` (counts before the batch runs): 0 exactly for a batch
that completes its type-wise frontier. Ready unbatchable nodes are forced
moves, each one batch, taken before any decision.

Op types are matched by name: :func:`make_env` can number a graph's types
after a given list of names (:func:`union_op_types` of several graphs, in
order of first appearance), and :func:`stack_envs` brings environments whose
graphs list their types in different orders, or lack some, onto one
numbering. A type a graph lacks has an empty queue and never becomes ready.

:class:`ReferenceEnv` is the same MDP on the host, driven by the incremental
:class:`~edbatch_jax.scheduling.TypewiseFrontier` (on the unreduced nearest
ancestors); tests check that the two agree step by step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.fsm import encoding as enc
from edbatch_jax.graph import Graph
from edbatch_jax.graph.analysis import children as graph_children
from edbatch_jax.graph.analysis import lower_bound
from edbatch_jax.graph.csr import csr_by_source
from edbatch_jax.scheduling.typewise import TypewiseFrontier, maximal_same_type_edges

__all__ = [
    "CHUNK",
    "BatchingEnv",
    "EnvState",
    "make_env",
    "stack_envs",
    "union_op_types",
    "reset",
    "observe",
    "step",
    "ReferenceEnv",
]

CHUNK = 8
"""Nodes processed per inner iteration of :func:`step`."""

_NEVER = 1 << 30  # pending count of the sentinel node: never reaches zero


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[
        "node_type",
        "arity",
        "children",
        "near_children",
        "near_count",
        "queue_offset",
        "initial_queue",
        "initial_tail",
        "unbatchable",
        "num_valid",
        "lower_bound",
    ],
    meta_fields=["op_types"],
)
@dataclasses.dataclass(frozen=True, eq=False)
class BatchingEnv:
    """One graph (or a stack of graphs, leading axis ``G``) as dense arrays.

    Attributes:
      node_type: int32 ``[..., N + 1]`` op type id; the sentinel ``N`` has type 0.
      arity: int32 ``[..., N + 1]`` arguments per node (sentinel: never ready).
      children: int32 ``[..., N + 1, D]`` consumers, padded with ``N``.
      near_children: int32 ``[..., N + 1, D2]``, padded with ``N``.
      near_count: int32 ``[..., N + 1]`` maximal same-type ancestors per node.
      queue_offset: int32 ``[..., K]`` start of each type's queue.
      initial_queue: int32 ``[..., Q + 1]`` queues holding the nodes without
        arguments (slot ``Q`` is a write sink).
      initial_tail: int32 ``[..., K]`` their lengths.
      unbatchable: bool ``[..., K]``.
      num_valid: int32 ``[...]`` real nodes.
      lower_bound: int32 ``[...]``.
      op_types: static op type names.
    """

    node_type: jnp.ndarray
    arity: jnp.ndarray
    children: jnp.ndarray
    near_children: jnp.ndarray
    near_count: jnp.ndarray
    queue_offset: jnp.ndarray
    initial_queue: jnp.ndarray
    initial_tail: jnp.ndarray
    unbatchable: jnp.ndarray
    num_valid: jnp.ndarray
    lower_bound: jnp.ndarray
    op_types: tuple[str, ...]

    @property
    def num_types(self) -> int:
        return len(self.op_types)

    @property
    def num_nodes(self) -> int:
        """Padded node count ``N`` (without the sentinel)."""
        return int(self.node_type.shape[-1]) - 1


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["pending", "near_pending", "queue", "head", "tail", "typewise", "remaining", "num_batches", "scratch"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class EnvState:
    """Execution progress of one graph.

    Attributes:
      pending: int32 ``[N + 1]`` arguments not yet run.
      near_pending: int32 ``[N + 1]`` maximal same-type ancestors not yet run.
      queue: int32 ``[Q + 1]`` per-type ready queues.
      head, tail: int32 ``[K]``: the ready nodes of type ``t`` are
        ``queue[offset[t] + head[t] : offset[t] + tail[t]]``.
      typewise: int32 ``[K]``, ``|TF_t|``.
      remaining: int32, nodes not yet run.
      num_batches: int32, batches run so far (forced moves included).
      scratch: int32 ``[N + 1]`` work space for de-duplication.
    """

    pending: jnp.ndarray
    near_pending: jnp.ndarray
    queue: jnp.ndarray
    head: jnp.ndarray
    tail: jnp.ndarray
    typewise: jnp.ndarray
    remaining: jnp.ndarray
    num_batches: jnp.ndarray
    scratch: jnp.ndarray

    @property
    def ready_counts(self) -> jnp.ndarray:
        return self.tail - self.head


def _dense_rows(ptr: np.ndarray, idx: np.ndarray, rows: int, width: int, fill: int) -> np.ndarray:
    """CSR rows as a dense ``[rows, width]`` int32 array padded with ``fill``."""
    counts = np.diff(ptr)
    out = np.full((rows, width), fill, dtype=np.int32)
    r = np.repeat(np.arange(counts.shape[0]), counts)
    c = np.arange(idx.shape[0]) - np.repeat(ptr[:-1], counts)
    out[r, c] = idx
    return out


def union_op_types(names: Sequence[Sequence[str]]) -> tuple[str, ...]:
    """Every op type name of several graphs once, in order of first appearance.

    Args:
      names: the ``op_types`` of each graph (e.g. ``[g.op_types for g in graphs]``).

    Returns:
      The union as a tuple: the first list's names in its order, then the new
      names of the second, and so on (graphs that all list the same names in
      the same order keep that order).
    """
    return tuple(dict.fromkeys(name for group in names for name in group))


def _type_map(graph_types: Sequence[str], op_types: Sequence[str]) -> np.ndarray:
    """int32 ``[K_graph]``: the position in ``op_types`` of every type of ``graph_types``.

    Raises:
      ValueError: a name of ``graph_types`` missing from ``op_types`` (named).
    """
    index = {name: i for i, name in enumerate(op_types)}
    missing = [name for name in graph_types if name not in index]
    if missing:
        raise ValueError(f"op types {missing} are not among the environment's op types {list(op_types)}")
    return np.array([index[name] for name in graph_types], dtype=np.int32).reshape(-1)


def make_env(graph: Graph, op_types: Sequence[str] | None = None) -> BatchingEnv:
    """The environment of ``graph`` (host-side NumPy; arrays are NumPy until used).

    Args:
      graph: the graph.
      op_types: the op type names the environment numbers its actions by
        (default: ``graph.op_types``). Every type of the graph must be among
        them, in any order; types the graph lacks never become ready.

    Raises:
      GraphError: the graph has a cycle (from the lower bound computation).
      ValueError: ``op_types`` lacks a type of the graph (named) or repeats a name.
    """
    names = tuple(graph.op_types if op_types is None else op_types)
    if len(set(names)) != len(names):
        raise ValueError(f"op_types {list(names)} repeats a name")
    remap = _type_map(graph.op_types, names)  # graph type id -> environment type id
    n, k = graph.num_nodes, len(names)
    lb = lower_bound(graph)
    types = remap[np.asarray(graph.node_type, np.int64)]
    child_ptr, child_idx = graph_children(graph)
    src, dst = maximal_same_type_edges(graph)
    near_ptr, near_dst = csr_by_source(src, dst, n)
    d = max(int(np.diff(child_ptr).max(initial=0)), 1)
    d2 = max(int(np.diff(near_ptr).max(initial=0)), 1)
    capacity = np.bincount(types, minlength=k).astype(np.int32)
    unbatchable = np.zeros(k, dtype=bool)
    unbatchable[remap] = graph.type_is_unbatchable
    return _finish_env(
        names,
        types,
        graph.arity,
        child_ptr,
        child_idx,
        near_ptr,
        near_dst,
        np.bincount(dst, minlength=n),
        capacity,
        d,
        d2,
        unbatchable,
        lb,
    )


def _finish_env(
    op_types, types, arity, child_ptr, child_idx, near_ptr, near_dst, near_count, capacity, d, d2, unbatchable, lb
) -> BatchingEnv:
    n, k = types.shape[0], len(op_types)
    offset = np.concatenate([[0], np.cumsum(capacity)[:-1]]).astype(np.int32)
    q = int(capacity.sum())
    queue = np.full(q + 1, n, dtype=np.int32)
    start = np.flatnonzero(arity == 0)
    t0 = types[start]
    order = np.argsort(t0, kind="stable")
    start, t0 = start[order], t0[order]
    tail = np.bincount(t0, minlength=k).astype(np.int32)
    rank = np.arange(start.size) - np.repeat(np.cumsum(tail) - tail, tail)
    queue[offset[t0] + rank] = start
    sentinel = lambda x, v: np.concatenate([np.asarray(x, np.int32), [v]]).astype(np.int32)
    return BatchingEnv(
        node_type=sentinel(types, 0),
        arity=sentinel(arity, _NEVER),
        children=_dense_rows(np.r_[child_ptr, child_ptr[-1]], child_idx, n + 1, d, n),
        near_children=_dense_rows(np.r_[near_ptr, near_ptr[-1]], near_dst, n + 1, d2, n),
        near_count=sentinel(near_count, _NEVER),
        queue_offset=offset,
        initial_queue=queue,
        initial_tail=tail,
        unbatchable=np.asarray(unbatchable, bool),
        num_valid=np.int32(n),
        lower_bound=np.int32(lb),
        op_types=tuple(op_types),
    )


def _pad_env(
    env: BatchingEnv, n: int, d: int, d2: int, capacity: np.ndarray, op_types: Sequence[str] | None = None
) -> BatchingEnv:
    """Re-lays an environment out for ``n`` nodes, widths ``d``/``d2`` and queue capacities.

    ``op_types`` (default: the environment's) renumbers the types by name;
    ``capacity`` (int32 ``[K]``) is in its order.
    """
    names = env.op_types if op_types is None else tuple(op_types)
    remap = _type_map(env.op_types, names)  # old type id -> new type id
    k = len(names)
    n0 = env.num_nodes
    renode = lambda x: np.where(x == n0, n, x).astype(np.int32)

    def nodes(x, fill, width=None):
        x = np.asarray(x)
        shape = (n + 1,) if width is None else (n + 1, width)
        out = np.full(shape, fill, dtype=np.int32)
        if width is None:
            out[:n0] = x[:n0]
        else:
            out[:n0, : x.shape[1]] = renode(x[:n0])
        return out

    offset = np.concatenate([[0], np.cumsum(capacity)[:-1]]).astype(np.int32)
    q = int(capacity.sum())
    queue = np.full(q + 1, n, dtype=np.int32)
    old_q, old_off = np.asarray(env.initial_queue), np.asarray(env.queue_offset)
    old_tail = np.asarray(env.initial_tail)
    # every queued node keeps its rank within its type's queue
    t_of = np.repeat(np.arange(old_tail.shape[0]), old_tail)
    rank = np.arange(t_of.shape[0]) - np.repeat(np.cumsum(old_tail) - old_tail, old_tail)
    queue[offset[remap[t_of]] + rank] = old_q[old_off[t_of] + rank]
    tail = np.zeros(k, dtype=np.int32)
    tail[remap] = old_tail
    unbatchable = np.zeros(k, dtype=bool)
    unbatchable[remap] = np.asarray(env.unbatchable)
    node_type = nodes(env.node_type, 0)
    node_type[:n0] = remap[node_type[:n0]]
    arity = nodes(env.arity, _NEVER)
    arity[n] = _NEVER
    near_count = nodes(env.near_count, _NEVER)
    near_count[n] = _NEVER
    return BatchingEnv(
        node_type=node_type,
        arity=arity,
        children=nodes(env.children, n, d),
        near_children=nodes(env.near_children, n, d2),
        near_count=near_count,
        queue_offset=offset,
        initial_queue=queue,
        initial_tail=tail,
        unbatchable=unbatchable,
        num_valid=np.int32(env.num_valid),
        lower_bound=np.int32(env.lower_bound),
        op_types=names,
    )


def stack_envs(envs: Sequence[BatchingEnv]) -> BatchingEnv:
    """Pads environments to common sizes and stacks them (leading axis ``G``).

    Op types are matched by name: the stack's ``op_types`` is
    :func:`union_op_types` of the environments' (environments that all list the
    same names in the same order keep that order), and each environment's
    type ids are mapped onto it. A type an environment lacks has an empty
    queue there and never becomes ready.

    Raises:
      ValueError: no environments.
    """
    if not envs:
        raise ValueError("stack_envs needs at least one environment")
    names = union_op_types([e.op_types for e in envs])
    n = max(e.num_nodes for e in envs)
    d = max(np.asarray(e.children).shape[1] for e in envs)
    d2 = max(np.asarray(e.near_children).shape[1] for e in envs)
    capacity = np.zeros((len(envs), len(names)), dtype=np.int32)
    for i, e in enumerate(envs):
        own = np.diff(np.r_[np.asarray(e.queue_offset), np.asarray(e.initial_queue).shape[0] - 1])
        capacity[i, _type_map(e.op_types, names)] = own
    capacity = capacity.max(axis=0)
    padded = [_pad_env(e, n, d, d2, capacity, names) for e in envs]
    return jax.tree.map(lambda *xs: np.stack(xs), *padded)


def reset(env: BatchingEnv) -> EnvState:
    """The start state of one (unstacked) environment. Jittable."""
    near_count = jnp.asarray(env.near_count)
    top = (near_count == 0).astype(jnp.int32)
    k = env.num_types
    return EnvState(
        pending=jnp.asarray(env.arity),
        near_pending=near_count,
        queue=jnp.asarray(env.initial_queue),
        head=jnp.zeros(k, jnp.int32),
        tail=jnp.asarray(env.initial_tail),
        typewise=jax.ops.segment_sum(top, jnp.asarray(env.node_type), num_segments=k),
        remaining=jnp.asarray(env.num_valid),
        num_batches=jnp.zeros((), jnp.int32),
        scratch=jnp.zeros(near_count.shape[0], jnp.int32),
    )


def observe(env: BatchingEnv, state: EnvState) -> tuple[jnp.ndarray, jnp.ndarray]:
    """``(ready_counts int32 [K], typewise_counts int32 [K])``. Jittable."""
    del env
    return state.ready_counts, state.typewise


def _one_of_each(ids: jnp.ndarray, scratch: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """bool mask keeping one occurrence of every value in ``ids``.

    ``scratch`` (int32, one slot per possible value) needs no clearing: every
    slot read was just written. Returns ``(mask, scratch)``.
    """
    pos = jnp.arange(ids.shape[0], dtype=jnp.int32)
    scratch = scratch.at[ids].set(pos)  # duplicates: exactly one write survives
    return scratch[ids] == pos, scratch


def step(env: BatchingEnv, state: EnvState, action, num_batches=1) -> tuple[EnvState, jnp.ndarray]:
    """Runs every ready node of type ``action``. Jittable.

    Args:
      env, state: one (unstacked) environment and its state.
      action: int32 op type id.
      num_batches: batches this step counts for (a forced move of ``m``
        unbatchable nodes counts ``m``).

    Returns:
      ``(next state, reward float32)``, reward ``-1 + |F_a| / |TF_a|``. An
      action with no ready node runs nothing (reward -1).
    """
    env = jax.tree.map(jnp.asarray, env)  # eager calls may pass NumPy arrays
    n = env.node_type.shape[-1] - 1
    k = env.num_types
    size = state.tail[action] - state.head[action]
    base = env.queue_offset[action] + state.head[action]
    reward = (-1.0 + size / jnp.maximum(state.typewise[action], 1)).astype(jnp.float32)
    lane = jnp.arange(CHUNK)
    sink = state.queue.shape[0] - 1

    def body(carry):
        i, pending, near_pending, queue, tail, gained, scratch = carry
        valid = i + lane < size
        nodes = jnp.where(valid, queue[jnp.minimum(base + i + lane, sink)], n)
        # consumers: count down their pending arguments; enqueue those now ready
        ch = env.children[nodes].reshape(-1)
        pending = pending.at[ch].add(-1)
        once, scratch = _one_of_each(ch, scratch)
        new = (pending[ch] == 0) & once
        ct = env.node_type[ch]
        # each new node's rank among the new nodes of its type before it: one-hot over the types when they are
        # few, pairwise over the chunk's consumers when the types outnumber them (hundreds of op types)
        if k <= ch.shape[0]:
            hot = (ct[:, None] == jnp.arange(k)[None, :]) & new[:, None]
            before = jnp.take_along_axis(jnp.cumsum(hot, axis=0) - 1, ct[:, None], axis=1)[:, 0]
            added = jnp.sum(hot, axis=0).astype(jnp.int32)
        else:
            earlier = jnp.arange(ch.shape[0])[None, :] < jnp.arange(ch.shape[0])[:, None]
            before = jnp.sum((ct[:, None] == ct[None, :]) & new[None, :] & earlier, axis=1)
            added = jnp.zeros(k, jnp.int32).at[ct].add(new.astype(jnp.int32))
        pos = env.queue_offset[ct] + tail[ct] + before
        queue = queue.at[jnp.where(new, pos, sink)].set(ch)
        tail = tail + added
        # same-type descendants: count down their maximal ancestors; count new TF members
        nc = env.near_children[nodes].reshape(-1)
        near_pending = near_pending.at[nc].add(-1)
        once, scratch = _one_of_each(nc, scratch)
        gained = gained + jnp.sum((near_pending[nc] == 0) & once & (nc < n))
        return i + CHUNK, pending, near_pending, queue, tail, gained, scratch

    init = (
        jnp.zeros((), jnp.int32),
        state.pending,
        state.near_pending,
        state.queue,
        state.tail,
        jnp.zeros((), jnp.int32),
        state.scratch,
    )
    _, pending, near_pending, queue, tail, gained, scratch = jax.lax.while_loop(lambda c: c[0] < size, body, init)
    # the sentinel's counters only ever decrease from _NEVER; the sink slot is never read
    head = state.head.at[action].add(size)
    typewise = state.typewise.at[action].add(gained.astype(jnp.int32) - size)
    new_state = EnvState(
        pending=pending,
        near_pending=near_pending,
        queue=queue,
        head=head,
        tail=tail,
        typewise=typewise,
        remaining=state.remaining - size,
        num_batches=state.num_batches + num_batches,
        scratch=scratch,
    )
    return new_state, reward


class ReferenceEnv:
    """The same MDP on the host (NumPy), on an incremental type-wise frontier.

    Attributes:
      num_batches: batches run so far.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.frontier = TypewiseFrontier(graph, edges="nearest")  # the definition, to cross-check
        self.num_batches = 0
        self._unbatchable = np.flatnonzero(graph.type_is_unbatchable)

    @property
    def done(self) -> bool:
        return self.frontier.done

    @property
    def ready_counts(self) -> np.ndarray:
        return self.frontier.ready_counts.copy()

    @property
    def typewise_counts(self) -> np.ndarray:
        return self.frontier.typewise_counts.copy()

    def state(self, encoding: str) -> tuple[int, ...]:
        """The state tuple of the frontier (:func:`~edbatch_jax.fsm.encoding.state_tuple`)."""
        return enc.state_tuple(self.frontier.ready_counts, encoding, self.frontier.typewise_counts)

    def force(self) -> bool:
        """Runs ready unbatchable nodes one at a time; True if any ran."""
        ran = False
        while self._unbatchable.size and np.any(self.frontier.ready_counts[self._unbatchable] > 0):
            t = int(self._unbatchable[np.argmax(self.frontier.ready_counts[self._unbatchable] > 0)])
            self.frontier.take(t, limit=1)
            self.num_batches += 1
            ran = True
        return ran

    def step(self, action: int) -> float:
        f = self.frontier.ready_counts[action]
        tf = self.frontier.typewise_counts[action]
        self.frontier.take(action)
        self.num_batches += 1
        return -1.0 + f / max(tf, 1)
