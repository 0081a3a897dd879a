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
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.env import BatchingEnv, reset, step

__all__ = ["QLearningSettings", "LearningResult", "run_q_learning", "greedy_actions"]


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


@dataclasses.dataclass(frozen=True)
class LearningResult:
    """What the learning loop returns (host NumPy arrays).

    Attributes:
      q: float32 ``[S, K]``, the best table (by greedy evaluation).
      seen: bool ``[S]``, states visited before the best table was taken.
      episodes: episodes run.
      train_batches: float32 ``[episodes]``, mean batches per graph of each
        (exploring) training episode.
      eval_episodes: int32 ``[E]``, episodes after which the greedy policy ran.
      eval_batches: float32 ``[E]``, its mean batches per graph.
      best_batches: mean batches per graph of the best greedy policy.
      lower_bound: mean lower bound of the training graphs.
    """

    q: np.ndarray
    seen: np.ndarray
    episodes: int
    train_batches: np.ndarray
    eval_episodes: np.ndarray
    eval_batches: np.ndarray
    best_batches: float
    lower_bound: float


def _choose(q_row, counts, rank_row, explore, u, noise):
    """Epsilon-greedy action: uniform over ready types, else argmax Q (ties by rank).

    ``u`` (scalar) and ``noise`` (``[K]``) are uniform draws in ``[0, 1)``.
    """
    avail = counts > 0
    random_action = jnp.argmax(jnp.where(avail, noise, -1.0))
    qa = jnp.where(avail, q_row, -jnp.inf)
    best = qa == jnp.max(qa)
    greedy_action = jnp.argmin(jnp.where(best, rank_row, jnp.iinfo(jnp.int32).max))
    return jnp.where(u < explore, random_action, greedy_action).astype(jnp.int32)


def _episode(env: BatchingEnv, q, rank, epsilon, key, encoding: str):
    """One episode on one environment.

    Returns ``(states int32 [T], actions int32 [T], rewards float32 [T],
    length int32, num_batches int32)`` with ``T = N`` (an upper bound on
    the number of decisions).
    """
    t_max = env.node_type.shape[-1] - 1

    def cond(carry):
        return carry[0].remaining > 0

    k = env.num_types
    k_u, k_noise = jax.random.split(key)
    draws = jax.random.uniform(k_u, (t_max,))
    noise = jax.random.uniform(k_noise, (t_max, k))

    def body(carry):
        state, t, key, states, actions, rewards = carry
        counts = state.ready_counts
        forced = (counts > 0) & env.unbatchable
        decide = ~jnp.any(forced)
        s = enc.encode(counts, encoding, state.typewise)
        a = jnp.where(decide, _choose(q[s], counts, rank[s], epsilon, draws[t], noise[t]), jnp.argmax(forced)).astype(
            jnp.int32
        )
        state, reward = step(env, state, a, jnp.where(decide, 1, counts[a]))
        idx = jnp.minimum(t, t_max - 1)
        states = states.at[idx].set(jnp.where(decide, s, states[idx]))
        actions = actions.at[idx].set(jnp.where(decide, a, actions[idx]))
        rewards = rewards.at[idx].set(jnp.where(decide, reward, rewards[idx]))
        return state, t + decide.astype(jnp.int32), key, states, actions, rewards

    init = (
        reset(env),
        jnp.zeros((), jnp.int32),
        key,
        jnp.zeros(t_max, jnp.int32),
        jnp.zeros(t_max, jnp.int32),
        jnp.zeros(t_max, jnp.float32),
    )
    state, length, _, states, actions, rewards = jax.lax.while_loop(cond, body, init)
    return states, actions, rewards, length, state.num_batches


def _run_all(envs: BatchingEnv, q, rank, epsilon, keys, encoding: str):
    """Episodes on every stacked environment, one after another (``lax.map``)."""
    return jax.lax.map(lambda xs: _episode(xs[0], q, rank, epsilon, xs[1], encoding), (envs, keys))


def _n_step_update(q, avail, states, actions, rewards, lengths, settings: QLearningSettings):
    """Applies every trajectory's n-step updates (graph by graph, in step order)."""
    g, t_max = states.shape
    s_count, k = q.shape
    n, gamma, alpha = settings.n_step, settings.gamma, settings.alpha
    steps = jnp.arange(t_max)[None, :]
    valid = steps < lengths[:, None]
    r = jnp.where(valid, rewards, 0.0)
    r_pad = jnp.pad(r, ((0, 0), (0, n)))
    ret = sum((gamma**i) * r_pad[:, i : i + t_max] for i in range(n))
    v = jnp.max(jnp.where(avail, q, -jnp.inf), axis=1)
    v = jnp.where(jnp.isfinite(v), v, 0.0)
    s_pad = jnp.pad(states, ((0, 0), (0, n)))[:, n : n + t_max]
    boot = jnp.where(steps + n < lengths[:, None], v[s_pad], 0.0) if settings.bootstrap else 0.0
    target = ret + (gamma**n) * boot

    dummy = s_count * k
    keys = jnp.where(valid, states * k + actions, dummy).reshape(-1)
    target = target.reshape(-1)
    order = jnp.argsort(keys, stable=True)
    ks, gs = keys[order], target[order]
    first = jnp.searchsorted(ks, ks, side="left")
    last = jnp.searchsorted(ks, ks, side="right")
    pos = jnp.arange(ks.shape[0]) - first + 1
    weight = alpha * (1.0 - alpha) ** (last - first - pos).astype(jnp.float32)
    flat = jnp.concatenate([q.reshape(-1), jnp.zeros(1, q.dtype)])
    scale = jnp.ones_like(flat).at[ks].multiply(1.0 - alpha)
    flat = flat * scale + jnp.zeros_like(flat).at[ks].add(weight * gs)
    return flat[:-1].reshape(s_count, k)


@functools.partial(jax.jit, static_argnames=("encoding", "settings", "progress"))
def _learn(envs: BatchingEnv, key, encoding: str, settings: QLearningSettings, progress: Callable | None):
    k = envs.num_types
    s_count = enc.num_states(encoding, k)
    avail_np, rank_np = enc.action_table(encoding, k)
    avail, rank = jnp.asarray(avail_np), jnp.asarray(rank_np)
    g = envs.node_type.shape[0]
    lb_total = jnp.sum(envs.lower_bound).astype(jnp.float32)
    num_evals = settings.max_episodes // settings.eval_every + 2
    run_all = _run_all

    def evaluate(q, seen):
        keys = jax.random.split(jax.random.PRNGKey(0), g)
        states, _, _, lengths, nb = run_all(envs, q, rank, 0.0, keys, encoding)
        mask = jnp.arange(states.shape[1])[None, :] < lengths[:, None]
        seen = seen.at[jnp.where(mask, states, 0)].max(mask)
        return jnp.sum(nb).astype(jnp.float32), seen

    def cond(c):
        return (c["episode"] < settings.max_episodes) & ~c["stop"]

    def body(c):
        key, sub = jax.random.split(c["key"])
        keys = jax.random.split(sub, g)
        states, actions, rewards, lengths, nb = run_all(envs, c["q"], rank, c["epsilon"], keys, encoding)
        mask = jnp.arange(states.shape[1])[None, :] < lengths[:, None]
        seen = c["seen"].at[jnp.where(mask, states, 0)].max(mask)
        q = _n_step_update(c["q"], avail, states, actions, rewards, lengths, settings)
        ep = c["episode"]
        train_curve = c["train_curve"].at[ep].set(jnp.mean(nb.astype(jnp.float32)))

        def do_eval(args):
            q, seen, best_q, best_seen, best, n_eval, eval_ep, eval_b = args
            total, seen = evaluate(q, seen)
            better = total < best
            best_q = jnp.where(better, q, best_q)
            best_seen = jnp.where(better, seen, best_seen)
            best = jnp.minimum(total, best)
            eval_ep = eval_ep.at[n_eval].set(ep)
            eval_b = eval_b.at[n_eval].set(total / g)
            if progress is not None:
                jax.debug.callback(progress, ep, total / g, best / g, lb_total / g)
            return q, seen, best_q, best_seen, best, n_eval + 1, eval_ep, eval_b

        is_eval = (ep % settings.eval_every == 0) | (ep == settings.max_episodes - 1)
        args = (q, seen, c["best_q"], c["best_seen"], c["best"], c["n_eval"], c["eval_ep"], c["eval_b"])
        q, seen, best_q, best_seen, best, n_eval, eval_ep, eval_b = jax.lax.cond(is_eval, do_eval, lambda a: a, args)
        eps = jnp.maximum(c["epsilon"] * settings.epsilon_decay, settings.epsilon_min)
        stop = best < settings.stop_ratio * lb_total
        return dict(
            key=key,
            q=q,
            seen=seen,
            best_q=best_q,
            best_seen=best_seen,
            best=best,
            epsilon=eps,
            episode=ep + 1,
            stop=stop,
            train_curve=train_curve,
            n_eval=n_eval,
            eval_ep=eval_ep,
            eval_b=eval_b,
        )

    init = dict(
        key=key,
        q=jnp.zeros((s_count, k), jnp.float32),
        seen=jnp.zeros(s_count, bool),
        best_q=jnp.zeros((s_count, k), jnp.float32),
        best_seen=jnp.zeros(s_count, bool),
        best=jnp.asarray(jnp.inf, jnp.float32),
        epsilon=jnp.asarray(settings.epsilon, jnp.float32),
        episode=jnp.zeros((), jnp.int32),
        stop=jnp.zeros((), bool),
        train_curve=jnp.zeros(settings.max_episodes, jnp.float32),
        n_eval=jnp.zeros((), jnp.int32),
        eval_ep=jnp.zeros(num_evals, jnp.int32),
        eval_b=jnp.zeros(num_evals, jnp.float32),
    )
    return jax.lax.while_loop(cond, body, init)


def run_q_learning(
    envs: BatchingEnv,
    encoding: str = "sort",
    seed: int = 0,
    settings: QLearningSettings = QLearningSettings(),
    progress: Callable | None = None,
) -> LearningResult:
    """Learns a Q-table on stacked environments (see :func:`~edbatch_jax.fsm.env.stack_envs`).

    Args:
      envs: a stack of ``G`` environments (leading axis).
      encoding: state encoding, ``"sort"`` (default), ``"set"`` or ``"max"``.
      seed: PRNG seed; the result is deterministic given the seed.
      settings: :class:`QLearningSettings`.
      progress: optional host callback ``(episode, greedy_mean, best_mean,
        lower_bound_mean)`` called at every greedy evaluation.

    Returns:
      A :class:`LearningResult`. One jit compilation per (shapes, encoding,
      settings) combination.
    """
    out = jax.device_get(_learn(envs, jax.random.PRNGKey(seed), encoding, settings, progress))
    g = envs.node_type.shape[0]
    episodes = int(out["episode"])
    n_eval = int(out["n_eval"])
    return LearningResult(
        q=np.asarray(out["best_q"]),
        seen=np.asarray(out["best_seen"]),
        episodes=episodes,
        train_batches=np.asarray(out["train_curve"][:episodes]),
        eval_episodes=np.asarray(out["eval_ep"][:n_eval]),
        eval_batches=np.asarray(out["eval_b"][:n_eval]),
        best_batches=float(out["best"]) / g,
        lower_bound=float(np.mean(np.asarray(envs.lower_bound))),
    )


def greedy_actions(q: np.ndarray, encoding: str) -> np.ndarray:
    """int32 ``[S]``: the greedy action of every state (ties by rank; -1 if none is available)."""
    k = q.shape[1]
    avail, rank = enc.action_table(encoding, k)
    qa = np.where(avail, q, -np.inf)
    best = qa == qa.max(axis=1, keepdims=True)
    best &= avail
    act = np.argmin(np.where(best, rank, np.iinfo(np.int32).max), axis=1).astype(np.int32)
    return np.where(avail.any(axis=1), act, -1).astype(np.int32)
