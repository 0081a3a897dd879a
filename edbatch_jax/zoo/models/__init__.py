"""The zoo's models: dynamic networks as Flax cells per op type, their ops, and their graph construction.

Every model is a frozen dataclass of hyperparameters on one skeleton,
:class:`~edbatch_jax.zoo.models.base.CellModel`: it declares its op types and a
table of cells (a ``flax.linen`` module and its ``flax.nnx`` twin per op type,
:class:`~edbatch_jax.zoo.models.base.CellSpec`) and builds batched graphs from
its instances; ``cells``, ``ops``, ``init(rng)`` and ``nnx_cells(rngs=...)``
follow from the table.

Modules: :mod:`~edbatch_jax.zoo.models.base` (the skeleton),
:mod:`~edbatch_jax.zoo.models.cells` (the cells models share),
:mod:`~edbatch_jax.zoo.models.graphs` (vectorised graph helpers), and one
module per model family: :mod:`~edbatch_jax.zoo.models.treelstm`,
:mod:`~edbatch_jax.zoo.models.treegru`, :mod:`~edbatch_jax.zoo.models.mvrnn`,
:mod:`~edbatch_jax.zoo.models.double_treelstm` (SST trees),
:mod:`~edbatch_jax.zoo.models.childsum` (n-ary trees),
:mod:`~edbatch_jax.zoo.models.program` (programs, a cell per node kind),
:mod:`~edbatch_jax.zoo.models.lattice` (NER lattices),
:mod:`~edbatch_jax.zoo.models.bilstm`, :mod:`~edbatch_jax.zoo.models.chain`
(WikiNER sentences), :mod:`~edbatch_jax.zoo.models.synthetic` (grids, random
DAGs, perfect trees). Model modules import the skeleton, the cells and the
graph helpers, never each other.
"""

from edbatch_jax.zoo.models.base import CellModel, CellSpec, SSTTreeModel
from edbatch_jax.zoo.models.bilstm import BiLSTMTagger
from edbatch_jax.zoo.models.cells import InternalCell, LeafCell, LossCell
from edbatch_jax.zoo.models.chain import ChainLM
from edbatch_jax.zoo.models.double_treelstm import DoubleTreeLSTM
from edbatch_jax.zoo.models.lattice import LatticeTagger
from edbatch_jax.zoo.models.mvrnn import MVRNN
from edbatch_jax.zoo.models.program import ProgramModel
from edbatch_jax.zoo.models.synthetic import BinaryTreeLSTM, DagLSTM, GridLSTM
from edbatch_jax.zoo.models.treegru import TreeGRU
from edbatch_jax.zoo.models.treelstm import TreeLSTM

__all__ = [
    "BiLSTMTagger",
    "BinaryTreeLSTM",
    "CellModel",
    "CellSpec",
    "ChainLM",
    "DagLSTM",
    "DoubleTreeLSTM",
    "GridLSTM",
    "InternalCell",
    "LatticeTagger",
    "LeafCell",
    "LossCell",
    "MVRNN",
    "ProgramModel",
    "SSTTreeModel",
    "TreeGRU",
    "TreeLSTM",
]
