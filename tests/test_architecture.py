"""The package's layers: imports point down, no module reads another's private names, the core runs without Flax."""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import edbatch_jax as eb

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edbatch_jax"

CORE = ("graph", "scheduling", "layout", "fsm", "engine")
BASE = ("errors", "io")  # modules of the package root every layer may use
ALLOWED = {
    "graph": {"graph", *BASE},
    "scheduling": {"graph", "scheduling", *BASE},
    "layout": {"graph", "scheduling", "layout", *BASE},
    "fsm": {"graph", "scheduling", "fsm", *BASE},
    "engine": {"graph", "scheduling", "layout", "engine", *BASE},
    "training": {*CORE, "training", *BASE},
    "zoo": {*CORE, "zoo", *BASE},
    "dynamic": {*CORE, "dynamic", *BASE},
    "apps": {*CORE, "training", "zoo", "dynamic", "apps", *BASE},
}
"""Layer (a folder of ``edbatch_jax``) -> the layers its modules may import."""


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield rel, ast.parse(path.read_text(), str(path))


def _imports(tree: ast.AST, rel: Path):
    """``(line, module, names)`` of every import in a module, nested ones (in functions) included."""
    package = ["edbatch_jax", *rel.parts[:-1]]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            yield node.lineno, module, tuple(a.name for a in node.names)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "edbatch_jax" and len(parts) > 1 else None


def _violations(allowed: dict[str, set[str]]) -> list[str]:
    bad = []
    for rel, tree in _modules():
        if len(rel.parts) < 2:
            continue  # the package root (__init__, _compat, io) is checked on its own
        layer = rel.parts[0]
        for line, module, names in _imports(tree, rel):
            target = _layer(module)
            if module == "edbatch_jax":  # `from edbatch_jax import x`: the layer of each x
                targets = [n for n in names if (PACKAGE / n).is_dir() or (PACKAGE / f"{n}.py").exists()]
                bad += [f"{rel}:{line} imports edbatch_jax.{n}" for n in targets if n not in allowed[layer]]
                if layer in CORE and len(targets) < len(names):  # the public surface pulls in every layer
                    bad.append(f"{rel}:{line} imports from the top-level edbatch_jax")
            elif target is not None and target not in allowed[layer]:
                bad.append(f"{rel}:{line} imports {module}")
    return bad


def test_every_layer_imports_only_the_layers_below_it():
    assert set(ALLOWED) == {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert _violations(ALLOWED) == []


def test_the_layer_check_catches_an_upward_import():
    """The check can fail: a layer denied a layer it imports is reported, and so is an import of the zoo."""
    stricter = {**ALLOWED, "engine": {"engine", *BASE}}  # the engine imports the graph and scheduling layers
    assert any(v.startswith("engine/") for v in _violations(stricter))
    tree = ast.parse("from edbatch_jax.zoo.models import treelstm\nimport edbatch_jax.training\n")
    found = [m for _, m, _ in _imports(tree, Path("engine/x.py")) if _layer(m) not in ALLOWED["engine"]]
    assert found == ["edbatch_jax.zoo.models", "edbatch_jax.training"]


def test_no_module_imports_another_modules_private_names():
    bad = []
    for rel, tree in _modules():
        for line, module, names in _imports(tree, rel):
            if module.startswith("edbatch_jax"):
                bad += [f"{rel}:{line} {module}.{n}" for n in names if n.startswith("_") and n != "_compat"]
            if _layer(module) is not None and any(p.startswith("_") and p != "_compat" for p in module.split(".")):
                bad.append(f"{rel}:{line} {module}")
    assert bad == []


def test_every_layer_says_what_it_is_and_lists_its_public_names():
    for layer in ALLOWED:
        module = __import__(f"edbatch_jax.{layer}", fromlist=["x"])
        assert module.__doc__ and len(module.__doc__.split()) > 10, layer
    assert eb.__all__ == sorted(eb.__all__)
    missing = [n for n in eb.__all__ if getattr(eb, n, None) is None]
    assert missing == []


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_importing_the_library_loads_no_flax_optax_zoo_training_or_apps():
    out = _python(
        """
        import sys
        import edbatch_jax
        heavy = ("flax", "optax", "orbax", "edbatch_jax.zoo", "edbatch_jax.training", "edbatch_jax.apps")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy or m.startswith(heavy[3:])))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


BLOCK_FLAX = """
import importlib.abc, sys

class NoFlax(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flax", "optax", "orbax"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoFlax())
"""


def test_the_core_runs_plain_function_ops_without_flax_installed():
    out = _python(
        BLOCK_FLAX
        + """
import jax, jax.numpy as jnp, numpy as np
import edbatch_jax as eb

def leaf(params, word):
    return jnp.tanh(params["E"][word])

def node(params, payload, left, right):
    return jnp.tanh(jnp.concatenate([left, right]) @ params["W"])

def tree(words):
    b = eb.GraphBuilder()
    xs = [b.add("leaf", payload=np.int32(w)) for w in words]
    while len(xs) > 1:
        xs = [b.add("node", xs[0], xs[1])] + xs[2:]
    return b.build()

trees = [tree([1, 2, 3]), tree([4, 5]), tree([6, 7, 8, 9])]
graph = eb.batch_graphs(trees)
roots = np.cumsum([t.num_nodes for t in trees]) - 1
params = {"E": jnp.linspace(-1, 1, 40).reshape(10, 4), "W": jnp.eye(8)[:, :4]}
ops = {"leaf": leaf, "node": node}
ref = eb.run_unbatched(ops, params, graph, outputs=roots)
for policy in ("agenda", "depth", "typewise"):
    sched = eb.schedule(graph, policy)
    eb.validate_schedule(graph, sched)
    layout = eb.plan_layout(graph, sched)
    for engine in (eb.StepwiseEngine(ops), eb.FusedEngine(ops)):
        out = engine.run(params, graph, sched, roots, layout=layout)
        np.testing.assert_allclose(out, ref, rtol=1e-6)
loss = lambda p: eb.run(ops, p, graph, eb.schedule(graph, "agenda"), outputs=roots).sum()
g = jax.grad(loss)(params)
g_ref = jax.grad(lambda p: eb.run_unbatched(ops, p, graph, outputs=roots).sum())(params)
jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g, g_ref)
try:
    eb.linen_op
except ModuleNotFoundError as e:
    print("flax adapters need flax:", e.name)
import sys
print(sorted({m.split(".")[0] for m in sys.modules} & {"flax", "optax", "orbax"}))
"""
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["flax adapters need flax: flax", "[]"]


@pytest.mark.parametrize(
    "old, new, name",
    [
        ("edbatch_jax.workloads", "edbatch_jax.zoo.workloads", "load_workload"),
        ("edbatch_jax.nn.treelstm", "edbatch_jax.zoo.models.treelstm", "TreeLSTM"),
        ("edbatch_jax.data.sst", "edbatch_jax.zoo.data.sst", "read_sst"),
        ("edbatch_jax.train", "edbatch_jax.training.loop", "train"),
        ("edbatch_jax.parallel", "edbatch_jax.training.parallel", "ShardedTrainer"),
        ("edbatch_jax.analysis", "edbatch_jax.graph.analysis", "lower_bound"),
        ("edbatch_jax.engine.executor", "edbatch_jax.engine.stepwise", "ExecutionPlan"),
        ("edbatch_jax.bench", "edbatch_jax.apps.bench", "run_benchmarks"),
    ],
)
def test_old_module_paths_warn_and_give_the_same_objects(old, new, name):
    import importlib

    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_a_removed_module_path_names_where_its_code_went():
    with pytest.raises(ImportError, match="tools/apidoc.py"):
        import edbatch_jax.apidoc  # noqa: F401


# import name of each distribution the package declares
DISTRIBUTIONS = {"orbax-checkpoint": "orbax"}


def _declared() -> set[str]:
    import re

    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in deps}
    return {DISTRIBUTIONS.get(n, n.replace("-", "_")) for n in names}


def test_declared_dependencies_are_the_ones_the_library_imports():
    stdlib = set(sys.stdlib_module_names)
    used = set()
    for rel, tree in _modules():
        for _, module, _ in _imports(tree, rel):
            top = module.split(".")[0]
            if top and top not in stdlib and top != "edbatch_jax":
                used.add(top)
    declared = _declared()
    assert sorted(used - declared) == []  # imported but not declared
    assert sorted(declared - used - {"jaxlib"}) == []  # declared but never imported (jaxlib: jax's backend)
