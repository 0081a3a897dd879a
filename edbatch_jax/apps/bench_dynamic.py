"""The benchmark behind ``edbatch bench-dynamic``: the dynamic runtime against what a JAX user would write.

The workload is greedy decoding to chosen lengths
(:func:`edbatch_jax.dynamic.examples.decode_to_length`): an RNN decoder
whose every step's argmax decides the next token and whether to stop, with
the end token's logit shifted through the logits node's payload so that
instance ``i`` emits ``EOS`` exactly at its step ``lengths[i]`` (the other
tokens are the model's argmax). Three implementations compute the same
tokens:

* **runtime**: the program written for one instance, run by
  :class:`~edbatch_jax.dynamic.DynamicRuntime` (one round per step, all
  instances' pending calls batched per round), with its default direct
  rounds (batched calls level by level) and, as a second column, with every
  round as a graph on its engine (``direct_rounds=False``);
* **(a) one at a time**: a Python loop over instances and steps calling a
  ``jax.jit`` of the per-step function (step, logits, argmax) and reading the
  token back to decide whether to stop, as a JAX user writes it without
  batching;
* **(b) padded**: one ``jax.jit`` of a ``lax.scan`` over the distribution's
  maximum length for the whole batch, finished instances masked (their state
  and token frozen), the end-token shift computed from the same lengths: the
  same stopping semantics, with padded work.

Length distributions: ``low`` variance, uniform in 12 .. 20 steps; ``high``
variance, 1 + a geometric number of steps with mean 15, capped at 64 (most
instances short, a few long). (b) scans to the cap (20 or 64), a fixed length
that compiles once.

Timings: every implementation runs once to warm up (compile), then
``repeats`` times; the median is reported. XLA compilations during the timed
repeats are counted with a ``jax.monitoring`` listener (expected: 0), and the
runtime's own :attr:`~edbatch_jax.dynamic.RunStats.traces` too. The
runtime's time per round is split into host work (advancing instances, and
building, scheduling and planning the round's graph) and execution (states
read back included).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import edbatch_jax as eb
import edbatch_jax.dynamic as ebd
from edbatch_jax.apps.bench import xla_compiles
from edbatch_jax.dynamic import examples as ex

__all__ = [
    "DISTRIBUTIONS",
    "DynamicBenchRow",
    "format_dynamic_table",
    "one_at_a_time",
    "padded_decoder",
    "run_dynamic_benchmarks",
    "sample_lengths",
]

DISTRIBUTIONS = {"low": 20, "high": 64}
"""Length distribution name -> its largest length (the padded scan's length)."""


def sample_lengths(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """int64 ``[n]`` decoded lengths (steps, ``EOS`` included) of distribution ``kind`` (``low`` or ``high``)."""
    rng = np.random.default_rng(seed)
    if kind == "low":
        return rng.integers(12, DISTRIBUTIONS["low"] + 1, n)
    if kind == "high":
        return np.minimum(rng.geometric(1 / 15, n), DISTRIBUTIONS["high"])
    raise ValueError(f"unknown length distribution {kind!r}; known: {sorted(DISTRIBUTIONS)}")


# --------------------------------------------------------------------------- (a) one instance at a time
def one_at_a_time() -> Callable[[dict, Sequence[ex.SizedDecodeInstance]], list[tuple[int, ...]]]:
    """(a): a function ``(params, instances) -> chosen tokens per instance`` that decodes one instance after the
    other, one jitted step at a time, reading each token back to decide whether to stop."""
    encode = jax.jit(ex.decode_encode)

    @jax.jit
    def step(params, h, prev, shift):
        h = ex.decode_step(params, prev, h)
        return h, jnp.argmax(ex.decode_logits_shifted(params, shift, h))

    def decode(params, instances):
        out = []
        for inst in instances:
            h = encode(params, inst.prompt)
            chosen, prev, t = [], ex.BOS, 0
            while True:
                h, tok = step(params, h, np.int32(prev), ex.eos_shift(t, inst.length))
                tok = int(tok)
                chosen.append(tok)
                if tok == ex.EOS:
                    break
                prev, t = tok, t + 1
            out.append(tuple(chosen))
        return out

    return decode


# --------------------------------------------------------------------------- (b) padded
def padded_decoder(max_len: int) -> Callable[[dict, np.ndarray, np.ndarray], jax.Array]:
    """(b): a jitted ``(params, prompts int32 [B, P], lengths int32 [B]) -> tokens int32 [B, max_len]`` decoding
    the whole batch with one ``lax.scan`` of ``max_len`` steps; a finished instance keeps its state and emits -1."""

    @jax.jit
    def decode(params, prompts, lengths):
        h = jax.vmap(ex.decode_encode, in_axes=(None, 0))(params, prompts)
        b = prompts.shape[0]

        def body(carry, t):
            h, prev, done = carry
            shift = jnp.where(t == lengths - 1, ex.EOS_SHIFT, -ex.EOS_SHIFT).astype(jnp.float32)
            h_new = jax.vmap(ex.decode_step, in_axes=(None, 0, 0))(params, prev, h)
            logits = jax.vmap(ex.decode_logits_shifted, in_axes=(None, 0, 0))(params, shift, h_new)
            tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            out = jnp.where(done, -1, tok)
            h = jnp.where(done[:, None], h, h_new)
            prev = jnp.where(done, prev, tok)
            return (h, prev, done | (tok == ex.EOS)), out

        init = (h, jnp.full((b,), ex.BOS, jnp.int32), jnp.zeros((b,), bool))
        _, toks = jax.lax.scan(body, init, jnp.arange(max_len))
        return toks.T

    return decode


def _padded_tokens(tokens: np.ndarray) -> list[tuple[int, ...]]:
    """Chosen tokens per row of (b)'s output (up to the first -1)."""
    return [tuple(int(t) for t in row[row >= 0]) for row in np.asarray(tokens)]


# --------------------------------------------------------------------------- the benchmark
@dataclasses.dataclass(frozen=True)
class DynamicBenchRow:
    """One configuration's measurements (seconds are medians over the timed repeats).

    Attributes:
      instances, lengths, hidden: the configuration (``lengths``: the distribution's name).
      mean_len, max_len: of the sampled lengths; ``pad_len``: the padded scan's length.
      runtime_s, one_s, padded_s: seconds per run of the runtime, (a) and (b).
      graph_s: seconds per run of the runtime with every round as a graph on its engine
        (``direct_rounds=False``).
      rounds: the runtime's rounds; ``advance_s``, ``build_s``, ``execute_s``: its seconds per round.
      runtime_traces: programs the runtimes traced in the timed runs (engine and direct calls).
      compiles: XLA compilations during the timed runs of all three.
      same_tokens: whether all three chose the same tokens for every instance.
    """

    instances: int
    lengths: str
    hidden: int
    mean_len: float
    max_len: int
    pad_len: int
    runtime_s: float
    one_s: float
    padded_s: float
    graph_s: float
    rounds: int
    advance_s: float
    build_s: float
    execute_s: float
    runtime_traces: int
    compiles: int
    same_tokens: bool

    def rate(self, seconds: float) -> float:
        """Instances per second of a run taking ``seconds``."""
        return self.instances / seconds


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_dynamic_benchmarks(
    instances: Sequence[int] = (64, 256),
    lengths: Sequence[str] = ("low", "high"),
    hidden: int = 128,
    vocab: int = 16,
    repeats: int = 3,
    seed: int = 0,
    policy: str = "agenda",
    progress: Callable[[str], None] | None = None,
    engine: str = "stepwise",
) -> list[DynamicBenchRow]:
    """Measures the runtime, (a) and (b) on every (instances, length distribution); see the module docstring.

    One runtime (so one engine, whose compiled steps serve every configuration) and one (a) are shared across
    configurations; (b) is compiled once per (batch size, padded length). ``engine``: the runtime's engine,
    ``"stepwise"`` (one jitted call per batch) or ``"fused"`` (each round's schedule as one program).
    """
    if engine not in ("stepwise", "fused"):
        raise ValueError(f"engine must be 'stepwise' or 'fused', got {engine!r}")
    params = ex.decode_params(jax.random.PRNGKey(seed), vocab=vocab, hidden=hidden)
    make = eb.StepwiseEngine if engine == "stepwise" else eb.FusedEngine
    runtime = ebd.DynamicRuntime(ex.sized_decode_ops(), policy=policy, engine=make)
    graph_runtime = ebd.DynamicRuntime(ex.sized_decode_ops(), policy=policy, engine=make, direct_rounds=False)
    one = one_at_a_time()
    rows = []
    for n in instances:
        for kind in lengths:
            if progress:
                progress(f"{n} instances, {kind}-variance lengths")
            lens = sample_lengths(kind, n, seed)
            insts = ex.sized_decode_instances(lens, seed=seed, vocab=vocab)
            prompts = np.stack([i.prompt for i in insts])
            lens32 = lens.astype(np.int32)
            padded = padded_decoder(DISTRIBUTIONS[kind])

            def run_runtime(insts=insts):
                return runtime.run(ex.decode_to_length, insts, params)

            def run_graph(insts=insts):
                return graph_runtime.run(ex.decode_to_length, insts, params)

            def run_one(insts=insts):
                return one(params, insts)

            def run_padded(padded=padded, prompts=prompts, lens32=lens32):
                return _padded_tokens(jax.device_get(padded(params, prompts, lens32)))

            # compile everything first (the runtime twice: its second run meets the capacities the first grew)
            warm = [run_runtime(), run_runtime(), run_graph(), run_graph(), run_one(), run_padded()][1:]
            compiles0 = xla_compiles()
            rt_s, result = _median_time(run_runtime, repeats)
            graph_s, graph_out = _median_time(run_graph, repeats)
            one_s, one_out = _median_time(run_one, repeats)
            pad_s, pad_out = _median_time(run_padded, repeats)
            compiles = xla_compiles() - compiles0
            same = list(result.outputs) == one_out == pad_out == list(warm[0].outputs) == list(graph_out.outputs)
            same = same and all(len(c) == k and c[-1] == ex.EOS for c, k in zip(one_out, lens))
            st = result.stats
            r = st.num_rounds
            rows.append(
                DynamicBenchRow(
                    instances=n,
                    lengths=kind,
                    hidden=hidden,
                    mean_len=float(lens.mean()),
                    max_len=int(lens.max()),
                    pad_len=DISTRIBUTIONS[kind],
                    runtime_s=rt_s,
                    one_s=one_s,
                    padded_s=pad_s,
                    graph_s=graph_s,
                    rounds=r,
                    advance_s=st.advance_s / r,
                    build_s=st.build_s / r,
                    execute_s=st.execute_s / r,
                    runtime_traces=st.traces + graph_out.stats.traces,
                    compiles=compiles,
                    same_tokens=bool(same),
                )
            )
    return rows


def format_dynamic_table(rows: Sequence[DynamicBenchRow]) -> str:
    """The rows as a Markdown table (throughput in instances/s, times per round in ms)."""
    head = (
        "| instances | lengths (mean / max / padded) | hidden | runtime inst/s | graph rounds inst/s "
        "| (a) one at a time inst/s | (b) padded scan inst/s | runtime / (a) | runtime / (b) | rounds "
        "| host ms/round (advance + build) "
        "| execute ms/round | compilations after warm-up | same tokens |"
    )
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        host = r.advance_s + r.build_s
        lines.append(
            f"| {r.instances} | {r.lengths}: {r.mean_len:.1f} / {r.max_len} / {r.pad_len} | {r.hidden} "
            f"| {r.rate(r.runtime_s):,.0f} | {r.rate(r.graph_s):,.0f} | {r.rate(r.one_s):,.0f} "
            f"| {r.rate(r.padded_s):,.0f} "
            f"| {r.one_s / r.runtime_s:.1f}x | {r.padded_s / r.runtime_s:.2f}x | {r.rounds} "
            f"| {1e3 * host:.2f} ({1e3 * r.advance_s:.2f} + {1e3 * r.build_s:.2f}) | {1e3 * r.execute_s:.2f} "
            f"| {r.compiles} (runtime traces {r.runtime_traces}) | {'yes' if r.same_tokens else 'NO'} |"
        )
    return "\n".join(lines)
