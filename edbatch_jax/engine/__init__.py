"""Layer 4, execution: ops (what one node computes), the two batched engines and the unbatched reference.

Modules:

* :mod:`~edbatch_jax.engine.ops`: :class:`Op` (one node's computation),
  :class:`Context` (what ops reading context see) and its checks;
  :mod:`~edbatch_jax.engine.randomness` (a PRNG key per node) and
  :mod:`~edbatch_jax.engine.context` (context checked where it enters);
  :mod:`~edbatch_jax.engine.flax_ops`: the Flax adapters (``linen_op``,
  ``nnx_op``, ``NNXCells``; imported on first use, the only engine module
  that imports Flax);
* :mod:`~edbatch_jax.engine.base`: :class:`Engine`, the abstract engine
  protocol (``plan``, ``execute``, ``value_and_grad``, ``precompile``,
  ``run``) and what both engines share (plan cache, buffer planning, the
  custom VJP);
* :mod:`~edbatch_jax.engine.stepwise`: :class:`StepwiseEngine` (one jitted
  call per batch), its :class:`ExecutionPlan`, :func:`run` and
  :func:`engine_for`;
* :mod:`~edbatch_jax.engine.fused`: :class:`FusedEngine` (one XLA program
  per schedule) and its :class:`FusedPlan`;
* :mod:`~edbatch_jax.engine.common`: the helpers both engines use (state
  structures, buffer rows, the batched op call, gradient assembly,
  precompilation);
* :mod:`~edbatch_jax.engine.rows`: the whole-schedule row arrays of a plan;
  :mod:`~edbatch_jax.engine.buckets`: the bucketing ladder;
* :mod:`~edbatch_jax.engine.reference`: :func:`run_unbatched`, node by node;
* :mod:`~edbatch_jax.engine.compile_cache`: the persistent compile cache.

Imports only the layers above it (graph, scheduling, layout); neither Flax
(outside ``flax_ops``) nor optax.
"""

from __future__ import annotations

import importlib

from edbatch_jax.engine.base import Engine
from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.compile_cache import enable_compile_cache
from edbatch_jax.engine.fused import FusedEngine, FusedPlan
from edbatch_jax.engine.ops import Context, Op, OpError, as_op, as_ops
from edbatch_jax.engine.reference import run_unbatched
from edbatch_jax.engine.stepwise import ExecutionPlan, StepwiseEngine, engine_for, run, state_signature

_FLAX = ("NNXCells", "linen_op", "nnx_op")


def __getattr__(name: str):
    if name in _FLAX:
        return getattr(importlib.import_module("edbatch_jax.engine.flax_ops"), name)
    raise AttributeError(f"module 'edbatch_jax.engine' has no attribute {name!r}")


__all__ = [
    "Context",
    "Engine",
    "ExecutionPlan",
    "FusedEngine",
    "FusedPlan",
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
