"""Host-side planning cost per node, on graphs of growing size.

Builds large graphs with vectorised NumPy (random DAGs with ``K`` op types whose
arguments lie among the last ``W`` nodes, chains, one wide node) and times
each planning phase: construction (the builder, on the random DAG), the
schedule of every policy, the layout plan, and the stepwise and fused
engines' plans (tiny ops, hidden size 4: only the host work and small
transfers). Prints microseconds per node and the process's peak memory.

Usage::

  python tools/scale_probe.py                     # sizes 1e3, 1e4, 1e5
  python tools/scale_probe.py --max 1e6           # up to a million nodes
  python tools/scale_probe.py --kinds chain wide  # only some kinds (dag, chain, chain2, wide, fan)
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time

import numpy as np

import edbatch_jax as eb
from edbatch_jax.graph.csr import payload_rows

HIDDEN = 4
POLICIES = ("depth", "agenda", "typewise")


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


def builder_dag(graph: eb.Graph) -> float:
    """Seconds to rebuild ``graph`` node by node with :class:`eb.GraphBuilder`."""
    names = graph.op_types
    types = graph.node_type.tolist()
    ptr, idx = graph.arg_ptr.tolist(), graph.arg_idx.tolist()
    t0 = time.perf_counter()
    b = eb.GraphBuilder()
    ids = []
    for v in range(graph.num_nodes):
        ids.append(b.add(names[types[v]], *[ids[a] for a in idx[ptr[v] : ptr[v + 1]]]))
    b.build()
    return time.perf_counter() - t0


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
    """Peak resident memory of the process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def probe(kind: str, n: int, engines: bool, builder: bool) -> dict[str, float]:
    """Microseconds per node of every phase on one graph; also ``peak`` (MiB after it)."""
    make = {"dag": random_dag, "chain": chain, "chain2": lambda n: chain(n, 2), "wide": wide, "fan": fan_out}[kind]
    row: dict[str, float] = {}
    t0 = time.perf_counter()
    graph = make(n)
    row["make"] = time.perf_counter() - t0
    if builder and kind == "dag":
        row["builder"] = builder_dag(graph)
    scheds = {}
    for policy in POLICIES:
        t0 = time.perf_counter()
        scheds[policy] = eb.schedule(graph, policy)
        row[policy] = time.perf_counter() - t0
    sched = scheds["typewise"]
    if kind.startswith("chain"):
        assert sched.num_batches == eb.lower_bound(graph), "typewise misses the lower bound on a chain"
    t0 = time.perf_counter()
    layout = eb.plan_layout(graph, sched)
    row["layout"] = time.perf_counter() - t0
    if engines:
        params = {"w": np.zeros(HIDDEN, np.float32)}
        ops = ops_for(graph)
        for name, cls in (("stepwise", eb.StepwiseEngine), ("fused", eb.FusedEngine)):
            engine = cls(ops)
            t0 = time.perf_counter()
            engine.plan(params, graph, sched, layout)
            row[name] = time.perf_counter() - t0
    out = {k: v * 1e6 / n for k, v in row.items()}
    out["peak"] = peak_mib()
    del graph, scheds, sched, layout
    gc.collect()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=float, default=1e5, help="largest size (powers of ten from 1e3)")
    parser.add_argument("--kinds", nargs="+", default=["dag", "chain", "chain2", "wide", "fan"])
    parser.add_argument("--no-engines", action="store_true", help="skip the engines' plans")
    parser.add_argument("--no-builder", action="store_true", help="skip the GraphBuilder timing")
    args = parser.parse_args(argv)
    sizes = [int(10**e) for e in range(3, int(round(np.log10(args.max))) + 1)]
    cols = ["make", "builder", *POLICIES, "layout", "stepwise", "fused"]
    print(f"{'graph':8} {'nodes':>8} " + " ".join(f"{c:>9}" for c in cols) + f" {'peak MiB':>9}   (us per node)")
    for kind in args.kinds:
        for n in sizes:
            row = probe(kind, n, not args.no_engines, not args.no_builder)
            cells = " ".join(f"{row[c]:9.2f}" if c in row else f"{'-':>9}" for c in cols)
            print(f"{kind:8} {n:8d} {cells} {row['peak']:9.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
