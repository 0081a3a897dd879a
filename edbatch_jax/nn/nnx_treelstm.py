"""The Tree-LSTM cells of :mod:`edbatch_jax.nn.treelstm`, written with ``flax.nnx``.

Same equations and graphs as the Linen version; the cells own their
``nnx.Param`` variables. :class:`TreeLSTMCells` holds the three cells, so one
``nnx.split(cells, nnx.Param)`` gives the parameter ``nnx.State`` that the
engine differentiates and an ``nnx.Optimizer`` updates::

  cells = TreeLSTMCells(vocab_size, hidden=128, rngs=nnx.Rngs(0))
  ops = cells.ops()                                  # op name -> eb.Op
  graphdef, params = nnx.split(cells, nnx.Param)
  loss = lambda p: eb.run(ops, p, graph, sched, outputs=losses)["loss"].sum()
  grads = jax.grad(loss)(params)
  optimizer = nnx.Optimizer(cells, optax.adam(1e-3), wrt=nnx.Param)
  optimizer.update(cells, grads)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from edbatch_jax.engine.ops import Op, nnx_op

__all__ = ["NNXLeafCell", "NNXInternalCell", "NNXLossCell", "TreeLSTMCells"]


class NNXLeafCell(nnx.Module):
    """Preterminal cell: word id (int32 scalar) -> ``{"h", "c"}`` (f32 [H] each)."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.iou = nnx.Linear(embed, 3 * hidden, rngs=rngs)

    def __call__(self, word):
        i, o, u = jnp.split(self.iou(self.embed(word)), 3, axis=-1)
        c = jax.nn.sigmoid(i) * jnp.tanh(u)
        return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


class NNXInternalCell(nnx.Module):
    """Binary cell: two child states -> ``{"h", "c"}``; no payload."""

    def __init__(self, hidden: int, *, rngs: nnx.Rngs):
        self.iou = nnx.Linear(2 * hidden, 3 * hidden, rngs=rngs)
        self.f_left = nnx.Linear(hidden, hidden, rngs=rngs)
        self.f_right = nnx.Linear(hidden, hidden, rngs=rngs)

    def __call__(self, payload, left, right):
        del payload
        i, o, u = jnp.split(self.iou(jnp.concatenate([left["h"], right["h"]], axis=-1)), 3, axis=-1)
        f_l = jax.nn.sigmoid(self.f_left(left["h"]))
        f_r = jax.nn.sigmoid(self.f_right(right["h"]))
        c = jax.nn.sigmoid(i) * jnp.tanh(u) + f_l * left["c"] + f_r * right["c"]
        return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


class NNXLossCell(nnx.Module):
    """Per-node classifier: label (int32 scalar), state -> ``{"loss": f32[], "logits": f32[C]}``."""

    def __init__(self, hidden: int, num_classes: int = 5, *, rngs: nnx.Rngs):
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, label, state):
        logits = self.out(state["h"])
        return {"loss": optax.softmax_cross_entropy_with_integer_labels(logits, label), "logits": logits}


class TreeLSTMCells(nnx.Module):
    """The three Tree-LSTM cells; op types ``("leaf", "internal", "loss")``."""

    op_types = ("leaf", "internal", "loss")

    def __init__(self, vocab_size: int, hidden: int = 128, embed: int = 128, num_classes: int = 5, *, rngs: nnx.Rngs):
        self.leaf = NNXLeafCell(vocab_size, embed, hidden, rngs=rngs)
        self.internal = NNXInternalCell(hidden, rngs=rngs)
        self.loss = NNXLossCell(hidden, num_classes, rngs=rngs)

    def ops(self) -> dict[str, Op]:
        """Op name -> :class:`~edbatch_jax.Op`; each reads ``params[name]`` of ``nnx.split(self, nnx.Param)``."""
        return {name: nnx_op(getattr(self, name), name) for name in self.op_types}
