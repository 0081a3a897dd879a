"""State encodings of the batching MDP (ED-Batch section 4), as tuples of op type ids.

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

The state spaces are not enumerated: the Q-table holds the visited states
only (:mod:`edbatch_jax.fsm.qlearning`), so every encoding works over any
number of op types up to :data:`MAX_TYPES`.

In every encoding the state determines the ready types, hence the available
actions, and their *rank*, the order in which ties in Q are broken: the
position in the state tuple (for ``max``: the appended argmax first, then the
others in ascending id order). :func:`ready_types` gives them on the host;
:func:`ranked_state` is the jittable JAX form the learning loop uses, the ready
types in rank order (with ``sort_complete``'s marks) as a fixed-width int32
vector padded with -1, computed with one ``argsort`` (no loop over the
types). :func:`state_from_ranked` turns that back into the state tuple, and
:func:`state_problem` checks a tuple given from outside (a policy file).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from edbatch_jax.errors import EdbatchError

__all__ = [
    "ENCODINGS",
    "MAX_TYPES",
    "check_encoding",
    "needs_typewise",
    "state_tuple",
    "ready_types",
    "ranked_state",
    "state_from_ranked",
    "state_problem",
]

ENCODINGS = ("set", "sort", "max", "sort_complete")
"""The supported state encodings."""

MAX_TYPES = 4096
"""Most op types a policy may have (a sanity limit of policy files and :func:`~edbatch_jax.learn_fsm`; the
sparse Q-table itself has no such bound). ``sort_complete``'s marked ids ``t + K`` stay below ``2 * MAX_TYPES``,
which fits the learning loop's int16 keys."""


def check_encoding(encoding: str, num_types: int) -> None:
    """Refuses an unknown encoding, no op types, or more than :data:`MAX_TYPES`.

    Raises:
      ValueError: unknown encoding, or no op types.
      EdbatchError: more than :data:`MAX_TYPES` op types.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown state encoding {encoding!r}; choose one of {list(ENCODINGS)}")
    if num_types < 1:
        raise ValueError("a batching state needs at least one op type")
    if num_types > MAX_TYPES:
        raise EdbatchError(
            f"{num_types} op types: an FSM policy has at most {MAX_TYPES} (merge op types, or use a heuristic "
            "policy such as 'typewise')"
        )


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


def ready_types(state: Sequence[int], encoding: str, num_types: int) -> tuple[int, ...]:
    """The ready op types of a (valid) state tuple in rank order: ties in Q go to the first.

    The position in the tuple (marks of ``sort_complete`` removed); for ``max``
    the appended argmax first, then the other ready types in ascending order.
    """
    k = num_types
    if encoding == "max":
        if not state:
            return ()
        a = state[-1]
        return (a,) + tuple(t for t in state[:-1] if t != a)
    return tuple(t % k for t in state)


def state_from_ranked(ranked: Sequence[int], encoding: str, num_types: int) -> tuple[int, ...]:
    """The state tuple of the ready types in rank order (``sort_complete``: with marks), the inverse of
    :func:`ready_types` (up to the marks); ``ranked`` may be padded with negative values."""
    ranked = tuple(int(t) for t in ranked if t >= 0)
    if encoding == "max":
        return tuple(sorted(ranked)) + ranked[:1]
    return ranked


def ranked_state(counts: jnp.ndarray, encoding: str, typewise: jnp.ndarray | None = None, max_count: int | None = None):
    """The ready types of a frontier in rank order, as fixed-width JAX arrays. Jittable and vmappable.

    Args:
      counts: int ``[K]`` ready nodes per op type.
      encoding: one of :data:`ENCODINGS` (static).
      typewise: int ``[K]`` ``|TF_t|``, needed by ``sort_complete``.
      max_count: a bound on the counts (static, e.g. the graph's nodes), if
        known: ``sort`` then packs count and type id into one uint32 key and
        sorts one array (several times faster than an ``argsort`` over
        hundreds of types).

    Returns:
      ``(ranked int32 [K], rank int32 [K], length int32)``: ``ranked[:length]``
      are the ready types in rank order (``sort_complete``: a complete type
      ``t`` as ``t + K``), the rest -1; ``rank[t]`` is the position of a ready
      type ``t`` in it (meaningless for the others). The state tuple is
      ``state_from_ranked(ranked)``; the cost is one sort of ``K`` keys.
    """
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown state encoding {encoding!r}; choose one of {list(ENCODINGS)}")
    k = counts.shape[-1]
    ready = counts > 0
    m = jnp.sum(ready).astype(jnp.int32)
    pos = jnp.arange(k, dtype=jnp.int32)
    bits = max(1, (k - 1).bit_length())
    if encoding in ("set", "max"):
        # ready types ascending (max: its argmax first), then the others; keys are distinct, one plain sort
        first = jnp.argmax(counts).astype(jnp.int32) if encoding == "max" else -2
        key = jnp.sort(jnp.where(ready, jnp.where(pos == first, -1, pos), k + pos))
        order = jnp.where(key < 0, first, jnp.where(key >= k, key - k, key))
    elif max_count is not None and max_count < 1 << (32 - bits):
        # (most ready first, then lower id) as one uint32: (2^(32-bits) - 1 - count) << bits | id; others last
        top = jnp.uint32((1 << (32 - bits)) - 1)
        packed = ((top - counts.astype(jnp.uint32)) << bits) | pos.astype(jnp.uint32)
        key = jnp.sort(jnp.where(ready, packed, jnp.uint32(0xFFFFFFFF)))
        order = jnp.where(pos < m, (key & jnp.uint32((1 << bits) - 1)).astype(jnp.int32), k)  # k: not ready
    else:
        order = jnp.argsort(jnp.where(ready, -counts, jnp.iinfo(jnp.int32).max), stable=True).astype(jnp.int32)
    order = order.astype(jnp.int32)
    live = pos < m
    ranked = order
    if encoding == "sort_complete":
        if typewise is None:
            raise ValueError("the 'sort_complete' encoding needs the type-wise frontier counts")
        ranked = order + k * (counts == typewise)[jnp.minimum(order, k - 1)].astype(jnp.int32)
    ranked = jnp.where(live, ranked, -1)
    rank = jnp.zeros(k, jnp.int32).at[order].set(pos, mode="drop")
    return ranked, rank, m


def state_problem(state: Sequence, encoding: str, num_types: int) -> str | None:
    """Why ``state`` is not a state tuple of ``encoding`` over ``num_types`` op types (None if it is one).

    Checks the ids (ints in range: ``[0, K)``, ``[0, 2K)`` for ``sort_complete``)
    and the encoding's shape: ``set`` strictly ascending; ``sort`` distinct;
    ``sort_complete`` distinct once the marks are removed; ``max`` empty, or a
    strictly ascending set followed by one of its members.
    """
    k = num_types
    if not all(isinstance(t, (int, np.integer)) and not isinstance(t, (bool, np.bool_)) for t in state):
        return "its items must be op type ids (integers)"
    top = 2 * k if encoding == "sort_complete" else k
    bad = next((int(t) for t in state if not 0 <= t < top), None)
    if bad is not None:
        return f"op type id {bad} is out of range (0 to {top - 1})"
    ids = [int(t) for t in state]
    if encoding == "max":
        if not ids:
            return None
        body = ids[:-1]
        if not body or any(a >= b for a, b in zip(body, body[1:])):
            return "a 'max' state is its ready types in ascending order followed by the one with most ready nodes"
        if ids[-1] not in body:
            return "the last type of a 'max' state (the one with most ready nodes) must be among its ready types"
        return None
    if encoding == "set":
        if any(a >= b for a, b in zip(ids, ids[1:])):
            return "a 'set' state lists distinct types in ascending order"
        return None
    if encoding not in ("sort", "sort_complete"):
        return f"unknown state encoding {encoding!r}"
    if len({t % k for t in ids}) != len(ids):
        return "a type appears twice"
    return None
