"""What a per-argument (edge) computation costs against a fixed-arity op of the same FLOPs.

The Child-Sum Tree-LSTM node written two ways on the same SST binary trees: as
the bundled variable-arity op with an edge function (one vmapped call over
every child of a batch, then a segment sum), and as a fixed-arity op of two
operands computing both children's forget gates itself (the same matrix
products, the same FLOPs). Both run in the fused engine, in one process,
alternating rounds; the median seconds per mini-batch of each and their ratio
are printed, for inference and for a training step's forward and backward.

    python tools/edge_cost.py [--data DIR] [--batch-size 64] [--hidden 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np

import edbatch_jax as eb
from edbatch_jax.training import loss_and_grads, make_minibatch
from edbatch_jax.zoo.models.childsum import childsum_message, childsum_node
from edbatch_jax.zoo.workloads import load_workload


def fixed_arity_ops(model) -> dict:
    """The model's ops with the node as a fixed-arity op of two children (the same parameters and FLOPs)."""
    ops = dict(model.ops)

    class _Layers:
        def __init__(self, params):
            dense = lambda p: lambda x: x @ p["kernel"] + p["bias"]
            self.iou, self.forget = dense(params["iou"]), dense(params["forget"])

    def node(params, payload, left, right):
        layers = _Layers(params)
        messages = [childsum_message(layers.forget, c) for c in (left, right)]
        summed = jax.tree.map(lambda a, b: a + b, *messages)
        return childsum_node(layers.iou, summed)

    ops["node"] = dataclasses.replace(ops["node"], fn=node, arity=2, aggregate=None, edge=None)
    return ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None, help="SST trees folder (default: synthetic SST-like binary trees)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = load_workload("childsum_treelstm", args.data, hidden=args.hidden)
    if args.data is None:  # synthetic binary trees read as n-ary: both forms apply
        from edbatch_jax.zoo.data.nary import NaryTree
        from edbatch_jax.zoo.data.sst import synthetic_sst

        trees = [NaryTree.from_sst(t) for t in synthetic_sst(args.batch_size * args.batches, seed=0)]
    else:
        trees = work.train[: args.batch_size * args.batches]
    graphs = [work.batch_graph(trees[i : i + args.batch_size]) for i in range(0, len(trees), args.batch_size)]
    batches = [make_minibatch(g, "typewise") for g in graphs]
    params = work.model.init(jax.random.PRNGKey(0))
    forms = {"edge": eb.FusedEngine(work.model.ops), "fixed": eb.FusedEngine(fixed_arity_ops(work.model))}
    check = [float(loss_and_grads(e, params, batches[0])[0]) for e in forms.values()]
    assert abs(check[0] - check[1]) <= 1e-4 * abs(check[0]), check  # the same model, written two ways

    def infer(engine, b):
        return engine.run(params, b.graph, b.schedule, outputs=b.loss_nodes, reduce="sum")

    def train(engine, b):
        return loss_and_grads(engine, params, b)

    for mode, fn in (("infer", infer), ("train", train)):
        for engine in forms.values():  # warm-up: every mini-batch compiled and planned
            for b in batches:
                jax.block_until_ready(fn(engine, b))
        times = {name: [] for name in forms}
        for _ in range(args.rounds):
            for name, engine in forms.items():
                t0 = time.perf_counter()
                for b in batches:
                    jax.block_until_ready(fn(engine, b))
                times[name].append((time.perf_counter() - t0) / len(batches))
        med = {name: float(np.median(t)) * 1e3 for name, t in times.items()}
        print(
            f"{mode}: edge {med['edge']:.2f} ms, fixed arity {med['fixed']:.2f} ms per mini-batch of "
            f"{args.batch_size}; edge / fixed = {med['edge'] / med['fixed']:.2f}"
        )


if __name__ == "__main__":
    main()
