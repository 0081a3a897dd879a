"""Layer 1, graphs: what one instance's dataflow graph is, how instances batch, and what the graph alone implies.

:class:`Graph` (a pytree of host NumPy arrays: CSR arguments, per-type
stacked payloads), :class:`GraphBuilder` (define-by-run, DyNet style),
:func:`batch_graphs` / :func:`unbatch_graph`, :func:`validate_graph`, and
the analyses the policies use: depths, topological order, type-wise depth
and the lower bound on the number of batches. :class:`EdbatchError`, the
base of every error the library raises for a caller's mistake, and
:func:`input_checks`, the switch of the input checks, are re-exported here. Imports nothing else of the library.
"""

from edbatch_jax.errors import EdbatchError, input_checks
from edbatch_jax.graph.analysis import (
    children,
    lower_bound,
    node_depth,
    topological_order,
    type_depths,
    typewise_depth,
)
from edbatch_jax.graph.batching import batch_graphs, unbatch_graph
from edbatch_jax.graph.graph import Graph, GraphBuilder, GraphError
from edbatch_jax.graph.validate import check_node_ids, ensure_valid, mark_valid, validate_graph

__all__ = [
    "EdbatchError",
    "Graph",
    "GraphBuilder",
    "GraphError",
    "batch_graphs",
    "check_node_ids",
    "children",
    "ensure_valid",
    "input_checks",
    "lower_bound",
    "mark_valid",
    "node_depth",
    "topological_order",
    "type_depths",
    "typewise_depth",
    "unbatch_graph",
    "validate_graph",
]
