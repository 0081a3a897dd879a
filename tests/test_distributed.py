"""Training over processes (jax.distributed, gloo): two local processes against one, a killed process, resume.

Mini-batches of 5 instances: the processes hold shares of 3 and 2 (unequal shares compile their own engine
programs; the all-reduce is the same in both).

The processes are real: ``edbatch train --processes 2`` spawns two Python
processes that meet in one all-reduce per step. The one-process run is
:func:`~edbatch_jax.training.loop.train` in this process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from edbatch_jax.training.distributed import DistributedError, ProcessGroup, launch_local, process_share
from edbatch_jax.training.loop import TrainConfig, train
from edbatch_jax.zoo.workloads import load_workload

STEPS, EVERY = 6, 2  # checkpoints at 2 and 4: one to kill after, one the run may still reach
NUM_TRAIN = 60  # synthetic trees: 12 mini-batches, more than the steps (each process plans them all)
ARGS = ["--model", "treelstm", "--hidden", "4", "--batch-size", "5", "--steps", str(STEPS), "--eval-batches", "1"]
ARGS += ["--num-train", str(NUM_TRAIN)]
ARGS += ["--checkpoint-every", str(EVERY), "--no-precompile", "--quiet", "--seed", "3"]


def _edbatch(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "edbatch_jax.apps.cli", "train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _params(directory: Path) -> tuple[int, dict]:
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(directory.resolve()) as manager:
        step = manager.latest_step()
        return step, manager.restore(step, args=ocp.args.StandardRestore())["params"]


def _pids_of(marker: str) -> dict[int, int]:
    """process id -> pid of the running processes whose command line holds ``marker`` and ``--process-id``."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except (OSError, ValueError):
            continue
        if marker in argv and "--process-id" in argv:
            found[int(argv[argv.index("--process-id") + 1])] = int(entry.name)
    return found


def _assert_trees_close(a, b, **tol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol), a, b)


def test_process_groups_and_shares_are_checked():
    assert ProcessGroup.from_env({}) is None
    env = {"EDBATCH_COORDINATOR": "h:1", "EDBATCH_NUM_PROCESSES": "2", "EDBATCH_PROCESS_ID": "1"}
    group = ProcessGroup.from_env(env)
    assert group == ProcessGroup("h:1", 2, 1) and ProcessGroup.from_env(group.environ()) == group
    with pytest.raises(DistributedError, match="EDBATCH_COORDINATOR set without EDBATCH_NUM_PROCESSES"):
        ProcessGroup.from_env({"EDBATCH_COORDINATOR": "h:1"})
    with pytest.raises(DistributedError, match="EDBATCH_PROCESS_ID must be an integer, got 'x'"):
        ProcessGroup.from_env({**env, "EDBATCH_PROCESS_ID": "x"})
    with pytest.raises(DistributedError, match=r"process_id must be in \[0, 2\), got 2"):
        ProcessGroup("h:1", 2, 2)
    with pytest.raises(DistributedError, match="coordinator must be 'host:port'"):
        ProcessGroup("nohost", 2, 0)
    shares = [process_share(list(range(7)), 3, k) for k in range(3)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6]]  # unequal shares: the first ones one longer


def test_a_process_that_fails_is_named():
    with pytest.raises(DistributedError, match=r"process [01] of 2 exited with code 2"):
        launch_local(["train", "--no-such-option"], 2)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Two runs of two processes: one whose process 1 is killed after a checkpoint, then its resumption."""
    root = tmp_path_factory.mktemp("distributed")
    ckpt, log = root / "ckpt", root / "log.jsonl"
    args = [*ARGS, "--processes", "2", "--checkpoint-dir", str(ckpt), "--log", str(log)]
    killed = _edbatch(*args, "--compile-cache", str(root / "cache"))  # the resumed run loads its programs
    victim, deadline = None, time.monotonic() + 300
    while victim is None and killed.poll() is None and time.monotonic() < deadline:
        if (ckpt / str(EVERY) / "commit_success.txt").exists():  # a finished checkpoint: kill process 1
            victim = _pids_of(str(ckpt)).get(1)
            if victim is not None:
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.005)
    killed_out = killed.communicate(timeout=300)[0]
    resumed = _edbatch(*args, "--compile-cache", str(root / "cache"), "--resume")
    resumed_out = resumed.communicate(timeout=300)[0]
    killed, resumed = (killed.returncode, killed_out), (resumed.returncode, resumed_out)
    return dict(root=root, ckpt=ckpt, log=log, victim=victim, killed=killed, resumed=resumed)


def test_a_killed_process_is_named_and_the_run_resumes_from_its_checkpoint(two_processes):
    assert two_processes["victim"] is not None, "the run ended before its first checkpoint could be interrupted"
    code, out = two_processes["killed"]
    assert code != 0
    assert "process 1 of 2 was killed by signal SIGKILL; the others were stopped" in out
    code, out = two_processes["resumed"]
    assert code == 0, out
    resumed_from = int(re.search(r"resumed from the checkpoint of step (\d+)", out).group(1))
    assert EVERY <= resumed_from < STEPS and resumed_from % EVERY == 0
    # process 0 alone logs: the killed run's steps from 1, then the resumed run's from its checkpoint on
    steps = [r["step"] for r in map(json.loads, two_processes["log"].read_text().splitlines()) if "step" in r]
    # (the killed run may have logged steps after its last checkpoint: the resumed run repeats them)
    cut = next((i for i in range(1, len(steps)) if steps[i] != steps[i - 1] + 1), resumed_from)
    assert cut >= resumed_from and steps[:cut] == list(range(1, cut + 1))
    assert steps[cut:] == list(range(resumed_from + 1, STEPS + 1))


def test_two_processes_train_to_the_parameters_of_one(two_processes):
    """Through the interruption and the resumption, the two processes reach one process's parameters."""
    step, params = _params(two_processes["ckpt"])
    assert step == STEPS
    work = load_workload("treelstm", hidden=4, seed=3, num_train=NUM_TRAIN)
    config = TrainConfig(steps=STEPS, batch_size=5, eval_batches=1, seed=3, precompile=False, test=False)
    one = train(work, config)
    _assert_trees_close(params, one.params, rtol=2e-4, atol=2e-6)
