"""Learned FSM policy over many op types: learn time, table size, file size, held-out batches vs heuristics.

Usage: python tools/fsm_many_types.py FAMILY [--episodes N] [--encoding E] [--no-guard]
FAMILY: dag8 | dag64 | dag256 | program. Default settings of learn_fsm (1000 episodes) unless --episodes.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

import edbatch_jax as eb


def typed_dag(seed, n, k, window=30, zipf=1.1, max_args=3):
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, k + 1) ** zipf
    types = rng.choice(k, n, p=w / w.sum())
    b = eb.GraphBuilder()
    for v in range(n):
        lo = max(0, v - window)
        m = int(rng.integers(0, min(v - lo, max_args) + 1))
        args = sorted(int(a) for a in rng.choice(np.arange(lo, v), m, replace=False)) if m else []
        b.add(f"t{types[v]}", *args)
    return b.build()


def family(name):
    if name == "program":
        from edbatch_jax.zoo.workloads import load_workload

        wl = load_workload("program")
        return wl.minibatches("train", count=4), wl.minibatches("dev", count=10), wl.op_types
    k = int(name[3:])
    sizes = np.random.default_rng(k).integers(500, 1001, 14)
    graphs = [typed_dag(100 * k + i, int(sizes[i]), k) for i in range(14)]
    return graphs[:4], graphs[4:], tuple(f"t{i}" for i in range(k))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("family")
    ap.add_argument("--episodes", type=int, default=None)
    ap.add_argument("--encoding", default="sort")
    ap.add_argument("--no-guard", action="store_true", help="the learned table as is (learn_fsm guard=False)")
    args = ap.parse_args()
    train, held, names = family(args.family)
    settings = {} if args.episodes is None else {"max_episodes": args.episodes}
    t = time.perf_counter()
    guard = not args.no_guard
    policy = eb.learn_fsm(train, encoding=args.encoding, seed=0, op_types=names, guard=guard, **settings)
    wall = time.perf_counter() - t
    path = os.path.join(tempfile.mkdtemp(), f"policy_{args.family}_{args.encoding}.json")
    policy.save(path)
    mean = lambda pol: float(np.mean([eb.schedule(g, pol).num_batches for g in held]))
    typewise_fb = policy.with_fallback("typewise")
    row = dict(
        family=args.family,
        op_types=len(names),
        nodes_train=[g.num_nodes for g in train],
        nodes_held_mean=float(np.mean([g.num_nodes for g in held])),
        encoding=args.encoding,
        episodes=policy.provenance["episodes"],
        learn_s=round(wall, 1),
        learn_runs=policy.provenance["learn_runs"],
        entries=policy.num_entries,
        file_kib=round(os.path.getsize(path) / 1024, 1),
        train_best=policy.provenance["best_batches"],
        train_lb=policy.provenance["lower_bound"],
        refine=policy.provenance.get("refine"),
        guard=policy.provenance["guard"]["chosen"] if guard else "off",
        fsm=mean(policy),
        hit_rate=round(policy.hit_rate(held), 3),
        fsm_typewise_fallback=mean(typewise_fb),
        agenda=mean("agenda"),
        typewise=mean("typewise"),
        depth=mean("depth"),
        lb=float(np.mean([eb.lower_bound(g) for g in held])),
    )
    print(json.dumps(row))


if __name__ == "__main__":
    main()
