"""The layout planner and the engine's slices: exact values and gradients, gather counts."""

from __future__ import annotations

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import strategies
from hypothesis import HealthCheck, given, settings
from test_engine import TOL, _assert_trees_close, _dag_ops, _random_dag

import edbatch_jax as eb

LAYOUTS = ["planned", "dynet", "gather"]


def _layout(name, graph, sched, variadic=None):
    return {
        "planned": lambda: eb.plan_layout(graph, sched, variadic),
        "dynet": lambda: None,
        "gather": lambda: "gather",
    }[name]()


def chain_graph(lengths, seed=0):
    """Variable-length chains: init -> cell -> cell ..., an embed per step, a loss per step."""
    rng = np.random.default_rng(seed)
    graphs = []
    for length in lengths:
        b = eb.GraphBuilder()
        h = b.add("init")
        for _ in range(length):
            x = b.add("embed", payload=np.float32(rng.normal()))
            h = b.add("cell", h, x)
            b.add("loss", h)
        graphs.append(b.build())
    return eb.batch_graphs(graphs)


CHAIN_OPS = {
    "init": lambda p, payload: p["h0"],
    "embed": lambda p, x: jnp.tanh(p["e"] * x),
    "cell": lambda p, payload, h, x: jnp.tanh(p["W"] @ h + x),
    "loss": lambda p, payload, h: jnp.sum(h * h),
}
CHAIN_PARAMS = {"h0": jnp.linspace(-1, 1, 4), "e": jnp.linspace(0.5, 1.5, 4), "W": jnp.eye(4) * 0.6 + 0.1}


def _check(ops, params, graph, sched, outputs, layout, reduce=jnp.sum):
    engine = eb.StepwiseEngine(ops)
    f1 = lambda p: reduce(engine.run(p, graph, sched, outputs, layout))
    f0 = lambda p: reduce(eb.run_unbatched(ops, p, graph, outputs=outputs))
    v1, g1 = jax.value_and_grad(f1)(params)
    v0, g0 = jax.value_and_grad(f0)(params)
    np.testing.assert_allclose(v1, v0, **TOL)
    _assert_trees_close(g1, g0, **TOL)
    return engine.plan(params, graph, sched, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("policy", ["agenda", "typewise"])
def test_chains_match_unbatched_and_planned_layout_gathers_nothing(layout, policy):
    graph = chain_graph([3, 9, 5, 12, 1, 7, 7, 10], seed=1)
    sched = eb.schedule(graph, policy)
    plan = _check(CHAIN_OPS, CHAIN_PARAMS, graph, sched, graph.nodes_of_type("loss"), _layout(layout, graph, sched))
    if layout == "planned":
        assert plan.num_gathers == 0 and plan.gathered_bytes == 0
        assert eb.plan_layout(graph, sched).num_gathers == 0
    elif layout == "gather":
        assert plan.num_gathers == plan.num_operands > 0
    else:
        assert 0 < plan.num_gathers < plan.num_operands  # schedule order is contiguous only by chance


@pytest.mark.parametrize("layout", LAYOUTS)
def test_treelstm_matches_unbatched_with_every_layout(layout):
    from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
    from edbatch_jax.zoo.models.treelstm import TreeLSTM

    trees = synthetic_sst(5, seed=3)
    vocab = Vocabulary.build(trees)
    model = TreeLSTM(len(vocab), hidden=8, embed=8)
    graph = model.batch_graph(trees, vocab)
    sched = eb.schedule(graph, "typewise")
    _check(
        model.ops,
        model.init(jax.random.PRNGKey(0)),
        graph,
        sched,
        graph.nodes_of_type("loss"),
        _layout(layout, graph, sched),
        reduce=lambda s: jnp.sum(s["loss"]),
    )


@pytest.mark.parametrize("layout", ["planned", "dynet"])
def test_lattice_lstm_matches_unbatched_with_planned_layout(layout):
    from edbatch_jax.zoo.data.lattice import synthetic_lattices
    from edbatch_jax.zoo.models.lattice import LatticeTagger

    model = LatticeTagger(vocab_size=64, hidden=8, embed=8)
    graph = model.batch_graph(synthetic_lattices(3, seed=1, max_nodes=10))
    sched = eb.schedule(graph, "typewise")
    _check(
        model.ops,
        model.init(jax.random.PRNGKey(1)),
        graph,
        sched,
        graph.nodes_of_type("loss"),
        _layout(layout, graph, sched, {"node"}),
        reduce=lambda s: jnp.sum(s["loss"]),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_mixed_structures_and_variadic_ops_match_with_planned_layout(seed):
    graph = _random_dag(np.random.default_rng(seed))
    params = {"a": jnp.float32(0.7), "b": jnp.arange(3, dtype=jnp.float32) / 3, "w": jnp.ones(3) * 0.5}
    sched = eb.schedule(graph, "typewise")
    layout = eb.plan_layout(graph, sched, variadic={"sum", "max", "mean"})
    _check(_dag_ops(), params, graph, sched, graph.nodes_of_type("head"), layout, reduce=lambda s: jnp.sum(jnp.sin(s)))


def test_planned_layout_gathers_fewer_bytes_than_schedule_order_on_trees_and_lattices():
    from edbatch_jax.zoo.data.lattice import synthetic_lattices
    from edbatch_jax.zoo.data.sst import Vocabulary, synthetic_sst
    from edbatch_jax.zoo.models.lattice import LatticeTagger
    from edbatch_jax.zoo.models.treelstm import TreeLSTM

    trees = synthetic_sst(32, seed=0)
    vocab = Vocabulary.build(trees)
    tree_model = TreeLSTM(len(vocab), hidden=8, embed=8)
    lat_model = LatticeTagger(hidden=8, embed=8)
    cases = [
        (tree_model, tree_model.batch_graph(trees, vocab), None),
        (lat_model, lat_model.batch_graph(synthetic_lattices(16, seed=0)), {"node"}),
    ]
    for model, graph, variadic in cases:
        sched = eb.schedule(graph, "typewise")
        engine = eb.StepwiseEngine(model.ops)
        params = model.init(jax.random.PRNGKey(0))
        planned = engine.plan(params, graph, sched, eb.plan_layout(graph, sched, variadic))
        dynet = engine.plan(params, graph, sched, None)
        gather = engine.plan(params, graph, sched, "gather")
        assert planned.gathered_bytes < dynet.gathered_bytes < gather.gathered_bytes


def test_layout_errors_name_the_problem():
    graph = chain_graph([2, 3])
    sched = eb.schedule(graph, "agenda")
    engine = eb.StepwiseEngine(CHAIN_OPS)
    plan = eb.plan_layout(graph, sched)
    other = eb.plan_layout(chain_graph([2]), eb.schedule(chain_graph([2]), "agenda"))
    with pytest.raises(ValueError, match="positions for a graph of"):
        engine.plan(CHAIN_PARAMS, graph, sched, other)
    broken = eb.LayoutPlan(np.random.default_rng(0).permutation(graph.num_nodes).astype(np.int32), 0, 0, 0, 0.0)
    with pytest.raises(ValueError, match="consecutive rows"):
        engine.plan(CHAIN_PARAMS, graph, sched, broken)
    with pytest.raises(ValueError, match="layout must be"):
        engine.plan(CHAIN_PARAMS, graph, sched, "sideways")
    assert plan.num_operands > 0 and "gathers" in repr(plan)
    with pytest.raises(ValueError, match="not made by plan_layout"):
        broken.num_gathers
    assert "operands=0" in repr(broken) and "gathers" not in repr(broken)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies.batched_graphs(max_graphs=4), st.sampled_from(["agenda", "depth", "typewise"]))
def test_every_plan_is_a_permutation_keeping_batches_consecutive(graph, policy):
    sched = eb.schedule(graph, policy)
    plan = eb.plan_layout(graph, sched)
    assert sorted(plan.position.tolist()) == list(range(graph.num_nodes))
    for _, nodes in sched.batches:
        pos = np.sort(plan.position[nodes])
        assert pos[-1] - pos[0] == nodes.size - 1
    assert 0 <= plan.num_gathers <= plan.num_operands


def _operand_lists_by_loop(graph, sched):
    """Operand lists batch by batch, argument position by position: the definition."""
    out = []
    for b, (op, nodes) in enumerate(sched.batches):
        arities = {len(graph.args(v)) for v in graph.nodes_of_type(op).tolist()}
        if len(arities) > 1:  # variable arity (within the op type): one flat list, lane by lane
            lane = [k for k, v in enumerate(nodes.tolist()) for _ in graph.args(v)]
            if lane:
                out.append((b, lane, [a for v in nodes.tolist() for a in graph.args(v)]))
        else:
            for p in range(arities.pop()):  # fixed arity: one list per argument position
                out.append((b, list(range(nodes.size)), [graph.args(v)[p] for v in nodes.tolist()]))
    return out


def _accepted_over_nodes(graph, sched):
    """Operand sets a PQ-tree over the nodes themselves (no classes of twins) accepts, offered in the
    planner's order: every read batch, then every list of distinct nodes, largest first."""
    lists = eb.layout.operand_lists(graph, sched)
    read = (
        sorted({int(b) for b in sched.batch_of_node(graph.num_nodes)[np.concatenate([a for _, _, a in lists])]})
        if lists
        else []
    )
    tree = eb.PQTree([v for b in read for v in sched.batches[b][1].tolist()])
    for b in read:
        tree.reduce(sched.batches[b][1].tolist())
    accepted = 0
    for _, _, args in sorted(lists, key=lambda item: -item[2].size):
        if len(set(args.tolist())) == args.size:
            accepted += args.size < 2 or tree.reduce(args.tolist())
    return accepted


def _gathers_by_loop(graph, sched, position):
    """Operand lists whose rows, entries in lane order, are not consecutive and increasing."""
    gathers = 0
    for b, lane, args in eb.layout.operand_lists(graph, sched):
        nodes = sched.batches[b][1]
        lane_rank = np.argsort(np.argsort(position[nodes], kind="stable"), kind="stable")
        rows = position[args[np.lexsort((np.arange(args.size), lane_rank[lane]))]]
        gathers += not np.all(np.diff(rows) == 1)
    return gathers


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(strategies.batched_graphs(max_graphs=4), st.sampled_from(["agenda", "depth", "typewise"]))
def test_planner_agrees_with_its_definitions(graph, policy):
    """Vectorised operand lists, PQ-tree over twin classes, gather count: each against the plain loop."""

    sched = eb.schedule(graph, policy)
    got = eb.layout.operand_lists(graph, sched)
    want = _operand_lists_by_loop(graph, sched)
    assert [(b, lane.tolist(), args.tolist()) for b, lane, args in got] == want
    plan = eb.plan_layout(graph, sched)
    assert plan.accepted == _accepted_over_nodes(graph, sched)
    assert plan.num_gathers == _gathers_by_loop(graph, sched, plan.position)


def _align_by_loop(position, sched, lists, accepted, one_producer, lane_rank):
    """Step 3 of the planner, batch by batch in schedule order, every batch on its turn: the definition."""
    pos, pinned = position.tolist(), [False] * position.size
    bounds = zip(lists.batch, lists.ptr[:-1], lists.ptr[1:])
    lists = [(int(b), lists.lane[s:e].tolist(), lists.arg[s:e].tolist()) for b, s, e in bounds]
    for b, (_, nodes) in enumerate(sched.batches):
        own = [i for i, item in enumerate(lists) if item[0] == b and accepted[i]]
        if not any(item[0] == b for item in lists):
            continue
        nodes, anchor, most = nodes.tolist(), -1, 0.0
        for i in own:
            args = lists[i][2]
            share = sum(pinned[a] for a in args) / len(args)
            rows = [pos[a] for a in args]
            if share > most and max(rows) - min(rows) == len(rows) - 1:
                anchor, most = i, share
        key = None
        if anchor >= 0:
            key = [len(pos)] * len(nodes)
            for lane, a in zip(lists[anchor][1], lists[anchor][2]):
                key[lane], pinned[a] = min(key[lane], pos[a]), True
        elif not any(pinned[v] for v in nodes):
            key = [int(lane_rank[v]) for v in nodes]
        if key is not None:
            rows = [pos[v] for v in nodes]
            for (_, _, v), row in zip(sorted(zip(key, rows, nodes)), sorted(rows)):
                pos[v] = row
        lane_pos = [pos[v] - min(pos[u] for u in nodes) for v in nodes]
        changed = anchor >= 0
        for i in own:
            _, lanes, args = lists[i]
            if not one_producer[i] or any(pinned[a] for a in args):
                continue
            by_lane = sorted(range(len(args)), key=lambda k: lane_pos[lanes[k]])
            for k, row in zip(by_lane, sorted(pos[a] for a in args)):
                pos[args[k]], pinned[args[k]] = row, True
            changed = True
        if changed:
            for v in nodes:
                pinned[v] = True
    return pos


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategies.batched_graphs(max_graphs=5),
    st.sampled_from(["agenda", "depth", "typewise"]),
)
def test_alignment_agrees_with_its_definition(graph, policy):
    """Batches reading no accepted operand ordered at once, the rest one by one (a compiled kernel):
    the order of the batch-by-batch loop."""
    from edbatch_jax.layout import planner

    sched = eb.schedule(graph, policy)
    seen = []
    align = planner._align

    def spy(*args):
        seen.append(([np.copy(a) if isinstance(a, np.ndarray) else a for a in args], align(*args)))
        return seen[-1][1]

    try:
        planner._align = spy
        eb.plan_layout(graph, sched)
    finally:
        planner._align = align
    ((args, got),) = seen
    position, _, lists, accepted, one_producer, lane_rank = args
    assert got.tolist() == _align_by_loop(position, sched, lists, accepted, one_producer, lane_rank)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_twin_classes_agree_with_their_definition(data):
    """Classes of nodes of one batch in the same sets, numbered by first appearance; nodes in many sets
    take the path that cannot pack a signature into one integer."""
    from edbatch_jax.layout.planner import _twin_classes

    n = data.draw(st.integers(1, 30))
    batch_of = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    num_sets = data.draw(st.sampled_from([3, 200]))
    membership = st.tuples(st.integers(0, n - 1), st.integers(0, num_sets - 1))
    pairs = data.draw(st.lists(membership, max_size=120, unique=True))
    if num_sets == 200:  # one node in 12 sets of 200: 4 * 201**12 overflows an int64
        pairs = list(dict.fromkeys(pairs + [(0, s) for s in range(0, 200, 17)]))
    pairs.sort(key=lambda pair: pair[1])  # memberships set by set, as the planner lists them
    node = np.array([p[0] for p in pairs], np.int64)
    set_id = np.array([p[1] for p in pairs], np.int64)
    members = np.array(data.draw(st.permutations(range(n))))[: data.draw(st.integers(0, n))]
    cls, count = _twin_classes(batch_of, node, set_id, members)
    signature = {v: (int(batch_of[v]), frozenset(s for u, s in pairs if u == v)) for v in range(n)}
    number = {}
    for v in members.tolist():
        number.setdefault(signature[v], len(number))
    assert count == len(number)
    assert cls.tolist() == [number[signature[v]] if v in set(members.tolist()) else -1 for v in range(n)]


def test_twin_classes_with_signatures_too_long_to_pack():
    from edbatch_jax.layout.planner import _twin_classes

    many = list(range(0, 200, 17))  # 12 sets of 200: a signature does not fit an int64
    pairs = [(0, s) for s in many] + [(1, s) for s in many] + [(2, s) for s in many + [199]] + [(3, 5)]
    pairs.sort(key=lambda pair: pair[1])  # memberships set by set, as the planner lists them
    node, set_id = (np.array(column, np.int64) for column in zip(*pairs))
    cls, count = _twin_classes(np.array([0, 0, 0, 0, 1]), node, set_id, np.array([4, 2, 1, 0, 3]))
    assert (cls.tolist(), count) == ([2, 2, 1, 3, 0], 4)


@pytest.mark.parametrize("bound", [2, 1 << 16, (1 << 16) + 1, 1 << 40])
def test_stable_sorts_of_bounded_keys(bound):
    """16-bit keys go through NumPy's radix sort; every bound gives the stable order and the sorted keys."""
    from edbatch_jax.layout.planner import _argsort, _counted, _sort

    key = np.random.default_rng(bound).integers(0, bound, 5000)
    np.testing.assert_array_equal(_argsort(key, bound), np.argsort(key, kind="stable"))
    np.testing.assert_array_equal(_sort(key, bound), np.sort(key))
    assert _sort(key, bound).dtype == np.int64
    for keys in (key, key[:0]):
        values, counts = _counted(keys, bound)
        want_values, want_counts = np.unique(keys, return_counts=True)
        np.testing.assert_array_equal(values, want_values)
        np.testing.assert_array_equal(counts, want_counts)


def test_lanes_by_instance_when_keys_do_not_pack():
    """The lane order of batches that read no accepted operand, with instance ranks too large to pack."""
    from edbatch_jax.layout.planner import _order_lanes

    graph = chain_graph([3, 1, 2])
    sched = eb.schedule(graph, "agenda")
    rng = np.random.default_rng(0)
    for ranks in (rng.permutation(graph.num_nodes), rng.permutation(graph.num_nodes) * (2**60 // graph.num_nodes)):
        chosen = np.arange(sched.num_batches) % 2 == 0
        pos = np.empty(graph.num_nodes, np.int64)  # every batch's rows consecutive, in a random order
        pos[np.concatenate([rng.permutation(nodes) for _, nodes in sched.batches][::-1])] = np.arange(graph.num_nodes)
        got = pos.copy()
        _order_lanes(got, sched, ranks, chosen)
        for b, (_, nodes) in enumerate(sched.batches):
            rows = np.sort(pos[nodes])
            want = pos[nodes] if not chosen[b] else rows[np.argsort(np.lexsort((pos[nodes], ranks[nodes])))]
            np.testing.assert_array_equal(got[nodes], want)


# treegru, mvrnn, bilstm_tagger, chain_lstm, grid_2d and lattice_gru run with the planned layout in
# test_nnx_cells (their NNX cells, the Linen weights, against the unbatched Linen model)
@pytest.mark.parametrize("name", ["double_treelstm", "grid_3d", "random_dag", "binary_tree"])
def test_every_bundled_workload_matches_unbatched_with_the_planned_layout(name):
    from edbatch_jax.zoo.workloads import load_workload

    work = load_workload(name, hidden=4, num_train=16, num_held_out=8)
    small = {"random_dag": 1, "grid_3d": 1, "binary_tree": 1}.get(name, 2)
    items = work.train[:small]
    if name == "random_dag":  # a 200-state DAG is slow node by node: keep its first states
        from edbatch_jax.zoo.data.synthetic_graphs import synthetic_dags

        items = synthetic_dags(1, seed=3, num_states=24)
    graph = work.batch_graph(items)
    sched = eb.schedule(graph, "typewise")
    variadic = {n for n, op in work.model.ops.items() if op.variadic}
    plan = _check(
        work.model.ops,
        work.model.init(jax.random.PRNGKey(0)),
        graph,
        sched,
        graph.nodes_of_type("loss"),
        eb.plan_layout(graph, sched, variadic),
        reduce=lambda s: jnp.sum(s["loss"]),
    )
    assert plan.num_gathers <= plan.num_operands
