"""A program model: one cell per node kind of :mod:`~edbatch_jax.zoo.data.programs` (48), and a root classifier.

Graph of one :class:`~edbatch_jax.zoo.data.programs.ProgramTree` (post-order):
program node ``k`` is node ``k`` of its instance, of the op type named by its
kind, reading its children in argument order; a ``loss`` node after the
root reads the root (payload: the label), so it is the last node of the
instance. 49 op types in all (:data:`~edbatch_jax.zoo.data.programs.KINDS`,
then ``loss``).

Cells (``flax.linen``, with ``flax.nnx`` twins), H = hidden size, σ the
logistic sigmoid, one parameter set per kind:

* a gated update of every kind with arguments or a payload:
  ``z, u = W x + b`` (to ``2H``); ``h = σ(z) ⊙ tanh(u) + (1 - σ(z)) ⊙ carry``;
* leaves with a payload (``num``, ``var``): ``x = Embed[payload]``,
  ``carry = 0``;
* constant leaves (``true``, ``false``, ``none``): ``h = tanh(h0)``, ``h0`` a
  learned f32 ``[H]``;
* fixed arity 1 to 3: ``x = [Embed[payload];] h_1; ...; h_k`` (the payload's
  embedding for ``attr``), ``carry`` the children's mean ``h``;
* variadic kinds (1 to 6 arguments): the op's ``edge`` maps every argument
  to a message ``m_j = tanh(M h_j + c)``, reduced by the kind's aggregate
  (``sum``: ``call``, ``count``, ``sum``, ``prod``; ``max``: ``maximum``,
  ``minimum``; ``mean``: ``all``, ``any``) to ``m``; ``x = [Embed[payload];]
  m`` (the payload's embedding for ``call``), ``carry = tanh(m)``;
* loss: ``logits = W_o h + b_o`` (10 classes) and the softmax cross-entropy.

States: ``{"h": f32[H]}`` for every kind (one buffer), ``{"loss": f32[],
"logits": f32[10]}`` for loss nodes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from edbatch_jax.graph import Graph
from edbatch_jax.zoo.data.programs import KINDS, NUM_VALUES, PAYLOAD_SIZES, ProgramTree, kind_arity
from edbatch_jax.zoo.models.base import CellModel, CellSpec, hidden_state
from edbatch_jax.zoo.models.cells import classifier_spec
from edbatch_jax.zoo.models.graphs import check_nonempty, instance_graph

__all__ = ["KIND_AGGREGATES", "KindCell", "NNXKindCell", "ProgramModel", "kind_update"]

KIND_AGGREGATES = {
    "call": "sum",
    "count": "sum",
    "sum": "sum",
    "prod": "sum",
    "maximum": "max",
    "minimum": "max",
    "all": "mean",
    "any": "mean",
}
"""Variadic kind -> how its op reduces the messages of its arguments."""


def kind_update(gates, x: jax.Array, carry: jax.Array) -> dict:
    """The gated update, given the layer ``gates`` (to ``2H``): ``{"h": σ(z) ⊙ tanh(u) + (1 - σ(z)) ⊙ carry}``."""
    z, u = jnp.split(gates(x), 2, axis=-1)
    s = jax.nn.sigmoid(z)
    return {"h": s * jnp.tanh(u) + (1.0 - s) * carry}


def _kind_state(cell, payload, args: Sequence[dict]) -> dict:
    """A kind's state from its layers (Linen or NNX: ``h0`` or ``embed``, ``gates``), payload and arguments."""
    if cell.arity == 0 and not cell.vocab:
        return {"h": jnp.tanh(cell.h0[...])}
    parts = [cell.embed(payload)] if cell.vocab else []
    hs = [a["h"] for a in args]
    if cell.arity < 0:  # one operand: the reduced messages
        carry = jnp.tanh(hs[0])
    elif hs:
        carry = sum(hs) / len(hs)
    else:
        carry = jnp.zeros_like(parts[0])
    return kind_update(cell.gates, jnp.concatenate(parts + hs, axis=-1), carry)


class KindCell(nn.Module):
    """The cell of one node kind: ``__call__(payload, *operand_states)`` -> ``{"h": f32[H]}``.

    Attributes:
      hidden: H.
      arity: 0 to 3 operand states, or ``-1`` for a variadic kind (one
        operand: the reduced messages of its ``edge``).
      vocab: payload values (an int32 scalar embedded as ``x``'s first part),
        or 0 for a kind without payload.
    """

    hidden: int
    arity: int
    vocab: int = 0

    def setup(self):
        if self.arity == 0 and not self.vocab:
            self.h0 = self.param("h0", nn.initializers.normal(1.0), (self.hidden,))
            return
        if self.vocab:
            self.embed = nn.Embed(self.vocab, self.hidden)
        self.gates = nn.Dense(2 * self.hidden)
        if self.arity < 0:
            self.message = nn.Dense(self.hidden)

    def edge(self, payload, child):
        """A variadic kind's message of one argument: ``{"h": tanh(M h_j + c)}``."""
        del payload
        return {"h": jnp.tanh(self.message(child["h"]))}

    def __call__(self, payload, *args):
        return _kind_state(self, payload, args)


class NNXKindCell(nnx.Module):
    """The NNX twin of :class:`KindCell` (the same parameter tree)."""

    def __init__(self, hidden: int, arity: int, vocab: int = 0, *, rngs: nnx.Rngs):
        self.arity, self.vocab = arity, vocab
        if arity == 0 and not vocab:
            self.h0 = nnx.Param(jax.random.normal(rngs.params(), (hidden,)))
            return
        if vocab:
            self.embed = nnx.Embed(vocab, hidden, rngs=rngs)
        width = (hidden if vocab else 0) + hidden * (1 if arity < 0 else arity)
        self.gates = nnx.Linear(width, 2 * hidden, rngs=rngs)
        if arity < 0:
            self.message = nnx.Linear(hidden, hidden, rngs=rngs)

    def edge(self, payload, child):
        del payload
        return {"h": jnp.tanh(self.message(child["h"]))}

    def __call__(self, payload, *args):
        return _kind_state(self, payload, args)


def _kind_spec(kind: str, hidden: int) -> CellSpec:
    arity, vocab = kind_arity(kind), PAYLOAD_SIZES.get(kind, 0)
    state = hidden_state(hidden)
    return CellSpec(
        KindCell(hidden, arity, vocab),
        lambda rngs: NNXKindCell(hidden, arity, vocab, rngs=rngs),
        operands=(state,) * (1 if arity < 0 else arity),
        payload=bool(vocab),
        arity=None if arity < 0 else arity,
        aggregate=KIND_AGGREGATES.get(kind),
        payload_bounds=vocab or None,
        edge=arity < 0,
    )


@dataclasses.dataclass(frozen=True)
class ProgramModel(CellModel):
    """Predicts a program's value (10 classes) from its tree: a cell per node kind, a classifier at the root.

    Attributes:
      hidden: hidden size H (default 128).
    """

    hidden: int = 128

    op_types = (*KINDS, "loss")

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: one :class:`KindCell` per kind, then the root classifier."""
        table = {kind: _kind_spec(kind, self.hidden) for kind in KINDS}
        table["loss"] = classifier_spec(self.hidden, NUM_VALUES)
        return table

    def batch_graph(self, programs: Sequence[ProgramTree]) -> Graph:
        """The batched graph of several programs (one instance per program), built vectorised.

        Program ``i`` of ``n_i`` nodes takes ids ``o_i .. o_i + n_i`` (its
        nodes in post-order, then its loss node), ``o_i`` the nodes of the
        instances before it. Payloads: int32 per kind that has one (in node
        order; empty when the batch has no node of it), the labels for
        ``loss``; ``None`` for the other kinds.

        Raises:
          GraphError: ``programs`` is empty.
        """
        check_nonempty(programs, "programs")
        sizes = np.fromiter((p.num_nodes for p in programs), np.int64, count=len(programs))
        base = np.cumsum(sizes + 1) - (sizes + 1)  # first node of every instance
        inst = np.repeat(np.arange(sizes.size), sizes)
        pos = np.arange(inst.size) + inst  # node id of every program node
        loss = base + sizes  # node id of every loss node
        kinds = np.concatenate([p.kinds for p in programs])
        kids = np.concatenate([p.num_children for p in programs])
        counts = np.ones(pos.size + loss.size, np.int64)
        counts[pos] = kids
        arg_ptr = np.zeros(counts.size + 1, np.int32)
        np.cumsum(counts, out=arg_ptr[1:])
        arg_idx = np.empty(int(arg_ptr[-1]), np.int32)
        parent = np.repeat(np.arange(pos.size), kids)
        within = np.arange(parent.size) - np.repeat(np.cumsum(kids) - kids, kids)
        child = np.concatenate([p.child_idx for p in programs])
        arg_idx[arg_ptr[pos[parent]] + within] = base[inst[parent]] + child
        arg_idx[arg_ptr[loss]] = loss - 1  # the root
        node_type = np.full(counts.size, len(KINDS), np.int32)
        node_type[pos] = kinds
        payload = np.concatenate([p.payloads for p in programs])
        payloads = [
            payload[kinds == k].astype(np.int32) if name in PAYLOAD_SIZES else None for k, name in enumerate(KINDS)
        ]
        payloads.append(np.array([p.label for p in programs], np.int32))
        return instance_graph(node_type, arg_ptr, arg_idx, sizes + 1, payloads, self.op_types)
