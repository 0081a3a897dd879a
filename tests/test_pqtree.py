"""Tests for edbatch_jax.layout.pqtree: PQ-tree reductions against brute force."""

import itertools
import random
import time

import hypothesis
import hypothesis.strategies as st
import pytest

from edbatch_jax.layout import PQTree, PQTreeError

SETTINGS = hypothesis.settings(max_examples=200, deadline=None)


def is_consecutive(order, subset) -> bool:
    """Whether the items of ``subset`` are contiguous in ``order``."""
    subset = set(subset)
    positions = [i for i, item in enumerate(order) if item in subset]
    return not positions or positions[-1] - positions[0] + 1 == len(positions)


def admitted(tree: PQTree) -> set:
    """The orders the tree admits, checking that each is produced once."""
    orders = [tuple(order) for order in tree.orders()]
    found = set(orders)
    assert len(found) == len(orders), "an order was produced twice"
    return found


@st.composite
def constraint(draw, hidden):
    """A subset of ``hidden``'s items: a window of ``hidden`` (so mostly
    compatible) or a random subset, sometimes with repeats."""
    n = len(hidden)
    if n and draw(st.booleans()):
        start = draw(st.integers(0, n - 1))
        stop = draw(st.integers(start + 1, n))
        subset = list(hidden[start:stop])
    else:
        subset = draw(st.lists(st.sampled_from(hidden), max_size=n)) if n else []
    return draw(st.permutations(subset))


@SETTINGS
@hypothesis.given(st.data())
def test_agrees_with_brute_force(data):
    n = data.draw(st.integers(0, 7), label="n")
    universe = list(range(n))
    hidden = data.draw(st.permutations(universe), label="hidden")
    tree = PQTree(universe)
    valid = [tuple(p) for p in itertools.permutations(universe)]
    assert admitted(tree) == set(valid)
    for _ in range(data.draw(st.integers(1, 8), label="steps")):
        subset = data.draw(constraint(hidden), label="subset")
        still_valid = [p for p in valid if is_consecutive(p, subset)]
        before = repr(tree)
        accepted = tree.reduce(subset)
        tree._check()
        assert accepted == bool(still_valid)
        if accepted:
            valid = still_valid
        else:
            assert repr(tree) == before
        assert admitted(tree) == set(valid)


def test_all_pairs_of_subsets_on_five_items():
    universe = range(5)
    subsets = [s for k in range(2, 5) for s in itertools.combinations(universe, k)]
    perms = list(itertools.permutations(universe))
    for first, second in itertools.product(subsets, repeat=2):
        tree = PQTree(universe)
        assert tree.reduce(first)
        valid = {p for p in perms if is_consecutive(p, first) and is_consecutive(p, second)}
        assert tree.reduce(second) == bool(valid)
        tree._check()
        if valid:
            assert admitted(tree) == valid


@SETTINGS
@hypothesis.given(st.data())
def test_frontier_satisfies_accepted_constraints(data):
    n = data.draw(st.integers(2, 60), label="n")
    hidden = data.draw(st.permutations(range(n)), label="hidden")
    tree = PQTree(range(n))
    accepted = []
    only_windows = True
    for _ in range(data.draw(st.integers(1, 40), label="steps")):
        start = data.draw(st.integers(0, n - 1))
        stop = data.draw(st.integers(start + 1, min(n, start + 12)))
        if data.draw(st.integers(0, 4)) == 0:  # now and then a random subset
            subset = data.draw(st.sets(st.sampled_from(hidden), max_size=8))
            only_windows = False
        else:
            subset = hidden[start:stop]
        before, frontier_before = repr(tree), tree.frontier()
        ok = tree.reduce(subset)
        if only_windows:
            assert ok, "a window of the hidden order was rejected"
        if ok:
            accepted.append(subset)
        else:
            assert repr(tree) == before and tree.frontier() == frontier_before
        order = tree.frontier()
        assert sorted(order) == list(range(n))
        assert all(is_consecutive(order, s) for s in accepted)
    tree._check()


@SETTINGS
@hypothesis.given(st.data())
def test_rejected_reduce_leaves_tree_unchanged(data):
    n = data.draw(st.integers(3, 7), label="n")
    hidden = data.draw(st.permutations(range(n)), label="hidden")
    tree = PQTree(range(n))
    for _ in range(data.draw(st.integers(1, 4))):
        start = data.draw(st.integers(0, n - 2))
        assert tree.reduce(hidden[start : data.draw(st.integers(start + 2, n - 1 + (start > 0)))])
    orders_before = admitted(tree)
    incompatible = [
        s
        for k in range(2, n)
        for s in itertools.combinations(range(n), k)
        if not any(is_consecutive(order, s) for order in orders_before)
    ]
    hypothesis.assume(incompatible)
    subset = data.draw(st.sampled_from(incompatible), label="subset")
    before, twin = repr(tree), tree.copy()
    assert not tree.reduce(subset)
    assert repr(tree) == before
    assert admitted(tree) == orders_before
    tree._check()
    # The tree behaves as before: it rejects the subset again, and accepts and
    # rewrites exactly like an untouched copy.
    assert not tree.reduce(subset)
    window = hidden[: n - 1]
    assert tree.reduce(window) and twin.reduce(window)
    assert repr(tree) == repr(twin)


def test_rejected_reduce_example():
    tree = PQTree(range(5))
    assert tree.reduce([0, 1, 2]) and tree.reduce([2, 3])
    before = repr(tree)
    assert not tree.reduce([0, 3])
    assert repr(tree) == before
    assert admitted(tree) == {
        (4, 0, 1, 2, 3),
        (4, 1, 0, 2, 3),
        (4, 3, 2, 0, 1),
        (4, 3, 2, 1, 0),
        (0, 1, 2, 3, 4),
        (1, 0, 2, 3, 4),
        (3, 2, 0, 1, 4),
        (3, 2, 1, 0, 4),
    }


def test_duplicate_item_in_universe():
    with pytest.raises(PQTreeError, match="'b'"):
        PQTree(["a", "b", "c", "b"])
    assert issubclass(PQTreeError, ValueError)


def test_unknown_item_in_subset():
    tree = PQTree(range(4))
    assert tree.reduce([0, 1])
    before = repr(tree)
    with pytest.raises(PQTreeError, match="99"):
        tree.reduce([1, 2, 99])
    assert repr(tree) == before
    with pytest.raises(PQTreeError, match="'x'"):
        PQTree([]).reduce(["x"])


def test_empty_universe():
    tree = PQTree([])
    assert len(tree) == 0 and 0 not in tree
    assert tree.frontier() == []
    assert list(tree.orders()) == [[]]
    assert tree.reduce([]) and tree.reduce(iter(()))
    assert repr(tree) == "PQTree()"
    tree._check()


def test_universe_of_one():
    tree = PQTree(["x"])
    assert len(tree) == 1 and "x" in tree and "y" not in tree
    assert tree.reduce([]) and tree.reduce(["x"]) and tree.reduce(["x", "x"])
    assert tree.frontier() == ["x"]
    assert list(tree.orders()) == [["x"]]
    tree._check()


@pytest.mark.parametrize("subset", [[], [2], [2, 2, 2], [0, 1, 2, 3, 4], [4, 3, 2, 1, 0, 4]])
def test_trivial_subsets_change_nothing(subset):
    tree = PQTree(range(5))
    assert tree.reduce([0, 1])
    before = repr(tree)
    assert tree.reduce(subset)
    assert repr(tree) == before


def test_repeated_items_are_a_set():
    a, b = PQTree(range(6)), PQTree(range(6))
    assert a.reduce([3, 1, 3, 2, 1]) and b.reduce({1, 2, 3})
    assert admitted(a) == admitted(b)


def test_generator_subsets_and_universe():
    tree = PQTree(i for i in range(4))
    assert len(tree) == 4
    assert tree.reduce(i for i in (0, 1, 1))
    assert admitted(tree) == {p for p in itertools.permutations(range(4)) if is_consecutive(p, (0, 1))}


@SETTINGS
@hypothesis.given(st.data())
def test_from_blocks_is_the_tree_of_the_reductions(data):
    n = data.draw(st.integers(0, 9))
    universe = data.draw(st.permutations(list(range(n))))
    label = data.draw(st.lists(st.integers(-1, 3), min_size=n, max_size=n))  # -1: in no block
    blocks = [[item for item, k in zip(universe, label) if k == block] for block in range(4)]
    blocks = [data.draw(st.permutations(block)) + block[:1] for block in blocks]  # shuffled, a repeat
    built = PQTree.from_blocks(universe, blocks)
    reduced = PQTree(universe)
    for block in blocks:
        assert reduced.reduce(block)
    built._check()
    assert repr(built) == repr(reduced)
    subset = data.draw(st.lists(st.sampled_from(universe), max_size=n)) if n else []
    assert built.reduce(subset) == reduced.reduce(subset) and repr(built) == repr(reduced)


def test_from_blocks_refuses_overlapping_and_unknown_items():
    with pytest.raises(PQTreeError, match="item 2 lies in two blocks"):
        PQTree.from_blocks(range(5), [[0, 1, 2], [2, 3]])
    with pytest.raises(PQTreeError, match="item 7 is not in the universe"):
        PQTree.from_blocks(range(5), [[0, 7]])
    with pytest.raises(PQTreeError, match="'b'"):
        PQTree.from_blocks(["a", "b", "b"], [])


def test_repr_and_q_nodes():
    tree = PQTree(range(4))
    assert repr(tree) == "PQTree((0 1 2 3))"
    assert tree.reduce([0, 1]) and tree.reduce([1, 2])
    assert "[" in repr(tree)  # a Q-node for the chain 0-1-2
    assert admitted(tree) == {(0, 1, 2, 3), (2, 1, 0, 3), (3, 0, 1, 2), (3, 2, 1, 0)}
    assert repr(PQTree(["a", "b"])) == "PQTree(('a' 'b'))"


def test_copy_is_independent():
    tree = PQTree(range(6))
    assert tree.reduce([0, 1, 2])
    twin = tree.copy()
    twin._check()
    assert repr(twin) == repr(tree) and admitted(twin) == admitted(tree)
    assert twin.reduce([2, 3]) and twin.reduce([4, 5])
    assert admitted(tree) != admitted(twin)
    assert admitted(tree) == {p for p in itertools.permutations(range(6)) if is_consecutive(p, (0, 1, 2))}


def test_windows_of_a_hidden_order_at_scale():
    # 3000 items, 6000 windows of sizes 2..64: every reduce is accepted and the
    # frontier satisfies them all. About 0.3 s; the bound only guards against a
    # reduce that scans the whole tree.
    rng = random.Random(0)
    n = 3000
    hidden = list(range(n))
    rng.shuffle(hidden)
    windows = []
    for _ in range(2 * n):
        size = rng.randint(2, 64)
        start = rng.randrange(n - size + 1)
        windows.append(hidden[start : start + size])
    tree = PQTree(range(n))
    start_time = time.perf_counter()
    assert all(tree.reduce(w) for w in windows)
    elapsed = time.perf_counter() - start_time
    order = tree.frontier()
    position = {item: i for i, item in enumerate(order)}
    assert len(position) == n
    for w in windows:
        spots = [position[item] for item in w]
        assert max(spots) - min(spots) + 1 == len(w)
    tree._check()
    assert elapsed < 3.0, f"6000 reduces took {elapsed:.2f} s"
