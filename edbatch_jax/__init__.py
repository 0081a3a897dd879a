"""edbatch_jax: automatic batching of dynamic neural networks in JAX.

Each instance has its own dataflow graph; say what one node computes, and
the library finds which nodes of which instances run together, runs them as
vmapped op calls over bucketed shapes, and lays out the state buffers so
that batched operands are contiguous slices::

  import edbatch_jax as eb
  b = eb.GraphBuilder(); ...; graph = eb.batch_graphs([g1, g2, ...])
  sched = eb.schedule(graph, "agenda")          # "depth", "typewise", or a policy object
  states = eb.run(ops, params, graph, sched, outputs=node_ids)
  same = eb.run_unbatched(ops, params, graph, outputs=node_ids)
  policy = eb.learn_fsm(train_graphs); policy.save("policy.json")   # the learned FSM
  eb.schedule(graph, eb.FSMPolicy.load("policy.json", op_types=graph.op_types))

Layers, each importing only the ones above it in this list:
``graph`` (graphs, validation, analysis), ``scheduling`` (policies),
``layout`` (the PQ-tree planner), ``fsm`` (the learned policy), ``engine``
(ops and the two engines), ``training`` (Trainer, mini-batches, data
parallelism, the train loop), ``zoo`` (bundled models, data and workloads)
and ``apps`` (the ``edbatch`` command and the benchmark harness). The core
(graph to engine) needs neither Flax nor optax: the Flax adapters
(``linen_op``, ``nnx_op``, ``NNXCells``) and the training names below are
imported when first used.
"""

from __future__ import annotations

import importlib

from edbatch_jax import _compat, fsm
from edbatch_jax.engine import (
    Context,
    Engine,
    ExecutionPlan,
    FusedEngine,
    FusedPlan,
    Op,
    OpError,
    StepwiseEngine,
    bucket,
    enable_compile_cache,
    run,
    run_unbatched,
)
from edbatch_jax.fsm import FSMDecision, FSMPolicy, PolicyFileError, learn_fsm, resolve_policy
from edbatch_jax.graph import (
    EdbatchError,
    Graph,
    GraphBuilder,
    GraphError,
    batch_graphs,
    children,
    input_checks,
    lower_bound,
    node_depth,
    topological_order,
    type_depths,
    typewise_depth,
    unbatch_graph,
    validate_graph,
)
from edbatch_jax.layout import LayoutPlan, PQTree, PQTreeError, plan_layout
from edbatch_jax.scheduling import (
    AgendaPolicy,
    DepthPolicy,
    Frontier,
    FrontierPolicy,
    Policy,
    Schedule,
    ScheduleError,
    TypewiseFrontier,
    TypewisePolicy,
    register_policy,
    schedule,
    validate_schedule,
)

__version__ = "0.1.0"

_compat.install()

# Public names whose modules import Flax or optax: loaded on first access.
_LAZY = {
    "NNXCells": "edbatch_jax.engine.flax_ops",
    "linen_op": "edbatch_jax.engine.flax_ops",
    "nnx_op": "edbatch_jax.engine.flax_ops",
    "MiniBatch": "edbatch_jax.training",
    "Trainer": "edbatch_jax.training",
    "loss_and_grads": "edbatch_jax.training",
    "make_minibatch": "edbatch_jax.training",
    "plan_ahead": "edbatch_jax.training",
}
_LAZY_MODULES = ("apps", "training", "zoo")
_MOVED_ATTRS = {"workloads": "edbatch_jax.zoo.workloads"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _LAZY_MODULES:
        value = importlib.import_module(f"edbatch_jax.{name}")
    elif name in _MOVED_ATTRS:
        import warnings

        warnings.warn(f"edbatch_jax.{name} moved to {_MOVED_ATTRS[name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(_MOVED_ATTRS[name])
    else:
        raise AttributeError(f"module 'edbatch_jax' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AgendaPolicy",
    "Context",
    "DepthPolicy",
    "EdbatchError",
    "Engine",
    "ExecutionPlan",
    "FSMDecision",
    "FSMPolicy",
    "Frontier",
    "FrontierPolicy",
    "FusedEngine",
    "FusedPlan",
    "Graph",
    "GraphBuilder",
    "GraphError",
    "LayoutPlan",
    "MiniBatch",
    "NNXCells",
    "Op",
    "OpError",
    "PQTree",
    "PQTreeError",
    "Policy",
    "PolicyFileError",
    "Schedule",
    "ScheduleError",
    "StepwiseEngine",
    "Trainer",
    "TypewiseFrontier",
    "TypewisePolicy",
    "batch_graphs",
    "bucket",
    "children",
    "enable_compile_cache",
    "fsm",
    "input_checks",
    "learn_fsm",
    "linen_op",
    "loss_and_grads",
    "lower_bound",
    "make_minibatch",
    "nnx_op",
    "node_depth",
    "plan_ahead",
    "plan_layout",
    "register_policy",
    "resolve_policy",
    "run",
    "run_unbatched",
    "schedule",
    "topological_order",
    "type_depths",
    "typewise_depth",
    "unbatch_graph",
    "validate_graph",
    "validate_schedule",
]
