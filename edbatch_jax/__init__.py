"""edbatch_jax: automatic batching of dynamic neural networks in JAX.

The public surface::

  import edbatch_jax as eb
  b = eb.GraphBuilder(); ...; graph = eb.batch_graphs([g1, g2, ...])
  sched = eb.schedule(graph, "agenda")          # "depth", "typewise", or a policy object
  eb.validate_schedule(graph, sched)
  states = eb.run(ops, params, graph, sched, outputs=node_ids)
  same = eb.run_unbatched(ops, params, graph, outputs=node_ids)
  policy = eb.learn_fsm(train_graphs); policy.save("policy.json")   # the learned FSM
  eb.schedule(graph, eb.FSMPolicy.load("policy.json", op_types=graph.op_types))
  eb.enable_compile_cache()   # compiled programs kept on disk for the next process
"""

from edbatch_jax import fsm, workloads
from edbatch_jax.analysis import (
    children,
    lower_bound,
    node_depth,
    topological_order,
    type_depths,
    typewise_depth,
)
from edbatch_jax.compile_cache import enable_compile_cache
from edbatch_jax.engine import (
    Engine,
    ExecutionPlan,
    FusedEngine,
    NNXCells,
    Op,
    OpError,
    bucket,
    linen_op,
    nnx_op,
    run,
    run_unbatched,
)
from edbatch_jax.fsm import FSMDecision, FSMPolicy, PolicyFileError, learn_fsm
from edbatch_jax.graph import (
    Graph,
    GraphBuilder,
    GraphError,
    batch_graphs,
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

__all__ = [
    "AgendaPolicy",
    "DepthPolicy",
    "Engine",
    "FSMDecision",
    "FSMPolicy",
    "ExecutionPlan",
    "FusedEngine",
    "NNXCells",
    "Frontier",
    "FrontierPolicy",
    "Graph",
    "LayoutPlan",
    "GraphBuilder",
    "GraphError",
    "Op",
    "OpError",
    "PQTree",
    "PQTreeError",
    "Policy",
    "PolicyFileError",
    "Schedule",
    "ScheduleError",
    "TypewiseFrontier",
    "TypewisePolicy",
    "batch_graphs",
    "bucket",
    "children",
    "enable_compile_cache",
    "fsm",
    "learn_fsm",
    "linen_op",
    "nnx_op",
    "lower_bound",
    "node_depth",
    "plan_layout",
    "register_policy",
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
