"""Memory layout planning: PQ-trees for orders with consecutive subsets."""

from edbatch_jax.layout.pqtree import PQTree, PQTreeError

__all__ = ["PQTree", "PQTreeError"]
