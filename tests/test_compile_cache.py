"""The persistent compile cache: a second process loads the engine's programs instead of compiling them."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edbatch_jax.apps import cli
from edbatch_jax.engine.compile_cache import ENV_VAR, default_compile_cache_dir, resolve_compile_cache

# One process: a fused Tree-LSTM engine's inference and training programs on a small mini-batch, with the
# cache in argv[1]; prints the cache's hits and misses, the programs traced, the loss and the gradients.
_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import edbatch_jax as eb
    from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
    from edbatch_jax.zoo.models.treelstm import TreeLSTM
    from edbatch_jax.training import loss_and_grads, make_minibatch

    events = {}
    jax.monitoring.register_event_listener(lambda e, **kw: events.__setitem__(e, events.get(e, 0) + 1))
    eb.enable_compile_cache(sys.argv[1])
    trees = synthetic_sst(4, seed=3)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(len(vocab), hidden=8, embed=8)
    params = model.init(jax.random.PRNGKey(0))
    batch = make_minibatch(model.batch_graph(trees, vocab), "agenda")
    engine = eb.FusedEngine(model.ops, max_lanes=4)  # few lane buckets: faster compilation
    loss, grads = loss_and_grads(engine, params, batch)
    print(json.dumps({
        "hits": events.get("/jax/compilation_cache/cache_hits", 0),
        "misses": events.get("/jax/compilation_cache/cache_misses", 0),
        "programs": engine.trace_count,
        "loss": float(loss),
        "grads": [np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)],
    }))
""")


def _run(cache: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(cache)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_program_from_the_cache_and_computes_the_same(tmp_path):
    cache = tmp_path / "xla"
    first, second = _run(cache), _run(cache)
    assert first["programs"] == 2  # the engine's forward program storing residuals, and its backward program
    assert first["hits"] == 0 and first["misses"] > 0
    assert second["misses"] == 0 and second["hits"] == first["misses"]  # every program loaded, none compiled
    assert second["programs"] == first["programs"]  # (traced again all the same)
    assert second["loss"] == first["loss"] and second["grads"] == first["grads"]
    assert len(list(cache.iterdir())) == first["misses"]


def test_the_default_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache_dir() == tmp_path / "xdg" / "edbatch_jax" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_compile_cache_dir() == tmp_path / "home" / ".cache" / "edbatch_jax" / "xla"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "mine"))
    assert default_compile_cache_dir() == tmp_path / "mine"
    assert resolve_compile_cache("auto") == tmp_path / "mine"
    assert resolve_compile_cache(str(tmp_path / "other")) == tmp_path / "other"
    monkeypatch.setenv(ENV_VAR, "off")
    assert default_compile_cache_dir() is None and resolve_compile_cache("auto") is None
    assert resolve_compile_cache("off") is None and resolve_compile_cache(None) is None


def test_enabling_without_a_directory_when_switched_off_is_refused(monkeypatch):
    import edbatch_jax as eb

    monkeypatch.setenv(ENV_VAR, "off")
    with pytest.raises(ValueError, match=ENV_VAR):
        eb.enable_compile_cache()


def test_a_cache_path_that_is_a_file_is_refused_by_name(tmp_path):
    import edbatch_jax as eb

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError, match="compile cache directory .*a_file.* cannot be made"):
        eb.enable_compile_cache(blocker)
    with pytest.raises(SystemExit, match="edbatch train: --compile-cache: compile cache directory .*a_file"):
        cli.main(["train", "--compile-cache", str(blocker / "xla")])
    assert blocker.read_text() == ""  # nothing written


@pytest.mark.parametrize("command, default", [("train", "auto"), ("demo", "auto"), ("learn", "auto"), ("bench", "off")])
def test_the_commands_switch_the_cache_on_as_told(monkeypatch, tmp_path, command, default):
    assert cli.build_parser().parse_args([command]).compile_cache == default
    calls = []
    monkeypatch.setattr(cli, "enable_compile_cache", calls.append)
    func = {"train": "train_command", "demo": "demo", "learn": "learn", "bench": "bench"}[command]
    monkeypatch.setattr(cli, func, lambda args: 0)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert cli.main([command]) == 0
    assert calls == ([tmp_path / "env"] if default == "auto" else [])
    assert cli.main([command, "--compile-cache", str(tmp_path / "given")]) == 0
    assert calls[-1] == tmp_path / "given"
    n = len(calls)
    assert cli.main([command, "--compile-cache", "off"]) == 0
    assert len(calls) == n
