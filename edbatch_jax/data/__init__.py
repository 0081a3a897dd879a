"""Datasets: Stanford Sentiment Treebank trees and an SST-like synthetic generator."""

from edbatch_jax.data.sst import NUM_LABELS
from edbatch_jax.data.sst import Tree
from edbatch_jax.data.sst import UNK_TOKEN
from edbatch_jax.data.sst import Vocabulary
from edbatch_jax.data.sst import parse_tree
from edbatch_jax.data.sst import read_sst
from edbatch_jax.data.sst import synthetic_sst
from edbatch_jax.data.sst import tree_stats
from edbatch_jax.data.sst import word_polarity
from edbatch_jax.data.lattice import NUM_TAGS
from edbatch_jax.data.lattice import Lattice
from edbatch_jax.data.lattice import char_tag
from edbatch_jax.data.lattice import format_lattices
from edbatch_jax.data.lattice import lattice_stats
from edbatch_jax.data.lattice import parse_lattices
from edbatch_jax.data.lattice import read_lattices
from edbatch_jax.data.lattice import synthetic_lattices
from edbatch_jax.data.lattice import write_lattices
