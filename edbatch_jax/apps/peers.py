"""DyNet's Tree-LSTM benchmark beside ours, so that speed claims are ratios from one run.

DyNet (2.1, Python bindings) is the autobatching incumbent. Its benchmark
script (a separate program, run by the Python that has ``dynet`` installed)
times the SST Tree-LSTM as ED-Batch defines it: leaf and internal cells, a
loss on every non-terminal, hidden = embedding, a fresh computation graph of
``batch_size`` trees per step. Its trees per second therefore include graph
construction and autobatching, which on our side are the ``rebuilt`` and
``overlap`` columns of :mod:`edbatch_jax.apps.bench`.

:func:`run_dynet` runs that script in a subprocess and returns its rows;
:func:`comparison_table` puts them beside our results. ``edbatch bench
--dynet PYTHON --dynet-script SCRIPT`` runs DyNet before and after our
measurements and reports both, so that drift of the machine shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence

__all__ = ["DYNET_MODES", "PeerError", "run_dynet", "comparison_table"]

DYNET_MODES = {1: "agenda", 2: "depth"}
"""DyNet's autobatching strategies measured (``--autobatch`` values)."""


class PeerError(RuntimeError):
    """The peer benchmark could not be run or returned no result."""


def run_dynet(
    python: str,
    script: str,
    data_file: str,
    batch_size: int,
    hidden: int,
    *,
    num_trees: int = 1024,
    repeats: int = 3,
    modes: Sequence[int] = tuple(DYNET_MODES),
    timeout_s: float = 1800.0,
) -> list[dict]:
    """Runs DyNet's Tree-LSTM benchmark once; one row per (mode, phase).

    Args:
      python: the interpreter in which ``import dynet`` works.
      script: the benchmark script (``dynet_treelstm.py``).
      data_file: SST trees in PTB bracket format (``trees/train.txt``).
      batch_size: trees per computation graph.
      hidden: hidden = embedding size.
      num_trees: trees timed per pass; ``repeats``: passes (DyNet reports the median).

    Returns:
      dicts with ``system`` (``"dynet agenda"`` / ``"dynet depth"``), ``mode``
      (``"infer"`` / ``"train"``) and ``instances_per_s``.

    Raises:
      PeerError: naming the command, with the end of its output, if it fails
        or measures nothing.
    """
    for path, what in ((python, "DyNet's Python"), (script, "DyNet benchmark script"), (data_file, "tree file")):
        if not os.path.exists(path):
            raise PeerError(f"{what} not found: {path}")
    with tempfile.TemporaryDirectory(prefix="edbatch_dynet_") as tmp:
        out = os.path.join(tmp, "dynet.json")
        cmd = [
            python,
            script,
            "--data",
            data_file,
            "--batch-sizes",
            str(batch_size),
            "--hidden",
            str(hidden),
            "--num-trees",
            str(num_trees),
            "--repeats",
            str(repeats),
            "--no-count",
            "--json",
            out,
            "--modes",
            *(str(m) for m in modes),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise PeerError(f"DyNet benchmark timed out after {timeout_s:.0f} s") from e
        tail = (proc.stdout + proc.stderr)[-2000:]
        if proc.returncode != 0 or not os.path.exists(out):
            raise PeerError(f"DyNet benchmark failed (exit {proc.returncode}):\n{tail}")
        with open(out) as f:
            raw = json.load(f)
    rows = [
        dict(
            system=f"dynet {DYNET_MODES.get(r['mode'], r['mode'])}",
            mode=r["phase"],
            instances_per_s=float(r["trees_per_s"]),
            batch_size=int(r["batch_size"]),
            dynet_version=raw.get("meta", {}).get("dynet_version"),
        )
        for r in raw.get("rows", [])
        if r.get("phase") in ("infer", "train")
    ]
    if not rows:
        raise PeerError(f"DyNet benchmark measured nothing:\n{tail}")
    return rows


def comparison_table(ours: Sequence, dynet_runs: Sequence[Sequence[dict]]) -> str:
    """A markdown table: every DyNet run, our configurations (cached / rebuilt / overlapped), ratios.

    ``ours``: :class:`edbatch_jax.apps.bench.BenchResult` of one workload and batch
    size; ``dynet_runs``: the rows of each :func:`run_dynet` call (before and
    after ours). Ratios divide our overlapped (else rebuilt) throughput, the
    figure that, like DyNet's, includes building every mini-batch, by the
    mean over runs of DyNet's best strategy in the same mode.
    """
    modes = ("infer", "train")
    lines = [
        "| system | " + " | ".join(f"{m} inst/s" for m in modes) + " | vs DyNet's best (" + " / ".join(modes) + ") |",
        "|---|---|---|---|",
    ]
    best = {}
    for mode in modes:
        per_run = [max((r["instances_per_s"] for r in run if r["mode"] == mode), default=0.0) for run in dynet_runs]
        best[mode] = sum(per_run) / len(per_run) if per_run else 0.0
    systems = sorted({r["system"] for run in dynet_runs for r in run})
    for k, run in enumerate(dynet_runs):
        for system in systems:
            cells = [
                next((f"{r['instances_per_s']:.0f}" for r in run if r["system"] == system and r["mode"] == m), "-")
                for m in modes
            ]
            when = "before" if k == 0 else "after"
            lines.append(f"| {system} ({when} ours) | " + " | ".join(cells) + " | |")
    groups: dict[tuple, dict] = {}
    for r in ours:
        groups.setdefault((r.engine_label, r.policy, r.layout), {})[r.mode] = r
    for (engine, policy, layout), by_mode in groups.items():
        cells, ratios = [], []
        for m in modes:
            r = by_mode.get(m)
            if r is None:
                cells.append("-")
                ratios.append("-")
                continue
            full = r.instances_per_s_overlapped or r.instances_per_s_rebuilt
            cells.append(
                f"{r.instances_per_s:.0f} cached, {r.instances_per_s_rebuilt:.0f} rebuilt, "
                f"{r.instances_per_s_overlapped:.0f} overlapped"
            )
            ratios.append(f"{full / best[m]:.2f}x" if best[m] else "-")
        lines.append(
            f"| edbatch_jax {engine} / {policy} / {layout} | " + " | ".join(cells) + " | " + " / ".join(ratios) + " |"
        )
    optimizers = sorted({r.optimizer for r in ours if r.mode == "train"})
    if optimizers:
        lines += ["", f"Training steps: DyNet's `SimpleSGDTrainer`; ours optax {', '.join(optimizers)}."]
    return "\n".join(lines)
