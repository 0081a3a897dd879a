"""State encodings of the batching MDP (ED-Batch section 4), as dense indices.

A state is a tuple of op type ids built from the per-type ready counts
``|F_t|`` (counts themselves are not part of the state, so graphs of any size
share states):

* ``"set"``:  the ready types in ascending id order;
* ``"sort"``: the ready types by ready count, largest first (ties: lower id
  first) — the paper's main encoding, E_sort;
* ``"max"``:  the ``set`` tuple with the type of the largest ready count
  appended (ties: lower id);
* ``"sort_complete"``: the ``sort`` tuple with every type marked when its
  batch would be *complete* (``|F_t| = |TF_t|``); in tuples a complete type
  ``t`` is written ``t + K``. An extension of this library: it gives the
  policy the one fact that decides optimality (ED-Batch section 3).

Every encoding has a finite state space over ``K`` op types, so a tuple is
mapped to a dense index in ``[0, num_states)``:

* ``set``: the bitmask of ready types;
* ``max``: ``bitmask * K + argmax``;
* ``sort``: the rank of a partial permutation (tuples grouped by length, then
  lexicographic);
* ``sort_complete``: ``sort_index * 2^K + marks`` (bit ``j``: position ``j``
  is complete).

:func:`encode` is the jittable JAX version, :func:`encode_np` the NumPy one,
:func:`decode` turns an index back into its tuple. In every encoding the state
determines the set of ready types, hence the available actions
(:func:`action_table`).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax.numpy as jnp
import numpy as np

from edbatch_jax.errors import EdbatchError

__all__ = [
    "ENCODINGS",
    "MAX_STATES",
    "max_types",
    "num_states",
    "encode",
    "encode_np",
    "decode",
    "state_tuple",
    "action_table",
]

ENCODINGS = ("set", "sort", "max", "sort_complete")
"""The supported state encodings."""

MAX_STATES = 1 << 21
"""Largest dense state space accepted (the Q-table has ``num_states * K`` entries); every encoding refuses more
op types than fit (:func:`max_types`) with an :class:`~edbatch_jax.errors.EdbatchError`."""


def _check(encoding: str, num_types: int) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown state encoding {encoding!r}; choose one of {list(ENCODINGS)}")
    if num_types < 1:
        raise ValueError("a batching state needs at least one op type")


def _perm(n: int, m: int) -> int:
    """Number of ordered selections of ``m`` items out of ``n``."""
    return math.perm(n, m) if 0 <= m <= n else 0


@functools.cache
def _sort_offsets(num_types: int) -> np.ndarray:
    """int64 ``[K + 2]``: first index of the tuples of each length."""
    sizes = [_perm(num_types, k) for k in range(num_types + 1)]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


@functools.cache
def _perm_table(num_types: int) -> np.ndarray:
    """int64 ``[K + 1, K + 1]``: ``P(n, m)``."""
    k = num_types
    return np.array([[_perm(n, m) for m in range(k + 1)] for n in range(k + 1)], dtype=np.int64)


def _size(encoding: str, num_types: int) -> int:
    """Exact size of the dense state space (a Python int: no overflow however many op types)."""
    k = num_types
    if encoding == "set":
        return 1 << k
    if encoding == "max":
        return (1 << k) * k
    n_sort = sum(_perm(k, m) for m in range(k + 1))
    return n_sort if encoding == "sort" else n_sort << k


def _count(n: int) -> str:
    """An exact count, or its order of magnitude when it has more than 12 digits."""
    return str(n) if n < 10**12 else f"about {n:.2e}"


@functools.cache
def max_types(encoding: str) -> int:
    """The most op types ``encoding`` fits in :data:`MAX_STATES` states.

    ``set``: 21, ``max``: 16, ``sort``: 9, ``sort_complete``: 7.
    """
    _check(encoding, 1)
    k = 1
    while _size(encoding, k + 1) <= MAX_STATES:
        k += 1
    return k


def num_states(encoding: str, num_types: int) -> int:
    """Size of the dense state space of ``encoding`` over ``num_types`` op types.

    Raises:
      EdbatchError: a state space above :data:`MAX_STATES` (the message names
        the encoding, the number of op types, the states and Q-table entries
        it would need, and the limit).
      ValueError: unknown encoding, or no op types.
    """
    _check(encoding, num_types)
    k = num_types
    n = _size(encoding, k)
    if n > MAX_STATES:
        fits = {e: max_types(e) for e in ENCODINGS}
        larger = [f"{e!r} (up to {m})" for e, m in fits.items() if m >= k]
        hint = f"use encoding {' or '.join(larger)}, or merge op types" if larger else "merge op types"
        raise EdbatchError(
            f"the {encoding!r} encoding over {k} op types has {_count(n)} states (limit {MAX_STATES}): its dense "
            f"Q-table would need {_count(n * k)} entries; {encoding!r} fits at most {fits[encoding]} op types. "
            f"{hint.capitalize()}"
        )
    return n


def needs_typewise(encoding: str) -> bool:
    """Whether ``encoding`` reads the type-wise frontier counts ``|TF_t|``."""
    return encoding == "sort_complete"


def state_tuple(counts, encoding: str, typewise=None) -> tuple[int, ...]:
    """The state tuple of one frontier, from its ready counts (ints ``[K]``, a list or an array).

    ``typewise`` (``|TF_t|``, ints ``[K]``) is needed by ``sort_complete``.
    Host-side and on plain lists: a policy calls it once per decision.
    """
    counts = np.asarray(counts).tolist()
    k = len(counts)
    ready = [t for t in range(k) if counts[t] > 0]
    if encoding == "sort_complete":
        if typewise is None:
            raise ValueError("the 'sort_complete' encoding needs the type-wise frontier counts")
        typewise = np.asarray(typewise).tolist()
        order = sorted(ready, key=lambda t: -counts[t])  # stable: ties by type id
        return tuple(t + k * (counts[t] == typewise[t]) for t in order)
    if encoding == "set":
        return tuple(ready)
    if encoding == "sort":
        return tuple(sorted(ready, key=lambda t: -counts[t]))
    if encoding == "max":
        if not ready:
            return ()
        return tuple(ready) + (max(range(k), key=counts.__getitem__),)  # the first of the largest
    raise ValueError(f"unknown state encoding {encoding!r}; choose one of {list(ENCODINGS)}")


@functools.cache
def _index_of_tuple(state: tuple[int, ...], encoding: str, num_types: int) -> int:
    k = num_types
    if encoding == "set":
        return sum(1 << t for t in state)
    if encoding == "max":
        if not state:
            return 0
        return sum(1 << t for t in state[:-1]) * k + state[-1]
    if encoding == "sort_complete":
        marks = sum(1 << j for j, t in enumerate(state) if t >= k)
        return (_index_of_tuple(tuple(t % k for t in state), "sort", k) << k) + marks
    used = [False] * k
    idx = int(_sort_offsets(k)[len(state)])
    for j, t in enumerate(state):
        r = sum(1 for u in range(t) if not used[u])
        idx += r * _perm(k - j - 1, len(state) - j - 1)
        used[t] = True
    return idx


def encode_np(counts: np.ndarray, encoding: str, typewise: np.ndarray | None = None) -> int:
    """Dense state index of a frontier given its ready counts (NumPy, host)."""
    counts = np.asarray(counts)
    _check(encoding, counts.shape[-1])
    return _index_of_tuple(state_tuple(counts, encoding, typewise), encoding, counts.shape[-1])


def encode(counts: jnp.ndarray, encoding: str, typewise: jnp.ndarray | None = None) -> jnp.ndarray:
    """Dense state index of a frontier given its ready counts.

    Args:
      counts: int ``[K]`` ready nodes per op type.
      encoding: one of :data:`ENCODINGS` (static).
      typewise: int ``[K]`` ``|TF_t|``, needed by ``sort_complete``.

    Returns:
      int32 scalar in ``[0, num_states(encoding, K))``. Jittable and vmappable.
    """
    k = counts.shape[-1]
    _check(encoding, k)
    ready = counts > 0
    bits = jnp.sum(jnp.where(ready, 1 << jnp.arange(k), 0)).astype(jnp.int32)
    if encoding == "set":
        return bits
    if encoding == "max":
        return jnp.where(jnp.any(ready), bits * k + jnp.argmax(counts).astype(jnp.int32), 0)
    if encoding == "sort_complete":
        if typewise is None:
            raise ValueError("the 'sort_complete' encoding needs the type-wise frontier counts")
        base = encode(counts, "sort")
        order = jnp.argsort(jnp.where(ready, -counts, jnp.iinfo(jnp.int32).max), stable=True)
        complete = (counts == typewise)[order] & (jnp.arange(k) < jnp.sum(ready))
        return (base << k) + jnp.sum(jnp.where(complete, 1 << jnp.arange(k), 0)).astype(jnp.int32)
    # sort: rank of the partial permutation (t_0, ..., t_{m-1})
    m = jnp.sum(ready).astype(jnp.int32)
    key = jnp.where(ready, -counts, jnp.iinfo(jnp.int32).max)
    order = jnp.argsort(key, stable=True).astype(jnp.int32)
    perm = jnp.asarray(_perm_table(k), dtype=jnp.int32)
    idx = jnp.asarray(_sort_offsets(k), dtype=jnp.int32)[m]
    used = jnp.zeros(k, dtype=bool)
    below = jnp.arange(k)[None, :] < jnp.arange(k)[:, None]  # below[t, u] = u < t
    for j in range(k):
        t = order[j]
        r = jnp.sum(below[t] & ~used).astype(jnp.int32)
        idx = idx + jnp.where(j < m, r * perm[k - j - 1, jnp.maximum(m - j - 1, 0)], 0)
        used = used.at[t].set(True)
    return idx


@functools.cache
def _all_tuples(encoding: str, num_types: int) -> tuple[tuple[int, ...], ...]:
    k = num_types
    n = num_states(encoding, k)
    out: list = [None] * n
    if encoding == "set":
        for bits in range(n):
            out[bits] = tuple(t for t in range(k) if bits >> t & 1)
    elif encoding == "max":
        for bits in range(1 << k):
            ready = tuple(t for t in range(k) if bits >> t & 1)
            for a in range(k):
                # unreachable combinations (argmax not ready) decode to their set part
                out[bits * k + a] = ready + (a,) if a in ready else ready
    elif encoding == "sort_complete":
        for s, base in enumerate(_all_tuples("sort", k)):
            for marks in range(1 << k):
                # marks beyond the tuple's length are unreachable; they decode without them
                out[(s << k) + marks] = tuple(t + k * (marks >> j & 1) for j, t in enumerate(base))
    else:
        for m in range(k + 1):
            for state in itertools.permutations(range(k), m):
                out[_index_of_tuple(state, encoding, k)] = state
    return tuple(out)


def decode(index: int, encoding: str, num_types: int) -> tuple[int, ...]:
    """The state tuple of a dense index (inverse of :func:`encode_np`)."""
    return _all_tuples(encoding, num_types)[int(index)]


@functools.cache
def action_table(encoding: str, num_types: int) -> tuple[np.ndarray, np.ndarray]:
    """Available actions and their tie-break rank for every state.

    Returns:
      ``(available bool [S, K], rank int32 [S, K])``: ``available[s, a]`` when
      type ``a`` is ready in state ``s``; ``rank[s, a]`` is the position of
      ``a`` in the state tuple (ties in Q go to the lowest rank: for ``sort``
      the type with the most ready nodes, for ``max`` the appended argmax),
      ``K`` where unavailable.
    """
    k = num_types
    tuples = _all_tuples(encoding, k)
    avail = np.zeros((len(tuples), k), dtype=bool)
    rank = np.full((len(tuples), k), k, dtype=np.int32)
    for s, state in enumerate(tuples):
        if encoding == "max" and len(state) > 1 and state[-1] in state[:-1]:
            ready = (state[-1],) + tuple(t for t in state[:-1] if t != state[-1])  # argmax first
        else:
            ready = tuple(t % k for t in state)
        for pos, t in enumerate(ready):
            avail[s, t] = True
            rank[s, t] = pos
    return avail, rank
