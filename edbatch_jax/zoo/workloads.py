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
    # the heuristic `fsm` names for a workload whose learned FSM schedules held-out graphs worse (no policy shipped)
    fallback: str = ""


WORKLOADS: dict[str, _Spec] = {
    "treelstm": _Spec("binary Tree-LSTM, SST sentiment (leaf, internal, loss per node)", 64, "treelstm.json", "trees"),
    "treegru": _Spec("Tree-GRU, SST sentiment (gate pair per child, loss per node)", 64, "treelstm.json", "trees"),
    "mvrnn": _Spec("MV-RNN, SST sentiment (a vector and a matrix per word)", 64, "treelstm.json", "trees"),
    "double_treelstm": _Spec(
        "double-typed Tree-LSTM, SST (two internal cells, chosen per node)", 64, "double_treelstm.json", "trees"
    ),
    "childsum_treelstm": _Spec(
        "Child-Sum Tree-LSTM over n-ary trees (a forget gate per child), SST read as n-ary or 0-8 children",
        64,
        "childsum_treelstm.json",
        "trees",
    ),
    # lattices: `sort_complete` with the default settings (1.048x LB held out; `sort`'s states cannot say which
    # batch is complete, and its best tables stay at 1.055-1.057x)
    "lattice_lstm": _Spec(
        "Lattice-LSTM NER tagger (char/word arc cells, node sums, tag loss)",
        32,
        "lattice.json",
        "lattice",
        {"encoding": "sort_complete"},
        learn_graphs=2,
    ),
    "lattice_gru": _Spec(
        "Lattice-GRU NER tagger (same graphs as lattice_lstm)",
        32,
        "lattice.json",
        "lattice",
        {"encoding": "sort_complete"},
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
    # 49 op types: a learned table (without the guard) took 191.8 batches on held-out mini-batches, typewise 97.1;
    # with learn_fsm's defaults the guard returns typewise's rule, so no policy file: its `fsm` is typewise. On 10
    # synthetic mini-batches of 32 programs typewise takes 101.6 batches, agenda 194.1, depth 159.0 (LB 62.1)
    "program": _Spec(
        "expression programs of 48 node kinds (a cell per kind, Python's kind frequencies), value mod 10 at the root",
        32,
        "program.json",
        "programs",
        fallback="typewise",
    ),
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
      dev: the instances :func:`~edbatch_jax.training.loop.train` evaluates
        after every epoch and selects parameters on; ``None``: ``held_out``.
        SST: ``dev.txt``, or the first half of the synthetic held-out trees.
      test: the instances evaluated once at the end, with the parameters of
        the best dev evaluation; ``None``: none. SST: ``test.txt``, or the
        second half of the synthetic held-out trees.
      metrics: ``(root_logits, root_labels) -> dict``, extra metrics of the
        evaluated instances' roots (:meth:`root_metrics`); ``None``: none.
        SST: :func:`~edbatch_jax.zoo.data.sentiment.root_sentiment_metrics`.
    """

    name: str
    model: Any
    train: list
    held_out: list
    batch_graph: Callable[[Sequence], Graph]
    batch_size: int
    source: str
    vocab: Any = None
    dev: list | None = None
    test: list | None = None
    metrics: Callable[[np.ndarray, np.ndarray], dict] | None = None

    @property
    def op_types(self) -> tuple[str, ...]:
        """The model's op type names."""
        return tuple(self.model.op_types)

    @property
    def policy_path(self) -> Path | None:
        """The workload's shipped FSM policy file (may not exist; ``None`` for a workload not bundled)."""
        return default_policy_path(self.name) if self.name in WORKLOADS else None

    def resolve_policy(self, spec: str | os.PathLike | Policy) -> str | Policy:
        """A policy by name (``"fsm"``: this workload's shipped policy); see :func:`~edbatch_jax.resolve_policy`.

        A workload whose learned FSM schedules held-out graphs worse than a
        heuristic ships no policy; for it ``"fsm"`` names that heuristic
        (``program``, 49 op types: learned with the defaults, the FSM took
        191.8 batches per held-out mini-batch, typewise 97.1).
        """
        if spec == "fsm" and self.name in WORKLOADS and WORKLOADS[self.name].fallback:
            return WORKLOADS[self.name].fallback
        return resolve_policy(spec, self.op_types, shipped=self.policy_path)

    def split(self, name: str) -> list:
        """The instances of a split: ``"train"``, ``"held_out"``, ``"dev"`` (``held_out`` when there is no
        ``dev``) or ``"test"`` (empty when there is none).

        Raises:
          ValueError: another name.
        """
        splits = {"train": self.train, "held_out": self.held_out}
        splits.update(dev=self.held_out if self.dev is None else self.dev, test=self.test or [])
        if name not in splits:
            raise ValueError(f"unknown split {name!r}; choose one of {sorted(splits)}")
        return splits[name]

    def minibatch_instances(
        self,
        split: str,
        batch_size: int | None = None,
        count: int | None = None,
        seed: int = 0,
        keep_remainder: bool = False,
    ) -> list[list]:
        """The instances of every mini-batch of shuffled ``split`` (see :meth:`split`).

        Mini-batches hold ``batch_size`` instances (a split smaller than that
        is one mini-batch); the instances left over are dropped, unless
        ``keep_remainder`` (then they make a last, smaller mini-batch).
        ``count``: at most that many mini-batches. An empty split has none.
        """
        items = self.split(split)
        size = batch_size or self.batch_size
        order = np.random.default_rng(seed).permutation(len(items))
        if keep_remainder:
            chunks = [order[i : i + size] for i in range(0, len(order), size)]
        else:
            chunks = [order[i : i + size] for i in range(0, len(order) - size + 1, size)] or [order]
        if count is not None:
            chunks = chunks[:count]
        return [[items[j] for j in c] for c in chunks if len(c)]

    def minibatches(
        self,
        split: str,
        batch_size: int | None = None,
        count: int | None = None,
        seed: int = 0,
        keep_remainder: bool = False,
    ) -> list[Graph]:
        """Batched graphs of shuffled ``split`` instances (:meth:`minibatch_instances`)."""
        return [self.batch_graph(x) for x in self.minibatch_instances(split, batch_size, count, seed, keep_remainder)]

    def root_metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict:
        """Extra metrics of evaluated roots: f32 ``[N, C]`` root logits and int ``[N]`` labels -> a dict.

        SST workloads: ``root_accuracy`` (fine-grained), ``root_binary_accuracy``
        (neutral roots left out) and counts
        (:func:`~edbatch_jax.zoo.data.sentiment.root_sentiment_metrics`);
        other workloads: ``{}``.
        """
        return {} if self.metrics is None else self.metrics(logits, labels)

    def initial_params(self, rng: Any, embeddings: str | os.PathLike | None = None) -> tuple[Any, dict]:
        """The model's parameters for a PRNG key, with pretrained word vectors when ``embeddings`` names a file.

        Args:
          rng: a PRNG key (``model.init``'s).
          embeddings: a GloVe-format text file: the vectors of the vocabulary's
            words go into the model's embedding table
            (:func:`~edbatch_jax.zoo.data.embeddings.load_embeddings`); words
            the file lacks keep their random values.

        Returns:
          ``(params, report)``: ``report`` is ``{}`` without ``embeddings``, else
          :meth:`~edbatch_jax.zoo.data.embeddings.EmbeddingReport.as_dict`
          (``found`` of ``words``).

        Raises:
          EmbeddingFileError: the file cannot be read (names its line), or
            the workload has no word vocabulary or embedding table.
        """
        params = self.model.init(rng)
        if embeddings is None:
            return params, {}
        import jax

        from edbatch_jax.zoo.data.embeddings import EmbeddingFileError, load_embeddings

        if self.vocab is None:
            raise EmbeddingFileError(f"{os.fspath(embeddings)}: {self.name} has no word vocabulary to load vectors for")
        params, report = load_embeddings(params, self.vocab.id_to_token, embeddings)
        return jax.tree.map(jax.numpy.asarray, params), report.as_dict()


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
    embed: int | None = None,
    vocab_size: int | None = 5000,
    dropout: float = 0.0,
) -> Workload:
    """Loads a bundled workload.

    Args:
      name: a key of :data:`WORKLOADS`.
      data: a data directory (``train.txt``, ``dev.txt``, ``test.txt``) or one
        file; ``None`` uses the synthetic generator.
      hidden: hidden = embedding size.
      seed: seed of the synthetic data.
      num_train, num_held_out: synthetic instances to generate.
      embed: the SST models' embedding size (default: ``hidden``), e.g. 300
        for GloVe 840B vectors beside a hidden size of 150.
      vocab_size: the SST vocabulary's size, the unknown token included (the
        most frequent training words); ``None``: every training word.
      dropout: dropout rate of the models that have it (``treelstm``,
        ``childsum_treelstm``: leaf embeddings and classifier input), in
        training steps given a PRNG key; others refuse a rate above 0.
    """
    spec = _spec(name)
    if name in ("treelstm", "treegru", "mvrnn", "double_treelstm", "childsum_treelstm"):
        return _load_sst(name, spec, data, hidden, seed, num_train, num_held_out, embed or hidden, vocab_size, dropout)
    if dropout:
        raise ValueError(f"{name} has no dropout (only treelstm and childsum_treelstm have); got dropout={dropout}")
    if name in ("bilstm_tagger", "chain_lstm"):
        return _load_sentences(name, spec, data, hidden, seed, num_train, num_held_out)
    if name.startswith("grid_") or name in ("random_dag", "binary_tree"):
        return _load_synthetic(name, spec, data, hidden, seed, num_train, num_held_out)
    if name == "program":
        return _load_programs(name, spec, data, hidden, seed, num_train, num_held_out)
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


def _load_sst(name, spec, data, hidden, seed, num_train, num_held_out, embed, vocab_size, dropout) -> Workload:
    """An SST workload: train, dev and test trees (``held_out``: dev, then test), root sentiment metrics.

    ``childsum_treelstm`` reads the same trees as n-ary ones
    (:meth:`~edbatch_jax.zoo.data.nary.NaryTree.from_sst`); its synthetic
    trees have 0 to 8 children per node
    (:func:`~edbatch_jax.zoo.data.nary.synthetic_nary_trees`).
    """
    from edbatch_jax.zoo.data.nary import NaryTree, synthetic_nary_trees
    from edbatch_jax.zoo.data.sentiment import root_sentiment_metrics
    from edbatch_jax.zoo.data.sst import Vocabulary, read_sst, synthetic_sst
    from edbatch_jax.zoo.models.childsum import ChildSumTreeLSTM
    from edbatch_jax.zoo.models.double_treelstm import DoubleTreeLSTM
    from edbatch_jax.zoo.models.mvrnn import MVRNN
    from edbatch_jax.zoo.models.treegru import TreeGRU
    from edbatch_jax.zoo.models.treelstm import TreeLSTM

    nary = name == "childsum_treelstm"
    if data is None:
        make = synthetic_nary_trees if nary else synthetic_sst
        train, held = make(num_train, seed=seed), make(num_held_out, seed=seed + 1)
        half = (len(held) + 1) // 2
        dev, test = held[:half], held[half:]
        source = "synthetic n-ary trees (0-8 children)" if nary else "synthetic SST-like trees"
    elif os.path.isfile(data):
        train = read_sst(data)
        held = dev = train[-num_held_out:]
        test, source = None, f"SST {os.path.basename(data)}"
    else:
        files = _files(data, ("train", "dev", "test"))
        train = read_sst(files[0])  # the first file found trains
        split = {os.path.basename(f)[:-4]: read_sst(f) for f in files[1:]}
        held = [t for f in ("dev", "test") for t in split.get(f, [])] or train[-num_held_out:]
        dev, test = split.get("dev") or train[-num_held_out:], split.get("test")  # without dev.txt: train's tail
        source = "SST " + "/".join(os.path.basename(f) for f in files)
    if nary and data is not None:  # the SST trees read as n-ary
        as_nary = lambda trees: None if trees is None else [NaryTree.from_sst(t) for t in trees]
        train, held, dev, test = as_nary(train), as_nary(held), as_nary(dev), as_nary(test)
        source += " read as n-ary trees"
    vocab = Vocabulary.build(train, max_size=vocab_size)
    cls = {
        "treelstm": TreeLSTM,
        "treegru": TreeGRU,
        "mvrnn": MVRNN,
        "double_treelstm": DoubleTreeLSTM,
        "childsum_treelstm": ChildSumTreeLSTM,
    }[name]
    model = cls(vocab_size=len(vocab), hidden=hidden, embed=embed, dropout=dropout)
    return Workload(
        name,
        model,
        train,
        held,
        lambda xs: model.batch_graph(xs, vocab),
        spec.batch_size,
        source,
        vocab,
        dev=dev,
        test=test or None,
        metrics=root_sentiment_metrics,
    )


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


def _load_programs(name, spec, data, hidden, seed, num_train, num_held_out) -> Workload:
    """The program workload: synthetic programs (held-out halves: dev, test), or text files of programs.

    ``data``: a folder with ``train.txt`` (and ``dev.txt``, ``test.txt``) or
    one file (its last ``num_held_out`` programs are the dev split), read by
    :func:`~edbatch_jax.zoo.data.programs.read_programs`.
    """
    from edbatch_jax.zoo.data.programs import read_programs, synthetic_programs
    from edbatch_jax.zoo.models.program import ProgramModel

    if data is None:
        train, held = synthetic_programs(num_train, seed=seed), synthetic_programs(num_held_out, seed=seed + 1)
        half = (len(held) + 1) // 2
        dev, test = held[:half], held[half:]
        source = "synthetic programs (Python's kind frequencies)"
    else:
        files = _files(data, ("train", "dev", "test"))
        train = read_programs(files[0])
        split = {os.path.basename(f)[:-4]: read_programs(f) for f in files[1:]}
        held = [p for f in ("dev", "test") for p in split.get(f, [])] or train[-num_held_out:]
        dev, test = split.get("dev") or train[-num_held_out:], split.get("test")
        source = "programs " + "/".join(os.path.basename(f) for f in files)
    model = ProgramModel(hidden=hidden)
    return Workload(name, model, train, held, model.batch_graph, spec.batch_size, source, dev=dev, test=test or None)
