"""Fuzz: corrupted layouts and ``outputs`` give the unbatched answer or a library error naming the culprit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edbatch_jax as eb

H = 4
VOCAB = 10
PARAMS = {
    "E": jnp.linspace(-1.0, 1.0, VOCAB * H).reshape(VOCAB, H),
    "W": jnp.linspace(-0.5, 0.5, H * 2 * H).reshape(H, 2 * H),
}
OPS = {
    "leaf": eb.Op(lambda p, x: jnp.tanh(p["E"][x]), payload_bounds=VOCAB),
    "node": lambda p, payload, a, b: jnp.tanh(p["W"] @ jnp.concatenate([a, b])),
}
# shared: compiled once; max_lanes=4: few lane buckets, faster compilation (wider batches run as chunks)
ENGINES = {"stepwise": eb.StepwiseEngine(OPS), "fused": eb.FusedEngine(OPS, max_lanes=4)}


def _tree(rng: np.random.Generator, leaves: int) -> eb.Graph:
    b = eb.GraphBuilder()
    xs = [b.add("leaf", payload=np.int32(rng.integers(VOCAB))) for _ in range(leaves)]
    while len(xs) > 1:
        i = int(rng.integers(len(xs) - 1))
        xs[i : i + 2] = [b.add("node", xs[i], xs[i + 1])]
    return b.build()


def _batch(seed: int) -> eb.Graph:
    rng = np.random.default_rng(seed)
    return eb.batch_graphs([_tree(rng, int(rng.integers(1, 6))) for _ in range(int(rng.integers(1, 4)))])


def _outcome(run, reference) -> str:
    """``"equal"`` if ``run()`` equals ``reference()``, ``"refused"`` if it raised a library error; anything
    else (another exception, a different answer) fails the test."""
    try:
        got = run()
    except eb.EdbatchError:
        return "refused"
    want = reference()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6), got, want)
    return "equal"


LAYOUT_CORRUPTIONS = ("shuffled", "reversed", "short", "long", "repeated", "negative", "other_schedule", "float")


def _corrupt_layout(kind: str, layout: eb.LayoutPlan, graph: eb.Graph, rng: np.random.Generator):
    pos = np.asarray(layout.position)
    n = pos.shape[0]
    if kind == "shuffled":  # another permutation, fingerprint kept
        return dataclasses.replace(layout, position=rng.permutation(n).astype(np.int32))
    if kind == "reversed":
        return dataclasses.replace(layout, position=(n - 1 - pos).astype(np.int32))
    if kind == "short":
        return dataclasses.replace(layout, position=pos[:-1])
    if kind == "long":
        return dataclasses.replace(layout, position=np.concatenate([pos, [n]]).astype(np.int32))
    if kind == "repeated":
        bad = pos.copy()
        bad[-1] = bad[0]
        return dataclasses.replace(layout, position=bad)
    if kind == "negative":
        bad = pos.copy()
        bad[0] = -1
        return dataclasses.replace(layout, position=bad)
    if kind == "float":
        return dataclasses.replace(layout, position=pos.astype(np.float64) + 0.5)
    return eb.plan_layout(graph, eb.schedule(graph, "depth"))  # planned for another schedule of the graph


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(LAYOUT_CORRUPTIONS),
    engine=st.sampled_from(sorted(ENGINES)),
)
def test_a_corrupted_layout_gives_the_right_values_or_a_library_error(seed, kind, engine):
    graph = _batch(seed)
    sched = eb.schedule(graph, "agenda")
    layout = _corrupt_layout(kind, eb.plan_layout(graph, sched), graph, np.random.default_rng(seed))
    _outcome(
        lambda: ENGINES[engine].run(PARAMS, graph, sched, layout=layout),
        lambda: eb.run_unbatched(OPS, PARAMS, graph),
    )


def _outputs(draw, n: int):
    kind = draw(st.sampled_from(("ids", "floats", "mask", "out_of_range", "negative", "nested", "strings", "empty")))
    ids = draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=6))
    return {
        "ids": ids,
        "floats": [float(i) + 0.5 for i in ids],
        "mask": np.arange(n) % 2 == 0,
        "out_of_range": ids + [n + draw(st.integers(0, 5))],
        "negative": ids + [-1 - draw(st.integers(0, 5))],
        "nested": [ids, ids[:1]],
        "strings": [str(i) for i in ids],
        "empty": [],
    }[kind]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), engine=st.sampled_from(sorted(ENGINES)), data=st.data())
def test_outputs_of_any_kind_give_the_right_states_or_a_library_error(seed, engine, data):
    graph = _batch(seed)
    outputs = _outputs(data.draw, graph.num_nodes)
    sched = eb.schedule(graph, "agenda")  # leaves and inner nodes share one state structure: any ids may mix
    _outcome(
        lambda: ENGINES[engine].run(PARAMS, graph, sched, outputs=outputs),
        lambda: eb.run_unbatched(OPS, PARAMS, graph, outputs=outputs),
    )
