"""Bundled models: Flax cells, their ops, and graph construction."""

from edbatch_jax.zoo.models.treelstm import InternalCell, LeafCell, LossCell, TreeLSTM

__all__ = ["InternalCell", "LeafCell", "LossCell", "TreeLSTM"]
