"""Tabular Q-learning of the batching FSM, jit-compiled end to end.

The whole loop — episodes over several graphs, epsilon-greedy
exploration, n-step returns, periodic greedy evaluation, best-table selection
and early stopping — is one ``lax.while_loop`` inside one ``jax.jit``. The
defaults are the reference settings (ED-Batch section 4):

==================  =======  =============================================
setting             default  meaning
==================  =======  =============================================
``alpha``           0.4      learning rate
``gamma``           1.0      discount
``epsilon``         0.5      exploration at the first episode ...
``epsilon_decay``   0.9      ... times this after every episode ...
``epsilon_min``     0.05     ... never below this
``n_step``          10       length of the n-step returns
``max_episodes``    1000     episode budget
``eval_every``      50       greedy evaluation period (also at episode 0)
``stop_ratio``      1.01     stop once greedy batches < ``stop_ratio`` x LB
``bootstrap``       True     add ``gamma^n max_a Q(s_{t+n}, a)`` to targets;
                             False reproduces the reference (always 0)
==================  =======  =============================================

Two deliberate differences from the reference code:

* **A correct bootstrap.** The reference's max over Q starts at 0, so with
  rewards <= 0 its bootstrap term is always 0. Here the n-step target is
  ``r_t + ... + r_{t+n-1} + gamma^n max_a Q(s_{t+n}, a)`` over the actions
  available in ``s_{t+n}`` (0 past the end of the episode).
* **Several graphs.** One episode runs every training graph (each its own
  trajectory, one after another); updates are applied graph by graph, step by step.
  The reference learns from the first mini-batch only.

Updates are applied after each episode, in visiting order, with targets
bootstrapped from the table as it stood at the end of the episode; repeated
visits of one (state, action) compose in closed form
``Q <- (1 - alpha)^m Q + sum_i alpha (1 - alpha)^(m - i) G_i``, which equals
applying them one by one.

A "step" here is one decision; forced moves (unbatchable nodes) are taken
before each decision and are not part of a trajectory.

**The sparse Q-table.** The table holds the visited states only, so the
encodings work over any number of op types (the state space of ``sort`` over
256 types could not be enumerated). It is an open-addressing hash table of
``C`` slots (a power of two) in JAX arrays, probed linearly inside the loop
(a window of 32 slots read at once). Its key is the state itself, exactly:
the ready types in rank order (:func:`~edbatch_jax.fsm.encoding.ranked_state`,
int16, ``sort_complete``'s marks included) padded with -1 to a width ``W``,
so a lookup is never wrong (no fingerprints). The slots hold state numbers
(in order of first visit), which index the keys and the Q rows; a Q row is
indexed by position in its key (``q[state, j]`` is the value of the ``j``-th
ready type), so ties in Q go to the lowest position, the rank. A state enters
the table the first time a decision is taken in it (exploring or greedy) with
a zero row, as a dense table's unseen state reads. The table is full at half
its slots (probe sequences stay short). A state with more ready types than
``W``, a state arriving at a full table, or a probe finding neither its key
nor a free slot among 32 sets a flag that ends the loop, and
:func:`run_q_learning` runs it again from the start with a larger table
(capacity x4 or more, width x2 or more, compiled anew): the result depends on
the seed only, never on the table's geometry. Memory: about ``5 C + 3 C W``
bytes (the slots; for ``C / 2`` states the keys, the table, and the best table's greedy actions).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.errors import EdbatchError
from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.env import BatchingEnv, reset, step

__all__ = [
    "INITIAL_CAPACITY",
    "MAX_TABLE_BYTES",
    "QLearningSettings",
    "LearningResult",
    "run_q_learning",
    "greedy_actions",
]


@dataclasses.dataclass(frozen=True)
class QLearningSettings:
    """Hyper-parameters of the Q-learning loop (hashable; static under jit)."""

    alpha: float = 0.4
    gamma: float = 1.0
    epsilon: float = 0.5
    epsilon_decay: float = 0.9
    epsilon_min: float = 0.05
    n_step: int = 10
    max_episodes: int = 1000
    eval_every: int = 50
    stop_ratio: float = 1.01
    bootstrap: bool = True

    def __post_init__(self):
        checks = {
            "alpha": 0 < self.alpha <= 1,
            "gamma": 0 <= self.gamma <= 1,
            "epsilon": 0 <= self.epsilon <= 1,
            "epsilon_decay": 0 < self.epsilon_decay <= 1,
            "epsilon_min": 0 <= self.epsilon_min <= 1,
            "n_step": self.n_step >= 1,
            "max_episodes": self.max_episodes >= 1,
            "eval_every": self.eval_every >= 1,
            "stop_ratio": self.stop_ratio >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid Q-learning settings: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")


INITIAL_CAPACITY = 4096
"""Hash table slots :func:`run_q_learning` starts with (2048 states; it grows as needed)."""

MAX_TABLE_BYTES = 4 << 30
"""Largest table :func:`run_q_learning` grows to (about ``5 C + 3 C W`` bytes: ``C`` slots, ``C / 2`` states of
width ``W``) before it gives up with an :class:`~edbatch_jax.errors.EdbatchError`."""

_MIN_WIDTH = 8
_PROBES = 32  # slots a lookup reads at once; at load <= 1/2 a longer probe sequence is very rare (it grows the table)


@dataclasses.dataclass(frozen=True)
class LearningResult:
    """What the learning loop returns (host NumPy arrays).

    The states are those visited before the best table was taken (by greedy
    evaluation), in order of first visit.

    Attributes:
      states: the visited states as state tuples (:func:`~edbatch_jax.fsm.encoding.state_tuple`).
      ranked: int32 ``[M, W]``, the ready types of each state in rank order
        (:func:`~edbatch_jax.fsm.encoding.ranked_state`), padded with -1.
      actions: int32 ``[M]``, the greedy op type of every state in the best
        table (the largest Q, ties to the lowest rank): the policy.
      q: float32 ``[M, W]``, the final table's rows of these states: ``q[i, j]``
        is the value of running type ``ranked[i, j]`` (modulo ``K``) in state
        ``i`` (0 past the state's ready types). The best table's rows are not
        kept (only its greedy actions), so that no second table is carried.
      episodes: episodes run.
      train_batches: float32 ``[episodes]``, mean batches per graph of each
        (exploring) training episode.
      eval_episodes: int32 ``[E]``, episodes after which the greedy policy ran.
      eval_batches: float32 ``[E]``, its mean batches per graph.
      best_batches: mean batches per graph of the best greedy policy.
      lower_bound: mean lower bound of the training graphs.
      capacity: hash table slots of the run that finished (room for half as many states).
      runs: runs of the loop (more than 1 when the table had to grow).
    """

    states: tuple[tuple[int, ...], ...]
    ranked: np.ndarray
    actions: np.ndarray
    q: np.ndarray
    episodes: int
    train_batches: np.ndarray
    eval_episodes: np.ndarray
    eval_batches: np.ndarray
    best_batches: float
    lower_bound: float
    capacity: int = 0
    runs: int = 1


# ------------------------------------------------------------------------------------------ the hash table
def _mix(x):
    """MurmurHash3's 32-bit finalizer (uint32 in and out)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _hash(row):
    """uint32 hash of an int16 key row (every position mixed with its index)."""
    x = (row.astype(jnp.int32) + 1).astype(jnp.uint32) * jnp.uint32(0x9E3779B1)
    x = x + jnp.arange(row.shape[0], dtype=jnp.uint32) * jnp.uint32(0x7FEB352D)
    return _mix(jnp.sum(_mix(x), dtype=jnp.uint32))


def _empty_table(capacity: int, width: int) -> dict:
    """An empty table of ``capacity`` slots for ``capacity / 2`` states.

    ``index`` int32 ``[C]``: the state in each hash slot (-1: free); ``keys``
    int16 ``[C/2 + 1, W]``: the states in insertion order (row ``C/2`` is a
    write sink); ``count``; the flags ``overflow`` / ``too_wide``, and
    ``widest``, the most ready types seen.
    """
    return dict(
        index=jnp.full(capacity, -1, jnp.int32),
        keys=jnp.full((capacity // 2 + 1, width), -1, jnp.int16),
        count=jnp.zeros((), jnp.int32),
        overflow=jnp.zeros((), bool),
        too_wide=jnp.zeros((), bool),
        widest=jnp.zeros((), jnp.int32),
    )


def _lookup(table: dict, row, insert):
    """The state number of key ``row`` (its row in ``keys`` and in the Q-table), inserted when absent and ``insert``.

    Returns ``(state, table)``. Linear probing from the hash, over a window of
    :data:`_PROBES` slots read at once (no loop): a key is found, or an absent
    key ends on the first free slot. The table is full at half its slots; an
    insertion into a full table, or a probe that finds neither the key nor a
    free slot in its window, sets ``overflow`` instead (the loop stops, and
    runs again with a larger table). An absent key that is not inserted reads
    the sink row (``C/2``: zeros, never a state).
    """
    index, keys = table["index"], table["keys"]
    cap = index.shape[0]
    sink = cap // 2
    start = (_hash(row) & jnp.uint32(cap - 1)).astype(jnp.int32)
    window = (start + jnp.arange(min(_PROBES, cap), dtype=jnp.int32)) & (cap - 1)
    states = index[window]
    taken = states >= 0
    hit = taken & jnp.all(keys[jnp.where(taken, states, sink)] == row[None, :], axis=1)
    end = hit | ~taken
    j = jnp.argmax(end)
    count = table["count"]
    new = insert & ~hit[j]
    full = (count >= sink) | ~end[j]
    do = new & ~full
    state = jnp.where(hit[j], states[j], jnp.where(do, count, sink))
    return state, dict(
        table,
        index=index.at[window[j]].set(jnp.where(do, count, states[j])),
        keys=keys.at[jnp.where(do, count, sink)].set(jnp.where(do, row, keys[sink])),
        count=count + do.astype(jnp.int32),
        overflow=table["overflow"] | (new & full),
    )


# ------------------------------------------------------------------------------------------ episodes
def _episode(env: BatchingEnv, q, table: dict, epsilon, key, encoding: str):
    """One episode on one environment; visited decision states enter ``table``.

    Exploring: a uniform ready type (one uniform draw per type, the largest
    wins); greedy: the largest Q, ties to the lowest rank.

    Returns ``(slots int32 [T], positions int32 [T], rewards float32 [T],
    length int32, num_batches int32, table)`` with ``T = N`` (an upper bound on
    the number of decisions): the state's slot and the action's position in
    its key at every decision.
    """
    t_max = env.node_type.shape[-1] - 1
    k = env.num_types
    width = table["keys"].shape[1]
    k_u, k_noise = jax.random.split(key)
    draws = jax.random.uniform(k_u, (t_max,))
    noise = jax.random.uniform(k_noise, (t_max, k))
    lanes = jnp.arange(width)

    def body(carry):
        state, t, table, slots, positions, rewards = carry
        counts = state.ready_counts
        forced = (counts > 0) & env.unbatchable
        decide = ~jnp.any(forced)
        ranked, rank, m = enc.ranked_state(counts, encoding, state.typewise, max_count=t_max)
        wide = decide & (m > width)
        row = jnp.pad(ranked, (0, max(0, width - k)), constant_values=-1)[:width].astype(jnp.int16)
        slot, table = _lookup(table, row, decide & ~wide)
        table = dict(table, too_wide=table["too_wide"] | wide, widest=jnp.maximum(table["widest"], m))
        random_action = jnp.argmax(jnp.where(counts > 0, noise[t], -1.0))
        greedy_action = ranked[jnp.argmax(jnp.where(lanes < m, q[slot], -jnp.inf))] % k
        choice = jnp.where(draws[t] < epsilon, random_action, greedy_action)
        a = jnp.where(decide, choice, jnp.argmax(forced)).astype(jnp.int32)
        state, reward = step(env, state, a, jnp.where(decide, 1, counts[a]))
        idx = jnp.minimum(t, t_max - 1)
        slots = slots.at[idx].set(jnp.where(decide, slot, slots[idx]))
        positions = positions.at[idx].set(jnp.where(decide, jnp.minimum(rank[a], width - 1), positions[idx]))
        rewards = rewards.at[idx].set(jnp.where(decide, reward, rewards[idx]))
        return state, t + decide.astype(jnp.int32), table, slots, positions, rewards

    init = (
        reset(env),
        jnp.zeros((), jnp.int32),
        table,
        jnp.zeros(t_max, jnp.int32),
        jnp.zeros(t_max, jnp.int32),
        jnp.zeros(t_max, jnp.float32),
    )
    state, length, table, slots, positions, rewards = jax.lax.while_loop(lambda c: c[0].remaining > 0, body, init)
    return slots, positions, rewards, length, state.num_batches, table


def _run_all(envs: BatchingEnv, q, table: dict, epsilon, keys, encoding: str):
    """Episodes on every stacked environment, one after another (``lax.scan``, the table carried along)."""

    def one(table, xs):
        slots, positions, rewards, length, nb, table = _episode(xs[0], q, table, epsilon, xs[1], encoding)
        return table, (slots, positions, rewards, length, nb)

    return jax.lax.scan(one, table, (envs, keys))


def _n_step_update(q, keys, slots, positions, rewards, lengths, settings: QLearningSettings):
    """Applies every trajectory's n-step updates (graph by graph, in step order).

    ``q`` float32 ``[C, W]`` and ``keys`` ``[C, W]`` (-1 past a state's ready
    types); ``slots`` / ``positions`` int32 ``[G, T]`` the visited (state,
    action) pairs.
    """
    g, t_max = slots.shape
    c, w = q.shape
    n, gamma, alpha = settings.n_step, settings.gamma, settings.alpha
    steps = jnp.arange(t_max)[None, :]
    valid = steps < lengths[:, None]
    r = jnp.where(valid, rewards, 0.0)
    r_pad = jnp.pad(r, ((0, 0), (0, n)))
    ret = sum((gamma**i) * r_pad[:, i : i + t_max] for i in range(n))
    if settings.bootstrap:
        s_next = jnp.pad(slots, ((0, 0), (0, n)))[:, n : n + t_max]
        v = jnp.max(jnp.where(keys[s_next] >= 0, q[s_next], -jnp.inf), axis=-1)
        v = jnp.where(jnp.isfinite(v), v, 0.0)
        boot = jnp.where(steps + n < lengths[:, None], v, 0.0)
    else:
        boot = 0.0
    target = ret + (gamma**n) * boot

    dummy = c * w  # past the table: dropped
    flat_keys = jnp.where(valid, slots * w + positions, dummy).reshape(-1)
    target = target.reshape(-1)
    order = jnp.argsort(flat_keys, stable=True)
    ks, gs = flat_keys[order], target[order]
    first = jnp.searchsorted(ks, ks, side="left")
    last = jnp.searchsorted(ks, ks, side="right")
    pos = jnp.arange(ks.shape[0]) - first + 1
    weight = alpha * (1.0 - alpha) ** (last - first - pos).astype(jnp.float32)
    # per (state, action), at the first of its visits: (1 - alpha)^m by repeated products, and the weighted sum;
    # only the visited entries of the table are read and written
    scale = jnp.ones_like(gs).at[first].multiply(1.0 - alpha)
    added = jnp.zeros_like(gs).at[first].add(weight * gs)
    flat = q.reshape(-1)
    new = flat.at[ks].get(mode="fill", fill_value=0.0) * scale[first] + added[first]
    return flat.at[ks].set(new, mode="drop").reshape(c, w)


@functools.partial(jax.jit, static_argnames=("encoding", "settings", "progress", "capacity", "width"))
def _learn(
    envs: BatchingEnv,
    key,
    encoding: str,
    settings: QLearningSettings,
    progress: Callable | None,
    capacity: int,
    width: int,
):
    g = envs.node_type.shape[0]
    lb_total = jnp.sum(envs.lower_bound).astype(jnp.float32)
    num_evals = settings.max_episodes // settings.eval_every + 2

    def cond(c):
        grow = c["table"]["overflow"] | c["table"]["too_wide"]
        return (c["episode"] < settings.max_episodes) & ~c["stop"] & ~grow

    # One iteration runs the episodes of every graph once: a training episode, or (after the training episodes
    # whose number is a multiple of eval_every, and the last) the greedy evaluation of the table it left. One
    # copy of the episode loop in the program, not two: half the compilation time.
    def body(c):
        evaluating = c["evaluating"]
        key, sub = jax.random.split(c["key"])
        keys = jnp.where(evaluating, jax.random.split(jax.random.PRNGKey(0), g), jax.random.split(sub, g))
        epsilon = jnp.where(evaluating, 0.0, c["epsilon"])
        table, (slots, positions, rewards, lengths, nb) = _run_all(envs, c["q"], c["table"], epsilon, keys, encoding)
        ep = c["episode"]
        # a training episode updates the table (an evaluation: no steps count); the large arrays are updated in
        # place, never passed through a conditional (which would copy them)
        q = _n_step_update(
            c["q"], table["keys"], slots, positions, rewards, jnp.where(evaluating, 0, lengths), settings
        )
        mean = jnp.where(evaluating, c["train_curve"][ep], jnp.mean(nb.astype(jnp.float32)))
        train_curve = c["train_curve"].at[ep].set(mean)

        def evaluate(best):
            best_pos, best_count, best_total, n_eval, eval_ep, eval_b = best
            total = jnp.sum(nb).astype(jnp.float32)
            better = total < best_total
            best_total = jnp.minimum(total, best_total)
            if progress is not None:
                jax.debug.callback(progress, ep, total / g, best_total / g, lb_total / g)
            # the greedy action of every state: its position in the state's key (ties: the lowest)
            greedy = jnp.argmax(jnp.where(table["keys"] >= 0, q, -jnp.inf), axis=1).astype(jnp.int16)
            return (
                jnp.where(better, greedy, best_pos),
                jnp.where(better, table["count"], best_count),
                best_total,
                n_eval + 1,
                eval_ep.at[n_eval].set(ep),
                eval_b.at[n_eval].set(total / g),
            )

        best = (c["best_pos"], c["best_count"], c["best"], c["n_eval"], c["eval_ep"], c["eval_b"])
        best_pos, best_count, best_total, n_eval, eval_ep, eval_b = jax.lax.cond(
            evaluating, evaluate, lambda b: b, best
        )
        is_eval = (ep % settings.eval_every == 0) | (ep == settings.max_episodes - 1)
        done = evaluating | ~is_eval  # the episode is over (no evaluation of it pending)
        return dict(
            key=jnp.where(evaluating, c["key"], key),
            q=q,
            table=table,
            best_pos=best_pos,
            best_count=best_count,
            best=best_total,
            epsilon=jnp.where(
                done, jnp.maximum(c["epsilon"] * settings.epsilon_decay, settings.epsilon_min), c["epsilon"]
            ),
            episode=ep + done.astype(jnp.int32),
            stop=best_total < settings.stop_ratio * lb_total,
            train_curve=train_curve,
            n_eval=n_eval,
            eval_ep=eval_ep,
            eval_b=eval_b,
            evaluating=~evaluating & is_eval,
        )

    init = dict(
        key=key,
        q=jnp.zeros((capacity // 2 + 1, width), jnp.float32),
        table=_empty_table(capacity, width),
        best_pos=jnp.zeros(capacity // 2 + 1, jnp.int16),
        best_count=jnp.zeros((), jnp.int32),
        best=jnp.asarray(jnp.inf, jnp.float32),
        epsilon=jnp.asarray(settings.epsilon, jnp.float32),
        episode=jnp.zeros((), jnp.int32),
        stop=jnp.zeros((), bool),
        train_curve=jnp.zeros(settings.max_episodes, jnp.float32),
        n_eval=jnp.zeros((), jnp.int32),
        eval_ep=jnp.zeros(num_evals, jnp.int32),
        eval_b=jnp.zeros(num_evals, jnp.float32),
        evaluating=jnp.zeros((), bool),
    )
    out = jax.lax.while_loop(cond, body, init)
    table = out["table"]
    return dict(
        keys=table["keys"][:-1],
        q=out["q"][:-1],
        best_pos=out["best_pos"][:-1],
        count=table["count"],
        best_count=out["best_count"],
        overflow=table["overflow"],
        too_wide=table["too_wide"],
        widest=table["widest"],
        best=out["best"],
        episode=out["episode"],
        train_curve=out["train_curve"],
        n_eval=out["n_eval"],
        eval_ep=out["eval_ep"],
        eval_b=out["eval_b"],
    )


def _pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _round8(n: int) -> int:
    return -(-int(n) // 8) * 8


def _table_bytes(capacity: int, width: int) -> int:
    """Bytes of a table: the hash slots (int32), and per state its key (int16), its Q row (float32) and the best
    table's greedy action (int16)."""
    return 4 * capacity + (capacity // 2 + 1) * (width * 6 + 2)


def _once_per_episode(progress: Callable | None) -> Callable | None:
    """``progress`` called at most once per episode across runs (a rerun with a larger table repeats the
    evaluations of the run before, with the same values: those calls are dropped)."""
    if progress is None:
        return None
    last = [-1]

    def forward(episode, *values):
        if int(episode) > last[0]:
            last[0] = int(episode)
            progress(episode, *values)

    return forward


def run_q_learning(
    envs: BatchingEnv,
    encoding: str = "sort",
    seed: int = 0,
    settings: QLearningSettings = QLearningSettings(),
    progress: Callable | None = None,
    capacity: int = INITIAL_CAPACITY,
    width: int | None = None,
) -> LearningResult:
    """Learns a Q-table on stacked environments (see :func:`~edbatch_jax.fsm.env.stack_envs`).

    Args:
      envs: a stack of ``G`` environments (leading axis).
      encoding: state encoding, ``"sort"`` (default), ``"set"``, ``"max"`` or ``"sort_complete"``.
      seed: PRNG seed; the result is deterministic given the seed (whatever
        the table's capacity).
      settings: :class:`QLearningSettings`.
      progress: optional host callback ``(episode, greedy_mean, best_mean,
        lower_bound_mean)`` called at every greedy evaluation (once per
        episode even when the loop runs again with a larger table).
      capacity: hash table slots to start with (a power of two, at least 2;
        the table grows when it fills up).
      width: ready types a key holds to start with (default: those of the
        first frontier, rounded up to 8; it grows when a state has more).

    Returns:
      A :class:`LearningResult`. One jit compilation per (shapes, encoding,
      settings, table geometry) combination.

    Raises:
      ValueError: an unknown encoding, or a capacity that is not a power of two.
      EdbatchError: more than :data:`~edbatch_jax.fsm.encoding.MAX_TYPES` op
        types, or a table that would need more than :data:`MAX_TABLE_BYTES`.
    """
    k = envs.num_types
    enc.check_encoding(encoding, k)
    if capacity < 2 or capacity & (capacity - 1):
        raise ValueError(f"capacity must be a power of two of at least 2, got {capacity}")
    # the first state's ready types: a lower bound of the width needed
    first = int((np.asarray(envs.initial_tail) > 0).sum(axis=-1).max(initial=1))
    width = min(k, max(_MIN_WIDTH, _round8(first)) if width is None else max(int(width), 1))
    forward = _once_per_episode(progress)
    runs = 0
    while True:
        if _table_bytes(capacity, width) > MAX_TABLE_BYTES:
            raise EdbatchError(
                f"the Q-table would need room for {capacity // 2} states of up to {width} ready types (about "
                f"{_table_bytes(capacity, width) >> 20} MiB, limit {MAX_TABLE_BYTES >> 20} MiB): too many distinct "
                "states; learn with fewer episodes (max_episodes), fewer or smaller graphs, or the 'set' encoding"
            )
        runs += 1
        out = jax.device_get(_learn(envs, jax.random.PRNGKey(seed), encoding, settings, forward, capacity, width))
        if not (out["overflow"] or out["too_wide"]):
            break
        if out["too_wide"]:
            width = min(k, _round8(max(2 * width, int(out["widest"]))))
        if out["overflow"]:
            # x4, or room for as many states per episode as so far in every episode (at most x64 at once, and
            # no more than the memory limit allows)
            per_episode = int(out["count"]) / max(int(out["episode"]), 1)
            need = _pow2(math.ceil(2 * per_episode * settings.max_episodes))
            grown = min(max(4 * capacity, need), 64 * capacity)
            while grown > 4 * capacity and _table_bytes(grown, width) > MAX_TABLE_BYTES:
                grown //= 2
            capacity = grown
    g = envs.node_type.shape[0]
    episodes = int(out["episode"])
    n_eval = int(out["n_eval"])
    n = int(out["best_count"])
    ranked = np.asarray(out["keys"][:n], dtype=np.int32)
    pos = np.asarray(out["best_pos"][:n], dtype=np.int64)
    # the state tuples, from the keys' live prefixes (no Python list of the padding)
    ends = np.cumsum((ranked >= 0).sum(axis=1)).tolist()
    flat = ranked[ranked >= 0].tolist()
    rows = [tuple(flat[a:b]) for a, b in zip([0] + ends[:-1], ends)]
    states = tuple(enc.state_from_ranked(r, encoding, k) for r in rows) if encoding == "max" else tuple(rows)
    return LearningResult(
        states=states,
        ranked=ranked,
        actions=(ranked[np.arange(n), pos] % k).astype(np.int32),
        q=np.asarray(out["q"][:n], dtype=np.float32),
        episodes=episodes,
        train_batches=np.asarray(out["train_curve"][:episodes]),
        eval_episodes=np.asarray(out["eval_ep"][:n_eval]),
        eval_batches=np.asarray(out["eval_b"][:n_eval]),
        best_batches=float(out["best"]) / g,
        lower_bound=float(np.mean(np.asarray(envs.lower_bound))),
        capacity=capacity,
        runs=runs,
    )


def greedy_actions(ranked: np.ndarray, q: np.ndarray, num_types: int) -> np.ndarray:
    """int32 ``[M]``: the greedy op type of Q rows (the largest Q, ties to the lowest rank).

    ``ranked`` int ``[M, W]`` the states' ready types in rank order (padded with
    -1), ``q`` float ``[M, W]`` their rows, as in :class:`LearningResult`.
    """
    ranked = np.asarray(ranked)
    if not ranked.shape[0]:
        return np.zeros(0, np.int32)
    j = np.argmax(np.where(ranked >= 0, q, -np.inf), axis=1)
    return (ranked[np.arange(j.shape[0]), j] % num_types).astype(np.int32)
