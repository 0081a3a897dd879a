"""The program workload: batched == unbatched == an independent plain-JAX implementation; reader, generator.

Values and gradients under the agenda and typewise policies, with and
without the PQ-tree layout, in both engines (each value of each once), on
programs that use one kind of every cell form (constant and payload leaves,
unary with and without payload, binary, ternary, variadic with each
aggregate, with and without payload); all 48 kinds at once in the stepwise
engine against the plain implementation. The interpreter against a
recursive one written here; the reader's errors; a short training run.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import edbatch_jax as eb
from edbatch_jax.training import Trainer, make_minibatch, root_loss_nodes
from edbatch_jax.zoo.data.programs import (
    KINDS,
    VAR_VALUES,
    ProgramFileError,
    ProgramTree,
    evaluate_programs,
    format_program,
    parse_program,
    read_programs,
    synthetic_programs,
)
from edbatch_jax.zoo.models.program import ProgramModel
from edbatch_jax.zoo.workloads import load_workload

# one kind of every cell form: constant leaf, payload leaves, unary (with and without payload), binary,
# ternary, variadic summed (with payload), maximum (max), all (mean); a one-leaf program
FORMS = [
    "(call.1 (add 3 x) (attr.4 (neg y)) (maximum 2 true (if 1 a 5)))",
    "(all (add (attr.0 7) b) (call.9 4))",
    "(maximum (neg (add z 9)) (if true 2 (call.5 1 2 3 4 5 6)) (all 1 0 c))",
    "(add (neg 4) (if (attr.3 true) 8 (maximum 0)))",
    "x",
]
# every one of the 48 kinds
ALL_KINDS = [
    "(call.3 (add 1 x) (sub (neg 2) (not 0)) (mul (inv 4) (pos y)) (div 7 (succ 2)) (mod 9 (pred 3)) (pow 2 (square 3)))",  # noqa: E501
    "(if (eq (attr.2 a) (double 4)) (clamp (half 9) (parity 5) (truth 7)) (count (ne 1 2) (lt 3 4) (le 5 5) (gt 6 1)))",
    "(maximum (and true 3) (or false 4) (bitand 6 3) (bitor 1 2) (bitxor 5 3) (lshift 1 3))",
    "(ret (expr (sum (rshift 8 2) (prod 2 3 none) (all 1 2) (any 0 0 1) (minimum 4 z (ge 7 0)))))",
]
TOL = dict(rtol=2e-4, atol=2e-5)


# ---------------------------------------------------------------------------
# Independent references: a recursive interpreter and the model's equations in plain JAX
# ---------------------------------------------------------------------------


def _recursive_value(p: ProgramTree, k: int) -> int:
    """The value of node ``k`` by recursion over the tree, Python integers only."""
    name = KINDS[p.kinds[k]]
    args = [_recursive_value(p, int(c)) for c in p.child_idx[p.child_ptr[k] : p.child_ptr[k + 1]]]
    pay = int(p.payloads[k])
    a, b, c = (args + [0, 0, 0])[:3]
    table = {
        "num": lambda: pay,
        "var": lambda: int(VAR_VALUES[pay]),
        "true": lambda: 1,
        "false": lambda: 0,
        "none": lambda: 0,
        "attr": lambda: a + pay,
        "expr": lambda: a,
        "ret": lambda: a,
        "pos": lambda: a,
        "truth": lambda: a != 0,
        "double": lambda: 2 * a,
        "not": lambda: a == 0,
        "neg": lambda: -a,
        "succ": lambda: a + 1,
        "pred": lambda: a - 1,
        "parity": lambda: a % 2,
        "square": lambda: a * a,
        "half": lambda: a // 2,
        "inv": lambda: 9 - a,
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "div": lambda: a // b if b else 0,
        "mod": lambda: a % b if b else 0,
        "pow": lambda: a**b,
        "eq": lambda: a == b,
        "ne": lambda: a != b,
        "lt": lambda: a < b,
        "le": lambda: a <= b,
        "gt": lambda: a > b,
        "ge": lambda: a >= b,
        "and": lambda: a and b,
        "or": lambda: a or b,
        "bitand": lambda: a & b,
        "bitor": lambda: a | b,
        "bitxor": lambda: a ^ b,
        "lshift": lambda: a << b,
        "rshift": lambda: a >> b,
        "if": lambda: b if a else c,
        "clamp": lambda: min(max(a, b), c),
        "call": lambda: pay + sum(args),
        "count": lambda: len(args),
        "maximum": lambda: max(args),
        "minimum": lambda: min(args),
        "sum": lambda: sum(args),
        "prod": lambda: int(np.prod(args)),
        "all": lambda: all(args),
        "any": lambda: any(args),
    }
    return int(table[name]()) % 10


REDUCE = {"maximum": jnp.max, "minimum": jnp.max, "all": jnp.mean, "any": jnp.mean}


def plain_program_loss(params, p: ProgramTree) -> jax.Array:
    """The root's cross-entropy loss of one program by the model's equations, in plain JAX on the raw parameters.

    Shares no code with the library.
    """
    dense = lambda layer, x: x @ layer["kernel"] + layer["bias"]
    h = []
    for k in range(p.num_nodes):
        name = KINDS[p.kinds[k]]
        cell = params[name]
        kids = [h[int(c)] for c in p.child_idx[p.child_ptr[k] : p.child_ptr[k + 1]]]
        if "h0" in cell:
            h.append(jnp.tanh(cell["h0"]))
            continue
        parts = [cell["embed"]["embedding"][p.payloads[k]]] if "embed" in cell else []
        if "message" in cell:  # variadic: messages, reduced
            m = REDUCE.get(name, jnp.sum)(jnp.stack([jnp.tanh(dense(cell["message"], x)) for x in kids]), axis=0)
            x, carry = jnp.concatenate(parts + [m]), jnp.tanh(m)
        else:
            x = jnp.concatenate(parts + kids)
            carry = sum(kids) / len(kids) if kids else jnp.zeros_like(parts[0])
        z, u = jnp.split(dense(cell["gates"], x), 2)
        h.append(jax.nn.sigmoid(z) * jnp.tanh(u) + (1 - jax.nn.sigmoid(z)) * carry)
    logits = dense(params["loss"]["out"], h[-1])
    return jax.nn.logsumexp(logits) - logits[p.label]


def _plain_total(params, programs):
    return sum(plain_program_loss(params, p) for p in programs)


# ---------------------------------------------------------------------------
# Data: generator, interpreter, text format, reader
# ---------------------------------------------------------------------------


def test_synthetic_programs_use_40_kinds_with_skewed_frequencies():
    programs = synthetic_programs(200, seed=0)
    kinds = np.concatenate([p.kinds for p in programs])
    counts = np.bincount(kinds, minlength=len(KINDS))
    assert len(KINDS) == 48 and np.count_nonzero(counts) >= 40
    assert counts[KINDS.index("var")] > 5 * counts[KINDS.index("true")]  # Zipf-like: names dominate
    assert counts[KINDS.index("attr")] > 5 * counts[KINDS.index("bitxor")]
    arity = np.concatenate([p.num_children for p in programs])
    assert arity.max() == 6 and {0, 1, 2, 3}.issubset(set(arity.tolist()))
    assert len({p.label for p in programs}) == 10
    again = synthetic_programs(200, seed=0)
    assert all(format_program(a) == format_program(b) for a, b in zip(programs, again))


def test_interpreter_matches_a_recursive_one_and_text_round_trips():
    programs = synthetic_programs(300, seed=5) + [parse_program(line) for line in FORMS + ALL_KINDS]
    values = evaluate_programs(programs)
    for p, v in zip(programs, values):
        assert v.tolist() == [_recursive_value(p, k) for k in range(p.num_nodes)]
        assert p.label == v[-1]
        q = parse_program(format_program(p))
        assert np.array_equal(q.kinds, p.kinds) and np.array_equal(q.payloads, p.payloads)
        assert np.array_equal(q.child_idx, p.child_idx) and q.label == p.label
    assert parse_program("(add 3 x)").label == (3 + VAR_VALUES[23]) % 10
    assert parse_program("4 (add 3 x)").label == 4  # a given label is kept


def test_reader_reads_a_good_file(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("# two programs\n5 (call.3 1 1)\n\n(if (lt 2 7) (succ 8) none)\n")
    first, second = read_programs(path)
    assert first.label == 5 and [KINDS[k] for k in first.kinds] == ["num", "num", "call"]
    assert second.label == 9 and second.num_nodes == 7
    assert read_programs(path, limit=1)[0].label == 5
    (tmp_path / "dev.txt").write_text("(neg 3)\n")
    wl = load_workload("program", data=str(tmp_path), hidden=4)
    assert [len(wl.train), len(wl.dev), wl.test] == [2, 1, None] and wl.source == "programs train.txt/dev.txt"


def test_malformed_program_trees_are_refused():
    fields = dict(kinds=[1, 1, KINDS.index("mod")], payloads=[3, 4, -1], child_ptr=[0, 0, 0, 2], child_idx=[0, 1])
    ProgramTree(**{k: np.array(v) for k, v in fields.items()}, label=3)
    for bad, match in [
        (dict(child_ptr=[0, 0, 0, 1], child_idx=[0]), "node 2 \\(mod\\) has 1 children, expected 2"),
        (dict(payloads=[3, 4, 0]), "node 2 \\(mod\\) has payload 0"),
        (dict(payloads=[3, 10, -1]), "node 1 \\(num\\) has payload 10"),
        (dict(child_idx=[0, 0]), "node 0 is a child 2 times"),
    ]:
        with pytest.raises(ValueError, match=match):
            ProgramTree(**{k: np.array(v) for k, v in {**fields, **bad}.items()}, label=3)


@pytest.mark.parametrize(
    "line, match",
    [
        ("(frob 1 2)", "unknown node kind 'frob'"),
        ("(add 1 q1)", "unknown leaf 'q1'"),
        ("(add 1)", "add takes 2 arguments, got 1"),
        ("(sum 1 2 3 4 5 6 7)", "sum takes 1 to 6 arguments, got 7"),
        ("(attr 3)", r"attr needs a payload: attr\.k with k in 0\.\.9"),
        ("(add 1 (neg 2)", r"unbalanced parentheses: 1 unclosed '\('"),
        ("(add 1 2))", r"unexpected '\)' after the end of the program"),
        ("12 (add 1 2)", r"expected a label \(an integer 0\.\.9\)"),
        ("x (add 1 2)", r"expected a label \(an integer 0\.\.9\)"),
    ],
)
def test_reader_names_file_line_and_what_was_expected(tmp_path, line, match):
    path = tmp_path / "bad.txt"
    path.write_text(f"(add 1 2)\n\n{line}\n")
    with pytest.raises(ProgramFileError, match=f"^{path}:3: {match}") as info:
        read_programs(path)
    assert isinstance(info.value, eb.EdbatchError)


# ---------------------------------------------------------------------------
# The model: graphs, batched == unbatched == plain JAX
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup():
    programs = [parse_program(line) for line in FORMS]
    model = ProgramModel(hidden=4)
    params = model.init(jax.random.PRNGKey(1))
    graph = model.batch_graph(programs)
    return programs, model, params, graph


@pytest.fixture(scope="module")
def reference(setup):
    """Loss and gradients of the plain-JAX implementation and of unbatched execution (both jitted)."""
    programs, model, params, graph = setup
    plain = jax.value_and_grad(lambda p: _plain_total(p, programs))(params)  # eager: tiny arrays, nothing compiles
    losses = graph.nodes_of_type("loss")
    unbatched = jax.jit(
        jax.value_and_grad(lambda p: eb.run_unbatched(model.ops, p, graph, outputs=losses)["loss"].sum())
    )
    return plain, unbatched(params)


@pytest.fixture(scope="module")
def engines(setup):
    """One engine of each kind for the module (its compiled programs serve every schedule of the graph)."""
    ops = setup[1].ops
    return {"stepwise": eb.StepwiseEngine(ops), "fused": eb.FusedEngine(ops, max_lanes=4)}


def test_graph_matches_the_programs(setup):
    programs, model, params, graph = setup
    assert graph.op_types == (*KINDS, "loss") and graph.num_instances == len(programs)
    assert graph.num_nodes == sum(p.num_nodes + 1 for p in programs)
    roots = root_loss_nodes(graph)
    assert np.array_equal(roots, np.cumsum([p.num_nodes + 1 for p in programs]) - 1)
    assert [KINDS[t] for t in graph.node_type[graph.arg_idx[graph.arg_ptr[roots]]]] == [
        "call",
        "all",
        "maximum",
        "add",
        "var",
    ]
    want = np.concatenate([p.num_children for p in programs])
    assert np.array_equal(np.delete(graph.arity, roots), want)


# every engine, policy and layout at least once (the combinations are covered by the engine tests; here: the cells)
@pytest.mark.parametrize("engine_name, policy, layout", [("stepwise", "agenda", False), ("fused", "typewise", True)])
def test_batched_equals_unbatched_equals_plain_jax(setup, reference, engines, engine_name, policy, layout):
    programs, model, params, graph = setup
    (vp, gp), (vu, gu) = reference
    sched = eb.schedule(graph, policy)
    plan_layout = eb.plan_layout(graph, sched) if layout else None
    losses = graph.nodes_of_type("loss")
    engine = engines[engine_name]
    batched = lambda p: engine.run(p, graph, sched, outputs=losses, layout=plan_layout)["loss"].sum()
    vb, gb = jax.value_and_grad(batched)(params)
    np.testing.assert_allclose(vb, vp, rtol=1e-5)
    np.testing.assert_allclose(vu, vp, rtol=1e-5)
    for g in (gb, gu):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), g, gp)


def test_every_kind_batched_equals_plain_jax():
    """All 48 kinds' cells batched (values: the gradients of every cell form are checked above)."""
    programs = [parse_program(line) for line in ALL_KINDS]
    assert len({k for p in programs for k in p.kinds.tolist()}) == len(KINDS)
    model = ProgramModel(hidden=3)
    params = model.init(jax.random.PRNGKey(2))
    graph = model.batch_graph(programs)
    losses = graph.nodes_of_type("loss")
    engine = eb.StepwiseEngine(model.ops)
    sched = eb.schedule(graph, "typewise")
    got = jax.jit(lambda p: engine.run(p, graph, sched, outputs=losses)["loss"])(params)
    want = jnp.stack([plain_program_loss(params, p) for p in programs])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_training_steps_reduce_the_loss(setup, engines):
    programs, model, params, graph = setup
    batch = make_minibatch(graph, "agenda")  # the schedule of the stepwise check above: its programs serve
    trainer = Trainer(engines["stepwise"], params, optax.adam(0.1))
    losses = [trainer.step(batch) for _ in range(6)]
    assert losses[-1] < 0.7 * losses[0]


def test_workload_loads_synthetic_programs_and_ships_no_fsm_policy():
    wl = load_workload("program", hidden=4, num_train=64, num_held_out=32)
    assert len(wl.op_types) == 49 and len(wl.train) == 64 and len(wl.dev) + len(wl.test) == 32
    graph = wl.minibatches("train", count=1)[0]
    assert graph.num_instances == wl.batch_size
    assert wl.resolve_policy("fsm") == "typewise"  # a learned FSM does worse on held-out programs: the heuristic
    assert eb.schedule(graph, "typewise").num_batches <= eb.schedule(graph, "agenda").num_batches
