"""Bundled workloads by name: data, model and graph construction in one place.

:func:`load_workload` returns a :class:`Workload`: the model (its ``ops``,
``init`` and ``op_types``), train and held-out instances (real data from
``data`` when given, else the embedded synthetic generator with the same
statistics), and ``batch_graph`` to turn a list of instances into one batched
graph. Every command of the ``edbatch`` CLI takes ``--model NAME`` from
:data:`WORKLOADS`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edbatch_jax.fsm import resolve_policy
from edbatch_jax.graph import Graph
from edbatch_jax.scheduling import Policy

__all__ = ["WORKLOADS", "Workload", "load_workload", "default_policy_path", "fsm_settings", "POLICY_DIR"]


def _policy_dir() -> Path:
    source = Path(__file__).resolve().parents[2] / "policies"  # a checkout or an editable install
    if source.is_dir():
        return source
    return Path(sys.prefix) / "share" / "edbatch_jax" / "policies"  # a wheel installs them here


POLICY_DIR = _policy_dir()
"""Where the learned policies of the bundled models live (top-level ``policies/``)."""


@dataclasses.dataclass(frozen=True)
class _Spec:
    description: str
    batch_size: int
    policy_file: str
    data_dir: str
    fsm: dict = dataclasses.field(default_factory=dict)  # learn_fsm settings of the shipped policy
    learn_graphs: int = 4  # training mini-batches the shipped policy was learned from


WORKLOADS: dict[str, _Spec] = {
    "treelstm": _Spec("binary Tree-LSTM, SST sentiment (leaf, internal, loss per node)", 64, "treelstm.json", "trees"),
    "treegru": _Spec("Tree-GRU, SST sentiment (gate pair per child, loss per node)", 64, "treelstm.json", "trees"),
    "mvrnn": _Spec("MV-RNN, SST sentiment (a vector and a matrix per word)", 64, "treelstm.json", "trees"),
    "double_treelstm": _Spec(
        "double-typed Tree-LSTM, SST (two internal cells, chosen per node)", 64, "double_treelstm.json", "trees"
    ),
    # lattices: the `sort` encoding, whose states need no type-wise frontier; `sort_complete` takes about 1 %
    # fewer batches but its frontier (maximal same-type ancestors) makes scheduling about 5x as long
    "lattice_lstm": _Spec(
        "Lattice-LSTM NER tagger (char/word arc cells, node sums, tag loss)",
        32,
        "lattice.json",
        "lattice",
        {"bootstrap": False, "max_episodes": 1000},
        learn_graphs=2,
    ),
    "lattice_gru": _Spec(
        "Lattice-GRU NER tagger (same graphs as lattice_lstm)",
        32,
        "lattice.json",
        "lattice",
        {"bootstrap": False, "max_episodes": 1000},
        learn_graphs=2,
    ),
    "bilstm_tagger": _Spec(
        "2-layer BiLSTM tagger, WikiNER (learned initial states, per-token loss)", 32, "bilstm_tagger.json", "tags"
    ),
    "chain_lstm": _Spec(
        "chain LSTM language model over variable-length sentences (WikiNER words)", 32, "chain_lstm.json", "tags"
    ),
    "grid_1d": _Spec("synthetic 1-D LSTM grid (length 10-50)", 32, "grid_1d.json", ""),
    "grid_2d": _Spec("synthetic 2-D LSTM grid (3-5 x 20-25)", 32, "grid_2d.json", ""),
    "grid_3d": _Spec("synthetic 3-D LSTM grid (2-4 x 2-4 x 10-15)", 32, "grid_3d.json", ""),
    "random_dag": _Spec(
        "synthetic random DAG (200 states, 4 arcs from the previous 30, two arc types 90/10)", 8, "random_dag.json", ""
    ),
    "binary_tree": _Spec("synthetic perfect binary trees (depth 5-7), Tree-LSTM cells", 32, "binary_tree.json", ""),
}
"""Bundled workload names -> description, reference batch size, policy file, data folder name."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """A model with its data.

    Attributes:
      name: workload name (a key of :data:`WORKLOADS`).
      model: object with ``ops``, ``init(rng)`` and ``op_types``.
      train: training instances.
      held_out: held-out instances (dev, then test where the data has them).
      batch_graph: ``instances -> Graph``.
      batch_size: the reference batch size.
      source: where the instances came from, for messages.
      vocab: the word vocabulary the graphs encode tokens with (SST and
        tagging workloads), built from the training split; ``None`` otherwise.
    """

    name: str
    model: Any
    train: list
    held_out: list
    batch_graph: Callable[[Sequence], Graph]
    batch_size: int
    source: str
    vocab: Any = None

    @property
    def op_types(self) -> tuple[str, ...]:
        """The model's op type names."""
        return tuple(self.model.op_types)

    @property
    def policy_path(self) -> Path | None:
        """The workload's shipped FSM policy file (may not exist; ``None`` for a workload not bundled)."""
        return default_policy_path(self.name) if self.name in WORKLOADS else None

    def resolve_policy(self, spec: str | os.PathLike | Policy) -> str | Policy:
        """A policy by name (``"fsm"``: this workload's shipped policy); see :func:`~edbatch_jax.resolve_policy`."""
        return resolve_policy(spec, self.op_types, shipped=self.policy_path)

    def minibatch_instances(
        self, split: str, batch_size: int | None = None, count: int | None = None, seed: int = 0
    ) -> list[list]:
        """The instances of every mini-batch of shuffled ``split`` (``"train"`` or ``"held_out"``)."""
        items = {"train": self.train, "held_out": self.held_out}[split]
        size = batch_size or self.batch_size
        order = np.random.default_rng(seed).permutation(len(items))
        chunks = [order[i : i + size] for i in range(0, len(order) - size + 1, size)] or [order]
        if count is not None:
            chunks = chunks[:count]
        return [[items[j] for j in c] for c in chunks]

    def minibatches(
        self, split: str, batch_size: int | None = None, count: int | None = None, seed: int = 0
    ) -> list[Graph]:
        """Batched graphs of shuffled ``split`` (``"train"`` or ``"held_out"``) instances."""
        return [self.batch_graph(x) for x in self.minibatch_instances(split, batch_size, count, seed)]


def fsm_settings(name: str) -> dict:
    """The :func:`~edbatch_jax.learn_fsm` settings that produced a workload's shipped policy.

    Includes ``"graphs"``: how many training mini-batches it was learned from.
    """
    return {"encoding": "sort", **_spec(name).fsm, "graphs": _spec(name).learn_graphs}


def default_policy_path(name: str) -> Path:
    """The shipped FSM policy file of a bundled workload (may not exist)."""
    return POLICY_DIR / _spec(name).policy_file


def _spec(name: str) -> _Spec:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; bundled models: {sorted(WORKLOADS)}") from None


def _files(data: str, split_names: Sequence[str]) -> list[str]:
    if os.path.isfile(data):
        return [data]
    paths = [os.path.join(data, f"{s}.txt") for s in split_names]
    found = [p for p in paths if os.path.exists(p)]
    if not found:
        raise FileNotFoundError(f"{data}: expected {', '.join(os.path.basename(p) for p in paths)}")
    return found


def load_workload(
    name: str,
    data: str | None = None,
    hidden: int = 128,
    seed: int = 0,
    num_train: int = 4096,
    num_held_out: int = 1024,
) -> Workload:
    """Loads a bundled workload.

    Args:
      name: a key of :data:`WORKLOADS`.
      data: a data directory (``train.txt``, ``dev.txt``, ``test.txt``) or one
        file; ``None`` uses the synthetic generator.
      hidden: hidden = embedding size.
      seed: seed of the synthetic data.
      num_train, num_held_out: synthetic instances to generate.
    """
    spec = _spec(name)
    if name in ("treelstm", "treegru", "mvrnn", "double_treelstm"):
        from edbatch_jax.zoo.data.sst import Vocabulary, read_sst, synthetic_sst
        from edbatch_jax.zoo.models.double_treelstm import DoubleTreeLSTM
        from edbatch_jax.zoo.models.mvrnn import MVRNN
        from edbatch_jax.zoo.models.treegru import TreeGRU
        from edbatch_jax.zoo.models.treelstm import TreeLSTM

        if data is None:
            train, held, source = (
                synthetic_sst(num_train, seed=seed),
                synthetic_sst(num_held_out, seed=seed + 1),
                "synthetic SST-like trees",
            )
        else:
            files = _files(data, ("train", "dev", "test"))
            train = read_sst(files[0])
            held = [t for f in files[1:] for t in read_sst(f)] or train[-num_held_out:]
            source = "SST " + "/".join(os.path.basename(f) for f in files)
        vocab = Vocabulary.build(train, max_size=5000)
        cls = {"treelstm": TreeLSTM, "treegru": TreeGRU, "mvrnn": MVRNN, "double_treelstm": DoubleTreeLSTM}[name]
        model = cls(vocab_size=len(vocab), hidden=hidden, embed=hidden)
        return Workload(
            name, model, train, held, lambda xs: model.batch_graph(xs, vocab), spec.batch_size, source, vocab
        )
    if name in ("bilstm_tagger", "chain_lstm"):
        return _load_sentences(name, spec, data, hidden, seed, num_train, num_held_out)
    if name.startswith("grid_") or name in ("random_dag", "binary_tree"):
        return _load_synthetic(name, spec, data, hidden, seed, num_train, num_held_out)
    from edbatch_jax.zoo.data.lattice import read_lattices, synthetic_lattices
    from edbatch_jax.zoo.models.lattice import LatticeTagger

    if data is None:
        train = synthetic_lattices(num_train // 4, seed=seed)
        held = synthetic_lattices(num_held_out // 4, seed=seed + 1)
        source = "synthetic lattices"
    else:
        files = _files(data, ("train", "dev", "test"))
        train = read_lattices(files[0])
        held = [x for f in files[1:] for x in read_lattices(f)] or train[-num_held_out // 4 :]
        source = "lattices " + "/".join(os.path.basename(f) for f in files)
    model = LatticeTagger(hidden=hidden, embed=hidden, cell="gru" if name == "lattice_gru" else "lstm")
    return Workload(name, model, train, held, model.batch_graph, spec.batch_size, source)


def _load_sentences(name, spec, data, hidden, seed, num_train, num_held_out) -> Workload:
    from edbatch_jax.zoo.data.tags import WordVocabulary, read_tagged, split_sentences, synthetic_tagged

    if data is None:
        sentences, source = (
            synthetic_tagged(num_train // 2 + num_held_out // 2, seed=seed),
            "synthetic WikiNER-like sentences",
        )
    else:
        files = _files(data, ("dev",))
        sentences = [s for f in files for s in read_tagged(f)]
        source = "WikiNER " + "/".join(os.path.basename(f) for f in files)
    train, held = split_sentences(sentences, 0.2, seed=seed)
    vocab = WordVocabulary.build(train, max_size=20000)
    if name == "bilstm_tagger":
        from edbatch_jax.zoo.models.bilstm import BiLSTMTagger

        model = BiLSTMTagger(vocab_size=len(vocab), hidden=hidden, embed=hidden)
    else:
        from edbatch_jax.zoo.models.chain import ChainLM

        model = ChainLM(vocab_size=len(vocab), hidden=hidden, embed=hidden)
    return Workload(name, model, train, held, lambda xs: model.batch_graph(xs, vocab), spec.batch_size, source, vocab)


def _load_synthetic(name, spec, data, hidden, seed, num_train, num_held_out) -> Workload:
    from edbatch_jax.zoo.data import synthetic_graphs as sg
    from edbatch_jax.zoo.models import synthetic as models

    if data is not None:
        raise ValueError(f"{name} is a synthetic workload; it takes no --data")
    if name.startswith("grid_"):
        ndim = int(name[5])
        make = lambda n, s: sg.synthetic_grids(n, s, ndim=ndim)
        model = models.GridLSTM(ndim=ndim, hidden=hidden, embed=hidden)
    elif name == "random_dag":
        make, model = sg.synthetic_dags, models.DagLSTM(hidden=hidden, embed=hidden)
        num_train, num_held_out = min(num_train, 256), min(num_held_out, 32)
    else:
        make, model = sg.synthetic_binary_trees, models.BinaryTreeLSTM(hidden=hidden, embed=hidden)
        num_train, num_held_out = min(num_train, 512), min(num_held_out, 128)
    train, held = make(num_train // 4, seed), make(num_held_out // 4, seed + 1)
    if name == "random_dag":
        train, held = make(num_train, seed), make(num_held_out, seed + 1)
    return Workload(name, model, train, held, model.batch_graph, spec.batch_size, f"synthetic {name.replace('_', ' ')}")
