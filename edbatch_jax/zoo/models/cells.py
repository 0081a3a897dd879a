"""The Flax cells several bundled models share, each a Linen module with an NNX twin, and their cell specs.

Every cell is one equation function (taking its layers, Linen or NNX, as
arguments), a ``flax.linen`` module and a ``flax.nnx`` twin with the same
parameter names; a ``*_spec`` function pairs the two in a
:class:`~edbatch_jax.zoo.models.base.CellSpec` for a model's cell table.
H = hidden size, E = embedding size, σ the logistic sigmoid, ⊙ the
elementwise product; states are dicts of f32 arrays.

* Tree-LSTM leaf (:class:`LeafCell`): word id (int32 scalar) ->
  ``x = Embed[word]``; ``i, o, u = W x + b``; ``c = σ(i) ⊙ tanh(u)``;
  ``h = σ(o) ⊙ tanh(c)``; ``{"h": f32[H], "c": f32[H]}``.
* Tree-LSTM internal (:class:`InternalCell`): two child states ->
  ``i, o, u = W [h_l; h_r] + b``; ``f_l = σ(U_l h_l + b_l)``,
  ``f_r = σ(U_r h_r + b_r)``; ``c = σ(i) ⊙ tanh(u) + f_l ⊙ c_l + f_r ⊙ c_r``;
  ``h = σ(o) ⊙ tanh(c)``.
* classifier (:class:`LossCell`): label (int32 scalar), state ->
  ``logits = W_o h + b_o`` and the softmax cross-entropy against the label:
  ``{"loss": f32[], "logits": f32[C]}``.
* learned initial state (:class:`InitCell`): no payload, no operands ->
  ``{"h": h0, "c": c0}`` (``{"h": h0}`` for a GRU).
* LSTM arc (:class:`LSTMArcCell`): embedding id, source state ->
  ``x = Embed[id]``; ``i, f, o, u = W [x; h_src] + b``;
  ``c = σ(i) ⊙ tanh(u) + σ(f) ⊙ c_src``; ``h = σ(o) ⊙ tanh(c)``.
* embedding (:class:`EmbedCell`): word id -> ``{"x": f32[E]}``.
* LSTM step (:class:`LSTMCell`): previous state and input states ->
  ``i, f, o, u = W [x; h] + b`` with ``x`` the inputs' features (``x`` of an
  embedding, ``h`` of an LSTM state) concatenated; ``{"h", "c"}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from edbatch_jax.zoo.models.base import CellSpec, StateSpec, hidden_state, lstm_state

__all__ = [
    "EmbedCell",
    "InitCell",
    "InternalCell",
    "LSTMArcCell",
    "LSTMCell",
    "LeafCell",
    "LossCell",
    "NNXEmbedCell",
    "NNXInitCell",
    "NNXInternalCell",
    "NNXLSTMArcCell",
    "NNXLSTMCell",
    "NNXLeafCell",
    "NNXLossCell",
    "classifier_spec",
    "classify",
    "embed_spec",
    "init_spec",
    "internal_lstm",
    "leaf_lstm",
    "lstm_arc_spec",
    "lstm_spec",
    "lstm_step",
    "dropout",
    "tree_internal_spec",
    "tree_leaf_spec",
]


# ---------------------------------------------------------------------------
# Equations, given the layers (Linen or NNX)
# ---------------------------------------------------------------------------


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout of ``x`` (f32, any shape) at ``rate`` with PRNG ``key``; ``x`` itself when ``key`` is
    ``None`` or ``rate`` is 0 (deterministic: evaluation). Jittable."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def leaf_lstm(embed, iou, word, rate: float = 0.0, key: jax.Array | None = None):
    """Tree-LSTM leaf equations, given the layers ``embed`` and ``iou`` (to ``3H``): ``{"h", "c"}`` f32 ``[H]``.

    ``rate``, ``key``: dropout of the embedding (:func:`dropout`)."""
    i, o, u = jnp.split(iou(dropout(embed(word), rate, key)), 3, axis=-1)
    c = jax.nn.sigmoid(i) * jnp.tanh(u)
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


def internal_lstm(iou, f_left, f_right, left, right):
    """Binary Tree-LSTM equations, given the layers ``iou`` (to ``3H``), ``f_left``, ``f_right`` (to ``H``)."""
    i, o, u = jnp.split(iou(jnp.concatenate([left["h"], right["h"]], axis=-1)), 3, axis=-1)
    f_l = jax.nn.sigmoid(f_left(left["h"]))
    f_r = jax.nn.sigmoid(f_right(right["h"]))
    c = jax.nn.sigmoid(i) * jnp.tanh(u) + f_l * left["c"] + f_r * right["c"]
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


def classify(out, label, h, rate: float = 0.0, key: jax.Array | None = None):
    """``{"loss": f32[], "logits": f32[C]}`` of the output layer ``out`` on features ``h`` and an int32 label
    (``rate``, ``key``: dropout of ``h``, :func:`dropout`)."""
    logits = out(dropout(h, rate, key))
    return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, label), "logits": logits}


def lstm_step(gates, x, c_prev):
    """LSTM equations: ``gates`` (a layer to ``4H``) applied to the input ``x``; ``c_prev`` f32 ``[H]``."""
    i, f, o, u = jnp.split(gates(x), 4, axis=-1)
    c = jax.nn.sigmoid(i) * jnp.tanh(u) + jax.nn.sigmoid(f) * c_prev
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


def _features(state) -> jax.Array:
    """The input features a state offers to an LSTM cell: ``x`` (embeddings) or ``h``."""
    return state["x"] if "x" in state else state["h"]


# ---------------------------------------------------------------------------
# Linen cells
# ---------------------------------------------------------------------------


class LeafCell(nn.Module):
    """Preterminal cell: word id (int32 scalar) -> ``{"h", "c"}`` (f32 [H] each); ``dropout`` on the embedding
    when called with a PRNG ``key``."""

    vocab_size: int
    embed: int
    hidden: int
    dropout: float = 0.0

    @nn.compact
    def __call__(self, word, key=None):
        return leaf_lstm(
            nn.Embed(self.vocab_size, self.embed, name="embed"),
            nn.Dense(3 * self.hidden, name="iou"),
            word,
            self.dropout,
            key,
        )


class InternalCell(nn.Module):
    """Binary cell: two child states -> ``{"h", "c"}``; no payload."""

    hidden: int

    @nn.compact
    def __call__(self, payload, left, right):
        del payload
        dense = lambda n, name: nn.Dense(n, name=name)
        return internal_lstm(
            dense(3 * self.hidden, "iou"), dense(self.hidden, "f_left"), dense(self.hidden, "f_right"), left, right
        )


class LossCell(nn.Module):
    """Per-node classifier: label (int32 scalar), state -> ``{"loss": f32[], "logits": f32[C]}``; ``dropout``
    on ``h`` when called with a PRNG ``key``."""

    num_classes: int = 5
    dropout: float = 0.0

    @nn.compact
    def __call__(self, label, state, key=None):
        return classify(nn.Dense(self.num_classes, name="out"), label, state["h"], self.dropout, key)


class InitCell(nn.Module):
    """Learned initial state (no payload, no operands): ``{"h", "c"}`` f32 ``[H]`` (``{"h"}`` when ``gru``)."""

    hidden: int
    gru: bool = False

    @nn.compact
    def __call__(self, payload):
        del payload
        state = {"h": self.param("h0", nn.initializers.zeros, (self.hidden,))}
        if not self.gru:
            state["c"] = self.param("c0", nn.initializers.zeros, (self.hidden,))
        return state


class LSTMArcCell(nn.Module):
    """Arc cell: embedding id (int32 scalar), source state ``{"h", "c"}`` -> ``{"h", "c"}``."""

    vocab_size: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, arc_id, src):
        x = nn.Embed(self.vocab_size, self.embed, name="embed")(arc_id)
        return lstm_step(nn.Dense(4 * self.hidden, name="gates"), jnp.concatenate([x, src["h"]], axis=-1), src["c"])


class EmbedCell(nn.Module):
    """Word id (int32 scalar) -> ``{"x": f32[E]}``."""

    vocab_size: int
    embed: int

    @nn.compact
    def __call__(self, word):
        return {"x": nn.Embed(self.vocab_size, self.embed, name="embed")(word)}


class LSTMCell(nn.Module):
    """LSTM step: previous ``{"h", "c"}`` and input states -> ``{"h", "c"}``; no payload.

    The input is the concatenation of the operands' features (``x`` of an
    embedding, ``h`` of an LSTM state), so a cell may read several inputs; the
    op's arity is ``1 + number of inputs``.
    """

    hidden: int

    @nn.compact
    def __call__(self, payload, prev, *inputs):
        del payload
        x = jnp.concatenate([_features(s) for s in inputs] + [prev["h"]], axis=-1)
        return lstm_step(nn.Dense(4 * self.hidden, name="gates"), x, prev["c"])


# ---------------------------------------------------------------------------
# NNX twins (the same parameter names)
# ---------------------------------------------------------------------------


class NNXLeafCell(nnx.Module):
    """:class:`LeafCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.iou = nnx.Linear(embed, 3 * hidden, rngs=rngs)
        self.dropout = dropout

    def __call__(self, word, key=None):
        return leaf_lstm(self.embed, self.iou, word, self.dropout, key)


class NNXInternalCell(nnx.Module):
    """:class:`InternalCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.iou = nnx.Linear(2 * hidden, 3 * hidden, rngs=rngs)
        self.f_left = nnx.Linear(hidden, hidden, rngs=rngs)
        self.f_right = nnx.Linear(hidden, hidden, rngs=rngs)

    def __call__(self, payload, left, right):
        del payload
        return internal_lstm(self.iou, self.f_left, self.f_right, left, right)


class NNXLossCell(nnx.Module):
    """:class:`LossCell` in ``flax.nnx`` (reads ``state["h"]``, or ``state[key]``); the same parameter names."""

    def __init__(self, hidden: int, num_classes: int = 5, *, key: str = "h", dropout: float = 0.0, rngs: nnx.Rngs):
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)
        self.key = key
        self.dropout = dropout

    def __call__(self, label, state, key=None):
        return classify(self.out, label, state[self.key], self.dropout, key)


class NNXInitCell(nnx.Module):
    """:class:`InitCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, hidden: int, gru: bool = False):
        self.h0 = nnx.Param(jnp.zeros(hidden))
        self.c0 = None if gru else nnx.Param(jnp.zeros(hidden))

    def __call__(self, payload):
        del payload
        state = {"h": self.h0[...]}
        if self.c0 is not None:
            state["c"] = self.c0[...]
        return state


class NNXLSTMArcCell(nnx.Module):
    """:class:`LSTMArcCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.gates = nnx.Linear(embed + hidden, 4 * hidden, rngs=rngs)

    def __call__(self, arc_id, src):
        return lstm_step(self.gates, jnp.concatenate([self.embed(arc_id), src["h"]], axis=-1), src["c"])


class NNXEmbedCell(nnx.Module):
    """:class:`EmbedCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)

    def __call__(self, word):
        return {"x": self.embed(word)}


class NNXLSTMCell(nnx.Module):
    """:class:`LSTMCell` in ``flax.nnx``: ``in_features`` is the summed width of the inputs' features."""

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.gates = nnx.Linear(in_features + hidden, 4 * hidden, rngs=rngs)

    def __call__(self, payload, prev, *inputs):
        del payload
        x = jnp.concatenate([_features(s) for s in inputs] + [prev["h"]], axis=-1)
        return lstm_step(self.gates, x, prev["c"])


# ---------------------------------------------------------------------------
# Cell specs: a Linen cell, its NNX twin and its example inputs, for a model's cell table
# ---------------------------------------------------------------------------


def tree_leaf_spec(vocab_size: int, embed: int, hidden: int, dropout: float = 0.0) -> CellSpec:
    """:class:`LeafCell` / :class:`NNXLeafCell`: payload the word id, no operands; stochastic with ``dropout``."""
    return CellSpec(
        LeafCell(vocab_size, embed, hidden, dropout),
        lambda rngs: NNXLeafCell(vocab_size, embed, hidden, dropout=dropout, rngs=rngs),
        payload_bounds=vocab_size,
        stochastic=dropout > 0,
    )


def tree_internal_spec(hidden: int) -> CellSpec:
    """:class:`InternalCell` / :class:`NNXInternalCell`: no payload, two ``{"h", "c"}`` operands."""
    state = lstm_state(hidden)
    return CellSpec(
        InternalCell(hidden), lambda rngs: NNXInternalCell(hidden, rngs=rngs), operands=(state, state), payload=False
    )


def classifier_spec(hidden: int, num_classes: int, dropout: float = 0.0) -> CellSpec:
    """:class:`LossCell` / :class:`NNXLossCell` of ``num_classes`` on a state's ``h`` f32 ``[H]``; payload the label;
    stochastic with ``dropout`` (on ``h``)."""
    return CellSpec(
        LossCell(num_classes, dropout),
        lambda rngs: NNXLossCell(hidden, num_classes, dropout=dropout, rngs=rngs),
        operands=(hidden_state(hidden),),
        payload_bounds=num_classes,
        stochastic=dropout > 0,
    )


def init_spec(hidden: int, gru: bool = False) -> CellSpec:
    """:class:`InitCell` / :class:`NNXInitCell`: no payload, no operands (the twin draws no random numbers)."""
    return CellSpec(InitCell(hidden, gru=gru), lambda rngs: NNXInitCell(hidden, gru=gru), payload=False)


def lstm_arc_spec(vocab_size: int, embed: int, hidden: int) -> CellSpec:
    """:class:`LSTMArcCell` / :class:`NNXLSTMArcCell`: payload the arc's embedding id, one ``{"h", "c"}`` operand."""
    return CellSpec(
        LSTMArcCell(vocab_size, embed, hidden),
        lambda rngs: NNXLSTMArcCell(vocab_size, embed, hidden, rngs=rngs),
        operands=(lstm_state(hidden),),
        payload_bounds=vocab_size,
    )


def embed_spec(vocab_size: int, embed: int) -> CellSpec:
    """:class:`EmbedCell` / :class:`NNXEmbedCell`: payload the word id, no operands."""
    return CellSpec(
        EmbedCell(vocab_size, embed), lambda rngs: NNXEmbedCell(vocab_size, embed, rngs=rngs), payload_bounds=vocab_size
    )


def lstm_spec(hidden: int, inputs: Sequence[StateSpec]) -> CellSpec:
    """:class:`LSTMCell` / :class:`NNXLSTMCell` reading the previous ``{"h", "c"}`` and the states ``inputs``.

    No payload; arity ``1 + len(inputs)``; the twin's ``in_features`` is the
    summed width of the inputs' features (``x`` of an embedding, else ``h``).
    """
    in_features = sum(s["x"][-1] if "x" in s else s["h"][-1] for s in inputs)
    return CellSpec(
        LSTMCell(hidden),
        lambda rngs: NNXLSTMCell(in_features, hidden, rngs=rngs),
        operands=(lstm_state(hidden), *inputs),
        payload=False,
        arity=1 + len(inputs),
    )
