"""Layer 4, execution: ops (what one node computes), the two batched engines and the unbatched reference.

:class:`Op` and the Flax adapters (:mod:`edbatch_jax.engine.flax_ops`,
imported on first use), the stepwise engine (one jitted call per batch) and
the fused engine (one XLA program per schedule), :func:`run` and
:func:`run_unbatched`, the bucketing ladder and the persistent compile cache.
"""

from __future__ import annotations

import importlib

from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.compile_cache import enable_compile_cache
from edbatch_jax.engine.fused import FusedEngine
from edbatch_jax.engine.ops import Op, OpError, as_op, as_ops
from edbatch_jax.engine.reference import run_unbatched
from edbatch_jax.engine.stepwise import Engine, ExecutionPlan, StepwiseEngine, engine_for, run, state_signature

_FLAX = ("NNXCells", "linen_op", "nnx_op")


def __getattr__(name: str):
    if name in _FLAX:
        return getattr(importlib.import_module("edbatch_jax.engine.flax_ops"), name)
    raise AttributeError(f"module 'edbatch_jax.engine' has no attribute {name!r}")


__all__ = [
    "Engine",
    "ExecutionPlan",
    "FusedEngine",
    "NNXCells",
    "Op",
    "OpError",
    "StepwiseEngine",
    "as_op",
    "as_ops",
    "bucket",
    "enable_compile_cache",
    "engine_for",
    "linen_op",
    "nnx_op",
    "run",
    "run_unbatched",
    "state_signature",
]
