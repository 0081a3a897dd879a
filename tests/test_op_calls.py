"""FLOP counts of a plan's real nodes (the compute floor's numerator), checked against hand counts."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import edbatch_jax as eb
from edbatch_jax.apps.op_calls import matmul_gflops, plan_flops


def _chains(num_leaves: int, num_links: int):
    """``num_leaves`` leaves (f32[4] payloads) and a chain of ``num_links`` nodes over the first one."""
    b = eb.GraphBuilder()
    leaves = [b.add("leaf", payload=np.full(4, k, np.float32)) for k in range(num_leaves)]
    x = leaves[0]
    for _ in range(num_links):
        x = b.add("link", x)
    return b.build()


OPS = {
    "leaf": eb.Op(lambda p, x: {"h": x @ p["w"]}, arity=0),  # [4] @ [4, 3]: 24 FLOPs
    "link": eb.Op(lambda p, x, a: {"h": a["h"] @ p["v"]}, arity=1),  # [3] @ [3, 3]: 18 FLOPs
}
PARAMS = {"w": jnp.ones((4, 3)), "v": jnp.ones((3, 3))}


@pytest.mark.parametrize("engine_cls", [eb.StepwiseEngine, eb.FusedEngine])
def test_plan_flops_counts_real_nodes_only(engine_cls):
    engine = engine_cls(OPS)
    graph = _chains(5, 3)  # the 5 leaves run as one batch padded to 8 lanes
    plan = engine.plan(PARAMS, graph, eb.schedule(graph, "depth"))
    assert plan_flops(engine, [plan], PARAMS) == 5 * 24 + 3 * 18
    other = _chains(7, 1)
    two = [plan, engine.plan(PARAMS, other, eb.schedule(other, "depth"))]
    assert plan_flops(engine, two, PARAMS) == ((5 * 24 + 3 * 18) + (7 * 24 + 18)) / 2
    # training: the forward products, then the pullback's: each leaf's weight gradient ([4] x [3] products, no
    # operand), each link's weight gradient ([3] x [3]) and operand cotangent ([3, 3] @ [3]: 18 FLOPs); XLA counts a
    # product summed over lanes as 2 FLOPs (a contraction) or 1 (an outer product), so the pullback is 195-228
    train = plan_flops(engine, [plan], PARAMS, train=True)
    assert 5 * 24 + 3 * 18 + 5 * 12 + 3 * (9 + 18) <= train <= 5 * 24 + 3 * 18 + 5 * 24 + 3 * (18 + 18)


def test_matmul_gflops_is_a_positive_rate():
    assert matmul_gflops(32, 32, 32, repeats=3) > 0
