"""Memory layout: the PQ-tree and the buffer-order planner built on it."""

from edbatch_jax.layout.planner import LayoutPlan, operand_lists, plan_layout
from edbatch_jax.layout.pqtree import PQTree, PQTreeError

__all__ = ["LayoutPlan", "PQTree", "PQTreeError", "operand_lists", "plan_layout"]
