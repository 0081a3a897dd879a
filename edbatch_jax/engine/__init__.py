"""Execution of schedules: the batched engine, the unbatched reference, ops."""

from edbatch_jax.engine.buckets import bucket
from edbatch_jax.engine.executor import Engine, ExecutionPlan, engine_for, run, state_signature
from edbatch_jax.engine.fused import FusedEngine
from edbatch_jax.engine.ops import NNXCells, Op, OpError, as_op, as_ops, linen_op, nnx_op
from edbatch_jax.engine.reference import run_unbatched

__all__ = [
    "Engine",
    "ExecutionPlan",
    "FusedEngine",
    "NNXCells",
    "Op",
    "OpError",
    "as_op",
    "as_ops",
    "bucket",
    "engine_for",
    "linen_op",
    "nnx_op",
    "run",
    "run_unbatched",
    "state_signature",
]
