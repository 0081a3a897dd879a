"""Shared pytest configuration.

Reusable hypothesis strategies and graph helpers live in ``tests/strategies.py``;
this file makes that module importable (``import strategies``) from any test
file, whatever pytest's import mode, and gives JAX two CPU devices.
"""

import sys
from pathlib import Path

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


import atexit  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# Most of the suite's time is XLA compiling small programs on the CPU; tests check values, not speed, so on a
# machine without a GPU they compile with LLVM's cheap pipeline (about a third less compile time). The
# semantics of the programs are the same; benchmarks and the library's users compile at the default level.
if shutil.which("nvidia-smi") is None and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

# The `edbatch` commands keep compiled programs in the user's cache folder by default; the tests that call
# them do not (tests/test_compile_cache.py switches a cache on where it tests one).
os.environ["EDBATCH_COMPILE_CACHE"] = "off"

# Many tests build new engines for the same ops and graphs, whose programs are then traced again and, without a
# cache, compiled again: a persistent compilation cache loads those instead (one folder per process, removed at
# exit: JAX writes an entry without a lock, so workers do not share one). Counting tests count programs
# compiled or loaded from it alike.
_XLA_CACHE = tempfile.mkdtemp(prefix=f"edbatch-tests-xla-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
atexit.register(shutil.rmtree, _XLA_CACHE, True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Two host devices for the data-parallel tests (tests/test_parallel.py); set before JAX starts its CPU
# backend. Every other test runs on the first device, as it would alone.
jax.config.update("jax_num_cpu_devices", 2)


@pytest.fixture(scope="session")
def sst_minibatches():
    """Four Tree-LSTM mini-batch graphs of 16 synthetic SST-like trees."""
    from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
    from edbatch_jax.zoo.models.treelstm import TreeLSTM

    trees = synthetic_sst(64, seed=11)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(len(vocab), hidden=8, embed=8)
    return [model.batch_graph(trees[i : i + 16], vocab) for i in range(0, 64, 16)]


@pytest.fixture(scope="session")
def lattice_minibatch():
    """One Lattice-LSTM mini-batch graph of 8 synthetic lattices."""
    from edbatch_jax.zoo.data.lattice import synthetic_lattices
    from edbatch_jax.zoo.models.lattice import LatticeTagger

    return LatticeTagger(hidden=8, embed=8).batch_graph(synthetic_lattices(8, seed=5))
