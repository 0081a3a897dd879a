"""The benchmark harness: one run, every configuration, the JSON it promises."""

from __future__ import annotations

import json

from edbatch_jax.apps.cli import main

REQUIRED = {
    "model",
    "policy",
    "mode",
    "engine",
    "batch_size",
    "hidden",
    "instances_per_s",
    "batches_per_minibatch",
    "lower_bound",
    "compiles_after_warmup",
    "construct_ms",
    "schedule_ms",
    "layout_ms",
    "engine_plan_ms",
    "execute_ms",
    "gathers_per_minibatch",
    "gathered_bytes_per_minibatch",
    "executables",
    "warmup_s",
    "peak_rss_mb",
}


def test_bench_cli_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    page = tmp_path / "bench.md"
    plot = tmp_path / "bench.png"
    assert (
        main(
            [
                "bench",
                "--model",
                "binary_tree",
                "--batch-size",
                "2,4",  # two sizes, small graphs: few width buckets to compile
                "--hidden",
                "8",
                "--batches",
                "1",
                "--warmup",
                "0",  # the timed mini-batch alone is warmed up (and compiled) before the rounds
                "--policy",
                "typewise",
                "--layout",
                "dynet,planned",
                "--mode",
                "infer",
                "--engine",
                "stepwise,fused",
                "--max-lanes",
                "4",
                "--unbatched",
                "1",
                "--json",
                str(out),
                "--markdown",
                str(page),
                "--plot",
                str(plot),
                "--op-calls",
                "--floor",
                "--rounds",
                "2",
                "--quiet",
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    batched = [r for r in rows if r["policy"] != "none"]
    assert len(batched) == 2 * 2 * 2  # batch sizes x engines x layouts
    assert {r["batch_size"] for r in rows} == {2, 4}
    for r in batched:
        assert REQUIRED <= r.keys()
        assert r["compiles_after_warmup"] == 0  # across both timed rounds
        assert r["rounds"] == 2 and len(r["execute_ms_rounds"]) == 2 and r["spread_pct"] >= 0
        assert r["batches_per_minibatch"] >= r["lower_bound"] > 0
        assert r["instances_per_s"] > r["instances_per_s_rebuilt"] > 0
        assert r["instances_per_s_overlapped"] > 0 and r["overlapped_ms"] > 0  # rebuilt, planned ahead
        assert r["instances_per_s_threaded"] > 0 and r["threaded_ms"] > 0  # ... with a worker thread
        assert r["planning_fraction_threaded"] == (r["threaded_ms"] - r["execute_ms"]) / r["threaded_ms"]
        assert r["engine_plan_ms"] > 0  # the engine's plan of re-planned mini-batches is timed, not served from a cache
        rebuilt_ms = sum(r[k] for k in ("construct_ms", "schedule_ms", "layout_ms", "engine_plan_ms", "execute_ms"))
        assert (
            abs(r["batch_size"] / (rebuilt_ms / 1e3) - r["instances_per_s_rebuilt"])
            < 1e-6 * r["instances_per_s_rebuilt"]
        )
        assert r["op_calls_instances_per_s"] > 0 and r["op_calls_fraction"] > 0  # the op calls alone, timed
        assert r["flops_per_instance"] > 0 and r["matmul_gflops"] > 0 and r["floor_fraction"] > 0  # compute floor
        assert (
            abs(r["floor_instances_per_s"] * r["flops_per_instance"] - r["matmul_gflops"] * 1e9)
            < 1e-3 * r["matmul_gflops"] * 1e9
        )
    # a perfect binary tree: type-wise batching reaches the lower bound exactly
    assert all(r["batches_per_minibatch"] == r["lower_bound"] for r in batched if r["policy"] == "typewise")
    # the planned layout gathers no more than DyNet-style rows
    for r in batched:
        if r["layout"] == "planned":
            twin = next(
                x
                for x in batched
                if x["layout"] == "dynet" and all(x[k] == r[k] for k in ("engine", "policy", "batch_size"))
            )
            assert r["gathered_bytes_per_minibatch"] <= twin["gathered_bytes_per_minibatch"]
    assert any(r["policy"] == "none" for r in rows)  # the unbatched baseline in the same run
    text = page.read_text()
    assert "%opc" in text and "--op-calls" in text and "%flr" in text
    assert "edbatch bench --model binary_tree" in text and "fused" in text and "stepwise" in text
    assert str(tmp_path) not in text and "--json OUT.json" in text and "--plot OUT.png" in text  # no machine paths
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_zero_rounds():
    import pytest

    from edbatch_jax.apps.bench import run_benchmarks
    from edbatch_jax.zoo.workloads import load_workload

    work = load_workload("binary_tree", None, hidden=8)
    with pytest.raises(ValueError, match="rounds"):
        run_benchmarks(work, ["agenda"], ["dynet"], ["infer"], 4, num_batches=1, rounds=0)
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        run_benchmarks(work, ["agenda"], ["dynet"], ["train"], 4, num_batches=1, optimizer="lion")


def test_bench_labels_a_policy_file_by_its_name(tmp_path, capsys):
    """``--policy fsm,PATH``: the shipped policy and a policy file side by side, told apart in the table and JSON."""
    import shutil

    from edbatch_jax.zoo.workloads import default_policy_path

    mine = tmp_path / "my_policy.json"
    shutil.copy(default_policy_path("binary_tree"), mine)
    out, page = tmp_path / "bench.json", tmp_path / "bench.md"
    assert (
        main(
            [
                "bench",
                "--model",
                "binary_tree",
                "--batch-size",
                "4",
                "--hidden",
                "8",
                "--batches",
                "1",
                "--warmup",
                "0",
                "--policy",
                f"fsm,{mine}",
                "--layout",
                "dynet",
                "--mode",
                "infer",
                "--engine",
                "fused",
                "--max-lanes",
                "4",  # few lane buckets: faster compilation
                "--rounds",
                "1",
                f"--json={out}",
                "--markdown",
                str(page),
                "--quiet",
            ]
        )
        == 0
    )
    text = page.read_text()  # the page quotes the command with the policy file by its name, no machine path
    assert str(tmp_path) not in text and "--policy fsm,my_policy.json" in text and "--json=OUT.json" in text
    rows = json.loads(out.read_text())
    assert [r["policy"] for r in rows] == ["fsm", "fsm:my_policy"]
    assert rows[0]["batches_per_minibatch"] == rows[1]["batches_per_minibatch"]  # the same table, the same batches
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("engine"))
    row = next(line for line in lines if "fsm:my_policy" in line)
    assert row.split()[1] == "fsm:my_policy" and row.index("dynet") == header.index("layout")  # the column fits


def test_bench_measures_data_parallel_shards():
    """``shards=(1, 2)``: the same configurations on one device and split over two, side by side."""
    import pytest

    from edbatch_jax.apps.bench import format_table, run_benchmarks
    from edbatch_jax.zoo.workloads import load_workload

    work = load_workload("binary_tree", hidden=8, num_train=16)
    res = run_benchmarks(
        work,
        ["typewise"],
        ["dynet"],
        ["infer", "train"],
        batch_size=4,
        num_batches=1,
        warmup=1,
        engines=["fused"],
        max_lanes=4,
        rounds=1,
        floor=True,
        shards=(1, 2),
    )
    by = {(r.mode, r.shards): r for r in res}
    assert sorted(by) == [("infer", 1), ("infer", 2), ("train", 1), ("train", 2)]
    for mode in ("infer", "train"):
        one, two = by[(mode, 1)], by[(mode, 2)]
        assert one.compiles_after_warmup == 0 and two.compiles_after_warmup == 0
        # perfect binary trees: type-wise batching reaches each shard's lower bound; batches add up over shards
        assert one.batches_per_minibatch == one.lower_bound
        assert two.batches_per_minibatch == two.lower_bound >= one.lower_bound
        assert abs(two.flops_per_instance - one.flops_per_instance) <= 1e-6 * one.flops_per_instance
        assert two.instances_per_s > 0 and two.instances_per_s_overlapped > 0
    assert "fused x2" in format_table(res)
    with pytest.raises(ValueError, match="jax_num_cpu_devices"):
        run_benchmarks(work, ["typewise"], ["dynet"], ["infer"], batch_size=4, shards=(64,))


def test_the_harness_counts_xla_compilations_not_only_traces():
    """``compiles_after_warmup`` counts XLA's compilations: a program compiled again for inputs of another kind
    (here committed to a device instead of not), with no new trace, counts too."""
    import jax
    import numpy as np

    from edbatch_jax.apps.bench import xla_compiles

    fn = jax.jit(lambda x: x * 3 + 1)
    before = xla_compiles()
    fn(jax.device_put(np.arange(5.0)))
    assert xla_compiles() == before + 1
    fn(jax.device_put(np.ones(5)))  # the same kind of input: cached
    assert xla_compiles() == before + 1
    fn(jax.device_put(np.arange(5.0), jax.devices()[0]))  # committed: XLA compiles again, nothing is traced again
    assert xla_compiles() == before + 2


def test_bench_runs_a_model_with_dropout_through_every_timed_phase():
    """Stochastic ops (dropout) through every phase the harness times, the engine's uncached plan included
    (both engines plan through Engine._new_plan; the fused one is measured here); sharded training of such a
    model is refused rather than measured without dropout."""
    import pytest

    from edbatch_jax.apps.bench import run_benchmarks
    from edbatch_jax.zoo.workloads import load_workload

    work = load_workload("childsum_treelstm", hidden=8, num_train=16, num_held_out=4, dropout=0.5)
    res = run_benchmarks(
        work,
        ["agenda"],
        ["dynet"],
        ["infer", "train"],
        batch_size=4,
        num_batches=1,
        warmup=0,
        engines=["fused"],
        max_lanes=4,
        rounds=1,
    )
    assert sorted((r.engine, r.mode) for r in res) == [("fused", "infer"), ("fused", "train")]
    assert all(r.compiles_after_warmup == 0 and r.instances_per_s > 0 for r in res)
    with pytest.raises(ValueError, match="dropout would be silently off"):
        run_benchmarks(work, ["agenda"], ["dynet"], ["train"], batch_size=4, shards=(1, 2))
