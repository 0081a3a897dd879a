"""Layer 3, memory layout: the PQ-tree and the planner that orders state-buffer rows with it.

:func:`plan_layout` finds one row order for a schedule in which as many
operand lists as possible are contiguous, increasing slices (read without a
gather); :class:`PQTree` is Booth and Lueker's structure it is built on.
Host-side NumPy; imports the graph and scheduling layers.
"""

from edbatch_jax.layout.planner import LayoutPlan, operand_lists, plan_layout
from edbatch_jax.layout.pqtree import PQTree, PQTreeError

__all__ = ["LayoutPlan", "PQTree", "PQTreeError", "operand_lists", "plan_layout"]
