"""Datasets of the bundled workloads: SST trees, NER lattices, WikiNER tags, programs, synthetic generators; one
vocabulary."""

from edbatch_jax.zoo.data.lattice import (
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
from edbatch_jax.zoo.data.sst import (
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
