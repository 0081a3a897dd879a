"""Tests for edbatch_jax.zoo.data.sst: SST parsing, vocabulary, synthetic trees."""

import re
import time
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

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

# The SST data sits in a folder `shared` beside the checkout.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "trees"

# Measured once on trees/train.txt (see test_real_train_stats), so that the
# synthetic data can be checked without the real files.
REAL_TRAIN = {
    "num_trees": 8550,
    "mean_tokens": 19.134,
    "max_tokens": 52,
    "mean_nodes": 37.269,
    "mean_height": 10.823,
    "max_height": 30,
    "root_label_hist": [1093, 2219, 1624, 2324, 1290],
}

EXAMPLE = "(3 (2 It) (4 (2 's) (4 (2 a) (4 (3 lovely) (2 film)))))"


# ---------------------------------------------------------------------------
# Parsing hand-written trees
# ---------------------------------------------------------------------------


def assert_valid_post_order(tree: Tree):
    n = tree.num_nodes
    assert tree.labels.dtype == tree.left.dtype == tree.right.dtype == np.int32
    assert tree.labels.shape == tree.left.shape == tree.right.shape == (n,)
    assert len(tree.tokens) == n
    assert tree.root == n - 1
    inner = ~tree.is_preterminal
    idx = np.arange(n)
    assert np.all((tree.left[inner] >= 0) & (tree.left[inner] < idx[inner]))
    assert np.all((tree.right[inner] >= 0) & (tree.right[inner] < idx[inner]))
    assert np.all(tree.right[~inner] == -1)
    children = np.sort(np.concatenate([tree.left[inner], tree.right[inner]]))
    np.testing.assert_array_equal(children, np.arange(n - 1))
    assert all((tok is None) == bool(b) for tok, b in zip(tree.tokens, inner))


def test_parse_example():
    tree = parse_tree(EXAMPLE)
    assert_valid_post_order(tree)
    assert tree.tokens == ("It", "'s", "a", "lovely", "film", None, None, None, None)
    np.testing.assert_array_equal(tree.labels, [2, 2, 2, 3, 2, 4, 4, 4, 3])
    np.testing.assert_array_equal(tree.left, [-1, -1, -1, -1, -1, 3, 2, 1, 0])
    np.testing.assert_array_equal(tree.right, [-1, -1, -1, -1, -1, 4, 5, 6, 7])
    np.testing.assert_array_equal(tree.is_preterminal, [1] * 5 + [0] * 4)
    np.testing.assert_array_equal(tree.heights, [1, 1, 1, 1, 1, 2, 3, 4, 5])
    assert (tree.num_nodes, tree.num_tokens, tree.root, tree.height) == (9, 5, 8, 5)
    assert tree.words == ("It", "'s", "a", "lovely", "film")
    assert tree.to_ptb() == EXAMPLE


def test_parse_left_branching_and_balanced():
    tree = parse_tree("(1 (2 (0 (2 a) (2 b)) (3 c)) (4 (2 d) (2 e)))")
    assert_valid_post_order(tree)
    assert tree.tokens == ("a", "b", None, "c", None, "d", "e", None, None)
    np.testing.assert_array_equal(tree.left, [-1, -1, 0, -1, 2, -1, -1, 5, 4])
    np.testing.assert_array_equal(tree.right, [-1, -1, 1, -1, 3, -1, -1, 6, 7])
    np.testing.assert_array_equal(tree.labels, [2, 2, 0, 3, 2, 2, 2, 4, 1])
    assert tree.height == 4


def test_parse_single_preterminal():
    tree = parse_tree("(4 wow)")
    assert (tree.num_nodes, tree.num_tokens, tree.root, tree.height) == (1, 1, 0, 1)
    assert tree.tokens == ("wow",)
    np.testing.assert_array_equal(tree.left, [-1])


def test_parse_whitespace_and_odd_tokens():
    line = "\t(3  (2 -LRB-)(2\t(2 comedy\\/thriller) (1 8\xa01\\/2) ) )\r\n"
    tree = parse_tree(line)
    # Only ASCII whitespace separates tokens (SST has a non-breaking space).
    assert tree.words == ("-LRB-", "comedy\\/thriller", "8\xa01\\/2")
    assert tree.to_ptb() == ("(3 (2 -LRB-) (2 (2 comedy\\/thriller) (1 8\xa01\\/2)))")


def test_parse_deep_tree_without_recursion():
    depth = 5000
    line = "(2 (2 w) " * (depth - 1) + "(2 (2 w) (2 w))" + ")" * (depth - 1)
    tree = parse_tree(line)
    assert tree.num_tokens == depth + 1
    assert tree.height == depth + 1
    assert parse_tree(tree.to_ptb()) == tree


BAD_LINES = [
    ("", "empty line"),
    ("   \t", "empty line"),
    ("(2 a", "unbalanced parentheses"),
    ("(2 (2 a) (2 b)", "unbalanced parentheses"),
    ("(2 a))", "unbalanced parentheses"),
    (")", "unbalanced parentheses"),
    ("(", "unbalanced parentheses"),
    ("(5 a)", "expected a label"),
    ("(-1 a)", "expected a label"),
    ("(2.0 a)", "expected a label"),
    ("(pos a)", "expected a label"),
    ("((2 a) (2 b))", "expected a label"),
    ("(2 (2 a) (2 b) (2 c))", "3 children"),
    ("(2)", "no children"),
    ("(2 (3 x))", "unary"),
    ("(1 (2 (3 x)) (2 y))", "unary"),
    ("(2 a) b", "trailing text"),
    ("(2 a) (2 b)", "trailing text"),
    ("a (2 b)", "expected '('"),
    ("(2 a b)", "more than one token"),
    ("(2 (2 a) b)", "mixes subtrees and a token"),
    ("(2 a (2 b))", "mixes a token and a subtree"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_parse_errors_name_source_and_line(line, message):
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_tree(line, source="reviews.txt", line_no=17)
    assert str(info.value).startswith("reviews.txt:17: ")


# ---------------------------------------------------------------------------
# Property test: print random trees, parse them back
# ---------------------------------------------------------------------------

# Tokens: anything but ASCII whitespace and parentheses.
token_strategy = st.text(
    st.characters(exclude_characters=" \t\n\r\f\v()", exclude_categories=("Cs",)), min_size=1, max_size=5
)
label_strategy = st.integers(0, NUM_LABELS - 1)
# A tree is (label, token) or (label, left, right).
tree_strategy = st.recursive(
    st.tuples(label_strategy, token_strategy), lambda sub: st.tuples(label_strategy, sub, sub), max_leaves=40
)


def to_ptb(node, sep):
    if len(node) == 2:
        return f"({node[0]}{sep}{node[1]})"
    return f"({node[0]}{sep}{to_ptb(node[1], sep)}{sep}{to_ptb(node[2], sep)})"


def flatten(node, out):
    """Appends the nodes in post-order; returns the index of `node`."""
    if len(node) == 2:
        out.append((node[0], -1, -1, node[1], 1))
    else:
        l = flatten(node[1], out)
        r = flatten(node[2], out)
        out.append((node[0], l, r, None, 1 + max(out[l][4], out[r][4])))
    return len(out) - 1


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(tree_strategy, st.sampled_from([" ", "  ", "\t", " \t "]))
def test_parse_random_trees(node, sep):
    expected = []
    flatten(node, expected)
    labels, left, right, tokens, heights = zip(*expected)
    tree = parse_tree(to_ptb(node, sep))
    assert_valid_post_order(tree)
    np.testing.assert_array_equal(tree.labels, labels)
    np.testing.assert_array_equal(tree.left, left)
    np.testing.assert_array_equal(tree.right, right)
    np.testing.assert_array_equal(tree.heights, heights)
    assert tree.tokens == tokens
    assert parse_tree(tree.to_ptb()) == tree


# ---------------------------------------------------------------------------
# Tree, read_sst
# ---------------------------------------------------------------------------


def test_tree_is_immutable_hashable_and_validated():
    tree = parse_tree(EXAMPLE)
    with pytest.raises(ValueError):
        tree.labels[0] = 1
    with pytest.raises(AttributeError):
        tree.labels = np.zeros(9, np.int32)
    same = Tree(labels=tree.labels.tolist(), left=tree.left, right=tree.right, tokens=list(tree.tokens))
    assert same == tree and hash(same) == hash(tree)
    assert same != parse_tree("(3 (2 a) (2 b))")
    # Not post-order: the root first.
    with pytest.raises(ValueError, match="post-order"):
        Tree(labels=[2, 2, 2], left=[1, -1, -1], right=[2, -1, -1], tokens=(None, "a", "b"))
    with pytest.raises(ValueError, match="labels"):
        Tree(labels=[7], left=[-1], right=[-1], tokens=("a",))
    with pytest.raises(ValueError, match="two children"):
        Tree(labels=[2, 2, 2], left=[-1, -1, 0], right=[-1, -1, -1], tokens=("a", "b", None))
    with pytest.raises(ValueError, match="tokens"):
        Tree(labels=[2], left=[-1], right=[-1], tokens=(None,))
    with pytest.raises(ValueError, match="single tree"):
        Tree(labels=[2] * 3, left=[-1, -1, 0], right=[-1, -1, 0], tokens=("a", "b", None))


def test_read_sst(tmp_path):
    path = tmp_path / "trees.txt"
    path.write_text("(3 (2 a) (4 b))\n\n(2 c)\n   \n(1 (2 d) (1 e))\n")
    trees = read_sst(path)
    assert [t.words for t in trees] == [("a", "b"), ("c",), ("d", "e")]
    assert [t.words for t in read_sst(str(path), limit=2)] == [("a", "b"), ("c",)]
    assert read_sst(path, limit=0) == []


def test_read_sst_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("(3 (2 a) (4 b))\n\n(2 c)\n(2 (2 d) (7 e))\n")
    with pytest.raises(ValueError, match="expected a label") as info:
        read_sst(path)
    assert f"{path}:4: " in str(info.value)
    assert len(read_sst(path, limit=2)) == 2  # Stops before the bad line.


def test_read_sst_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_sst(tmp_path / "nope.txt")


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------


def test_vocabulary():
    trees = [
        parse_tree("(2 (2 b) (2 (2 a) (2 c)))"),
        parse_tree("(2 (2 c) (2 (2 b) (2 d)))"),
        parse_tree("(2 (2 c) (2 e))"),
    ]
    vocab = Vocabulary.build(trees)
    # c: 3, b: 2, then a, d, e (1 each) alphabetically.
    assert vocab.id_to_token == (UNK_TOKEN, "c", "b", "a", "d", "e")
    assert len(vocab) == 6
    assert vocab.lookup("c") == 1 and vocab.lookup("zzz") == 0
    assert "a" in vocab and "zzz" not in vocab
    ids = vocab.encode(trees[0])
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [2, 3, 1, -1, -1])

    small = Vocabulary.build(trees, max_size=3)
    assert small.id_to_token == (UNK_TOKEN, "c", "b")
    np.testing.assert_array_equal(small.encode(trees[0]), [2, 0, 1, -1, -1])
    assert Vocabulary.build(trees, min_count=2).id_to_token == (UNK_TOKEN, "c", "b")
    assert Vocabulary.build(reversed(trees)).id_to_token == vocab.id_to_token


def test_encode_all_is_encode_tree_after_tree():
    trees = synthetic_sst(20, seed=3)
    vocab = Vocabulary.build(trees[:5], max_size=12)  # most tokens of the other trees unknown
    ids = vocab.encode_all(trees)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, np.concatenate([vocab.encode(t) for t in trees]))
    assert (ids == 0).any() and (ids == -1).any() and (ids > 0).any()
    assert vocab.encode_all([]).shape == (0,)


# ---------------------------------------------------------------------------
# tree_stats
# ---------------------------------------------------------------------------


def test_tree_stats():
    stats = tree_stats([parse_tree(EXAMPLE), parse_tree("(0 x)")])
    assert stats["num_trees"] == 2
    assert stats["mean_tokens"] == 3.0 and stats["max_tokens"] == 5
    assert stats["mean_nodes"] == 5.0
    assert stats["mean_height"] == 3.0 and stats["max_height"] == 5
    np.testing.assert_array_equal(stats["root_label_hist"], [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(stats["node_label_hist"], [1, 0, 4, 2, 3])


# ---------------------------------------------------------------------------
# Real SST data (skipped when the data folder is missing)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_train():
    if not DATA_DIR.is_dir():
        pytest.skip(f"SST data not found at {DATA_DIR}")
    return read_sst(DATA_DIR / "train.txt")


@pytest.mark.parametrize("split, count", [("dev", 1107), ("test", 2210)])
def test_real_split_counts(split, count):
    if not DATA_DIR.is_dir():
        pytest.skip(f"SST data not found at {DATA_DIR}")
    trees = read_sst(DATA_DIR / f"{split}.txt")
    assert len(trees) == count
    assert read_sst(DATA_DIR / f"{split}.txt", limit=10) == trees[:10]


def test_real_train_stats(real_train):
    stats = tree_stats(real_train)
    assert stats["num_trees"] == 8550
    assert abs(stats["mean_tokens"] - 19.1) < 0.2
    assert abs(stats["mean_nodes"] - 37.3) < 0.2
    # The constants the synthetic data is checked against.
    for key in ("mean_tokens", "mean_nodes", "mean_height"):
        assert stats[key] == pytest.approx(REAL_TRAIN[key], abs=1e-3)
    for key in ("num_trees", "max_tokens", "max_height"):
        assert stats[key] == REAL_TRAIN[key]
    np.testing.assert_array_equal(stats["root_label_hist"], REAL_TRAIN["root_label_hist"])


def test_real_train_round_trip(real_train):
    lines = [l for l in (DATA_DIR / "train.txt").read_text("utf-8").splitlines() if l.strip()]
    for line, tree in zip(lines[:500], real_train):
        assert tree.to_ptb() == line.strip()


# ---------------------------------------------------------------------------
# Synthetic data
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_sst(5000, seed=0)


def test_synthetic_deterministic(synthetic):
    assert synthetic_sst(200, seed=0) == synthetic_sst(200, seed=0)
    assert synthetic_sst(200, seed=0) != synthetic_sst(200, seed=1)
    assert synthetic_sst(0) == []


def test_synthetic_trees_are_valid(synthetic):
    for tree in synthetic[:1000]:
        assert_valid_post_order(tree)
        # The public constructor re-validates the structure.
        assert Tree(tree.labels, tree.left, tree.right, tree.tokens) == tree
    vocab_size = 50
    for tree in synthetic_sst(100, seed=3, vocab_size=vocab_size):
        ids = [int(w[1:]) for w in tree.words]
        assert all(0 <= i < vocab_size for i in ids)
        assert all(w == f"w{i}" for w, i in zip(tree.words, ids))


def test_synthetic_stats_close_to_real(synthetic):
    stats = tree_stats(synthetic)
    assert abs(stats["mean_tokens"] - REAL_TRAIN["mean_tokens"]) < 0.5
    assert abs(stats["mean_nodes"] - REAL_TRAIN["mean_nodes"]) < 1.0
    assert 1 <= stats["max_tokens"] <= 56
    assert abs(stats["mean_height"] - REAL_TRAIN["mean_height"]) < 0.1 * REAL_TRAIN["mean_height"]
    assert 20 <= stats["max_height"] <= 40
    root = stats["root_label_hist"] / stats["num_trees"]
    real_root = np.array(REAL_TRAIN["root_label_hist"]) / REAL_TRAIN["num_trees"]
    assert root.max() < 0.5
    np.testing.assert_allclose(root, real_root, atol=0.05)
    nodes = stats["node_label_hist"] / stats["node_label_hist"].sum()
    assert 0.5 < nodes[2] < 0.8  # Most phrases are neutral, as in SST.


def test_synthetic_token_frequencies_are_zipf_like(synthetic):
    counts = {}
    for tree in synthetic:
        for w in tree.words:
            counts[w] = counts.get(w, 0) + 1
    assert max(counts, key=counts.get) == "w0"
    assert counts["w0"] > 5 * counts["w9"] > 5 * counts.get("w99", 0)


def test_synthetic_labels_follow_polarity_rule(synthetic):
    """Labels are a deterministic function of words and structure."""
    negators = {"w7", "w13"}
    bins = [-2.5, -0.5, 0.5, 2.5]
    for tree in synthetic[:300]:
        values = []
        for i, tok in enumerate(tree.tokens):
            if tok is not None:
                values.append(int(word_polarity(np.array([int(tok[1:])]))[0]))
            elif tree.tokens[tree.left[i]] in negators:
                values.append(-values[tree.right[i]])
            else:
                values.append(values[tree.left[i]] + values[tree.right[i]])
        np.testing.assert_array_equal(tree.labels, np.digitize(values, bins))


def test_word_polarity():
    pol = word_polarity(np.arange(100_000))
    assert pol.dtype == np.int32 and pol.min() == -2 and pol.max() == 2
    assert np.all(pol[:20] == 0)
    frac = np.bincount(pol[20:] + 2) / pol[20:].size
    assert 0.6 < frac[2] < 0.7  # Mostly neutral.
    np.testing.assert_array_equal(word_polarity(np.arange(10, 30)), pol[10:30])


def test_synthetic_is_fast():
    start = time.perf_counter()
    trees = synthetic_sst(10_000, seed=1)
    assert time.perf_counter() - start < 3.0
    assert len(trees) == 10_000
