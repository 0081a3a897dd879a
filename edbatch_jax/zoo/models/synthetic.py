"""Models of the synthetic ED-Batch workloads: N-d LSTM grids, random-DAG LSTMs, perfect-tree LSTMs.

Inputs come from :mod:`edbatch_jax.zoo.data.synthetic_graphs`. Every model has
``op_types``, ``cells``, ``ops``, ``init(rng)`` and ``nnx_cells`` (from its
cell table, :class:`~edbatch_jax.zoo.models.base.CellModel`) and a vectorised
``batch_graph(instances)``; every instance ends with a ``loss`` node (payload:
the int32 label; state ``{"loss": f32[], "logits": f32[C]}``), the
:class:`~edbatch_jax.zoo.models.cells.LossCell` classifier of a ``{"h", "c"}``
state. Node ids are local to an instance, instances are concatenated in
order, and ids are a topological order (every operand has a smaller id).
H = hidden size, E = embedding size.

**N-d grid LSTM** (:class:`GridLSTM`, op types ``("init", "cell", "loss")``).
Graph of one grid of ``P`` cells (row-major order ``k``): node ``0`` is the
``init`` node (learned initial state, no operands); node ``1 + k`` the
``cell`` of cell ``k`` (payload: its token id), reading its ``N``
predecessors, one per dimension in dimension order (the cell one step back
along that dimension); a predecessor outside the grid is replaced by the
init node, so every cell has exactly ``N`` operands; node ``1 + P + k`` the
``loss`` of cell ``k``. The last node is the loss of the last cell (the far
corner). Cell: ``x = Embed[token]``; ``i, o, u, f_1..f_N = W [x; h_1..h_N] + b``;
``c = σ(i) ⊙ tanh(u) + (1/N) Σ_d σ(f_d) ⊙ c_d``; ``h = σ(o) ⊙ tanh(c)``.
The ``1/N`` keeps ``c`` bounded as in a 1-D LSTM: with ``N`` unscaled forget
terms the cell state can grow geometrically along the grid.

**Random-DAG LSTM** (:class:`DagLSTM`, op types ``("init", "arc_a", "arc_b",
"state", "loss")``). Graph of one DAG of ``S`` states and ``A`` arcs (arcs
sorted by destination, then source): state ``i`` is preceded by its incoming
arcs and followed by its loss, so arc ``k`` (into state ``d``) is node
``2d + k``, state ``i`` is node ``2i + A_i`` and its loss node ``2i + A_i + 1``,
``A_i`` being the number of arcs into states ``0 .. i`` (state 0, without
incoming arcs, is nodes 0 and 1). State 0 is the ``init`` node (learned
initial state), the others are ``state`` nodes; an arc is an ``arc_a`` or
``arc_b`` node by its type (the Lattice-LSTM arc cell,
:class:`~edbatch_jax.zoo.models.cells.LSTMArcCell`, with its own parameters
per type, reading the arc's source state; payload: the arc's token id). A
``state`` node has a variable number of operands (its incoming arcs, in arc
order) combined with aggregate ``"sum"``; the op then divides the sum by the
in-degree (its payload), so a state is the mean of its arcs and magnitudes
stay bounded over 200 states. Every state has a ``loss`` node. The last node
is the loss of the last state.

**Perfect-tree LSTM** (:class:`BinaryTreeLSTM`, op types ``("leaf",
"internal", "loss")``): the Tree-LSTM cells of :mod:`edbatch_jax.zoo.models.cells`
on perfect binary trees; tree node ``k`` (post-order) of a tree becomes cell
node ``2k`` (``leaf`` with the token id as payload, or ``internal`` reading
its two children) and loss node ``2k + 1``; the last node is the root's loss.
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
from edbatch_jax.graph.csr import csr_by_source
from edbatch_jax.zoo.models.base import CellModel, CellSpec, EmbeddingModel, lstm_state
from edbatch_jax.zoo.models.cells import (
    classifier_spec,
    init_spec,
    lstm_arc_spec,
    tree_internal_spec,
    tree_leaf_spec,
)
from edbatch_jax.zoo.models.graphs import (
    binary_tree_graph,
    check_nonempty,
    instance_graph,
    padded_csr,
    token_positions,
)

__all__ = [
    "BINARY_TREE_OP_TYPES",
    "DAG_OP_TYPES",
    "GRID_OP_TYPES",
    "BinaryTreeLSTM",
    "DagLSTM",
    "GridCell",
    "GridLSTM",
    "NNXGridCell",
]

GRID_OP_TYPES = ("init", "cell", "loss")
DAG_OP_TYPES = ("init", "arc_a", "arc_b", "state", "loss")
BINARY_TREE_OP_TYPES = ("leaf", "internal", "loss")


# ---------------------------------------------------------------------------
# N-d grid LSTM
# ---------------------------------------------------------------------------


class GridCell(nn.Module):
    """N-d LSTM cell: token id (int32 scalar) and ``ndim`` predecessor states -> ``{"h", "c"}``."""

    vocab_size: int
    embed: int
    hidden: int
    ndim: int

    @nn.compact
    def __call__(self, token, *preds):
        x = nn.Embed(self.vocab_size, self.embed, name="embed")(token)
        return grid_lstm_step(nn.Dense((3 + self.ndim) * self.hidden, name="gates"), x, preds)


def grid_lstm_step(gates, x, preds):
    """N-d LSTM equations: ``gates`` (a layer to ``(3 + N) H``) on ``[x; h_1 .. h_N]``.

    One forget gate per predecessor."""
    n = len(preds)
    i, o, u, *f = jnp.split(gates(jnp.concatenate([x] + [p["h"] for p in preds], -1)), 3 + n, axis=-1)
    c = jax.nn.sigmoid(i) * jnp.tanh(u) + sum(jax.nn.sigmoid(fd) * p["c"] for fd, p in zip(f, preds)) / n
    return {"h": jax.nn.sigmoid(o) * jnp.tanh(c), "c": c}


class NNXGridCell(nnx.Module):
    """:class:`GridCell` in ``flax.nnx``; the same parameter names."""

    def __init__(self, vocab_size: int, embed: int, hidden: int, ndim: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, embed, rngs=rngs)
        self.gates = nnx.Linear(embed + ndim * hidden, (3 + ndim) * hidden, rngs=rngs)

    def __call__(self, token, *preds):
        return grid_lstm_step(self.gates, self.embed(token), preds)


@dataclasses.dataclass(frozen=True)
class GridLSTM(CellModel):
    """N-d grid LSTM over :class:`~edbatch_jax.zoo.data.synthetic_graphs.Grid` inputs (see the module docstring).

    Attributes:
      ndim: number of grid dimensions N (1, 2 or 3 in the reference workloads).
      vocab_size: rows of the embedding table (token ids are taken modulo it).
      hidden: hidden size H (default 128).
      embed: embedding size E (default 128).
      num_classes: label classes (default 5).
    """

    ndim: int
    vocab_size: int = 100
    hidden: int = 128
    embed: int = 128
    num_classes: int = 5

    op_types = GRID_OP_TYPES

    def __post_init__(self):
        if self.ndim < 1:
            raise ValueError(f"ndim must be >= 1, got {self.ndim}")

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the initial state, the N-d cell (``ndim`` operands), the classifier."""
        v, e, h, n = self.vocab_size, self.embed, self.hidden, self.ndim
        return {
            "init": init_spec(h),
            "cell": CellSpec(
                GridCell(v, e, h, n),
                lambda rngs: NNXGridCell(v, e, h, n, rngs=rngs),
                operands=(lstm_state(h),) * n,
                arity=n,
            ),
            "loss": classifier_spec(h, self.num_classes),
        }

    def batch_graph(self, grids: Sequence) -> Graph:
        """The batched graph of several grids (one instance per grid), built vectorised.

        Raises:
          GraphError: an empty batch, or a grid whose number of dimensions is not ``ndim``.
        """
        check_nonempty(grids, "grids")
        bad = [k for k, g in enumerate(grids) if len(g.shape) != self.ndim]
        if bad:
            raise GraphError(f"grid {bad[0]} has shape {grids[bad[0]].shape}; this model takes {self.ndim}-d grids")
        n = len(grids)
        shapes = np.array([g.shape for g in grids], dtype=np.int64).reshape(n, self.ndim)
        strides = np.cumprod(shapes[:, ::-1], axis=1)[:, ::-1] // shapes  # row-major
        cells = shapes.prod(axis=1)
        sizes = 1 + 2 * cells
        base = np.cumsum(sizes) - sizes
        inst, k = token_positions(cells)
        cell = base[inst] + 1 + k
        coord = (k[:, None] // strides[inst]) % shapes[inst]
        seg_len = np.stack([np.ones_like(cells), cells, cells], axis=1).ravel()  # init, cells, losses
        node_type = np.repeat(np.tile(np.arange(3, dtype=np.int32), n), seg_len)
        args = np.full((int(sizes.sum()), self.ndim), -1, np.int64)
        args[cell] = np.where(coord > 0, cell[:, None] - strides[inst], base[inst][:, None])
        args[cell + cells[inst], 0] = cell
        tokens = np.concatenate([g.tokens for g in grids]).astype(np.int64) % self.vocab_size
        payloads = (None, tokens.astype(np.int32), np.concatenate([g.labels for g in grids]).astype(np.int32))
        return instance_graph(node_type, *padded_csr(args), sizes, payloads, self.op_types)


# ---------------------------------------------------------------------------
# Random-DAG LSTM
# ---------------------------------------------------------------------------


def _state_mean(params, in_degree, total):
    """A DAG state: the sum of its incoming arcs' states (aggregate "sum") over its in-degree."""
    del params
    return jax.tree.map(lambda x: x / in_degree.astype(x.dtype), total)


@dataclasses.dataclass(frozen=True)
class _SyntheticModel(EmbeddingModel):
    """The hyperparameters of the random-DAG and perfect-tree models (those of the grid, after its ``ndim``).

    Attributes (``hidden``, ``embed``: those of :class:`~edbatch_jax.zoo.models.base.EmbeddingModel`):
      vocab_size: rows of each embedding table (token ids are taken modulo it; default 100).
      num_classes: label classes (default 5).
    """

    vocab_size: int = 100
    num_classes: int = 5


@dataclasses.dataclass(frozen=True)
class DagLSTM(_SyntheticModel):
    """LSTM over :class:`~edbatch_jax.zoo.data.synthetic_graphs.RandomDAG` inputs (see the module docstring).

    Attributes: ``vocab_size`` (rows of each arc embedding table; default 100),
    ``hidden``, ``embed``, ``num_classes`` (default 5).
    """

    op_types = DAG_OP_TYPES

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the initial state, the two arc cells (own parameters), the classifier."""
        return {
            "init": init_spec(self.hidden),
            "arc_a": lstm_arc_spec(self.vocab_size, self.embed, self.hidden),
            "arc_b": lstm_arc_spec(self.vocab_size, self.embed, self.hidden),
            "loss": classifier_spec(self.hidden, self.num_classes),
        }

    def extra_ops(self) -> dict[str, Op]:
        """``state``: the sum of its incoming arcs' states (aggregate ``"sum"``) over its in-degree."""
        return {"state": Op(_state_mean, aggregate="sum")}

    def batch_graph(self, dags: Sequence) -> Graph:
        """The batched graph of several DAGs (one instance per DAG), built vectorised.

        Raises:
          GraphError: empty batch.
        """
        check_nonempty(dags, "DAGs")
        num_states = np.array([d.num_states for d in dags], dtype=np.int64)
        num_arcs = np.array([d.num_arcs for d in dags], dtype=np.int64)
        sizes = 2 * num_states + num_arcs
        base = np.cumsum(sizes) - sizes
        s_inst, s_local = token_positions(num_states)
        a_inst, a_local = token_positions(num_arcs)
        state_offset = np.cumsum(num_states) - num_states
        dst = np.concatenate([d.arc_dst for d in dags]).astype(np.int64)
        src = np.concatenate([d.arc_src for d in dags]).astype(np.int64)
        arc_type = np.concatenate([d.arc_type for d in dags])
        # arcs into states 0..i of the same DAG (arcs are sorted by destination)
        indeg = np.bincount(state_offset[a_inst] + dst, minlength=int(num_states.sum()))
        arcs_upto = np.cumsum(indeg) - np.repeat(np.cumsum(num_arcs) - num_arcs, num_states)
        state_node = base[s_inst] + 2 * s_local + arcs_upto
        loss_node = state_node + 1
        arc_node = base[a_inst] + 2 * dst + a_local
        num_nodes = int(sizes.sum())
        node_type = np.full(num_nodes, 3, np.int32)
        node_type[base] = 0
        node_type[arc_node] = 1 + arc_type
        node_type[loss_node] = 4
        # Operand edges (consumer, operand): a state reads its arcs in arc order,
        # an arc its source state, a loss its state.
        consumer = np.concatenate([state_node[state_offset[a_inst] + dst], arc_node, loss_node])
        operand = np.concatenate([arc_node, state_node[state_offset[a_inst] + src], state_node])
        arg_ptr, arg_idx = csr_by_source(consumer, operand, num_nodes)
        in_degree = np.diff(arg_ptr)[node_type == 3].astype(np.int32)
        tokens = (np.concatenate([d.arc_token for d in dags]).astype(np.int64) % self.vocab_size).astype(np.int32)
        labels = np.concatenate([d.labels for d in dags]).astype(np.int32)
        payloads = (None, tokens[arc_type == 0], tokens[arc_type == 1], in_degree, labels)
        return instance_graph(node_type, arg_ptr, arg_idx, sizes, payloads, self.op_types)


# ---------------------------------------------------------------------------
# Perfect-tree LSTM
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BinaryTreeLSTM(_SyntheticModel):
    """Tree-LSTM over :class:`~edbatch_jax.zoo.data.synthetic_graphs.PerfectTree` inputs (see the module docstring).

    Attributes: ``vocab_size`` (default 100), ``hidden``, ``embed``, ``num_classes`` (default 5).
    """

    op_types = BINARY_TREE_OP_TYPES

    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> cell: the Tree-LSTM leaf and internal cells and the classifier."""
        return {
            "leaf": tree_leaf_spec(self.vocab_size, self.embed, self.hidden),
            "internal": tree_internal_spec(self.hidden),
            "loss": classifier_spec(self.hidden, self.num_classes),
        }

    def batch_graph(self, trees: Sequence) -> Graph:
        """The batched graph of several perfect trees (one instance per tree), built vectorised.

        Raises:
          GraphError: empty batch.
        """
        check_nonempty(trees, "trees")
        sizes = np.array([t.num_nodes for t in trees], dtype=np.int64)
        left = np.concatenate([t.left for t in trees]).astype(np.int64)
        right = np.concatenate([t.right for t in trees]).astype(np.int64)
        labels = np.concatenate([t.labels for t in trees])
        tokens = (np.concatenate([t.tokens for t in trees]).astype(np.int64) % self.vocab_size).astype(np.int32)
        return binary_tree_graph(sizes, left, right, labels, tokens, self.op_types)
