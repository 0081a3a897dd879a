"""A persistent cache of compiled programs, shared by every process of one user.

The fused engine compiles one large XLA program per branch set and direction
(forward, forward storing residuals, backward); on a CPU that is most of the
first mini-batches' time (seconds to a minute per workload), and a new
process compiles them all again. With JAX's persistent compilation cache
switched on, a process that builds the same programs (same model, op types,
lane buckets, table lengths, JAX version and device) loads them from disk
instead of compiling them: the programs are keyed by their own HLO, so a
changed model or engine can never load a stale program. Tracing and lowering
still run in every process.

:func:`enable_compile_cache` switches it on for this process;
:func:`default_compile_cache_dir` says where it goes by default. The
``edbatch`` commands ``demo``, ``train`` and ``learn`` use the default
directory unless told ``--compile-cache off`` (or ``EDBATCH_COMPILE_CACHE=off``);
``bench`` uses none unless given one, so that its warm-up column measures
compilation.

The directory is trusted: whoever can write to it can make this process run
code, so keep it private (JAX's own warning about its cache). It is not
pruned (a Tree-LSTM's programs take a few megabytes); deleting it at any time
only means compiling again.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compile_cache", "default_compile_cache_dir", "resolve_compile_cache", "ENV_VAR"]

ENV_VAR = "EDBATCH_COMPILE_CACHE"  # a directory, or "off"


def default_compile_cache_dir() -> Path | None:
    """The default cache directory, ``None`` if switched off.

    ``$EDBATCH_COMPILE_CACHE`` if set (``off`` switches the cache off), else
    ``$XDG_CACHE_HOME/edbatch_jax/xla``, else ``~/.cache/edbatch_jax/xla``.
    """
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return None if env.lower() == "off" else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "edbatch_jax" / "xla"


def resolve_compile_cache(value: str | os.PathLike | None) -> Path | None:
    """The directory a ``--compile-cache`` value names: ``None`` or ``"off"`` -> none, ``"auto"`` -> the default."""
    if value is None:
        return None
    text = os.fspath(value).strip()
    if text.lower() == "off":
        return None
    if text.lower() == "auto":
        return default_compile_cache_dir()
    return Path(text).expanduser()


def enable_compile_cache(path: str | os.PathLike | None = None, *, min_compile_seconds: float = 0.0) -> Path:
    """Switches JAX's persistent compilation cache on for this process, in ``path``.

    Programs compiled from now on are written there, and a program already
    there is loaded instead of compiled. Affects the whole process (it sets
    JAX's ``jax_compilation_cache_dir``); call it before the first
    mini-batch so the engine's programs are found.

    Args:
      path: the cache directory (created if missing); ``None``: the default
        (:func:`default_compile_cache_dir`), which must not be switched off.
      min_compile_seconds: programs that compiled faster than this are not
        written (JAX's default is 1 s; 0 keeps every program, small ones
        included).

    Returns:
      The directory in use.

    Raises:
      ValueError: ``path`` is ``None`` and ``$EDBATCH_COMPILE_CACHE`` is ``off``.
      OSError: the directory cannot be created.
    """
    if path is None:
        path = default_compile_cache_dir()
        if path is None:
            raise ValueError(f"no compile cache directory given and ${ENV_VAR} is 'off'")
    path = Path(path).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"compile cache directory {str(path)!r} cannot be made: {e.strerror or e}") from e
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
