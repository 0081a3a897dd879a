"""Lattice-LSTM and Lattice-GRU taggers over character/word lattices (NER).

Graph of one lattice with ``L`` nodes and ``A`` arcs (ED-Batch section 9):

* node 0 is an ``init`` node: the learned initial state (no arguments);
* every arc is a ``char`` node (the arc from ``i - 1`` to ``i``) or a ``word``
  node (a longer arc); it reads its source node's state, and its payload is
  the arc's embedding id;
* every node ``i >= 1`` is a ``node`` node: the **sum** of the states of its
  incoming arcs (1 to k operands: a variable-arity op, nothing padded); the
  GRU variant takes the **mean** instead, because its unsquashed ``h`` summed
  over several arcs per node grows geometrically along the lattice;
* every node (0 included) gets a ``loss`` node: an 18-way tag classifier.

Node ids inside one lattice: states ``0..L-1``, then arcs ``L..L+A-1`` (in
the lattice's arc order), then losses ``L+A..2L+A-1``; lattices are
concatenated in order.

Cells (``flax.linen``), H = hidden size, E = embedding size:

* LSTM arc cell: ``x = Embed[id]``; ``i, f, o, u = W [x; h_src] + b``;
  ``c = σ(i) ⊙ tanh(u) + σ(f) ⊙ c_src``; ``h = σ(o) ⊙ tanh(c)``.
* GRU arc cell: ``r, z = σ(W_rz [x; h_src] + b)``;
  ``n = tanh(W_n [x; r ⊙ h_src] + b_n)``; ``h = (1 - z) ⊙ n + z ⊙ h_src``.

States: ``{"h", "c"}`` (LSTM) or ``{"h"}`` (GRU), f32 ``[H]``; loss states
``{"loss": f32[], "logits": f32[18]}``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from edbatch_jax.engine.flax_ops import NNXCells, linen_op
from edbatch_jax.engine.ops import Op
from edbatch_jax.graph import Graph, GraphError
from edbatch_jax.graph.csr import payload_rows
from edbatch_jax.zoo.models.treelstm import LossCell, NNXLossCell

__all__ = [
    "InitCell",
    "LSTMArcCell",
    "GRUArcCell",
    "NNXInitCell",
    "NNXLSTMArcCell",
    "NNXGRUArcCell",
    "LatticeTagger",
    "LATTICE_OP_TYPES",
]

LATTICE_OP_TYPES = ("init", "char", "word", "node", "loss")
"""Op types of a lattice graph, in type-id order."""


class InitCell(nn.Module):
    """Learned initial state of node 0 (no payload, no operands)."""

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


class GRUArcCell(nn.Module):
    """Arc cell: embedding id (int32 scalar), source state ``{"h"}`` -> ``{"h"}``."""

    vocab_size: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, arc_id, src):
        x = nn.Embed(self.vocab_size, self.embed, name="embed")(arc_id)
        return gru_step(nn.Dense(2 * self.hidden, name="rz"), nn.Dense(self.hidden, name="cand"), x, src["h"])


def lstm_step(gates, x, c_prev):
    """LSTM equations: ``gates`` (a layer to ``4H``) applied to the input ``x``; ``c_prev`` f32 ``[H]``."""
    i, f, o, u = jnp.split(gates(x), 4, axis=-1)
    c = jax.nn.sigmoid(i) * jnp.tanh(u) + jax.nn.sigmoid(f) * c_prev
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


def gru_step(rz, cand, x, h):
    """GRU equations, given the layers ``rz`` (to ``2H``) and ``cand`` (to ``H``), input ``x`` and state ``h``."""
    r, z = jnp.split(jax.nn.sigmoid(rz(jnp.concatenate([x, h], -1))), 2, -1)
    n = jnp.tanh(cand(jnp.concatenate([x, r * h], -1)))
    return {"h": (1.0 - z) * n + z * h}


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


class NNXGRUArcCell(nnx.Module):
    """:class:`GRUArcCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.rz = nnx.Linear(embed + hidden, 2 * hidden, rngs=rngs)
        self.cand = nnx.Linear(embed + hidden, hidden, rngs=rngs)

    def __call__(self, arc_id, src):
        return gru_step(self.rz, self.cand, self.embed(arc_id), src["h"])


def _node_sum(params, payload, total):
    """A lattice node: its state is the sum of its incoming arcs' states."""
    del params, payload
    return total


@dataclasses.dataclass(frozen=True)
class LatticeTagger:
    """Lattice-LSTM (``cell="lstm"``) or Lattice-GRU (``cell="gru"``) tagger.

    Attributes:
      vocab_size: rows of each embedding table (arc ids are taken modulo it).
      hidden: hidden size H (default 128).
      embed: embedding size (default 128).
      num_tags: tag classes (18 for the NER lattices).
      cell: ``"lstm"`` or ``"gru"``.
    """

    vocab_size: int = 4096
    hidden: int = 128
    embed: int = 128
    num_tags: int = 18
    cell: str = "lstm"

    def __post_init__(self):
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")

    op_types = LATTICE_OP_TYPES

    @property
    def cells(self) -> dict[str, nn.Module]:
        arc = LSTMArcCell if self.cell == "lstm" else GRUArcCell
        return {
            "init": InitCell(self.hidden, gru=self.cell == "gru"),
            "char": arc(self.vocab_size, self.embed, self.hidden),
            "word": arc(self.vocab_size, self.embed, self.hidden),
            "loss": LossCell(self.num_tags),
        }

    @functools.cached_property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`Op`; ``node`` is a variadic sum."""
        ops = {name: linen_op(cell, name) for name, cell in self.cells.items()}
        # LSTM: the sum of the arcs (h is squashed by tanh, so sums stay bounded). GRU: the mean, since
        # its h is not squashed and a sum over 1..k arcs per node grows geometrically along the lattice.
        ops["node"] = Op(_node_sum, aggregate="sum" if self.cell == "lstm" else "mean")
        return ops

    def nnx_cells(self, *, rngs: nnx.Rngs) -> NNXCells:
        """The same cells as ``flax.nnx`` modules in an :class:`~edbatch_jax.NNXCells`."""
        arc = NNXLSTMArcCell if self.cell == "lstm" else NNXGRUArcCell
        cells = {
            "init": NNXInitCell(self.hidden, gru=self.cell == "gru"),
            "char": arc(self.vocab_size, self.embed, self.hidden, rngs=rngs),
            "word": arc(self.vocab_size, self.embed, self.hidden, rngs=rngs),
            "loss": NNXLossCell(self.hidden, self.num_tags, rngs=rngs),
        }
        return NNXCells.matching(self.ops, cells)

    def init(self, rng: jax.Array) -> dict:
        """Parameters ``{"init", "char", "word", "loss"}`` (f32)."""
        keys = jax.random.split(rng, 4)
        cells = self.cells
        state = {"h": jnp.zeros(self.hidden)}
        if self.cell == "lstm":
            state["c"] = jnp.zeros(self.hidden)
        return {
            "init": cells["init"].init(keys[0], None)["params"],
            "char": cells["char"].init(keys[1], jnp.int32(0), state)["params"],
            "word": cells["word"].init(keys[2], jnp.int32(0), state)["params"],
            "loss": cells["loss"].init(keys[3], jnp.int32(0), state)["params"],
        }

    def batch_graph(self, lattices: Sequence) -> Graph:
        """The batched graph of several lattices (one instance per lattice).

        Args:
          lattices: :class:`~edbatch_jax.zoo.data.lattice.Lattice` objects.

        Raises:
          GraphError: empty batch.
        """
        if not lattices:
            raise GraphError("batch_graph got an empty batch: no lattices")
        types, ptrs, idxs, arc_ids, tags = [], [], [], [], []
        base = 0
        for lat in lattices:
            n, a = lat.num_nodes, lat.num_arcs
            state_type = np.full(n, 3, np.int32)
            state_type[0] = 0
            arc_type = np.where(lat.is_char, 1, 2).astype(np.int32)
            types += [state_type, arc_type, np.full(n, 4, np.int32)]
            in_deg = np.bincount(lat.arc_dst, minlength=n)
            arity = np.concatenate([in_deg, np.ones(a, np.int64), np.ones(n, np.int64)])
            ptrs.append(arity)
            order = np.argsort(lat.arc_dst, kind="stable")  # arcs grouped by destination
            idxs += [base + n + order, base + np.asarray(lat.arc_src), base + np.arange(n)]
            arc_ids.append(np.asarray(lat.arc_id) % self.vocab_size)
            tags.append(np.asarray(lat.tags))
            base += 2 * n + a
        node_type = np.concatenate(types)
        arity = np.concatenate(ptrs)
        ids = np.concatenate(arc_ids).astype(np.int32)
        arc_is_char = np.concatenate([np.asarray(lat.is_char) for lat in lattices])
        sizes = [2 * lat.num_nodes + lat.num_arcs for lat in lattices]
        return Graph(
            node_type=node_type,
            arg_ptr=np.concatenate([[0], np.cumsum(arity)]).astype(np.int32),
            arg_idx=np.concatenate(idxs).astype(np.int32),
            instance=np.repeat(np.arange(len(lattices), dtype=np.int32), sizes),
            payload_row=payload_rows(node_type, len(LATTICE_OP_TYPES)),
            payloads=(None, ids[arc_is_char], ids[~arc_is_char], None, np.concatenate(tags).astype(np.int32)),
            op_types=LATTICE_OP_TYPES,
            num_instances=len(lattices),
        )
