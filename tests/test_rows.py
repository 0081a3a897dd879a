"""Whole-schedule row arrays and the fused engine's tables against per-batch definitions.

The engines build their index arrays for a whole schedule at once
(:mod:`edbatch_jax.engine.rows`, :class:`edbatch_jax.FusedEngine` tables).
Here every array is rebuilt batch by batch, straight from the graph, the
schedule and the rows the plan gave each node, and compared exactly.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine import _dag_ops, _random_dag

import edbatch_jax as eb
from edbatch_jax.engine.buckets import bucket, fine_bucket_array
from edbatch_jax.engine.common import signature_bytes

PARAMS = {"a": jnp.float32(0.7), "b": jnp.arange(3, dtype=jnp.float32) / 3, "w": jnp.ones(3) * 0.5}
_BRANCH, _OUT, _VALID, _PAY, _SEG, _IDX = range(6)


def _batches_by_definition(graph, sched, plan, ops, allow_slices):
    """Per batch: (lane nodes, first row, operand groups [(rows, slice?)], segment lanes or None)."""
    slot = plan.node_slot
    out = []
    for name, nodes in sched.batches:
        lanes = nodes[np.argsort(slot[nodes])]
        args = [graph.args(v) for v in lanes]
        if ops[name].variadic:
            flat = np.concatenate(args)
            groups = [slot[flat]]
            segments = np.repeat(np.arange(lanes.size), [a.size for a in args])
        else:
            groups = [slot[np.array([a[j] for a in args])] for j in range(ops[name].arity)]
            segments = None
        groups = [(g, allow_slices and bool(np.all(np.diff(g) == 1))) for g in groups]
        out.append((lanes, int(slot[lanes[0]]), groups, segments))
    return out


def _setup(seed, policy, layout_kind):
    graph = _random_dag(np.random.default_rng(seed))
    ops = eb.engine.as_ops(_dag_ops())
    sched = eb.schedule(graph, policy)
    layout = {"dynet": None, "gather": "gather", "planned": "plan"}[layout_kind]
    if layout == "plan":
        variadic = {name for name, op in ops.items() if op.variadic}
        layout = eb.plan_layout(graph, sched, variadic)
    return graph, ops, sched, layout


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 10_000),
    st.sampled_from(["agenda", "depth", "typewise"]),
    st.sampled_from(["dynet", "gather", "planned"]),
)
def test_rows_and_steps_agree_with_per_batch_definitions(seed, policy, layout_kind):
    graph, ops, sched, layout = _setup(seed, policy, layout_kind)
    engine = eb.StepwiseEngine(ops)
    plan = engine.plan(PARAMS, graph, sched, layout)
    rows = plan.rows
    want = _batches_by_definition(graph, sched, plan, ops, allow_slices=layout != "gather")
    row_bytes = [signature_bytes(s) for s in plan.signatures]
    need = np.zeros(len(plan.signatures), np.int64)
    gathers = gathered_bytes = operands = 0
    assert rows.num_batches == plan.num_steps == len(want) == len(plan.steps)
    for b, ((lanes, first, groups, segments), step) in enumerate(zip(want, plan.steps)):
        width = lanes.size
        np.testing.assert_array_equal(rows.lane_nodes[rows.batch_ptr[b] : rows.batch_ptr[b + 1]], lanes)
        assert rows.offset[b] == first and int(step.out_offset) == first
        assert step.width == width and step.lanes == bucket(width) == rows.lanes[b]
        assert step.out_buffer == rows.out_buffer[b] == plan.node_buffer[lanes[0]]
        need[step.out_buffer] = max(need[step.out_buffer], first + step.lanes)
        np.testing.assert_array_equal(np.asarray(step.mask), np.arange(step.lanes) < width)
        assert len(step.operand_slots) == len(groups) == rows.group_ptr[b + 1] - rows.group_ptr[b]
        for j, ((g, is_slice), slot) in enumerate(zip(groups, step.operand_slots)):
            buf = int(rows.group_buffer[rows.group_ptr[b] + j])
            assert step.operand_buffers[j] == buf
            assert bool(rows.group_slice[rows.group_ptr[b] + j]) == is_slice == (np.ndim(slot) == 0)
            length = step.lanes if segments is None else bucket(g.size)
            operands += 1
            if is_slice:
                assert int(slot) == g[0]
                need[buf] = max(need[buf], g[0] + length)
            else:
                np.testing.assert_array_equal(np.asarray(slot), np.r_[g, np.zeros(length - g.size, np.int32)])
                gathers += 1
                gathered_bytes += g.size * row_bytes[buf]
        if segments is None:
            assert step.segments is None
        else:
            eb_ = bucket(segments.size)
            np.testing.assert_array_equal(
                np.asarray(step.segments), np.r_[segments, np.full(eb_ - segments.size, step.lanes)]
            )
        t = graph.type_id(step.op)
        if graph.payloads[t] is None:
            assert step.payload is None
        else:
            prow = np.r_[graph.payload_row[lanes], np.full(step.lanes - width, graph.payload_row[lanes[0]])]
            jax.tree.map(
                lambda got, table: np.testing.assert_array_equal(np.asarray(got), np.asarray(table)[prow]),
                step.payload,
                graph.payloads[t],
            )
    np.testing.assert_array_equal(rows.need, need)
    assert (plan.num_operands, plan.num_gathers, plan.gathered_bytes) == (operands, gathers, gathered_bytes)
    assert all(cap >= n for cap, n in zip(plan.capacities, need))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 10_000),
    st.sampled_from(["agenda", "depth", "typewise"]),
    st.sampled_from(["dynet", "gather", "planned"]),
    st.sampled_from([1, 2, 4, 8, 512]),
    st.booleans(),
)
def test_fused_tables_agree_with_per_batch_definitions(seed, policy, layout_kind, max_lanes, fine_lanes):
    graph, ops, sched, layout = _setup(seed, policy, layout_kind)
    engine = eb.FusedEngine(ops, max_lanes=max_lanes, fine_lanes=fine_lanes)
    rung = (lambda n: int(fine_bucket_array(np.array([n]))[0])) if fine_lanes else bucket
    plan = engine.plan(PARAMS, graph, sched, layout)
    want = _batches_by_definition(graph, sched, plan, ops, allow_slices=layout != "gather")
    desc = np.asarray(plan.tables.desc)
    flat = np.asarray(plan.tables.flat_idx)
    keys = engine.branch_keys
    chunk = 0
    for (name, nodes), (lanes, first, groups, segments) in zip(sched.batches, want):
        pieces = (
            [(0, lanes.size)]
            if segments is not None
            else [(c0, min(max_lanes, lanes.size - c0)) for c0 in range(0, lanes.size, max_lanes)]
        )
        for c0, n in pieces:
            d = desc[chunk]
            op, out_b, in_bufs, has_payload, width, erows = keys[d[_BRANCH]][:6]
            assert op == name and width == rung(n) and out_b == plan.node_buffer[lanes[0]]
            assert (d[_OUT], d[_VALID]) == (first + c0, n)
            assert erows == (None if segments is None else bucket(segments.size))
            run = width if erows is None else erows
            assert len(in_bufs) == len(groups)
            for j, (g, _) in enumerate(groups):
                real = g if segments is not None else g[c0 : c0 + n]
                np.testing.assert_array_equal(flat[d[_IDX + j] : d[_IDX + j] + real.size], real)
                assert d[_IDX + j] + run <= flat.size
            if segments is not None:
                got = flat[d[_SEG] : d[_SEG] + erows]
                np.testing.assert_array_equal(got, np.r_[segments, np.full(erows - segments.size, width)])
            t = graph.type_id(name)
            assert has_payload == (graph.payloads[t] is not None)
            if has_payload:
                prow = graph.payload_row[lanes[c0 : c0 + n]]
                jax.tree.map(
                    lambda table, src: np.testing.assert_array_equal(
                        np.asarray(table)[d[_PAY] : d[_PAY] + n], np.asarray(src)[prow]
                    ),
                    plan.tables.payloads[name],
                    graph.payloads[t],
                )
            chunk += 1
    assert int(plan.tables.num_chunks) == chunk
    assert set(plan.tables.branches) == set(desc[:chunk, _BRANCH].tolist())


def test_a_layout_that_splits_a_batch_is_refused_naming_it():
    graph, ops, sched, _ = _setup(0, "agenda", "dynet")
    layout = eb.plan_layout(graph, sched, {name for name, op in ops.items() if op.variadic})
    buffer_of = eb.StepwiseEngine(ops).plan(PARAMS, graph, sched).node_buffer
    # the widest batch whose buffer holds other nodes too: its first node to the front, its second to the back
    b = next(
        b
        for b in np.argsort(-sched.widths, kind="stable")
        if np.sum(buffer_of == buffer_of[sched.batches[b][1][0]]) > sched.widths[b]
    )
    nodes = sched.batches[b][1]
    assert nodes.size >= 2
    position = np.array(layout.position)
    position[nodes[0]], position[nodes[1]] = position.min() - 1, position.max() + 1
    broken = dataclasses.replace(layout, position=position)
    with pytest.raises(ValueError, match=rf"batch {b} \({sched.batches[b][0]!r}\) in consecutive rows"):
        eb.StepwiseEngine(ops).plan(PARAMS, graph, sched, broken)
