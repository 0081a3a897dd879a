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
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edbatch_jax.graph import Graph

__all__ = ["WORKLOADS", "Workload", "load_workload", "default_policy_path", "fsm_settings", "POLICY_DIR"]

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
"""Where the learned policies of the bundled models live (top-level ``policies/``)."""


@dataclasses.dataclass(frozen=True)
class _Spec:
    description: str
    batch_size: int
    policy_file: str
    data_dir: str
    fsm: dict = dataclasses.field(default_factory=dict)  # learn_fsm settings of the shipped policy


WORKLOADS: dict[str, _Spec] = {
    "treelstm": _Spec("binary Tree-LSTM, SST sentiment (leaf, internal, loss per node)", 64, "treelstm.json", "trees"),
    "lattice_lstm": _Spec("Lattice-LSTM NER tagger (char/word arc cells, node sums, tag loss)", 32, "lattice.json", "lattice",
                          {"encoding": "sort_complete", "bootstrap": False, "max_episodes": 300}),
    "lattice_gru": _Spec("Lattice-GRU NER tagger (same graphs as lattice_lstm)", 32, "lattice.json", "lattice",
                         {"encoding": "sort_complete", "bootstrap": False, "max_episodes": 300}),
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
    """

    name: str
    model: Any
    train: list
    held_out: list
    batch_graph: Callable[[Sequence], Graph]
    batch_size: int
    source: str

    @property
    def op_types(self) -> tuple[str, ...]:
        return tuple(self.model.op_types)

    def minibatches(self, split: str, batch_size: int | None = None, count: int | None = None, seed: int = 0) -> list[Graph]:
        """Batched graphs of shuffled ``split`` (``"train"`` or ``"held_out"``) instances."""
        items = {"train": self.train, "held_out": self.held_out}[split]
        size = batch_size or self.batch_size
        order = np.random.default_rng(seed).permutation(len(items))
        chunks = [order[i : i + size] for i in range(0, len(order) - size + 1, size)] or [order]
        if count is not None:
            chunks = chunks[:count]
        return [self.batch_graph([items[j] for j in c]) for c in chunks]


def fsm_settings(name: str) -> dict:
    """The :func:`~edbatch_jax.learn_fsm` settings that produced a workload's shipped policy."""
    return {"encoding": "sort", **_spec(name).fsm}


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
    if name == "treelstm":
        from edbatch_jax.data.sst import Vocabulary, read_sst, synthetic_sst
        from edbatch_jax.nn.treelstm import TreeLSTM

        if data is None:
            train, held, source = synthetic_sst(num_train, seed=seed), synthetic_sst(num_held_out, seed=seed + 1), "synthetic SST-like trees"
        else:
            files = _files(data, ("train", "dev", "test"))
            train = read_sst(files[0])
            held = [t for f in files[1:] for t in read_sst(f)] or train[-num_held_out:]
            source = "SST " + "/".join(os.path.basename(f) for f in files)
        vocab = Vocabulary.build(train, max_size=5000)
        model = TreeLSTM(vocab_size=len(vocab), hidden=hidden, embed=hidden)
        return Workload(name, model, train, held, lambda xs: model.batch_graph(xs, vocab), spec.batch_size, source)
    from edbatch_jax.data.lattice import read_lattices, synthetic_lattices
    from edbatch_jax.nn.lattice import LatticeTagger

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
