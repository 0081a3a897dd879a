"""The benchmark behind ``edbatch bench-processes``: training as 1 process against N, in one run.

Each row is a real ``edbatch train`` run (a child process, or a group spawned
by ``--processes N``) of the same workload, mini-batches, seed and settings,
with its programs compiled before step 1; the rows read the run's JSON-lines
log. Throughput is the median over the steps after the first ``skip`` of
the global mini-batch's instances per second of a step (planning of
the step's mini-batch is cached after the first epoch; a step is the
engine's forward and backward programs, the loss, and for N > 1 the
all-reduce and the update). The collective's share is the median over the
same steps of ``collective_s`` (process 0's all-reduce time, including its
wait for the slowest share) divided by the step's time.

Host-side; spawns processes, so not jittable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence

__all__ = ["ProcessRow", "run_process_benchmarks", "format_process_table"]


@dataclasses.dataclass(frozen=True)
class ProcessRow:
    """One run: ``processes`` processes training ``model``.

    Attributes:
      processes: processes in the group (1: plain ``edbatch train``).
      steps: steps measured (after the skipped ones).
      instances_per_s: median global instances per second of a step.
      collective_share: median share of a step spent in the all-reduce (0 for one process).
      final_loss: the last step's loss (the runs train the same model: close, not equal).
    """

    processes: int
    steps: int
    instances_per_s: float
    collective_share: float
    final_loss: float


def run_process_benchmarks(
    model: str,
    processes: Sequence[int],
    *,
    steps: int = 60,
    skip: int = 10,
    batch_size: int | None = None,
    hidden: int = 128,
    engine: str = "stepwise",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[ProcessRow]:
    """Trains ``model`` once per entry of ``processes`` and measures each run (module docstring).

    Raises:
      ValueError: ``steps <= skip``, or a run failed (its output's end in the message).
    """
    if steps <= skip:
        raise ValueError(f"steps ({steps}) must exceed the skipped warm-up steps ({skip})")
    rows = []
    for n in processes:
        if progress:
            progress(f"{n} process{'es' if n > 1 else ''}")
        with tempfile.TemporaryDirectory() as tmp:
            log = os.path.join(tmp, "log.jsonl")
            argv = [sys.executable, "-m", "edbatch_jax.apps.cli", "train", "--model", model, "--steps", str(steps)]
            argv += ["--hidden", str(hidden), "--engine", engine, "--seed", str(seed), "--log", log, "--quiet"]
            argv += ["--eval-batches", "1", "--compile-cache", "off"]
            argv += ["--batch-size", str(batch_size)] if batch_size else []
            argv += ["--processes", str(n)] if n > 1 else []
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-5:])
                raise ValueError(f"the run with {n} processes failed:\n{tail}")
            with open(log) as f:
                records = [r for r in map(json.loads, f) if "step" in r and "loss" in r and "eval" not in r]
        timed = records[skip:]
        rate = statistics.median(r["instances_per_s"] for r in timed)
        share = 0.0
        if n > 1:  # a step's time: its instances over its rate
            share = statistics.median(r["collective_s"] * r["instances_per_s"] / r["instances"] for r in timed)
        rows.append(ProcessRow(n, len(timed), rate, share, records[-1]["loss"]))
    return rows


def format_process_table(rows: Sequence[ProcessRow]) -> str:
    """The rows as a Markdown table, with throughput relative to the first row."""
    base = rows[0].instances_per_s if rows else 1.0
    lines = [
        "| processes | steps timed | instances/s | vs first row | all-reduce share of a step | last loss |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.processes} | {r.steps} | {r.instances_per_s:,.0f} | {r.instances_per_s / base:.2f}x | "
            f"{100 * r.collective_share:.1f} % | {r.final_loss:.4f} |"
        )
    return "\n".join(lines)
