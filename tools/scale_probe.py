"""Host-side planning cost per node, on graphs of growing size: scale curves in one command.

Families of graphs, each measured at growing sizes:

* ``dag``: one random DAG with 4 op types (type ``t`` has arity ``t % 4``;
  arguments among the last 50 nodes), 1e3 to ``--max`` nodes;
* ``lattice``: synthetic NER lattices of the ``lattice_lstm`` workload
  batched into one graph (about 159 nodes per lattice), 1e3 to ``--max`` nodes;
* ``treelstm``: mini-batches of 16 to 1,024 synthetic SST trees of the
  ``treelstm`` workload (hidden 64), with the throughput of a cached forward
  pass through the stepwise engine;
* stress kinds: ``ladder`` (``sqrt(n)`` chains of ``sqrt(n)`` nodes stepping
  together: many wide batches; up to ``--max``), and up to ``--stress-max``
  ``chain`` (a leaf and ``n - 1``
  nodes each reading the previous one), ``chain2`` (the same, two op types
  alternating), ``wide`` (one node reading ``n - 1`` leaves), ``fan`` (two
  chains, one reading a leaf shared by every step).

Phases, in microseconds per node: ``data`` (the generator: not the library),
``construct`` (the random DAG rebuilt node by node with :class:`eb.GraphBuilder`;
lattices and trees: the model's vectorised ``batch_graph``), the schedule of
the policies ``depth``, ``agenda``, ``typewise`` and ``fsm`` (lattice and
Tree-LSTM: the workload's shipped policy; random DAG: one policy learned once
by ``eb.learn_fsm`` on a 1,000-node DAG, 50 episodes), ``layout``
(``eb.plan_layout`` of the type-wise schedule), and the ``stepwise`` and
``fused`` engines' plans of that schedule and layout (random DAG and stress
kinds: tiny ops of hidden size 4; lattices: the model's ops at hidden 4;
trees: the model's ops at hidden 64).

Every size runs in a fresh subprocess that first runs the family's smallest
size once (imports, tracing and caches warm), then times each phase (best of
5 at 1e3 nodes, of 3 up to 1e4, once above). ``peak MB``: the highest
resident memory of the process while it ran the size's phases, sampled every
2 ms by a thread, less the resident memory at the start (after garbage
collection and ``malloc_trim``, so that reused heap shows): the memory the
size's generation and planning needed at their peak.

Usage::

  python tools/scale_probe.py                     # sizes 1e3, 1e4, 1e5
  python tools/scale_probe.py --max 1e6 --markdown docs/benchmarks_scale.md --plot docs/img/scale_planning.png
  python tools/scale_probe.py --kinds chain wide  # only some kinds (dag lattice treelstm ladder chain chain2 wide fan)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

import edbatch_jax as eb
from edbatch_jax.graph.csr import payload_rows

HIDDEN = 4
TREE_HIDDEN = 64
POLICIES = ("depth", "agenda", "typewise")
FAMILIES = ("dag", "lattice", "treelstm")
STRESS = ("ladder", "chain", "chain2", "wide", "fan")
TO_MAX = ("dag", "lattice", "ladder")  # the kinds measured up to --max (the other stress kinds: --stress-max)
KINDS = FAMILIES + STRESS
TREE_SIZES = (16, 64, 256, 1024)
NODES_PER_LATTICE = 158.8  # mean nodes of a synthetic lattice's graph (states, arcs, losses)
PLANNING = ("construct", "depth", "agenda", "typewise", "fsm", "layout", "stepwise", "fused")
COLUMNS = ("data", *PLANNING)
THROUGHPUT_REPEATS = 5


def _graph(node_type: np.ndarray, arity: np.ndarray, args: np.ndarray, op_types: tuple[str, ...]) -> eb.Graph:
    """An :class:`eb.Graph` from its arrays (no payloads, one instance)."""
    n = node_type.shape[0]
    return eb.Graph(
        node_type=node_type.astype(np.int32),
        arg_ptr=np.concatenate([[0], np.cumsum(arity, dtype=np.int64)]).astype(np.int32),
        arg_idx=args.astype(np.int32),
        instance=np.zeros(n, np.int32),
        payload_row=payload_rows(node_type.astype(np.int32), len(op_types)),
        payloads=(None,) * len(op_types),
        op_types=op_types,
        num_instances=1,
    )


def random_dag(n: int, num_types: int = 4, window: int = 50, seed: int = 0) -> eb.Graph:
    """``n`` nodes; type ``t`` has arity ``t % 4`` (type 0: leaves); arguments among the last ``window`` nodes."""
    rng = np.random.default_rng(seed)
    node_type = rng.integers(0, num_types, n)
    node_type[: min(n, 4)] = 0  # the first nodes have no earlier node to read
    arity = node_type % 4
    reader = np.repeat(np.arange(n), arity)
    back = rng.integers(1, window + 1, reader.shape[0])
    args = np.maximum(reader - back, 0)
    args = np.where(args < reader, args, 0)
    op_types = tuple(f"op{t}" for t in range(num_types))
    return _graph(node_type, arity, args, op_types)


def chain(n: int, num_types: int = 1) -> eb.Graph:
    """A leaf, then ``n - 1`` nodes each reading the previous one; their types cycle through ``num_types``."""
    node_type = np.zeros(n, np.int64)
    node_type[1:] = 1 + np.arange(n - 1) % num_types
    arity = (node_type > 0).astype(np.int64)
    args = np.arange(n - 1)
    op_types = ("op0",) + tuple(f"op{t + 1}" for t in range(num_types))
    return _graph(node_type, arity, args, op_types)


def wide(n: int) -> eb.Graph:
    """``n - 1`` leaves and one node reading all of them."""
    node_type = np.zeros(n, np.int64)
    node_type[-1] = 1
    arity = np.zeros(n, np.int64)
    arity[-1] = n - 1
    return _graph(node_type, arity, np.arange(n - 1), ("leaf", "sum"))


def fan_out(n: int) -> eb.Graph:
    """Two chains stepping together; one reads a fresh leaf per step, the other one shared leaf ``u`` (node 0).

    Every step is one batch whose second operand list holds ``u``: ``u`` lies in one operand set per step.
    """
    steps = max((n - 3) // 3, 1)
    i = np.arange(steps)
    node_type = np.zeros(3 + 3 * steps, np.int64)
    node_type[4::3] = node_type[5::3] = 1
    arity = 2 * node_type
    args = np.stack([1 + 3 * i, 3 + 3 * i, 2 + 3 * i, np.zeros_like(i)], axis=1).reshape(-1)
    return _graph(node_type, arity, args, ("leaf", "f"))


def ladder(n: int) -> eb.Graph:
    """About ``sqrt(n)`` chains of about ``sqrt(n)`` nodes stepping together: as many batches as their width."""
    width = max(1, int(round(math.sqrt(n))))
    n = width * max(1, n // width)
    v = np.arange(n)
    node_type = (v >= width).astype(np.int64)
    return _graph(node_type, node_type, np.arange(width, n) - width, ("leaf", "step"))


GENERATORS = {
    "dag": random_dag,
    "ladder": ladder,
    "chain": chain,
    "chain2": lambda n: chain(n, 2),
    "wide": wide,
    "fan": fan_out,
}


def builder_dag(graph: eb.Graph) -> eb.Graph:
    """``graph`` rebuilt node by node with :class:`eb.GraphBuilder`."""
    names = graph.op_types
    types = graph.node_type.tolist()
    ptr, idx = graph.arg_ptr.tolist(), graph.arg_idx.tolist()
    b = eb.GraphBuilder()
    ids = []
    for v in range(graph.num_nodes):
        ids.append(b.add(names[types[v]], *[ids[a] for a in idx[ptr[v] : ptr[v + 1]]]))
    return b.build()


def ops_for(graph: eb.Graph) -> dict[str, eb.Op]:
    """A tiny op per op type: fixed arity where all its nodes agree, else a variadic sum."""
    import jax.numpy as jnp

    ops = {}
    for t, name in enumerate(graph.op_types):
        arities = np.unique(graph.arity[graph.node_type == t])
        if arities.size == 1 and name != "sum":
            k = int(arities[0])
            ops[name] = eb.Op(lambda p, x, *xs: p["w"] + sum(xs, jnp.zeros(HIDDEN)), arity=k)
        else:
            ops[name] = eb.Op(lambda p, x, s: p["w"] + s, arity=None, aggregate="sum")
    return ops


def peak_mib() -> float:
    """Peak resident memory of the process so far, MiB (Linux: ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_bytes() -> int:
    """Current resident memory of the process (``/proc/self/statm``), bytes; 0 where there is none."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _trim() -> None:
    """Collects garbage and hands freed heap memory back to the system (glibc), so that reuse shows in the RSS."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class RssPeak:
    """The peak growth of the resident memory over its value at entry, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = 0

    def __enter__(self) -> RssPeak:
        import threading

        _trim()
        self.base = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes() - self.base)

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, _rss_bytes() - self.base)
        self._stop.set()
        self._thread.join()


def _best(fn, reps: int):
    """``(result, seconds)``: the fastest of ``reps`` calls (the last call's result)."""
    best, out = math.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _repeats(n: int) -> int:
    return 5 if n <= 2_000 else 3 if n <= 20_000 else 1


class _Family:
    """What one family needs across sizes in one process: workload, ops, parameters, FSM policy."""

    def __init__(self, kind: str, fsm_path: str | None):
        self.kind = kind
        self.work = self.policy = None
        if kind == "lattice":
            from edbatch_jax.zoo.workloads import load_workload

            self.work = load_workload("lattice_lstm", hidden=HIDDEN, num_train=4, num_held_out=4)
        elif kind == "treelstm":
            from edbatch_jax.zoo.workloads import load_workload

            self.work = load_workload("treelstm", hidden=TREE_HIDDEN, num_train=max(TREE_SIZES), num_held_out=4)
        if self.work is not None:
            import jax

            self.policy = self.work.resolve_policy("fsm")
            self.params = self.work.model.init(jax.random.PRNGKey(0))
            self.ops = self.work.model.ops
        else:
            self.params = {"w": np.zeros(HIDDEN, np.float32)}
            self.ops = None
            if kind == "dag" and fsm_path:
                self.policy = eb.FSMPolicy.load(fsm_path, ("op0", "op1", "op2", "op3"))

    def smallest(self) -> int:
        return TREE_SIZES[0] if self.kind == "treelstm" else 1000

    def make(self, size: int) -> tuple[eb.Graph, dict[str, float]]:
        """The graph of one size and the seconds of its ``data`` and ``construct`` phases."""
        times: dict[str, float] = {}
        reps = _repeats(size if self.kind != "treelstm" else 74 * size)  # a tree: about 74 nodes
        if self.kind == "lattice":
            from edbatch_jax.zoo.data.lattice import synthetic_lattices

            count = max(1, round(size / NODES_PER_LATTICE))
            lats, times["data"] = _best(lambda: synthetic_lattices(count, seed=0), reps)
            graph, times["construct"] = _best(lambda: self.work.batch_graph(lats), reps)
        elif self.kind == "treelstm":
            trees = self.work.minibatch_instances("train", size, 1)[0]
            graph, times["construct"] = _best(lambda: self.work.batch_graph(trees), reps)
        else:
            graph, times["data"] = _best(lambda: GENERATORS[self.kind](size), reps)
            if self.kind == "dag":
                _, times["construct"] = _best(lambda: builder_dag(graph), reps)
        return graph, times

    def measure(self, size: int, throughput: bool = False) -> dict:
        """One size: ``nodes``, ``us`` (microseconds per node by phase), ``peak_mb`` (peak growth of the RSS)."""
        with RssPeak() as memory:
            graph, scheds, sched, layout, engines, step_plan, times = self._phases(size)
        n = graph.num_nodes
        row = {
            "kind": self.kind,
            "size": size,
            "nodes": n,
            "batches": {k: int(s.num_batches) for k, s in scheds.items()},
            "us": {k: v * 1e6 / n for k, v in times.items()},
            "peak_mb": memory.peak / 1e6,
        }
        if throughput:
            row["trees_per_s"] = self.throughput(engines["stepwise"], step_plan, size)
        del graph, scheds, sched, layout, engines, step_plan
        gc.collect()
        return row

    def _phases(self, size: int):
        graph, times = self.make(size)
        n = graph.num_nodes
        reps = _repeats(n)
        scheds = {}
        for policy in POLICIES:
            scheds[policy], times[policy] = _best(lambda: eb.schedule(graph, policy), reps)
        if self.policy is not None:
            scheds["fsm"], times["fsm"] = _best(lambda: eb.schedule(graph, self.policy), reps)
        sched = scheds["typewise"]
        if self.kind.startswith("chain"):
            assert sched.num_batches == eb.lower_bound(graph), "typewise misses the lower bound on a chain"
        layout, times["layout"] = _best(lambda: eb.plan_layout(graph, sched), reps)
        ops = self.ops or ops_for(graph)
        engines = {}
        for name, cls in (("stepwise", eb.StepwiseEngine), ("fused", eb.FusedEngine)):

            def plan(cls=cls, name=name):
                engines[name] = cls(ops)  # a fresh engine: its plan cache is empty
                return engines[name].plan(self.params, graph, sched, layout)

            plan_out, times[name] = _best(plan, reps)
            if name == "stepwise":
                step_plan = plan_out
        return graph, scheds, sched, layout, engines, step_plan, times

    def throughput(self, engine, plan, trees: int) -> float:
        """Trees per second of ``engine.execute(plan)`` (cached plan, compiled), the median of a few runs."""
        import jax

        jax.block_until_ready(engine.execute(plan, self.params))  # compiles
        jax.block_until_ready(engine.execute(plan, self.params))
        times = []
        for _ in range(THROUGHPUT_REPEATS):
            t0 = time.perf_counter()
            jax.block_until_ready(engine.execute(plan, self.params))
            times.append(time.perf_counter() - t0)
        return trees / float(np.median(times))


def run_one(kind: str, size: int, fsm_path: str | None) -> dict:
    """One size of one family, after the family's smallest size once (warm-up, not reported)."""
    family = _Family(kind, fsm_path)
    family.measure(family.smallest())
    return family.measure(size, throughput=kind == "treelstm")


def learn_dag_policy(path: str) -> str | None:
    """Learns the random DAG's FSM policy (1,000 nodes, 50 episodes), saves it to ``path``; ``None`` on failure."""
    try:
        t0 = time.perf_counter()
        import inspect

        # the learned table itself, even where typewise alone schedules the training graph as well (guard)
        guard = {"guard": False} if "guard" in inspect.signature(eb.learn_fsm).parameters else {}
        policy = eb.learn_fsm(random_dag(1000, seed=1), max_episodes=50, **guard)
        policy.save(path)
        print(f"# learned the random DAG's FSM policy in {time.perf_counter() - t0:.1f} s: {policy}", flush=True)
        return path
    except Exception as e:  # the probe reports the other phases without it
        print(f"# no FSM policy for the random DAG: {type(e).__name__}: {e}", flush=True)
        return None


def sizes_for(kind: str, max_nodes: float, stress_max: float) -> list[int]:
    if kind == "treelstm":
        return list(TREE_SIZES)
    top = max_nodes if kind in TO_MAX else min(max_nodes, stress_max)
    return [int(10**e) for e in range(3, int(round(math.log10(top))) + 1)]


def run_size(kind: str, size: int, fsm_path: str | None, timeout: float) -> dict:
    """:func:`run_one` in a fresh subprocess (so that its peak memory is its own); ``wall_s`` added."""
    cmd = [sys.executable, os.path.abspath(__file__), "--one", kind, str(size)]
    if fsm_path:
        cmd += ["--fsm", fsm_path]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "size": size, "error": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"kind": kind, "size": size, "error": f"exit {proc.returncode}: {tail}", "wall_s": wall}
    row = json.loads(lines[-1])
    row["wall_s"] = wall
    return row


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def _cols(rows: list[dict]) -> list[str]:
    return [c for c in COLUMNS if any(c in r.get("us", {}) for r in rows)]


def table(kind: str, rows: list[dict]) -> str:
    """A markdown table of one family's rows."""
    cols = _cols(rows)
    size_name = {"treelstm": "trees", "lattice": "lattices"}.get(kind, "size")
    tput = kind == "treelstm"
    head = [size_name, "nodes", *cols, "peak MB", "bytes/node", *(["trees/s"] if tput else []), "wall s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        size = max(1, round(r["size"] / NODES_PER_LATTICE)) if kind == "lattice" else r["size"]
        if "error" in r:
            out.append(f"| {size:,} | - | " + " | ".join(["-"] * (len(head) - 3)) + f" | {r['error']} |")
            continue
        cells = [f"{size:,}", f"{r['nodes']:,}"] + [_fmt(r["us"][c]) if c in r["us"] else "-" for c in cols]
        cells += [f"{r['peak_mb']:.0f}", f"{r['peak_mb'] * 1e6 / r['nodes']:.0f}"]
        if tput:
            cells.append(f"{r['trees_per_s']:.0f}")
        cells.append(f"{r['wall_s']:.0f}")
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def ratios(rows: list[dict]) -> tuple[dict, dict | None, dict | None]:
    """Per phase, the per-node cost at the largest size over the smallest's; and those two rows."""
    ok = [r for r in rows if "error" not in r]
    if len(ok) < 2:
        return {}, None, None
    first, last = ok[0], ok[-1]
    return ({c: last["us"][c] / first["us"][c] for c in PLANNING if c in first["us"] and c in last["us"]}, first, last)


def markdown(results: dict[str, list[dict]], command: str, wall: float, plot: str | None, markdown_path: str) -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import jax

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        "# Planning at scale",
        "",
        "Host-side cost per node of each planning phase, on graphs from a thousand to",
        "a million nodes, and the peak memory it takes; produced by one command:",
        "",
        "```",
        command,
        "```",
        "",
        f"Machine: {cores} CPU cores ({cpu}), shared with other work; Python {platform.python_version()},",
        f"NumPy {np.__version__}, JAX {jax.__version__} on CPU. The whole command took {wall / 60:.1f} minutes.",
        "",
        "How it is measured (`tools/scale_probe.py`):",
        "",
        "* Every size runs in a fresh subprocess that first runs its family's smallest",
        "  size once (imports, JAX tracing and caches warm), then times each phase:",
        "  the best of 5 runs at about 1e3 nodes, of 3 up to 1e4, one run above.",
        "* Phases, in microseconds per node: `data` (the synthetic generator, not the",
        "  library), `construct` (random DAG: rebuilt node by node with",
        "  `eb.GraphBuilder`; lattices and trees: the model's vectorised `batch_graph`),",
        "  the schedules of `depth`, `agenda`, `typewise` and `fsm` (lattices and trees:",
        "  the workload's shipped policy; random DAG: one policy learned once by",
        "  `eb.learn_fsm` on a 1,000-node DAG with 50 episodes, its learned table kept",
        "  (`guard=False`), applied to every size),",
        "  `layout` (`eb.plan_layout` of the type-wise schedule) and the `stepwise` and",
        "  `fused` engines' plans of that schedule and layout (a fresh engine each run;",
        "  random DAG and stress graphs: tiny ops of hidden size 4; lattices: the",
        "  Lattice-LSTM's ops at hidden 4; trees: the Tree-LSTM's at hidden 64).",
        "* `peak MB`: the highest resident memory of the subprocess while it generated,",
        "  built, scheduled, laid out and planned the size (sampled every 2 ms by a",
        "  thread; throughput runs excluded), less its resident memory just before",
        "  (after garbage collection and glibc's `malloc_trim`, so that reused heap",
        "  counts): the memory those phases needed at their peak, graph and data",
        "  included. It is coarse (pages, allocator pools, JAX's tracing of the ops):",
        "  read `bytes/node` at 1e5 nodes and above.",
        "* `trees/s` (Tree-LSTM): trees per second of a cached forward pass",
        "  (`StepwiseEngine.execute` of the plan above, compiled, two warm-up runs),",
        f"  the median of {THROUGHPUT_REPEATS} runs, hidden {TREE_HIDDEN}.",
        "* `wall s`: the subprocess's wall time, warm-up and repeats included.",
        "",
    ]
    if plot:
        rel = os.path.relpath(os.path.abspath(plot), os.path.dirname(os.path.abspath(markdown_path)))
        lines += [f"![microseconds per node of each phase against nodes]({rel})", ""]
    titles = {
        "dag": "Random DAG (4 op types, arguments among the last 50 nodes, one instance)",
        "lattice": "Lattices (`lattice_lstm`: synthetic NER lattices, about 159 nodes each, batched)",
        "treelstm": f"Tree-LSTM (`treelstm`: synthetic SST trees, hidden {TREE_HIDDEN}, one mini-batch)",
    }
    verdict = ["## Within 2x of the smallest size's cost per node?", ""]
    verdict += [
        "The per-node cost at the largest size measured over that at the smallest, per planning",
        "phase (`data` is the generator and left out). At most 2: within 2x. Below the table,",
        "phases whose per-node cost still rose by over 1.3x in the last step are named too.",
        "",
        "| family | from | to | " + " | ".join(PLANNING) + " |",
        "|" + "---|" * (3 + len(PLANNING)),
    ]
    summary = []
    for kind, rows in results.items():
        r, first, last = ratios(rows)
        if not r:
            continue
        verdict.append(
            f"| {kind} | {first['nodes']:,} | {last['nodes']:,} | "
            + " | ".join(f"{r[c]:.2f}" + ("" if r[c] <= 2 else " **over**") if c in r else "-" for c in PLANNING)
            + " |"
        )
        over = [f"`{c}` ({r[c]:.2f}x)" for c in PLANNING if c in r and r[c] > 2]
        ok = [x for x in rows if "error" not in x]
        prev = ok[-2]
        rising = [
            f"`{c}` ({last['us'][c] / prev['us'][c]:.2f}x)"
            for c in PLANNING
            if c in r and c in prev["us"] and last["us"][c] > 1.3 * prev["us"][c]
        ]
        summary.append(
            f"* {kind}, {first['nodes']:,} to {last['nodes']:,} nodes: "
            + (f"over 2x: {', '.join(over)}." if over else "every phase within 2x.")
            + (
                f" Rising by over 1.3x in the last step ({prev['nodes']:,} to {last['nodes']:,}): {', '.join(rising)}."
                if rising
                else ""
            )
        )
    lines += verdict + [""] + summary + [""]
    for kind in FAMILIES:
        if kind in results:
            lines += [f"## {titles[kind]}", "", table(kind, results[kind]), ""]
            failed = [r for r in results[kind] if "error" in r]
            if failed:
                lines += [f"Sizes that did not finish: {', '.join(str(r['size']) for r in failed)}.", ""]
    stress = [k for k in STRESS if k in results]
    if stress:
        lines += [
            "## Stress graphs",
            "",
            "A ladder (`ladder`: about `sqrt(n)` chains of about `sqrt(n)` nodes stepping together,",
            "so that the graph has as many batches as they are wide: up to `--max`), and up to",
            "`--stress-max`: chains (`chain`: one op type after the leaf; `chain2`: two alternating),",
            "one node reading all the others (`wide`: a node with `n - 1` arguments),",
            "two chains of which one reads one shared leaf at every step (`fan`).",
            "Tiny ops of hidden size 4.",
            "",
        ]
        for kind in stress:
            lines += [f"### {kind}", "", table(kind, results[kind]), ""]
    return "\n".join(lines).rstrip()


def plot_curves(results: dict[str, list[dict]], path: str) -> None:
    """Microseconds per node of each phase against nodes (log-log), one panel per family; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in results if any("error" not in r for r in results[k])]
    cols = min(len(kinds), 4)
    nrows = math.ceil(len(kinds) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows + 0.6), squeeze=False)
    colors = dict(zip(COLUMNS, plt.get_cmap("tab10").colors, strict=False))  # one color per phase everywhere
    lines = {}
    for ax, kind in zip(axes.flat, kinds, strict=False):
        rows = [r for r in results[kind] if "error" not in r]
        nodes = [r["nodes"] for r in rows]
        for c in _cols(rows):
            ys = [r["us"].get(c, np.nan) for r in rows]
            style = {"ls": "--" if c == "data" else "-", "color": colors[c]}
            (lines[c],) = ax.plot(nodes, ys, marker="o", ms=3, label=c, **style)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(kind)
        ax.set_xlabel("nodes")
        ax.set_ylabel("us per node")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(kinds) :]:
        ax.set_visible(False)
    order = [c for c in COLUMNS if c in lines]
    fig.legend([lines[c] for c in order], order, loc="upper center", ncol=len(order), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".scale-", suffix=".png", dir=os.path.dirname(path))
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


def _print_row(row: dict, cols: list[str]) -> None:
    if "error" in row:
        print(f"{row['kind']:8} {row['size']:8d} {row['error']}", flush=True)
        return
    cells = " ".join(f"{row['us'][c]:9.2f}" if c in row["us"] else f"{'-':>9}" for c in cols)
    extra = f" {row['trees_per_s']:9.0f} trees/s" if "trees_per_s" in row else ""
    print(
        f"{row['kind']:8} {row['nodes']:8d} {cells} {row['peak_mb']:8.0f} "
        f"{row['peak_mb'] * 1e6 / row['nodes']:8.0f} {row['wall_s']:7.1f}{extra}",
        flush=True,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=float, default=1e5, help="largest size of dag, lattice, ladder (powers of ten)")
    parser.add_argument("--stress-max", type=float, default=1e5, help="largest size of chain, chain2, wide, fan")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--markdown", help="write the tables to this markdown file (atomically)")
    parser.add_argument("--plot", help="write the curves to this PNG file (atomically)")
    parser.add_argument("--json", help="write the rows to this JSON file")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed to one size")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--fsm", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.fsm)), flush=True)
        return
    t_start = time.perf_counter()
    given = sys.argv[1:] if argv is None else argv
    command = "python tools/scale_probe.py " + " ".join(shlex.quote(a) for a in given)
    with tempfile.TemporaryDirectory(prefix="scale-probe-") as tmp:
        fsm_path = learn_dag_policy(os.path.join(tmp, "dag_fsm.json")) if "dag" in args.kinds else None
        cols = list(COLUMNS)
        print(
            f"{'graph':8} {'nodes':>8} " + " ".join(f"{c:>9}" for c in cols) + f" {'peak MB':>8} {'B/node':>8} "
            f"{'wall s':>7}   (us per node)",
            flush=True,
        )
        results: dict[str, list[dict]] = {}
        for kind in args.kinds:
            results[kind] = []
            for size in sizes_for(kind, args.max, args.stress_max):
                row = run_size(kind, size, fsm_path, args.timeout)
                results[kind].append(row)
                _print_row(row, cols)
                if "error" in row:
                    break  # larger sizes would fail or time out too
    wall = time.perf_counter() - t_start
    print(f"# total wall time {wall:.0f} s", flush=True)
    for kind, rows in results.items():
        r, first, last = ratios(rows)
        if r:
            print(f"# {kind} {first['nodes']}->{last['nodes']}: " + " ".join(f"{c}={v:.2f}" for c, v in r.items()))
    if args.json:
        from edbatch_jax.io import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=1))
    if args.plot:
        plot_curves(results, args.plot)
    if args.markdown:
        from edbatch_jax.io import write_text_atomic

        write_text_atomic(args.markdown, markdown(results, command, wall, args.plot, args.markdown))


if __name__ == "__main__":
    sys.exit(main())
