"""DyNet beside ours: the peer runner's contract, checked with a stand-in for DyNet's benchmark script."""

from __future__ import annotations

import json
import sys
import textwrap

import optax
import pytest

from edbatch_jax.apps import bench
from edbatch_jax.apps.cli import main
from edbatch_jax.apps.peers import PeerError, run_dynet

# Writes what DyNet's dynet_treelstm.py writes with --json (rows of mode, batch_size, phase, trees_per_s);
# FAIL in the environment makes it fail, EMPTY makes it measure nothing.
FAKE_DYNET = textwrap.dedent("""
    import json, os, sys
    args = sys.argv[1:]
    get = lambda flag: args[args.index(flag) + 1]
    if os.environ.get("FAIL"):
        print("dynet: out of memory", file=sys.stderr)
        sys.exit(3)
    modes = [int(m) for m in args[args.index("--modes") + 1:]]
    bsz = int(get("--batch-sizes"))
    rows = [] if os.environ.get("EMPTY") else [
        dict(mode=m, batch_size=bsz, phase=p, trees_per_s=1000.0 * m + (500.0 if p == "infer" else 0.0))
        for m in modes for p in ("infer", "train")]
    assert open(get("--data")).read().startswith("("), "not a tree file"
    json.dump(dict(meta=dict(dynet_version="2.1.2"), rows=rows), open(get("--json"), "w"))
""")

TREES = ["(3 (2 good) (4 (2 movie) (3 fun)))", "(1 (2 not) (1 (2 so) (0 bad)))", "(2 (2 a) (2 film))"]


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "dynet_treelstm.py"
    script.write_text(FAKE_DYNET)
    trees = tmp_path / "trees.txt"
    trees.write_text("\n".join(TREES * 8) + "\n")
    return script, trees


def test_run_dynet_reads_every_mode_and_phase(fake):
    script, trees = fake
    rows = run_dynet(sys.executable, str(script), str(trees), 64, 128)
    got = {(r["system"], r["mode"]): r["instances_per_s"] for r in rows}
    assert got == {
        ("dynet agenda", "infer"): 1500.0,
        ("dynet agenda", "train"): 1000.0,
        ("dynet depth", "infer"): 2500.0,
        ("dynet depth", "train"): 2000.0,
    }
    assert {r["batch_size"] for r in rows} == {64} and {r["dynet_version"] for r in rows} == {"2.1.2"}


def test_run_dynet_failures_name_the_cause(fake, tmp_path, monkeypatch):
    script, trees = fake
    with pytest.raises(PeerError, match="DyNet benchmark script not found"):
        run_dynet(sys.executable, str(tmp_path / "missing.py"), str(trees), 64, 128)
    with pytest.raises(PeerError, match="tree file not found"):
        run_dynet(sys.executable, str(script), str(tmp_path / "none.txt"), 64, 128)
    monkeypatch.setenv("FAIL", "1")
    with pytest.raises(PeerError, match=r"failed \(exit 3\)[\s\S]*out of memory"):
        run_dynet(sys.executable, str(script), str(trees), 64, 128)
    monkeypatch.delenv("FAIL")
    monkeypatch.setenv("EMPTY", "1")
    with pytest.raises(PeerError, match="measured nothing"):
        run_dynet(sys.executable, str(script), str(trees), 64, 128)


def test_bench_runs_dynet_before_and_after_ours_and_reports_ratios(fake, tmp_path, capsys, monkeypatch):
    script, trees = fake
    out, page = tmp_path / "bench.json", tmp_path / "bench.md"
    made = []  # the training configuration's optimizer comes from --optimizer
    monkeypatch.setitem(bench.OPTIMIZERS, "sgd", (lambda lr: made.append("sgd") or optax.sgd(lr), 0.01))
    assert (
        main(
            [
                "bench",
                "--model",
                "treelstm",
                "--data",
                str(trees),
                "--batch-size",
                "4",
                "--hidden",
                "8",
                "--batches",
                "1",
                "--warmup",
                "0",
                "--rounds",
                "1",
                "--policy",
                "agenda",
                "--layout",
                "dynet",
                "--mode",
                "infer,train",
                "--optimizer",
                "sgd",
                "--max-lanes",
                "4",  # few lane buckets: faster compilation
                "--dynet",
                sys.executable,
                "--dynet-script",
                str(script),
                "--json",
                str(out),
                "--markdown",
                str(page),
                "--quiet",
            ]
        )
        == 0
    )
    assert made == ["sgd"]
    rows = json.loads(out.read_text())
    peers = [r for r in rows if r["engine"] == "dynet"]
    assert {(r["run"], r["policy"], r["mode"]) for r in peers} == {
        (run, f"dynet {s}", m) for run in ("before", "after") for s in ("agenda", "depth") for m in ("infer", "train")
    }
    ours = next(r for r in rows if r["engine"] == "fused" and r["mode"] == "train")
    text = page.read_text()
    assert "DyNet side by side" in text and "dynet depth (before ours)" in text and "dynet depth (after ours)" in text
    # the ratio divides our overlapped throughput by DyNet's best strategy (depth here: 2000 trees/s in training)
    assert f"{ours['instances_per_s_overlapped'] / 2000.0:.2f}x" in text
    assert str(tmp_path) not in text and "--dynet DYNET_PYTHON --dynet-script DYNET_SCRIPT" in text
    assert "ours optax sgd" in text and "training steps: optax sgd (0.01)" in text
    assert {r["mode"]: r["optimizer"] for r in rows if r["engine"] == "fused"} == {"infer": "", "train": "sgd"}


def test_bench_dynet_needs_the_tree_lstm_on_sst_trees(fake):
    script, _ = fake
    with pytest.raises(SystemExit, match="--model must include treelstm, got 'binary_tree'"):
        main(["bench", "--model", "binary_tree", "--dynet", sys.executable, "--dynet-script", str(script), "--quiet"])
    # refused before any model runs: other models may run in the same command, DyNet beside the Tree-LSTM's rows
    with pytest.raises(SystemExit, match="needs the SST trees"):
        main(
            ["bench", "--model", "binary_tree,treelstm", "--dynet", sys.executable, "--dynet-script", str(script)]
            + ["--data", str(script.parent / "missing"), "--quiet"]
        )
