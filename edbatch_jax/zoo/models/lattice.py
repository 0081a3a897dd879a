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

The initial-state and LSTM arc cells live in :mod:`edbatch_jax.zoo.models.cells`
(shared with the random-DAG model) and are re-exported here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from edbatch_jax.engine.ops import Op
from edbatch_jax.graph import Graph, GraphError
from edbatch_jax.zoo.models.base import CellSpec, EmbeddingModel, hidden_state
from edbatch_jax.zoo.models.cells import (
    InitCell,
    LSTMArcCell,
    NNXInitCell,
    NNXLSTMArcCell,
    classifier_spec,
    init_spec,
    lstm_arc_spec,
)
from edbatch_jax.zoo.models.graphs import check_nonempty, instance_graph
from edbatch_jax.zoo.models.kernels import lattice_arrays

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


class GRUArcCell(nn.Module):
    """Arc cell: embedding id (int32 scalar), source state ``{"h"}`` -> ``{"h"}``."""

    vocab_size: int
    embed: int
    hidden: int

    @nn.compact
    def __call__(self, arc_id, src):
        x = nn.Embed(self.vocab_size, self.embed, name="embed")(arc_id)
        return gru_step(nn.Dense(2 * self.hidden, name="rz"), nn.Dense(self.hidden, name="cand"), x, src["h"])


def gru_step(rz, cand, x, h):
    """GRU equations, given the layers ``rz`` (to ``2H``) and ``cand`` (to ``H``), input ``x`` and state ``h``."""
    r, z = jnp.split(jax.nn.sigmoid(rz(jnp.concatenate([x, h], -1))), 2, -1)
    n = jnp.tanh(cand(jnp.concatenate([x, r * h], -1)))
    return {"h": (1.0 - z) * n + z * h}


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
class LatticeTagger(EmbeddingModel):
    """Lattice-LSTM (``cell="lstm"``) or Lattice-GRU (``cell="gru"``) tagger.

    Attributes (``hidden``, ``embed``: those of :class:`~edbatch_jax.zoo.models.base.EmbeddingModel`):
      vocab_size: rows of each embedding table (arc ids are taken modulo it; default 4096).
      num_tags: tag classes (18 for the NER lattices).
      cell: ``"lstm"`` or ``"gru"``.
    """

    vocab_size: int = 4096
    num_tags: int = 18
    cell: str = "lstm"

    def __post_init__(self):
        if self.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")

    op_types = LATTICE_OP_TYPES

    def _arc_spec(self) -> CellSpec:
        """The LSTM or GRU arc cell (``char`` and ``word`` each get one, with their own parameters)."""
        v, e, h = self.vocab_size, self.embed, self.hidden
        if self.cell == "lstm":
            return lstm_arc_spec(v, e, h)
        return CellSpec(
            GRUArcCell(v, e, h),
            lambda rngs: NNXGRUArcCell(v, e, h, rngs=rngs),
            operands=(hidden_state(h),),
            payload_bounds=v,
        )

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the initial state, the char and word arc cells, the tag classifier."""
        return {
            "init": init_spec(self.hidden, gru=self.cell == "gru"),
            "char": self._arc_spec(),
            "word": self._arc_spec(),
            "loss": classifier_spec(self.hidden, self.num_tags),
        }

    def extra_ops(self) -> dict[str, Op]:
        """``node``: a variadic sum (LSTM) or mean (GRU) of the incoming arcs' states.

        LSTM: the sum of the arcs (h is squashed by tanh, so sums stay bounded). GRU: the mean, since
        its h is not squashed and a sum over 1..k arcs per node grows geometrically along the lattice.
        """
        return {"node": Op(_node_sum, aggregate="sum" if self.cell == "lstm" else "mean")}

    def batch_graph(self, lattices: Sequence) -> Graph:
        """The batched graph of several lattices (one instance per lattice).

        Args:
          lattices: :class:`~edbatch_jax.zoo.data.lattice.Lattice` objects.

        Raises:
          GraphError: empty batch.
        """
        check_nonempty(lattices, "lattices")
        num_nodes = np.fromiter((lat.num_nodes for lat in lattices), np.int64, count=len(lattices))
        num_arcs = np.fromiter((lat.num_arcs for lat in lattices), np.int64, count=len(lattices))
        src = np.concatenate([lat.arc_src for lat in lattices])
        dst = np.concatenate([lat.arc_dst for lat in lattices])
        bad, node_type, arg_ptr, arg_idx = lattice_arrays(num_nodes, num_arcs, src, dst)
        if bad >= 0:
            raise GraphError(
                f"lattice {bad}: an arc is not forward within its {num_nodes[bad]} nodes (0 <= arc_src < arc_dst "
                "< L is needed; build lattices with the Lattice constructor, which checks it)"
            )
        ids = (np.concatenate([lat.arc_id for lat in lattices]) % self.vocab_size).astype(np.int32)
        is_char = src == dst - 1
        tags = np.concatenate([lat.tags for lat in lattices]).astype(np.int32)
        return instance_graph(
            node_type,
            arg_ptr,
            arg_idx,
            2 * num_nodes + num_arcs,
            (None, ids[is_char], ids[~is_char], None, tags),
            LATTICE_OP_TYPES,
        )
