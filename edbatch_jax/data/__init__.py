"""Datasets: Stanford Sentiment Treebank trees and an SST-like synthetic generator."""

from edbatch_jax.data.lattice import (
    NUM_TAGS,
    Lattice,
    char_tag,
    format_lattices,
    lattice_stats,
    parse_lattices,
    read_lattices,
    synthetic_lattices,
    write_lattices,
)
from edbatch_jax.data.sst import (
    NUM_LABELS,
    UNK_TOKEN,
    Tree,
    Vocabulary,
    parse_tree,
    read_sst,
    synthetic_sst,
    tree_stats,
    word_polarity,
)
