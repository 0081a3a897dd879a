"""Tests for edbatch_jax.zoo.data.lattice: NER lattice parsing, writing, synthetic data."""

import functools
import os
import re
import tempfile
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

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

# The lattice data sits in a folder `shared` beside the checkout.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "lattice"

# Measured once on lattice/train.txt (see test_real_train_stats), so that the
# synthetic data can be checked without the real files.
REAL_TRAIN = {
    "num_lattices": 1147,
    "num_nodes": 50618,
    "num_arcs": 76248,
    "mean_nodes": 44.131,
    "mean_arcs": 66.476,
    "mean_word_arcs": 23.345,
    "word_arcs_per_node": 0.5413,
    "min_nodes": 3,
    "max_nodes": 211,
    "max_span": 8,
    "longest_path": 210,
    "max_id": 10129,
    "span_hist": [0, 49471, 23045, 3011, 558, 122, 30, 5, 6],
    "tag_counts": [1147, 494, 494, 42337, 515, 1325, 515, 1134, 364, 1134, 603, 143, 143, 181, 7, 79, 2, 1],
    "majority_tag": 3,
    "majority_fraction": 0.8364,
}

# Two lattices in the layout of the real files. Lattice 0: "ABC" with the
# word "AB" (0 -> 2) and "BC" (1 -> 3); lattice 1: a single node.
EXAMPLE = """2
4
0 3 3 7
0 
1 0 11
2 1 12 0 101
2 2 13 1 102

1
0
0 

"""


def example():
    return parse_lattices(EXAMPLE)


# ---------------------------------------------------------------------------
# Parsing and formatting hand-written lattices
# ---------------------------------------------------------------------------


def assert_valid(lattice: Lattice):
    n, a = lattice.num_nodes, lattice.num_arcs
    for arr in (lattice.tags, lattice.arc_src, lattice.arc_dst, lattice.arc_id):
        assert arr.dtype == np.int32 and not arr.flags.writeable
    assert lattice.tags.shape == (n,)
    assert lattice.arc_src.shape == lattice.arc_dst.shape == (a,)
    assert lattice.arc_id.shape == (a,)
    assert np.all((lattice.tags >= 0) & (lattice.tags < NUM_TAGS))
    assert np.all((0 <= lattice.arc_src) & (lattice.arc_src < lattice.arc_dst))
    assert np.all(lattice.arc_dst < n)
    assert np.all(lattice.arc_id >= 0)
    keys = lattice.arc_dst.astype(np.int64) * n + lattice.arc_src
    assert np.all(np.diff(keys) > 0)  # Sorted by (dst, src), no duplicates.
    np.testing.assert_array_equal(lattice.is_char, lattice.arc_src == lattice.arc_dst - 1)
    np.testing.assert_array_equal(np.sort(lattice.arc_dst[lattice.is_char]), np.arange(1, n))
    assert lattice.num_word_arcs == a - (n - 1)
    assert lattice.longest_path == n - 1


def test_parse_example():
    lat, single = example()
    assert_valid(lat)
    assert_valid(single)
    assert (lat.num_nodes, lat.num_arcs, lat.num_word_arcs) == (4, 5, 2)
    np.testing.assert_array_equal(lat.tags, [0, 3, 3, 7])
    np.testing.assert_array_equal(lat.arc_src, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(lat.arc_dst, [1, 2, 2, 3, 3])
    np.testing.assert_array_equal(lat.arc_id, [11, 101, 12, 102, 13])
    np.testing.assert_array_equal(lat.is_char, [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(lat.spans, [1, 2, 1, 2, 1])
    np.testing.assert_array_equal(lat.char_ids, [-1, 11, 12, 13])
    assert (single.num_nodes, single.num_arcs, single.longest_path) == (1, 0, 0)
    np.testing.assert_array_equal(single.char_ids, [-1])


def test_format_is_the_inverse_of_parse():
    assert format_lattices(example()) == EXAMPLE
    assert format_lattices([]) == "0\n"
    assert parse_lattices("0") == []


def test_parse_ignores_line_breaks():
    one_line = " ".join(EXAMPLE.split())
    assert parse_lattices(one_line) == example()
    scattered = "\r\n".join(EXAMPLE.split()) + "\t\n\n"
    assert parse_lattices(scattered) == example()
    # Arcs of a node in any order.
    shuffled = EXAMPLE.replace("2 1 12 0 101", "2 0 101 1 12")
    assert parse_lattices(shuffled) == example()


BAD_INPUTS = [
    # (text, line, message)
    ("", 1, "empty input"),
    ("  \n\n", 1, "empty input"),
    ("1\n3\n0 3 x\n", 3, "expected an integer, got 'x'"),
    ("1\n3\n0 3 3.0\n", 3, "expected an integer"),
    ("-2\n", 1, "number of lattices must be >= 0"),
    # Fewer lattices than declared.
    ("2\n2\n0 3\n0 \n1 0 5\n\n", 5, "unexpected end of input in lattice 1 of 2"),
    # More tokens than declared.
    ("1\n2\n0 3\n0 \n1 0 5\n\n1\n0\n0 \n", 7, "after the 1 declared lattices"),
    # Missing tokens inside a lattice.
    ("1\n3\n0 3\n", 3, "expected 3 tags"),
    ("1\n3\n0 3 3\n0 \n1 0 5\n", 5, "the number of arcs into node 2"),
    ("1\n3\n0 3 3\n0 \n1 0 5\n2 1 6 0\n", 6, "2 (source, id) pairs for node 2"),
    ("1\n0\n", 2, "the number of nodes must be >= 1"),
    ("1\n-3\n", 2, "the number of nodes must be >= 1"),
    # Bad tags.
    ("1\n3\n0 18 3\n0 \n1 0 5\n1 1 6\n", 3, "node 1 has tag 18, expected 0..17"),
    ("1\n3\n0 3 -1\n0 \n1 0 5\n1 1 6\n", 3, "node 2 has tag -1"),
    # Arcs from a node >= the destination, or from a negative node.
    ("1\n3\n0 3 3\n0 \n1 0 5\n2 1 6 2 7\n", 6, "node 2 has an arc from node 2"),
    ("1\n3\n0 3 3\n0 \n1 0 5\n2 1 6 4 7\n", 6, "node 2 has an arc from node 4"),
    ("1\n3\n0 3 3\n0 \n1 0 5\n2 1 6 -1 7\n", 6, "an arc from node -1"),
    ("1\n2\n0 3\n1 0 5\n1 0 5\n", 4, "node 0 has 1 incoming arcs"),
    # A node without its char arc, or with two arcs from the same node.
    ("1\n3\n0 3 3\n0 \n1 0 5\n1 0 6\n", 6, "node 2 has no char arc from node 1"),
    ("1\n3\n0 3 3\n0 \n0 \n1 0 6\n", 5, "node 1 has no char arc from node 0"),
    ("1\n3\n0 3 3\n0 \n1 0 5\n2 1 6 1 7\n", 6, "two arcs from the same node"),
    # Negative counts and ids.
    ("1\n3\n0 3 3\n0 \n-1 0 5\n", 5, "negative number of arcs"),
    ("1\n3\n0 3 3\n0 \n1 0 5\n1 1 -6\n", 6, "the negative id -6"),
]


@pytest.mark.parametrize("text, line, message", BAD_INPUTS)
def test_parse_errors_name_source_and_line(text, line, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_lattices(text, source="ner.txt")
    assert str(info.value).startswith(f"ner.txt:{line}: ")


def test_parse_error_in_a_later_lattice():
    text = EXAMPLE.replace("2\n", "3\n", 1) + "2\n0 3\n0 \n1 1 5\n\n"
    with pytest.raises(ValueError, match="lattice 2: node 1 has an arc from node 1") as info:
        parse_lattices(text)
    assert str(info.value).startswith(f"<string>:{EXAMPLE.count(chr(10)) + 4}: ")


# ---------------------------------------------------------------------------
# Lattice
# ---------------------------------------------------------------------------


def test_lattice_sorts_arcs_and_is_immutable_and_hashable():
    lat = example()[0]
    # Arcs in any order; the constructor sorts them by (dst, src).
    same = Lattice(
        tags=lat.tags.tolist(), arc_src=[2, 1, 0, 1, 0], arc_dst=[3, 3, 2, 2, 1], arc_id=[13, 102, 101, 12, 11]
    )
    assert same == lat and hash(same) == hash(lat)
    assert same != example()[1]
    assert same != Lattice(tags=[0, 3, 3, 7], arc_src=[0, 1, 2], arc_dst=[1, 2, 3], arc_id=[11, 12, 13])
    with pytest.raises(ValueError):
        lat.arc_id[0] = 1
    with pytest.raises(ValueError):
        lat.is_char[0] = False
    with pytest.raises(AttributeError):
        lat.tags = np.zeros(4, np.int32)
    assert Lattice(tags=[5], arc_src=[], arc_dst=[], arc_id=[]).num_arcs == 0


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(tags=[], arc_src=[], arc_dst=[], arc_id=[]), "at least one node"),
        (dict(tags=[[0, 3]], arc_src=[0], arc_dst=[1], arc_id=[1]), "1-D"),
        (dict(tags=[0, 3], arc_src=[0, 0], arc_dst=[1], arc_id=[1]), "inconsistent lengths"),
        (dict(tags=[0, 18], arc_src=[0], arc_dst=[1], arc_id=[1]), "tags must be"),
        (dict(tags=[0, -1], arc_src=[0], arc_dst=[1], arc_id=[1]), "tags must be"),
        (dict(tags=[0, 3], arc_src=[0, 0], arc_dst=[1, 0], arc_id=[1, 2]), "destinations"),
        (dict(tags=[0, 3], arc_src=[0], arc_dst=[2], arc_id=[1]), "destinations"),
        (dict(tags=[0, 3, 3], arc_src=[0, 2, 1], arc_dst=[1, 2, 2], arc_id=[1, 2, 3]), "go forward"),
        (dict(tags=[0, 3], arc_src=[-1, 0], arc_dst=[1, 1], arc_id=[1, 2]), "go forward"),
        (dict(tags=[0, 3], arc_src=[0], arc_dst=[1], arc_id=[-4]), "ids must be"),
        (dict(tags=[0, 3, 3], arc_src=[0, 0, 1, 0], arc_dst=[1, 2, 2, 2], arc_id=[1, 2, 3, 4]), "two arcs 0 -> 2"),
        (dict(tags=[0, 3, 3], arc_src=[0, 0], arc_dst=[1, 2], arc_id=[1, 2]), "node 2 has none"),
        (dict(tags=[0, 3, 3], arc_src=[0], arc_dst=[1], arc_id=[1]), "node 2 has none"),
    ],
)
def test_lattice_validation(fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Lattice(**fields)


# ---------------------------------------------------------------------------
# Property tests: random valid lattices survive format -> parse
# ---------------------------------------------------------------------------


@st.composite
def lattices(draw, max_nodes=12):
    n = draw(st.integers(1, max_nodes))
    tags = draw(st.lists(st.integers(0, NUM_TAGS - 1), min_size=n, max_size=n))
    src, dst = [], []
    for i in range(1, n):
        words = draw(st.sets(st.integers(0, i - 2), max_size=3)) if i >= 2 else set()
        for j in sorted(words | {i - 1}):
            src.append(j)
            dst.append(i)
    ids = draw(st.lists(st.integers(0, 2**31 - 1), min_size=len(src), max_size=len(src)))
    return Lattice(tags=tags, arc_src=src, arc_dst=dst, arc_id=ids)


@hypothesis.settings(max_examples=100, deadline=None)
@hypothesis.given(st.lists(lattices(), max_size=4))
def test_format_parse_round_trip(lats):
    for lat in lats:
        assert_valid(lat)
    text = format_lattices(lats)
    assert parse_lattices(text) == lats
    assert format_lattices(parse_lattices(text)) == text


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(st.integers(0, 2**32 - 1), st.integers(0, 20))
def test_write_read_round_trip_synthetic(seed, num):
    lats = synthetic_lattices(num, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lattices.txt"
        write_lattices(lats, path)
        assert read_lattices(path) == lats
        assert read_lattices(str(path)) == lats
        assert os.listdir(tmp) == ["lattices.txt"]


# ---------------------------------------------------------------------------
# read_lattices, write_lattices
# ---------------------------------------------------------------------------


def test_read_lattices(tmp_path):
    path = tmp_path / "ner.txt"
    path.write_text(EXAMPLE)
    assert read_lattices(path) == example()


def test_read_lattices_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text(EXAMPLE.replace("2 2 13 1 102", "2 2 13 3 102"))
    with pytest.raises(ValueError, match="node 3 has an arc from node 3") as info:
        read_lattices(path)
    assert str(info.value).startswith(f"{path}:7: ")


def test_read_lattices_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_lattices(tmp_path / "nope.txt")


def test_write_lattices_replaces_atomically(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    path.write_text("old")
    path.chmod(0o600)
    write_lattices(example(), path)
    assert path.read_text() == EXAMPLE
    assert path.stat().st_mode & 0o777 == 0o600  # Permissions are kept.
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]
    write_lattices(iter(example()[:1]), str(path))
    assert read_lattices(path) == example()[:1]

    # A failed replace leaves the old file and no temporary file behind.
    def fail(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk on fire"):
        write_lattices(example(), path)
    assert read_lattices(path) == example()[:1]
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_write_lattices_new_file_mode(tmp_path):
    path = tmp_path / "new.txt"
    write_lattices([], path)
    assert path.read_text() == "0\n"
    assert path.stat().st_mode & 0o777 == 0o644


# ---------------------------------------------------------------------------
# lattice_stats
# ---------------------------------------------------------------------------


def test_lattice_stats():
    stats = lattice_stats(example())
    assert stats["num_lattices"] == 2
    assert (stats["num_nodes"], stats["num_arcs"]) == (5, 5)
    assert (stats["mean_nodes"], stats["min_nodes"], stats["max_nodes"]) == (2.5, 1, 4)
    assert stats["mean_arcs"] == 2.5 and stats["mean_word_arcs"] == 1.0
    assert stats["word_arcs_per_node"] == pytest.approx(2 / 3)
    assert stats["max_span"] == 2 and stats["longest_path"] == 3
    np.testing.assert_array_equal(stats["span_hist"], [0, 3, 2])
    assert stats["max_id"] == 102
    expected_tags = np.zeros(NUM_TAGS, np.int64)
    expected_tags[[0, 3, 7]] = [2, 2, 1]
    np.testing.assert_array_equal(stats["tag_counts"], expected_tags)
    assert stats["majority_tag"] == 0  # Ties go to the smallest tag.
    assert stats["majority_fraction"] == pytest.approx(0.4)

    single = lattice_stats(example()[1:])
    assert (single["max_span"], single["max_id"], single["longest_path"]) == (1, -1, 0)
    with pytest.raises(ValueError, match="at least one"):
        lattice_stats([])


# ---------------------------------------------------------------------------
# Real lattice data (skipped when the data folder is missing)
# ---------------------------------------------------------------------------


def require_data():
    if not DATA_DIR.is_dir():
        pytest.skip(f"lattice data not found at {DATA_DIR}")


@functools.cache
def read_split(split):
    return read_lattices(DATA_DIR / f"{split}.txt")


@pytest.fixture(scope="module")
def real_train():
    require_data()
    return read_split("train")


def test_real_dev():
    require_data()
    dev = read_lattices(DATA_DIR / "dev.txt")
    assert len(dev) == 113
    for lat in dev:
        assert_valid(lat)
        assert lat.tags[0] == 0  # The start tag.
    stats = lattice_stats(dev)
    assert 40 < stats["mean_nodes"] < 60
    assert 60 < stats["mean_arcs"] < 90
    assert 20 < stats["mean_word_arcs"] < 35
    assert stats["max_nodes"] <= 220 and stats["max_span"] <= 8
    assert stats["longest_path"] == stats["max_nodes"] - 1
    assert stats["majority_tag"] == 3 and 0.75 < stats["majority_fraction"] < 0.95
    # The files are written in exactly the layout of format_lattices.
    assert format_lattices(dev) == (DATA_DIR / "dev.txt").read_text()


def test_real_test_split():
    require_data()
    assert len(read_lattices(DATA_DIR / "test.txt")) == 316


def test_real_train_stats(real_train):
    stats = lattice_stats(real_train)
    assert stats["num_lattices"] == 1147
    assert abs(stats["mean_nodes"] - 44) < 0.5
    assert abs(stats["mean_arcs"] - 66) < 1.0
    assert stats["longest_path"] == 210
    # The constants the synthetic data is checked against.
    for key, value in REAL_TRAIN.items():
        if isinstance(value, list):
            np.testing.assert_array_equal(stats[key], value)
        elif isinstance(value, float):
            assert stats[key] == pytest.approx(value, abs=1e-3), key
        else:
            assert stats[key] == value, key
    assert format_lattices(real_train) == (DATA_DIR / "train.txt").read_text()


# ---------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_lattices(4000, seed=0)


@pytest.fixture(scope="module")
def reference_stats():
    """Train statistics: measured when the data is there, else the constants."""
    if DATA_DIR.is_dir():
        return lattice_stats(read_split("train"))
    return REAL_TRAIN


def test_synthetic_deterministic():
    assert synthetic_lattices(50, seed=0) == synthetic_lattices(50, 0)
    assert synthetic_lattices(50, seed=0) != synthetic_lattices(50, seed=1)
    assert synthetic_lattices(0) == []


def test_synthetic_lattices_are_valid(synthetic):
    for lat in synthetic[:500]:
        assert_valid(lat)
        assert lat.tags[0] == 0
        assert np.all(lat.tags[1:] > 0)
        # The public constructor re-validates the structure.
        assert Lattice(lat.tags, lat.arc_src, lat.arc_dst, lat.arc_id) == lat
    ids = np.concatenate([lat.arc_id for lat in synthetic])
    is_char = np.concatenate([lat.is_char for lat in synthetic])
    assert ids[is_char].min() >= 2 and ids[is_char].max() <= 2211
    assert ids[~is_char].min() >= 2 and ids[~is_char].max() <= 10129


def test_synthetic_stats_close_to_real(synthetic, reference_stats):
    stats = lattice_stats(synthetic)
    real = reference_stats
    for key in ("mean_nodes", "mean_arcs", "mean_word_arcs", "word_arcs_per_node"):
        assert abs(stats[key] - real[key]) < 0.1 * real[key], key
    assert abs(stats["mean_nodes"] - real["mean_nodes"]) < 2.0
    assert 150 <= stats["max_nodes"] <= 211 and stats["min_nodes"] >= 3
    assert stats["longest_path"] == stats["max_nodes"] - 1
    assert stats["max_span"] == 8
    spans = stats["span_hist"][2:] / stats["span_hist"][2:].sum()
    real_spans = np.asarray(real["span_hist"][2:], float)
    real_spans /= real_spans.sum()
    np.testing.assert_allclose(spans, real_spans, atol=0.01)
    tags = stats["tag_counts"] / stats["tag_counts"].sum()
    real_tags = np.asarray(real["tag_counts"], float)
    real_tags /= real_tags.sum()
    np.testing.assert_allclose(tags, real_tags, atol=0.01)
    assert stats["majority_tag"] == 3
    assert abs(stats["majority_fraction"] - real["majority_fraction"]) < 0.01
    # Node counts: similar quantiles, a long tail.
    nodes = np.array([lat.num_nodes for lat in synthetic])
    np.testing.assert_allclose(np.percentile(nodes, [25, 50, 75, 90]), [23, 39, 59, 83], rtol=0.1)
    assert np.mean(nodes > 120) > 0.005


def test_synthetic_tags_are_learnable_from_char_ids(synthetic):
    tags = np.concatenate([lat.tags[1:] for lat in synthetic])
    chars = np.concatenate([lat.char_ids[1:] for lat in synthetic])
    predicted = char_tag(chars)
    majority = np.mean(tags == 3)
    accuracy = np.mean(tags == predicted)
    assert accuracy == pytest.approx(1 - 0.26 * 0.3, abs=0.01)
    assert accuracy > majority + 0.04
    # Without noise, the tag is a function of the char id.
    for lat in synthetic_lattices(100, seed=1, tag_noise=0.0):
        np.testing.assert_array_equal(lat.tags[1:], char_tag(lat.char_ids[1:]))


def test_synthetic_options():
    short = synthetic_lattices(300, seed=2, max_nodes=20)
    assert max(lat.num_nodes for lat in short) <= 20
    assert min(lat.num_nodes for lat in short) >= 3
    with pytest.raises(ValueError, match="max_nodes"):
        synthetic_lattices(3, max_nodes=2)
    with pytest.raises(ValueError, match="tag_noise"):
        synthetic_lattices(3, tag_noise=1.5)
    with pytest.raises(ValueError, match="num"):
        synthetic_lattices(-1)


def test_char_tag():
    tags = char_tag(np.arange(2212))
    assert tags.dtype == np.int32 and tags.shape == (2212,)
    assert np.all((tags >= 1) & (tags < NUM_TAGS))
    assert np.mean(tags == 3) > 0.5
    assert len(np.unique(tags)) >= 10
    assert char_tag(np.array([[5, 6]])).shape == (1, 2)
    with pytest.raises(ValueError, match="char ids"):
        char_tag(np.array([2212]))
    with pytest.raises(ValueError, match="char ids"):
        char_tag(np.array([-1]))
