"""The notebooks in notebooks/ run top to bottom and ship with their plots.

Every notebook is executed with nbclient in quick mode (``EDBATCH_NOTEBOOK_QUICK=1``: small sizes) in a
scratch directory, on a kernel that runs this interpreter, so the package under test is the one imported.
The committed versions must carry the images of a full run (``make notebooks`` regenerates them) and no
machine paths.
"""

import json
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def test_the_four_notebooks_are_there():
    names = {p.stem for p in NOTEBOOKS}
    assert {"01_quickstart", "02_learning_a_policy", "03_memory_layout", "04_training"} <= names


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory):
    """A kernelspec folder whose ``python3`` kernel is this interpreter (whatever other kernels are installed)."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / "python3"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return root


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, kernel_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("EDBATCH_NOTEBOOK_QUICK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # let the kernel use its inline backend
    nb = nbformat.read(path, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    client = NotebookClient(
        nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_has_plots_and_no_machine_paths(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{path.name}: no PNG output; run `make notebooks` to store a full run's outputs"
    for cell in nb.cells:
        for bad in ("/work", "/tmp"):
            assert bad not in cell.source, f"{path.name}: a cell mentions {bad!r}:\n{cell.source}"
    first = code[0].source
    assert "import edbatch_jax" in first and "pip" in first, (
        f"{path.name}: the first code cell must install the package when missing"
    )
