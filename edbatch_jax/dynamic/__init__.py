"""Layer ``dynamic``: programs whose graph depends on values they compute, batched round by round.

An instance's program is ordinary Python (a generator function): :func:`call`
records a lazy node and returns a :class:`Handle`, ``yield`` handles waits
for their values, and control flow on those values decides what is recorded
next. :class:`DynamicRuntime` (or :func:`run_dynamic`) advances all
instances until each waits or returns, runs every node recorded since the
last round, across instances, with the core's policies and engines, and
repeats; :meth:`DynamicResult.recorded` gives every recorded call as one
ordinary graph to train on. :mod:`edbatch_jax.dynamic.examples` holds three
workloads (greedy decoding, adaptive computation, tree generation) with
their one-at-a-time references. See ``docs/dynamic.md``.

Imports only the core layers (graph, scheduling, layout, fsm, engine) and
``edbatch_jax.errors``; nothing of the core imports it.
"""

from edbatch_jax.dynamic.runtime import (
    VALUE_OP_PREFIX,
    DynamicError,
    DynamicResult,
    DynamicRunError,
    DynamicRuntime,
    EngineFactory,
    Handle,
    InstanceFailure,
    RecordedGraph,
    RoundStats,
    RunStats,
    call,
    run_dynamic,
)

__all__ = [
    "VALUE_OP_PREFIX",
    "DynamicError",
    "DynamicResult",
    "DynamicRunError",
    "DynamicRuntime",
    "EngineFactory",
    "Handle",
    "InstanceFailure",
    "RecordedGraph",
    "RoundStats",
    "RunStats",
    "call",
    "run_dynamic",
]
