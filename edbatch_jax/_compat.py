"""Old module paths of edbatch_jax 0.1, kept importable for one release.

``import edbatch_jax.workloads`` (and every other path in :data:`MOVED`) still
works: it warns with a ``DeprecationWarning`` naming the new path and gives a
module whose attributes are the new module's (the same objects, so
``isinstance`` checks and identity hold). Paths in :data:`REMOVED` fail with
an ``ImportError`` saying where the code went. Nothing here is imported until
an old path is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

__all__ = ["MOVED", "REMOVED", "install"]

MOVED: dict[str, str] = {
    "edbatch_jax.analysis": "edbatch_jax.graph.analysis",
    "edbatch_jax.compile_cache": "edbatch_jax.engine.compile_cache",
    "edbatch_jax.engine.executor": "edbatch_jax.engine.stepwise",
    "edbatch_jax.parallel": "edbatch_jax.training.parallel",
    "edbatch_jax.train": "edbatch_jax.training.loop",
    "edbatch_jax.workloads": "edbatch_jax.zoo.workloads",
    "edbatch_jax.nn": "edbatch_jax.zoo.models",
    "edbatch_jax.data": "edbatch_jax.zoo.data",
    "edbatch_jax.bench": "edbatch_jax.apps.bench",
    "edbatch_jax.cli": "edbatch_jax.apps.cli",
    "edbatch_jax.op_calls": "edbatch_jax.apps.op_calls",
    "edbatch_jax.peers": "edbatch_jax.apps.peers",
}
"""Old module path -> new one (a package's submodules follow it: ``edbatch_jax.nn.treelstm``)."""

REMOVED: dict[str, str] = {
    "edbatch_jax.apidoc": "the API page generator is a maintenance script now: python tools/apidoc.py docs/api",
}
"""Old module path -> where its code went (importing it raises ``ImportError`` with this text)."""


def new_path(name: str) -> str | None:
    """The new module path of an old one (``None`` if ``name`` did not move)."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        return None  # a plain module, filled from the target below

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(
            f"{module.__name__} moved to {self.target}; the old path goes away in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        target = importlib.import_module(self.target)
        public = {k: v for k, v in vars(target).items() if not k.startswith("__")}
        module.__dict__.update(public)
        module.__doc__ = f"Moved to :mod:`{self.target}` (this old path is an alias)."
        module.__getattr__ = lambda attr: getattr(target, attr)  # later additions, lazy attributes


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith("edbatch_jax."):
            return None
        if fullname in REMOVED:
            raise ImportError(f"{fullname} was removed: {REMOVED[fullname]}", name=fullname)
        new = new_path(fullname)
        if new is None:
            return None
        try:
            is_package = hasattr(importlib.import_module(new), "__path__")
        except ImportError:
            return None
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(new), is_package=is_package)
        if is_package:
            spec.submodule_search_locations = []
        return spec


def install() -> None:
    """Puts the alias finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
