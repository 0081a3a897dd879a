"""The skeleton every bundled model shares: a table of cells per op type, and what follows from it.

A model is a frozen dataclass of its hyperparameters that subclasses
:class:`CellModel` and declares

* ``op_types``: its op type names in type-id order (learned policy files and
  graphs refer to them);
* :meth:`CellModel.cell_table`: one :class:`CellSpec` per op type with
  parameters: the ``flax.linen`` module, the factory of its ``flax.nnx`` twin
  (the same parameter tree), the operand states its parameters are
  initialised with, and the arity or aggregate of its op;
* :meth:`CellModel.extra_ops` (optional): the op types without parameters;
* its graph construction (``batch_graph``).

From the table, :class:`CellModel` derives, once for every model: ``cells``
(the Linen modules), ``ops`` (one :class:`~edbatch_jax.engine.ops.Op` per op
type, reading ``params[op type name]``), ``init(rng)`` (one PRNG key per cell,
split in table order) and ``nnx_cells(rngs=...)``. :class:`EmbeddingModel`
holds the hyperparameters most models share (``vocab_size``, ``hidden``,
``embed``), and :class:`SSTTreeModel` adds ``num_classes`` and the graph
construction of the SST tree models (a leaf or internal node and a loss node
per tree node).

A model's states are pytrees of f32 arrays; a :data:`StateSpec` gives their
shapes (``{"h": (H,), "c": (H,)}``: :func:`lstm_state`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from edbatch_jax.engine.flax_ops import NNXCells, linen_op
from edbatch_jax.engine.ops import Op, OpError
from edbatch_jax.graph import Graph, GraphBuilder
from edbatch_jax.zoo.data.sst import Tree
from edbatch_jax.zoo.data.vocab import Vocabulary
from edbatch_jax.zoo.models.graphs import binary_tree_batch_graph

__all__ = ["CellModel", "CellSpec", "EmbeddingModel", "SSTTreeModel", "StateSpec", "hidden_state", "lstm_state"]

StateSpec = Mapping[str, tuple[int, ...]]
"""The shapes of a state's f32 arrays by name, e.g. ``{"h": (H,), "c": (H,)}``."""


def lstm_state(hidden: int) -> StateSpec:
    """``{"h": (H,), "c": (H,)}``: an LSTM state of hidden size ``H``."""
    return {"h": (hidden,), "c": (hidden,)}


def hidden_state(hidden: int) -> StateSpec:
    """``{"h": (H,)}``: a GRU (or any ``h``-only) state of hidden size ``H``."""
    return {"h": (hidden,)}


@dataclasses.dataclass(frozen=True)
class CellSpec:
    """The cell of one op type: its Linen module, its NNX twin, how to initialise it and call it.

    The op reads ``params[name]``, ``name`` being the op type (the key of the
    cell table), and so does the NNX twin's op.

    Attributes:
      linen: the ``flax.linen`` module, ``__call__(payload, *operand_states)``.
      make_nnx: builds the ``flax.nnx`` twin (the same parameter tree) from an
        ``nnx.Rngs``; called in table order, so the twins draw their
        parameters from the stream in that order.
      operands: the shapes of the operand states the Linen parameters are
        initialised with (f32 zeros), one :data:`StateSpec` per operand.
      payload: whether a node carries an int32 scalar payload (initialised
        with ``0``) or none (``None``).
      arity: number of operand states, for a cell whose ``__call__`` takes
        ``*operand_states`` (``None``: read from its signature).
      aggregate: ``"sum"``, ``"mean"``, ``"max"`` or ``"softmax"`` for a
        variable-arity cell.
      edge: whether the cell's ``edge(payload, operand_state)`` method (Linen
        and NNX alike) is its op's per-argument computation (then
        ``operands`` holds the one argument state it is initialised with).
      stochastic: whether the cell draws random numbers (dropout): its
        ``__call__`` takes a PRNG ``key`` keyword (``None``: deterministic),
        which the engine derives per node
        (:class:`~edbatch_jax.engine.ops.Op`'s ``stochastic``).
      payload_bounds: the number of rows the payload id indexes (a
        vocabulary or class count), checked at plan time
        (:class:`~edbatch_jax.engine.ops.Op`'s ``payload_bounds``); ``None``
        for no bound.
    """

    linen: nn.Module
    make_nnx: Callable[[nnx.Rngs], nnx.Module]
    operands: tuple[StateSpec, ...] = ()
    payload: bool = True
    arity: int | None = None
    aggregate: str | None = None
    payload_bounds: int | None = None
    edge: bool = False
    stochastic: bool = False

    def init_params(self, rng: jax.Array) -> dict:
        """The Linen cell's parameters, initialised with :meth:`example_inputs` (through ``edge`` first for an
        edge cell, so that both methods' layers are made)."""
        if not self.edge:
            return self.linen.init(rng, *self.example_inputs())["params"]

        def edge_then_node(module, payload, operand):
            message = module.edge(payload, operand)
            return module(payload, message[1] if self.aggregate == "softmax" else message)

        return self.linen.init(rng, *self.example_inputs(), method=edge_then_node)["params"]

    def example_inputs(self) -> tuple:
        """``(payload, *operand_states)`` to initialise :attr:`linen` with: int32 ``0`` or ``None``, f32 zeros."""
        payload = jnp.int32(0) if self.payload else None
        return (payload, *({k: jnp.zeros(shape) for k, shape in s.items()} for s in self.operands))


class CellModel(abc.ABC):
    """A model made of one cell per op type: ``cells``, ``ops``, ``init`` and ``nnx_cells`` from its cell table.

    Subclasses are frozen dataclasses that set ``op_types`` and implement
    :meth:`cell_table` (and :meth:`extra_ops` for parameter-free op types).
    """

    op_types: ClassVar[tuple[str, ...]]
    """The op type names in type-id order."""

    @abc.abstractmethod
    def cell_table(self) -> dict[str, CellSpec]:
        """Op type name -> :class:`CellSpec`, for every op type with parameters, in initialisation order."""

    def extra_ops(self) -> dict[str, Op]:
        """Op type name -> :class:`~edbatch_jax.engine.ops.Op` of the op types without parameters (none here)."""
        return {}

    @property
    def cells(self) -> dict[str, nn.Module]:
        """Op type name -> Flax (Linen) cell, for every op type with parameters."""
        return {name: spec.linen for name, spec in self.cell_table().items()}

    @functools.cached_property
    def ops(self) -> dict[str, Op]:
        """Op type name -> :class:`~edbatch_jax.engine.ops.Op`; each cell reads ``params[name]``.

        Built once per model object (do not mutate it), so ``eb.run(model.ops, ...)``
        reuses the engine's compiled steps across calls.

        Raises:
          OpError: the cell table and :meth:`extra_ops` do not cover ``op_types`` exactly once.
        """
        table = self.cell_table()
        ops = {
            name: dataclasses.replace(
                linen_op(s.linen, name, arity=s.arity, aggregate=s.aggregate, edge=s.edge, stochastic=s.stochastic),
                payload_bounds=s.payload_bounds,
            )
            for name, s in table.items()
        }
        extra = self.extra_ops()
        if sorted([*ops, *extra]) != sorted(self.op_types):
            raise OpError(f"{type(self).__name__}: cells {list(ops)} and ops {list(extra)} are not {self.op_types}")
        return {**ops, **extra}

    def nnx_cells(self, *, rngs: nnx.Rngs) -> NNXCells:
        """The same cells as ``flax.nnx`` modules in an :class:`~edbatch_jax.NNXCells`.

        Its ``.ops`` take the arities and aggregates of :attr:`ops` (and pass the
        parameter-free ops through), and ``nnx.state(cells, nnx.Param)`` has
        the parameter tree of :meth:`init`.
        """
        return NNXCells.matching(self.ops, {name: spec.make_nnx(rngs) for name, spec in self.cell_table().items()})

    def init(self, rng: jax.Array) -> dict:
        """Parameters, one entry per op type with parameters (f32).

        Args:
          rng: a PRNG key, split into one key per cell in table order.
        """
        table = self.cell_table()
        keys = jax.random.split(rng, len(table))
        return {name: spec.init_params(key) for (name, spec), key in zip(table.items(), keys)}


@dataclasses.dataclass(frozen=True)
class EmbeddingModel(CellModel):
    """A cell model over token ids: its first hyperparameters, shared by the models that have them.

    A subclass adds its own fields after these (and may give ``vocab_size`` a
    default, which keeps its place first).

    Attributes:
      vocab_size: rows of each embedding table (token ids are taken modulo it).
      hidden: hidden size H (default 128, as in the reference benchmarks).
      embed: embedding size E (default 128).
    """

    vocab_size: int
    hidden: int = 128
    embed: int = 128


@dataclasses.dataclass(frozen=True)
class SSTTreeModel(EmbeddingModel):
    """A binary-tree sentiment classifier of SST trees: a leaf or internal node and a ``loss`` node per tree node.

    ``op_types`` are ``("leaf", "internal", "loss")``; a subclass with several
    internal types (between ``"leaf"`` first and ``"loss"`` last) overrides
    them, :meth:`internal_ops` and :meth:`internal_types`. Tree node ``k`` becomes
    cell node ``2k`` and loss node ``2k + 1``, so the root's loss node is the
    last node of the instance.

    Attributes:
      vocab_size: rows of the embedding table (token ids are taken modulo it).
      hidden: hidden size H (default 128, as in the reference benchmark).
      embed: embedding size E (default 128).
      num_classes: sentiment classes (5 for SST).
      dropout: dropout rate of the leaves' embeddings and of the classifier's
        input, in training steps given a PRNG key (0: none); models whose
        cells have no dropout refuse a rate above 0.
    """

    num_classes: int = 5
    dropout: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.dropout and not any(spec.stochastic for spec in self.cell_table().values()):
            raise ValueError(f"{type(self).__name__} has no dropout; its cells are deterministic")

    op_types = ("leaf", "internal", "loss")

    def internal_ops(self, tree: Tree) -> Sequence[str]:
        """The op type of every node of ``tree`` were it binary (read at binary nodes): ``"internal"``."""
        return ("internal",) * tree.num_nodes

    def internal_types(self, trees: Sequence[Tree]) -> np.ndarray | None:
        """:meth:`internal_ops` of every node of ``trees`` as type ids, vectorised; ``None``: all type 1."""
        return None

    def tree_graph(self, tree: Tree, token_ids: np.ndarray) -> Graph:
        """The graph of one tree, built node by node (the readable reference).

        Args:
          tree: the tree.
          token_ids: int32 ``[tree.num_nodes]`` token id per tree node (ignored
            for binary nodes), e.g. ``vocab.encode(tree)``.
        """
        b = GraphBuilder()
        internal = self.internal_ops(tree)
        node_of = np.empty(tree.num_nodes, dtype=np.int64)
        for k in range(tree.num_nodes):
            if tree.left[k] < 0:
                v = b.add("leaf", payload=np.int32(token_ids[k] % self.vocab_size))
            else:
                v = b.add(internal[k], int(node_of[tree.left[k]]), int(node_of[tree.right[k]]))
            node_of[k] = v
            b.add("loss", v, payload=np.int32(tree.labels[k]))
        return b.build()

    def batch_graph(self, trees: Sequence[Tree], vocab: Vocabulary) -> Graph:
        """The batched graph of several trees (one instance per tree), built vectorised.

        Equal, node by node, to ``batch_graphs([tree_graph(t, vocab.encode(t))
        for t in trees])`` (see
        :func:`~edbatch_jax.zoo.models.graphs.binary_tree_graph` for the node
        numbering), except that its ``op_types`` are always :attr:`op_types`.

        Raises:
          GraphError: ``trees`` is empty.
        """
        return binary_tree_batch_graph(trees, vocab, self.vocab_size, self.op_types, self.internal_types(trees))
