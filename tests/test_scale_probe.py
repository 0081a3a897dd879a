"""tools/scale_probe.py: one size of each family measures every phase; the page and the plot are written."""

import importlib.util
import os
import sys

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "tools", "scale_probe.py")


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("scale_probe", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scale_probe"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("scale_probe", None)


def test_a_lattice_batch_measures_every_planning_phase(probe):
    row = probe._Family("lattice", None).measure(1000)
    assert row["nodes"] > 500
    assert set(probe.PLANNING) <= set(row["us"])  # the shipped FSM policy included
    assert all(v > 0 for v in row["us"].values())
    assert row["batches"]["typewise"] <= row["batches"]["agenda"]
    assert row["peak_mb"] >= 0


def test_the_dag_and_a_stress_graph_measure_without_an_fsm_policy(probe):
    for kind, construct in (("dag", True), ("wide", False)):
        row = probe._Family(kind, None).measure(1000)
        assert "fsm" not in row["us"]
        assert {"data", "typewise", "layout", "stepwise", "fused"} <= set(row["us"])
        assert ("construct" in row["us"]) == construct  # the GraphBuilder rebuilds the random DAG only


def _row(kind, size, nodes, scale):
    return {
        "kind": kind,
        "size": size,
        "nodes": nodes,
        "us": {c: scale * (i + 1) for i, c in enumerate(("data", "typewise", "layout", "fused"))},
        "peak_mb": nodes / 1e4,
        "wall_s": 1.0,
    }


def test_the_page_names_phases_over_2x_and_the_plot_is_written(probe, tmp_path):
    results = {
        "dag": [_row("dag", 1000, 1000, 1.0), _row("dag", 10**6, 10**6, 1.5)],
        "lattice": [_row("lattice", 1000, 852, 1.0), _row("lattice", 10**6, 10**6, 3.0)],
        "chain": [_row("chain", 1000, 1000, 1.0), {"kind": "chain", "size": 10**4, "error": "timed out", "wall_s": 9}],
    }
    plot = tmp_path / "img" / "scale.png"
    page = tmp_path / "scale.md"
    probe.plot_curves(results, str(plot))
    text = probe.markdown(results, "python tools/scale_probe.py --max 1e6", 60.0, str(plot), str(page))
    assert plot.stat().st_size > 1000
    assert "](img/scale.png)" in text
    assert "* dag, 1,000 to 1,000,000 nodes: every phase within 2x." in text
    assert "* lattice, 852 to 1,000,000 nodes: over 2x: `typewise` (3.00x), `layout` (3.00x), `fused` (3.00x)." in text
    assert "timed out" in text
    assert "| 6 | 852 |" in text  # lattices by count
    assert probe.sizes_for("dag", 1e6, 1e5) == [1000, 10**4, 10**5, 10**6]
    assert probe.sizes_for("chain", 1e6, 1e5) == [1000, 10**4, 10**5]
    assert probe.sizes_for("treelstm", 1e3, 1e3) == list(probe.TREE_SIZES)
