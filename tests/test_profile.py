"""``edbatch bench --profile``: a step's time split by a ``jax.profiler`` trace, attributed by the engine's named
scopes in the compiled programs (:mod:`edbatch_jax.apps.profile`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edbatch_jax.apps.profile import (
    CATEGORIES,
    ProfileError,
    StepProfile,
    _busy_ns,
    _label,
    _read_module,
    _self_times,
    profile_calls,
)

_HLO = """\
HloModule jit_forward, entry_computation_layout={(f32[8,4]{1,0})->f32[8,4]{1,0}}

%fused_computation (p: f32[8,4]) -> f32[8,4] {
  %p = f32[8,4]{1,0} parameter(0)
  %gather.1 = f32[8,4]{1,0} gather(%p), metadata={op_name="jit(forward)/while/body/edbatch.gather/jit(_take)/gather"}
  ROOT %tanh.2 = f32[8,4]{1,0} tanh(%gather.1), metadata={op_name="jit(f)/body/jvp(vmap(edbatch.op.leaf))/tanh"}
  %add.3 = f32[8,4]{1,0} add(%tanh.2, %tanh.2), metadata={op_name="jit(forward)/jvp(vmap(edbatch.op.leaf))/add"}
}

ENTRY %main (x: f32[8,4]) -> f32[8,4] {
  %x = f32[8,4]{1,0} parameter(0)
  %dot.4 = f32[8,4]{1,0} dot(%x, %x), metadata={op_name="transpose(jvp(vmap(edbatch.op.internal)))/dot_general"}
  %fusion.5 = f32[8,4]{1,0} fusion(%x), kind=kLoop, calls=%fused_computation
  %while.6 = (s32[], f32[8,4]{1,0}) while(%t), condition=%cond, body=%body, metadata={op_name="jit(forward)/while"}
  ROOT %scatter-add.7 = f32[8,4]{1,0} scatter(%x), metadata={op_name="jit(backward)/edbatch.accumulate/scatter-add"}
}
"""


def test_labels_are_the_innermost_edbatch_scope_also_inside_transformations():
    assert _label("jit(f)/while/body/jvp(vmap(edbatch.op.leaf))/LeafCell/dot_general") == "op:leaf"
    assert _label("jit(f)/edbatch.accumulate/edbatch.gather/gather") == "gather"
    assert _label("jit(f)/edbatch.op.a-b.c/x") == "op:a-b.c"
    assert _label("jit(f)/while/body/add") is None


def test_a_module_maps_instructions_to_opcodes_and_categories(tmp_path):
    path = tmp_path / "module_0007.jit_forward.cpu_after_optimizations.txt"
    path.write_text(_HLO)
    info = _read_module(str(path))
    assert info["dot.4"] == ("dot", "op:internal")
    assert info["while.6"][0] == "while"
    assert info["scatter-add.7"] == ("scatter", "accumulate")
    assert info["fusion.5"] == ("fusion", "op:leaf")  # no scope of its own: the most frequent of what it fuses
    assert info["x"] == ("parameter", None)


def test_own_time_is_duration_less_nested_events_on_the_same_line():
    events = [
        ("cpu/t0", 0, 100, 1, "while.1"),  # contains the next two
        ("cpu/t0", 10, 20, 1, "dot.2"),
        ("cpu/t0", 40, 30, 1, "gather.3"),
        ("cpu/t1", 50, 70, 1, "add.4"),  # another thread: not nested
    ]
    own = {name: o for _, _, _, name, o in _self_times(events)}
    assert own == {"while.1": 50, "dot.2": 20, "gather.3": 30, "add.4": 70}
    assert _busy_ns([(0, 100), (10, 30), (50, 120), (200, 210)]) == 130


def test_shares_sum_to_one_and_list_op_types_by_time():
    p = StepProfile("x", 2, 10.0, {"op:a": 2.0, "op:b": 3.0, "gather": 1.0, "loop/branch": 1.0}, host_ms=3.0)
    s = p.shares()
    assert list(s)[: len(CATEGORIES)] == list(CATEGORIES)
    assert sum(s[c] for c in CATEGORIES) == pytest.approx(1.0)
    assert s["op"] == pytest.approx(0.5) and list(s)[len(CATEGORIES) :] == ["op:b", "op:a"]


def test_profiling_without_a_dump_is_refused():
    with pytest.raises(ProfileError, match="start_hlo_dump"):
        profile_calls(lambda: None, 1, "nothing", hlo_dir=None)


def test_bench_profile_splits_inference_and_training_steps_by_op_type(tmp_path):
    """A real run in its own process (XLA reads its dump flags when it starts): every configuration gets a
    profile whose instructions all come from dumped programs, whose op types are the model's, and whose training
    step accumulates cotangents."""
    out = tmp_path / "bench.json"
    scratch = tmp_path / "tmp"  # the run's temporary folders: its HLO dump must not outlive it
    scratch.mkdir()
    env = dict(os.environ, EDBATCH_COMPILE_CACHE="off", JAX_PLATFORMS="cpu", TMPDIR=str(scratch))
    args = ["bench", "--model", "binary_tree", "--batch-size", "4", "--hidden", "8", "--batches", "1"]
    args += ["--warmup", "0", "--rounds", "1", "--policy", "typewise", "--layout", "dynet", "--max-lanes", "4"]
    args += ["--mode", "infer,train", "--engine", "fused", "--profile", "3", "--json", str(out), "--quiet"]
    run = subprocess.run(
        [sys.executable, "-m", "edbatch_jax.apps.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Where a cached mini-batch's time goes" in run.stdout
    rows = {r["mode"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"infer", "train"}
    for mode, r in rows.items():
        prof = r["profile"]
        assert prof["calls"] == 3 and prof["wall_ms"] > 0 and prof["host_ms"] >= 0
        assert prof["unattributed_ms"] == 0  # every executed program was dumped and read
        ops = {k[3:] for k in prof["device_ms"] if k.startswith("op:")}
        assert ops and ops <= {"leaf", "internal", "loss"}, ops
        assert prof["device_ms"].get("gather", 0) > 0
        assert sum(prof["shares"][c] for c in CATEGORIES) == pytest.approx(1.0)
    assert rows["train"]["profile"]["device_ms"].get("accumulate", 0) > 0
    assert rows["train"]["profile"]["device_ms"].get("update", 0) > 0  # the loss's cotangent and the adam step
    assert "accumulate" not in rows["infer"]["profile"]["device_ms"]
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("edbatch-hlo-")]
