"""The ``edbatch`` command.

* ``edbatch demo`` trains the SST Tree-LSTM for a short run (on SST-like
  synthetic trees, or on real SST with ``--data DIR``) and then compares the
  batching policies on the same model: batches per mini-batch against the
  lower bound, trees per second for inference and training, and root accuracy.
* ``edbatch learn --model NAME`` learns an FSM batching policy by Q-learning
  on several training mini-batches, saves it, and compares it with the
  heuristics on held-out mini-batches.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

from edbatch_jax.engine.compile_cache import enable_compile_cache, resolve_compile_cache
from edbatch_jax.io import write_text_atomic


def _load_trees(data: str | None, seed: int, num_train: int, num_dev: int):
    from edbatch_jax.zoo.data.sst import read_sst, synthetic_sst

    if data is None:
        return synthetic_sst(num_train, seed=seed), synthetic_sst(num_dev, seed=seed + 1), "synthetic SST-like trees"
    if os.path.isdir(data):
        train_path, dev_path = os.path.join(data, "train.txt"), os.path.join(data, "dev.txt")
    else:
        train_path, dev_path = data, None
    train = read_sst(train_path)
    dev = read_sst(dev_path) if dev_path and os.path.exists(dev_path) else train[-num_dev:]
    # the files are not shuffled (dev starts with mostly positive trees): sample
    pick = np.random.default_rng(seed).permutation(len(dev))[:num_dev]
    return train, [dev[i] for i in np.sort(pick)], f"SST from {data}"


def _chunks(items, size):
    return [items[i : i + size] for i in range(0, len(items) - size + 1, size)] or [items]


def demo(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm import tqdm

    import edbatch_jax as eb
    from edbatch_jax.training import Trainer, batched_loss, make_minibatch, timed, unbatched_loss
    from edbatch_jax.zoo.data.sst import Vocabulary
    from edbatch_jax.zoo.models.treelstm import TreeLSTM

    train, dev, source = _load_trees(args.data, args.seed, args.num_train, args.num_dev)
    vocab = Vocabulary.build(train, max_size=args.vocab_size)
    model = TreeLSTM(vocab_size=len(vocab), hidden=args.hidden, embed=args.hidden)
    print(
        f"edbatch demo: Tree-LSTM (hidden={args.hidden}) on {source}: {len(train)} train / {len(dev)} dev trees, "
        f"vocabulary {len(vocab)}, batch {args.batch_size}, jax {jax.__version__} on {jax.default_backend()}"
    )

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    order = rng.permutation(len(train))
    train_graphs = [model.batch_graph([train[i] for i in idx], vocab) for idx in _chunks(order, args.batch_size)]
    dev_graphs = [model.batch_graph(c, vocab) for c in _chunks(dev, args.batch_size)]
    t_graph = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_batches = [make_minibatch(g, args.train_policy) for g in train_graphs]
    t_sched = time.perf_counter() - t0
    print(
        f"graphs built in {t_graph:.2f}s, scheduled ({args.train_policy}) in {t_sched:.2f}s "
        f"for {len(train_batches)} mini-batches; graphs are reused across epochs"
    )

    engine = eb.StepwiseEngine(model.ops)
    schedule_fn = optax.warmup_cosine_decay_schedule(0.0, args.lr, min(50, args.steps // 5 + 1), max(args.steps, 2))
    trainer = Trainer(engine, model.init(jax.random.PRNGKey(args.seed)), optax.adam(schedule_fn))
    bar = tqdm(range(args.steps), desc="training", unit="step", disable=args.quiet)
    for step in bar:
        loss = trainer.step(train_batches[step % len(train_batches)])
        bar.set_postfix(loss=f"{loss:.3f}")
    bar.close()

    # ---------------------------------------------------------------- compare policies
    eval_graphs = train_graphs[: args.eval_batches]
    rows = []
    params = trainer.params
    policies = {"none": None, "depth": "depth", "agenda": "agenda", "typewise": "typewise"}
    from edbatch_jax.zoo.workloads import default_policy_path

    shipped = default_policy_path("treelstm")
    if shipped.exists():  # the learned FSM shipped in policies/
        policies["fsm"] = eb.resolve_policy("fsm", model.op_types, shipped=shipped)
    for name, policy in policies.items():
        if policy is None:
            lb = float(np.mean([eb.lower_bound(g) for g in eval_graphs]))
            batches = float(np.mean([g.num_nodes for g in eval_graphs]))
            mb = make_minibatch(eval_graphs[0], None)
            small = make_minibatch(model.batch_graph(dev[: args.unbatched_trees], vocab), None)
            infer = timed(lambda: unbatched_loss(model.ops, params, mb), 1)
            train_s = timed(lambda: jax.value_and_grad(lambda p: unbatched_loss(model.ops, p, small))(params), 1)
            infer_tps = mb.graph.num_instances / infer
            train_tps = small.graph.num_instances / train_s
            acc_batches = [make_minibatch(g, None) for g in dev_graphs]
            correct = total = 0
            for b in acc_batches:
                out = eb.run_unbatched(model.ops, params, b.graph, outputs=b.root_nodes)
                correct += int((np.asarray(out["logits"]).argmax(-1) == b.root_labels).sum())
                total += b.root_labels.size
            acc = correct / total
        else:
            mbs = [make_minibatch(g, policy) for g in eval_graphs]
            lb = float(np.mean([eb.lower_bound(b.graph) for b in mbs]))
            batches = float(np.mean([b.schedule.num_batches for b in mbs]))
            it = itertools.cycle(mbs)
            infer = timed(lambda: batched_loss(engine, params, next(it)), 2 * len(mbs), warmup=len(mbs))
            scratch = Trainer(engine, jax.tree.map(jnp.copy, params), optax.adam(1e-3))  # steps donate their inputs
            train_s = timed(lambda: scratch.step(next(it)), 2 * len(mbs), warmup=len(mbs))
            infer_tps = mbs[0].graph.num_instances / infer
            train_tps = mbs[0].graph.num_instances / train_s
            acc = Trainer(engine, params, optax.sgd(0.0)).evaluate([make_minibatch(g, policy) for g in dev_graphs])[
                "root_accuracy"
            ]
        rows.append((name, batches, lb, infer_tps, train_tps, acc))

    majority = np.bincount(np.concatenate([b.root_labels for b in (make_minibatch(g, None) for g in dev_graphs)])).max()
    majority /= sum(g.num_instances for g in dev_graphs)
    print()
    print(
        f"policy comparison on {len(eval_graphs)} training mini-batches of {args.batch_size} trees "
        f"(root accuracy on {sum(g.num_instances for g in dev_graphs)} dev trees; majority class {majority:.3f}):"
    )
    header = (
        f"{'policy':<8} {'batches/mb':>11} {'LB':>7} {'x LB':>6} {'infer trees/s':>14} {'train trees/s':>14} "
        f"{'root acc':>9}"
    )
    print(header)
    print("-" * len(header))
    for policy, batches, lb, itps, ttps, acc in rows:
        print(f"{policy:<8} {batches:>11.1f} {lb:>7.1f} {batches / lb:>6.2f} {itps:>14.1f} {ttps:>14.1f} {acc:>9.3f}")
    print(f"\ncompiled step executables: {engine.trace_count}")
    return 0


def learn(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import edbatch_jax as eb
    from edbatch_jax.zoo.workloads import default_policy_path, fsm_settings, load_workload

    work = load_workload(args.model, args.data, seed=args.seed)
    size = args.batch_size or work.batch_size
    out = args.out or default_policy_path(args.model)
    settings = fsm_settings(args.model)
    graphs = args.graphs or settings.pop("graphs")
    settings.pop("graphs", None)
    if args.encoding:
        settings["encoding"] = args.encoding
    if args.bootstrap:
        settings["bootstrap"] = args.bootstrap == "on"
    if args.episodes:
        settings["max_episodes"] = args.episodes
    encoding = settings.pop("encoding")
    print(
        f"edbatch learn: {args.model} on {work.source}, batch {size}, {graphs} training mini-batches, "
        f"encoding {encoding}, settings {settings}"
    )
    train_graphs = work.minibatches("train", size, graphs, seed=args.seed)
    held = work.minibatches("held_out", size, args.eval_batches, seed=args.seed + 1)
    bar = tqdm(total=settings.get("max_episodes", 1000), desc="Q-learning", unit="episode", disable=args.quiet)

    def progress(episode, greedy, best, lb):
        bar.update(int(episode) + 1 - bar.n)
        bar.set_postfix(greedy=f"{float(greedy):.1f}", best=f"{float(best):.1f}", lb=f"{float(lb):.1f}")

    policy = eb.learn_fsm(
        train_graphs, encoding=encoding, seed=args.seed, progress=progress, op_types=work.op_types, **settings
    )
    bar.close()
    prov = policy.provenance
    prov.update(model=args.model, data=work.source, batch_size=size)
    refine = prov.get("refine") or {}
    total = prov["setup_seconds"] + prov["learn_seconds"] + refine.get("seconds", 0.0)
    print(
        f"learned in {total:.1f}s from a cold start ({prov['setup_seconds']:.1f}s graph analysis, "
        f"{prov['learn_seconds']:.1f}s jit-compiled Q-learning incl. compilation"
        + (f", {refine['seconds']:.1f}s refinement" if refine else "")
        + f"), {prov['episodes']} episodes; training graphs: {prov['best_batches']:.1f} batches "
        f"= {prov['best_ratio']:.3f} x LB; {policy.num_entries} states in the table"
    )
    if refine:
        print(
            f"refinement: {refine['batches_before']:.1f} -> {refine['batches_after']:.1f} batches per training "
            f"mini-batch ({refine['improvements']} changes kept of {refine['trials']} tried)"
        )
    guard = prov.get("guard")
    if guard:
        tried = ", ".join(f"{name} {b:.1f}" for name, b in guard["batches"].items())
        print(f"guard, batches per training mini-batch: {tried}; the policy is: {guard['chosen']}")
    # the held-out comparison goes into the policy's provenance before it is saved
    lb = float(np.mean([eb.lower_bound(g) for g in held]))
    batches = {
        name: float(np.mean([eb.schedule(g, policy if name == "fsm" else name).num_batches for g in held]))
        for name in ("depth", "agenda", "typewise", "fsm")
    }
    hit_rate = policy.hit_rate(held)
    prov["held_out"] = {"graphs": len(held), "lower_bound": lb, "batches": batches, "fsm_hit_rate": hit_rate}
    policy.save(out)
    print(f"saved {out}")
    if args.plot:
        _plot_curve(prov, args.plot)
        print(f"learning curve: {args.plot}")

    print(f"\nheld-out: {len(held)} mini-batches of {size} ({work.source}, not used in learning); LB {lb:.1f}")
    header = f"{'policy':<10} {'batches/mb':>11} {'x LB':>7} {'hit rate':>9}"
    print(header)
    print("-" * len(header))
    for name, b in batches.items():
        hit = f"{hit_rate:>9.3f}" if name == "fsm" else f"{'':>9}"
        print(f"{name:<10} {b:>11.1f} {b / lb:>7.3f} {hit}")
    return 0


_PLACEHOLDERS = {
    "--data": "DATA",
    "--data-root": "DATA",
    "--json": "OUT.json",
    "--plot": "OUT.png",
    "--dynet": "DYNET_PYTHON",
    "--dynet-script": "DYNET_SCRIPT",
}
"""Paths shown as placeholders in the command line a results page quotes."""


def _shown_value(flag: str, value: str) -> str:
    """A flag's value as a results page quotes it: a placeholder for a path, a policy file by its name alone."""
    if flag in _PLACEHOLDERS:
        return _PLACEHOLDERS[flag]
    if flag == "--compile-cache":
        return value if value.lower() in ("auto", "off") else "DIR"
    if flag == "--policy":
        return ",".join(Path(p).name if p.endswith(".json") else p for p in value.split(","))
    return value


def bench(args: argparse.Namespace) -> int:
    import json
    import platform

    import jax

    from edbatch_jax.apps import bench as harness
    from edbatch_jax.zoo.workloads import WORKLOADS, load_workload

    split = lambda s: [x for x in s.split(",") if x]
    shards = [int(x) for x in split(str(args.shards))]
    if args.profile:
        if getattr(args, "compile_cache_dir", None):
            raise SystemExit(
                "edbatch bench: --profile attributes time by the HLO XLA dumps as it compiles; programs loaded "
                "from the persistent compile cache are not compiled: use --compile-cache off"
            )
        if args.profile < 1:
            raise SystemExit(f"edbatch bench: --profile takes a number of mini-batches (1 or more), got {args.profile}")
        from edbatch_jax.apps.profile import start_hlo_dump

        start_hlo_dump()  # before JAX starts: XLA reads its flags once
    if max(shards, default=1) > 1:
        from edbatch_jax.training.parallel import use_cpu_devices

        use_cpu_devices(max(shards))  # before JAX starts: on a CPU, one host device per shard
    machine = (
        f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs), {platform.system()}, "
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind})"
    )
    results, sections, peer_rows = [], [], []
    ints = lambda s: [int(x) for x in split(str(s))] if s else [None]
    rates = [float(x) for x in split(str(args.dropout))] or [0.0]
    tree_file = None  # DyNet's: the SST training trees
    if args.dynet:
        if "treelstm" not in split(args.model):
            raise SystemExit(
                f"--dynet runs DyNet's SST Tree-LSTM benchmark beside the treelstm rows: --model must include "
                f"treelstm, got {args.model!r}"
            )
        trees = args.data or (os.path.join(args.data_root, WORKLOADS["treelstm"].data_dir) if args.data_root else None)
        tree_file = os.path.join(trees, "train.txt") if trees and os.path.isdir(trees) else trees
        if not tree_file or not os.path.isfile(tree_file):
            raise SystemExit(
                f"--dynet runs DyNet's SST Tree-LSTM benchmark: it needs the SST trees (--data-root or --data), "
                f"got data {trees!r}"
            )
    configs = itertools.product(split(args.model), ints(args.hidden), ints(args.batch_size), rates)
    for name, hidden, batch, rate in configs:
        peer = bool(args.dynet) and name == "treelstm"  # DyNet runs before and after the Tree-LSTM rows
        if name not in WORKLOADS:
            raise SystemExit(f"unknown model {name!r}; bundled models: {sorted(WORKLOADS)}")
        data = args.data
        if args.data_root and WORKLOADS[name].data_dir:
            candidate = os.path.join(args.data_root, WORKLOADS[name].data_dir)
            data = candidate if os.path.isdir(candidate) else None
        try:
            work = load_workload(name, data, hidden=hidden, seed=args.seed, dropout=rate)
        except ValueError as e:  # a model without dropout
            raise SystemExit(f"edbatch bench: {e}") from e
        size = batch or work.batch_size
        name = f"{name} (dropout {rate:g})" if rate else name
        print(
            f"edbatch bench: {name} on {work.source}, batch {size}, hidden {hidden}, "
            f"{args.batches} timed mini-batches; {machine}",
            flush=True,
        )
        dynet_runs, peer_hidden = [], hidden or 128
        if peer:
            dynet_runs.append(_run_dynet(args, tree_file, size, peer_hidden, "before"))
        try:
            res = harness.run_benchmarks(
                work,
                split(args.policy),
                split(args.layout),
                split(args.mode),
                size,
                args.batches,
                args.warmup,
                args.seed,
                args.unbatched,
                progress=None if args.quiet else (lambda s: print(f"  measuring {s}", flush=True)),
                engines=split(args.engine),
                max_lanes=args.max_lanes,
                op_calls=args.op_calls,
                rounds=args.rounds,
                floor=args.floor,
                shards=shards,
                optimizer=args.optimizer,
                checks=split(args.checks),
                profile=args.profile,
            )
        except ValueError as e:  # one impossible configuration does not lose the others
            print(f"  skipped: {e}", flush=True)
            sections.append(f"## {name}: batch {size}, hidden {hidden}\n\nskipped: {e}\n")
            continue
        table = harness.format_table(res)
        cost = harness.format_checks_cost(res)
        if cost:
            table += "\n\n" + cost
        profiled = harness.format_profiles(res)
        if profiled:
            table += "\n\nWhere a cached mini-batch's time goes (% of instruction + host time):\n" + profiled
        print(table, flush=True)
        results += res
        sections.append(f"## {name}: {work.source}, batch {size}, hidden {hidden}\n\n```\n{table}\n```\n")
        if peer:
            from edbatch_jax.apps.peers import comparison_table

            dynet_runs.append(_run_dynet(args, tree_file, size, peer_hidden, "after"))
            peers = comparison_table(res, dynet_runs)
            print(peers, flush=True)
            sections.append(f"### DyNet side by side: batch {size}, hidden {peer_hidden}\n\n{peers}\n")
            peer_rows += [
                dict(r, model=name, engine="dynet", policy=r["system"], hidden=peer_hidden, run=k)
                for k, run in zip(("before", "after"), dynet_runs)
                for r in run
            ]
    cached = (
        " (programs found in the persistent compile cache loaded, not compiled)"
        if getattr(args, "compile_cache_dir", None)
        else ""
    )
    legend = (
        "inst/s: execution on cached mini-batches; rebuilt: with graph construction, scheduling, layout and "
        "the engine's plan every step; overlap: the same, each mini-batch planned while the previous one "
        "executes; thread: the same, construction, scheduling and layout on a worker thread; "
        "build/sched/layout/eplan/exec: ms per mini-batch (median over rounds; "
        "eplan: the engine's state rows and index tables); ±%: half the range of the "
        f"rounds' exec times over their median; exes: compiled executables; warm s: warm-up incl. compilation"
        f"{cached}; new: XLA compilations after warm-up (timed rounds); KB gath: bytes gathered"
        f"; training steps: optax {args.optimizer} ({harness.OPTIMIZERS[args.optimizer][1]:g})"
    )
    if "off" in split(args.checks):
        legend += (
            "; chk: input checks on or off (eb.input_checks); input checks table: host ms per rebuilt "
            "mini-batch (construction + scheduling + layout + engine plan) with and without them, and "
            "their difference as a share of the rebuilt step with them"
        )
    if args.floor:
        legend += (
            "; MFLOP: FLOPs per instance of the real nodes (XLA cost analysis; training: forward + "
            "backward); floor: inst/s if every FLOP ran at the matmul rate measured in this run; "
            "%flr: inst/s over floor"
        )
    if args.profile:
        legend += (
            f"; profile ({args.profile} cached mini-batches per configuration, a jax.profiler trace, each XLA "
            "instruction's own time attributed by the engine's named scopes): op = each op type's arithmetic, "
            "gather = operand and cotangent reads, aggregate = variadic ops' reduction of their arguments, "
            "write = output writes, accumulate = operand cotangents and parameter gradients added, "
            "store = residuals stored and read, lanes = lane masks and guards, update = loss, its cotangent and the "
            "optimizer update, loop/branch = while/conditional/call instructions' own time, "
            "other device = instructions in no scope, host = wall time with no instruction running; planning = "
            "build + sched + layout + eplan of a rebuilt mini-batch"
        )
    if args.op_calls:
        legend += (
            "; opcall: inst/s if execution were only the schedule's batched op calls, each a jitted call "
            "timed alone (no gathers, no buffer writes); %opc: inst/s over opcall (a one-program engine "
            "can exceed 100)"
        )
    print(legend)
    if args.json:
        write_text_atomic(args.json, json.dumps(harness.to_json(results) + peer_rows, indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        harness.plot_results(results, args.plot, f"{args.model}, hidden {args.hidden}")
        print(f"wrote {args.plot}")
    if args.markdown:
        shown, skip = [], False
        for a in args.argv:  # the command line without the --markdown destination
            if skip or a.startswith("--markdown"):
                skip = a == "--markdown" and not skip
                continue
            if a.startswith("--") and "=" in a:
                flag, value = a.split("=", 1)
                a = f"{flag}={_shown_value(flag, value)}"
            elif shown and shown[-1].startswith("--") and not a.startswith("--"):
                a = _shown_value(shown[-1], a)
            shown.append(a)
        command = "edbatch bench " + " ".join(shown)
        write_text_atomic(
            args.markdown,
            "\n".join(
                [
                    "# Benchmarks",
                    "",
                    f"Machine: {machine}.",
                    "",
                    f"Produced by `{command} --markdown PATH`; all rows of one section come from one process, "
                    "so compare them within a section only.",
                    "",
                    legend + ".",
                    "",
                    *sections,
                ]
            ),
        )
        print(f"wrote {args.markdown}")
    return 0


def _run_dynet(args: argparse.Namespace, tree_file: str, batch_size: int, hidden: int, when: str) -> list[dict]:
    """DyNet's Tree-LSTM benchmark, once (``when``: before or after ours)."""
    from edbatch_jax.apps.peers import PeerError, run_dynet

    if not args.dynet_script:
        raise SystemExit("--dynet needs --dynet-script (DyNet's Tree-LSTM benchmark, dynet_treelstm.py)")
    print(f"  measuring DyNet ({when} ours)", flush=True)
    try:
        return run_dynet(args.dynet, args.dynet_script, tree_file, batch_size, hidden, num_trees=args.dynet_trees)
    except PeerError as e:
        raise SystemExit(f"edbatch bench: {e}") from e


def _fraction(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _roots(m: dict) -> str:
    """The root metrics of an evaluation (SST), or nothing."""
    if "root_accuracy" not in m:
        return ""
    return (
        f", root accuracy {_fraction(m['root_accuracy'])} fine-grained / {_fraction(m['root_binary_accuracy'])} "
        f"binary ({m['roots']} roots, {m['root_binary_count']} not neutral)"
    )


def _process_group(args: argparse.Namespace):
    """The process group of ``edbatch train`` from ``--coordinator``, ``--num-processes``, ``--process-id``, else
    from the environment (``EDBATCH_COORDINATOR``, ...), else ``None``."""
    from edbatch_jax.training.distributed import DistributedError, ProcessGroup

    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(f is None for f in flags):
        return ProcessGroup.from_env()
    if any(f is None for f in flags):
        raise DistributedError("--coordinator, --num-processes and --process-id go together")
    if args.processes > 1:
        raise DistributedError("--processes spawns a local group: give it, or --coordinator and its options, not both")
    return ProcessGroup(args.coordinator, args.num_processes, args.process_id)


def _without_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without the option ``name`` and its value (``--name V`` or ``--name=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def train_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edbatch_jax.errors import EdbatchError
    from edbatch_jax.training.distributed import DistributedError, initialize, launch_local
    from edbatch_jax.training.loop import TrainConfig, train
    from edbatch_jax.zoo.workloads import load_workload

    try:
        group = _process_group(args)
        if group is None and args.processes > 1:  # spawn the group here; each process runs this command
            return launch_local(["train", *_without_option(args.argv, "--processes")], args.processes)
        if group is not None:
            initialize(group)  # before JAX starts
    except DistributedError as e:
        raise SystemExit(f"edbatch train: {e}") from e
    if args.shards > 1:
        from edbatch_jax.training.parallel import use_cpu_devices

        use_cpu_devices(args.shards)  # before JAX starts: on a CPU, one host device per shard
    if args.num_train < 0 or (args.num_train and args.data):
        raise SystemExit("edbatch train: --num-train takes a positive count, and only for synthetic data (no --data)")
    try:
        work = load_workload(
            args.model,
            args.data,
            hidden=args.hidden,
            seed=args.seed,
            embed=args.embed,
            vocab_size=args.vocab_size or None,
            dropout=args.dropout,
            **({"num_train": args.num_train} if args.num_train else {}),
        )
    except ValueError as e:  # a setting the model refuses (dropout out of range, a model without dropout)
        raise SystemExit(f"edbatch train: {e}") from e
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        policy=args.policy,
        layout=args.layout,
        engine=args.engine,
        eval_batches=args.eval_batches,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        log_path=args.log,
        seed=args.seed,
        shards=args.shards,
        precompile=args.precompile,
        optimizer=args.optimizer,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        epochs=args.epochs,
        patience=args.patience,
        embeddings=args.embeddings,
        debug_checks=args.debug_checks,
        rebuild=args.rebuild,
    )
    try:
        config.check()
    except EdbatchError as e:
        raise SystemExit(f"edbatch train: {e}") from e
    size = args.batch_size or work.batch_size
    per_epoch = len(work.minibatch_instances("train", size, seed=args.seed))
    total = args.epochs * per_epoch if args.epochs is not None else args.steps
    length = f"{args.epochs} epochs ({total} steps)" if args.epochs is not None else f"{total} steps"
    print(
        f"edbatch train: {args.model} on {work.source} ({len(work.train)} train / {len(work.split('dev'))} dev / "
        f"{len(work.split('test'))} test instances), batch {size}, hidden {args.hidden}, {length}, "
        f"optax {args.optimizer} lr {args.lr:g} ({args.lr_schedule}), weight decay {args.weight_decay:g}, "
        f"policy {args.policy}, layout {args.layout}"
    )
    bar = tqdm(total=total, desc="training", unit="step", disable=args.quiet)

    def progress(step, loss, rate):
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.3f}", inst_s=f"{rate:.0f}")

    def epoch_end(epoch, m):
        bar.write(
            f"epoch {epoch}: dev loss {m['loss']:.4f}, accuracy {m['accuracy']:.3f} over every node "
            f"(majority class {m['majority']:.3f}){_roots(m)} at step {m['step']}"
        )

    try:
        result = train(work, config, resume=args.resume, progress=progress, epoch_end=epoch_end)
    except DistributedError as e:  # a peer process stopped: leave at once, without JAX's shutdown barrier
        bar.close()
        print(f"edbatch train: {e}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(1)
    except EdbatchError as e:  # a bad embedding file names its line
        bar.close()
        raise SystemExit(f"edbatch train: {e}") from e
    bar.close()
    if result.embeddings:
        e = result.embeddings
        print(
            f"pretrained embeddings: {e['found']} of {e['words']} vocabulary words found in {e['path']} "
            f"({e['lowercased']} by their lower-case form), dimension {e['dim']}"
        )
    if result.resumed_from is not None:
        print(f"resumed from the checkpoint of step {result.resumed_from}")
    if result.precompiled:
        print(f"precompiled {result.precompiled} programs before step 1 in {result.precompile_s:.1f}s")
    if result.stopped_early:
        print(f"early stopping at step {result.step}: {args.patience} dev evaluations without a better score")
    if result.losses:
        k = max(1, min(10, len(result.losses) // 4))
        print(
            f"training loss: first {k} steps {np.mean(result.losses[:k]):.4f}, "
            f"last {k} steps {np.mean(result.losses[-k:]):.4f}"
        )
    if result.best is not None:
        b = result.best
        print(f"best dev evaluation: epoch {b['epoch']} (step {b['step']}), accuracy {b['accuracy']:.3f}{_roots(b)}")
    if result.test is not None:
        t = result.test
        which = "best dev" if t["params"] == "best_dev" else "final"
        print(
            f"test with the {which} parameters (epoch {t['epoch']}, step {t['step']}): loss {t['loss']:.4f}, "
            f"accuracy {t['accuracy']:.3f} over every node{_roots(t)}"
        )
    if result.evals:
        m = result.evals[-1]
        print(f"final held-out accuracy {m['accuracy']:.3f} (majority class {m['majority']:.3f}), loss {m['loss']:.4f}")
    if args.checkpoint_dir:
        print(f"checkpoint at step {result.step} in {args.checkpoint_dir}")
    return 0


def workloads_table(args: argparse.Namespace) -> int:
    import edbatch_jax as eb
    from edbatch_jax.zoo.workloads import WORKLOADS, default_policy_path, load_workload

    names = args.model.split(",") if args.model else sorted(WORKLOADS)
    rows = [
        "| workload | data | batch | nodes / mini-batch | LB | depth | agenda | typewise | FSM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        spec = WORKLOADS[name]
        data = None
        if args.data_root and spec.data_dir and os.path.isdir(os.path.join(args.data_root, spec.data_dir)):
            data = os.path.join(args.data_root, spec.data_dir)
        work = load_workload(name, data, hidden=8, seed=args.seed)
        graphs = work.minibatches("train", spec.batch_size, args.batches, seed=args.seed)
        lb = float(np.mean([eb.lower_bound(g) for g in graphs]))
        cells = []
        policy_file = default_policy_path(name)
        for policy in ("depth", "agenda", "typewise", "fsm"):
            if policy == "fsm":
                if not policy_file.exists():
                    cells.append("—")
                    continue
                policy = work.resolve_policy("fsm")
            b = float(np.mean([eb.schedule(g, policy).num_batches for g in graphs]))
            cells.append(f"{b:.1f} ({b / lb:.2f}x)")
        nodes = float(np.mean([g.num_nodes for g in graphs]))
        rows.append(
            f"| {name} | {work.source} | {spec.batch_size} | {nodes:.0f} | {lb:.1f} | " + " | ".join(cells) + " |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Workloads",
            "",
            f"Generated by `edbatch table{' --data-root DIR' if args.data_root else ''}` (means over {args.batches} "
            "training mini-batches at the reference batch size; batches per mini-batch and the ratio to the lower "
            "bound LB; FSM is the policy shipped in `policies/`, where there is one). Do not edit by hand.",
            "",
            *rows,
            "",
            "Workloads: " + "; ".join(f"`{n}`: {WORKLOADS[n].description}" for n in names) + ".",
            "",
            "The shipped policies' held-out comparison, learning curve and time are in their provenance "
            "(`edbatch learn --model NAME` prints them); the learned policy over random typed DAGs of 8, 64 and 256 "
            "op types and the program workload: [benchmarks_fsm_many_types.md](benchmarks_fsm_many_types.md); in "
            "wall time: [benchmarks_policies.md](benchmarks_policies.md).",
            "",
        ]
    )
    if args.out:
        write_text_atomic(args.out, text)
        print(f"wrote {args.out}")
    return 0


def _plot_curve(provenance: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = provenance["curve"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["train_batches"], lw=0.8, label="exploring episode")
    ax.plot(curve["eval_episodes"], curve["eval_batches"], "o-", label="greedy evaluation")
    ax.axhline(provenance["lower_bound"], color="k", ls="--", lw=0.8, label="lower bound")
    refine = provenance.get("refine")
    if refine:
        ax.axhline(refine["batches_after"], color="C2", ls=":", lw=1.2, label="after refinement")
    held = provenance.get("held_out")
    if held:
        ratios = ", ".join(f"{name} {b / held['lower_bound']:.3f}x" for name, b in held["batches"].items())
        ax.set_title(f"held out ({held['graphs']} mini-batches), x LB: {ratios}", fontsize=8)
    ax.set_xlabel("episode")
    ax.set_ylabel("batches per mini-batch")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _add_compile_cache(p: argparse.ArgumentParser, default: str) -> None:
    """The ``--compile-cache`` option (see :mod:`edbatch_jax.engine.compile_cache`)."""
    p.add_argument(
        "--compile-cache",
        default=default,
        metavar="DIR|auto|off",
        help="keep compiled programs in this directory for later runs (auto: $EDBATCH_COMPILE_CACHE, "
        f"else the user's cache folder; off: none; default: {default})",
    )


def bench_dynamic(args: argparse.Namespace) -> int:
    """``edbatch bench-dynamic``: the dynamic runtime against one-at-a-time and padded decoding (Markdown table)."""
    import platform

    import jax

    from edbatch_jax.apps import bench_dynamic as harness

    split = lambda s: [x for x in str(s).split(",") if x]
    machine = (
        f"{platform.machine()} ({os.cpu_count()} CPUs), {platform.system()}, jax {jax.__version__} on "
        f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    )
    print(
        f"edbatch bench-dynamic: greedy decoding, hidden {args.hidden}, engine {args.engine}, {args.repeats} timed "
        f"runs; {machine}"
    )
    try:
        rows = harness.run_dynamic_benchmarks(
            [int(x) for x in split(args.instances)],
            split(args.lengths),
            hidden=args.hidden,
            vocab=args.vocab,
            repeats=args.repeats,
            seed=args.seed,
            policy=args.policy,
            progress=None if args.quiet else (lambda s: print(f"  measuring {s}", flush=True)),
            engine=args.engine,
        )
    except ValueError as e:
        raise SystemExit(f"edbatch bench-dynamic: {e}") from e
    _table_out(args, "Dynamic runtime benchmark", machine, harness.format_dynamic_table(rows))
    return 0 if all(r.same_tokens for r in rows) else 1


def _table_out(args: argparse.Namespace, title: str, machine: str, table: str) -> None:
    """Prints a command's Markdown table and, with ``--markdown``, writes it (title, machine, command) atomically."""
    print(table, flush=True)
    if args.markdown:
        command = f"edbatch {args.command} " + " ".join(args.argv)
        write_text_atomic(args.markdown, f"# {title}\n\n{machine}\n\n`{command}`\n\n{table}\n")


def bench_processes(args: argparse.Namespace) -> int:
    """``edbatch bench-processes``: training as 1 process against N in one run (Markdown table)."""
    import platform

    from edbatch_jax.apps import bench_processes as harness

    machine = f"{platform.machine()} ({os.cpu_count()} CPUs), {platform.system()}"
    print(
        f"edbatch bench-processes: {args.model}, hidden {args.hidden}, {args.steps} steps "
        f"({args.skip} not timed), engine {args.engine}; {machine}"
    )
    try:
        rows = harness.run_process_benchmarks(
            args.model,
            [int(x) for x in str(args.processes).split(",") if x],
            steps=args.steps,
            skip=args.skip,
            batch_size=args.batch_size,
            hidden=args.hidden,
            engine=args.engine,
            seed=args.seed,
            progress=None if args.quiet else (lambda s: print(f"  training as {s}", flush=True)),
        )
    except ValueError as e:
        raise SystemExit(f"edbatch bench-processes: {e}") from e
    _table_out(args, "Training over processes", machine, harness.format_process_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edbatch", description="Automatic batching of dynamic neural networks in JAX."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train the SST Tree-LSTM briefly and compare batching policies")
    d.add_argument(
        "--data", default=None, help="SST directory with train.txt/dev.txt (default: synthetic SST-like trees)"
    )
    d.add_argument("--steps", type=int, default=150, help="training steps (mini-batches)")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--hidden", type=int, default=128, help="hidden = embedding size")
    d.add_argument("--lr", type=float, default=0.01)
    d.add_argument("--vocab-size", type=int, default=5000)
    d.add_argument("--num-train", type=int, default=4096, help="synthetic training trees")
    d.add_argument("--num-dev", type=int, default=512, help="dev trees used for accuracy")
    d.add_argument("--eval-batches", type=int, default=5, help="mini-batches for the policy comparison")
    d.add_argument("--unbatched-trees", type=int, default=8, help="trees in the unbatched training timing")
    d.add_argument("--train-policy", default="agenda", help="policy used during training")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_compile_cache(d, "auto")
    d.set_defaults(func=demo)

    from edbatch_jax.apps.bench import OPTIMIZERS
    from edbatch_jax.zoo.workloads import WORKLOADS

    models = ", ".join(sorted(WORKLOADS))
    lp = sub.add_parser("learn", help="learn an FSM batching policy by Q-learning and save it")
    lp.add_argument(
        "--model", default="treelstm", choices=sorted(WORKLOADS), metavar="NAME", help=f"workload: {models}"
    )
    lp.add_argument("--data", default=None, help="data directory or file (default: synthetic data)")
    lp.add_argument("--out", default=None, help="policy file to write (default: the shipped policies/ file)")
    lp.add_argument("--batch-size", type=int, default=None, help="instances per mini-batch (default: the model's)")
    lp.add_argument(
        "--graphs",
        type=int,
        default=None,
        help="training mini-batches learned from (default: the shipped policy's, else 4)",
    )
    lp.add_argument("--eval-batches", type=int, default=10, help="held-out mini-batches for the comparison")
    lp.add_argument(
        "--encoding",
        default=None,
        choices=["sort", "set", "max", "sort_complete"],
        help="state encoding (default: the one of the shipped policy)",
    )
    lp.add_argument(
        "--episodes", type=int, default=None, help="episode budget (default: the shipped policy's, else 1000)"
    )
    lp.add_argument(
        "--bootstrap",
        default=None,
        choices=["on", "off"],
        help="max-Q bootstrap in the n-step targets; off = the reference's truncated returns "
        "(default: the shipped policy's)",
    )
    lp.add_argument("--plot", default=None, help="write the learning curve as a PNG here")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_compile_cache(lp, "auto")
    lp.set_defaults(func=learn)

    bp = sub.add_parser("bench", help="measure policies, layouts and modes side by side in one run")
    bp.add_argument("--model", default="treelstm", help=f"comma-separated workloads: {models}")
    bp.add_argument("--data", default=None, help="data directory or file (default: synthetic data)")
    bp.add_argument("--data-root", default=None, help="folder with trees/, lattice/, tags/: real data per workload")
    bp.add_argument("--markdown", default=None, help="write the results page (machine, command, tables) here")
    bp.add_argument(
        "--batch-size", default=None, help="comma-separated instances per mini-batch (default: the model's)"
    )
    bp.add_argument("--hidden", default="128", help="comma-separated hidden = embedding sizes")
    bp.add_argument(
        "--engine",
        default="fused",
        help="comma-separated engines: fused, fused_fine, fused_recompute, fused_fine_recompute, stepwise",
    )
    bp.add_argument("--max-lanes", type=int, default=512, help="widest chunk of the fused engine (a power of two)")
    bp.add_argument(
        "--op-calls",
        action="store_true",
        help="also measure the op-call bound: the schedule's batched op calls alone (columns opcall, %%opc)",
    )
    bp.add_argument(
        "--floor",
        action="store_true",
        help="also measure the compute floor: FLOPs per instance at this machine's matmul rate "
        "(columns MFLOP, floor, %%flr)",
    )
    bp.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N cached mini-batches of every configuration: the share of op arithmetic (per op "
        "type), gathers, argument aggregation, writes, cotangent accumulation, residual stores, loop and branch "
        "overhead and host time, from a jax.profiler trace (needs --compile-cache off, the default)",
    )
    bp.add_argument(
        "--shards",
        default="1",
        help="comma-separated data-parallel shard counts: each mini-batch split over that many devices "
        "(on a CPU, that many host devices share its cores)",
    )
    bp.add_argument(
        "--optimizer",
        default="adam",
        choices=sorted(OPTIMIZERS),
        help="the training configurations' optax optimizer (learning rates: "
        + ", ".join(f"{k} {lr:g}" for k, (_, lr) in sorted(OPTIMIZERS.items()))
        + "); sgd as DyNet's Tree-LSTM benchmark trains",
    )
    bp.add_argument(
        "--dropout",
        default="0",
        help="comma-separated dropout rates of the models that have it (treelstm, childsum_treelstm), e.g. "
        "'0,0.5': training steps then draw per-node masks (stochastic ops); inference is deterministic",
    )
    bp.add_argument(
        "--checks",
        default="on",
        help="comma-separated: on, off; 'on,off' measures every configuration with and without the input "
        "checks and prints their cost as a share of a rebuilt step",
    )
    bp.add_argument(
        "--policy", default="depth,agenda,typewise,fsm", help="comma-separated policies (fsm = shipped policy)"
    )
    bp.add_argument("--layout", default="dynet,planned", help="comma-separated layouts: dynet, planned, gather")
    bp.add_argument("--mode", default="infer,train", help="comma-separated modes: infer, train")
    bp.add_argument("--batches", type=int, default=10, help="timed mini-batches per configuration")
    bp.add_argument("--warmup", type=int, default=2, help="extra mini-batches run before timing")
    bp.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="timed rounds; configurations take turns within each (reported: the median over rounds)",
    )
    bp.add_argument("--unbatched", type=int, default=0, help="also time node-by-node execution on this many instances")
    bp.add_argument(
        "--dynet",
        default=None,
        metavar="PYTHON",
        help="also run DyNet's Tree-LSTM benchmark before and after ours, with this Python "
        "(one where `import dynet` works); needs --dynet-script and the SST trees",
    )
    bp.add_argument("--dynet-script", default=None, help="DyNet's Tree-LSTM benchmark script (dynet_treelstm.py)")
    bp.add_argument("--dynet-trees", type=int, default=1024, help="trees per timed DyNet pass")
    bp.add_argument("--json", default=None, help="write the results as JSON here")
    bp.add_argument("--plot", default=None, help="write a PNG bar chart here")
    bp.add_argument("--seed", type=int, default=0)
    bp.add_argument("--quiet", action="store_true")
    _add_compile_cache(bp, "off")
    bp.set_defaults(func=bench)

    bd = sub.add_parser(
        "bench-dynamic",
        help="greedy decoding by the dynamic runtime against one instance at a time and a padded lax.scan",
    )
    bd.add_argument("--workload", default="decode", choices=["decode"], help="the dynamic workload (greedy decoding)")
    bd.add_argument("--instances", default="64,256", help="comma-separated instance counts")
    bd.add_argument("--lengths", default="low,high", help="comma-separated length distributions: low, high (variance)")
    bd.add_argument("--hidden", type=int, default=128, help="hidden size of the decoder")
    bd.add_argument("--vocab", type=int, default=16, help="vocabulary size of the decoder")
    bd.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (reported: the median)")
    bd.add_argument("--policy", default="agenda", help="the runtime's batching policy")
    bd.add_argument(
        "--engine",
        default="stepwise",
        choices=["stepwise", "fused"],
        help="the runtime's engine: stepwise (a jitted call per batch) or fused (a round as one program)",
    )
    bd.add_argument("--markdown", default=None, help="write the table (with machine and command) here")
    bd.add_argument("--seed", type=int, default=0)
    bd.add_argument("--quiet", action="store_true")
    bd.set_defaults(func=bench_dynamic)

    bq = sub.add_parser(
        "bench-processes", help="training throughput as 1 process against N (jax.distributed), in one run"
    )
    bq.add_argument("--model", default="treelstm", choices=sorted(WORKLOADS), metavar="NAME")
    bq.add_argument("--processes", default="1,2", help="comma-separated process counts")
    bq.add_argument("--steps", type=int, default=60, help="training steps per run")
    bq.add_argument("--skip", type=int, default=10, help="first steps not timed")
    bq.add_argument("--batch-size", type=int, default=None, help="instances per global mini-batch")
    bq.add_argument("--hidden", type=int, default=128)
    bq.add_argument("--engine", default="stepwise", choices=["stepwise", "fused", "fused_fine"])
    bq.add_argument("--markdown", default=None, help="write the table (with machine and command) here")
    bq.add_argument("--seed", type=int, default=0)
    bq.add_argument("--quiet", action="store_true")
    bq.set_defaults(func=bench_processes)

    tp = sub.add_parser("train", help="train a bundled model with optax, evaluation and orbax checkpoints")
    tp.add_argument(
        "--model", default="treelstm", choices=sorted(WORKLOADS), metavar="NAME", help=f"workload: {models}"
    )
    tp.add_argument("--data", default=None, help="data directory or file (default: synthetic data)")
    tp.add_argument(
        "--num-train", type=int, default=0, help="synthetic training instances to generate (default: the model's)"
    )
    tp.add_argument("--steps", type=int, default=200, help="optimisation steps (mini-batches)")
    tp.add_argument("--batch-size", type=int, default=None, help="instances per mini-batch (default: the model's)")
    tp.add_argument("--hidden", type=int, default=128, help="hidden = embedding size")
    tp.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (see --lr-schedule)")
    tp.add_argument("--warmup-steps", type=int, default=20, help="linear warm-up steps of warmup_cosine")
    tp.add_argument("--policy", default="typewise", help="batching policy (fsm = the shipped policy)")
    tp.add_argument("--layout", default="dynet", choices=["dynet", "planned", "gather"])
    tp.add_argument(
        "--engine",
        default="stepwise",
        choices=["stepwise", "fused", "fused_fine", "fused_recompute", "fused_fine_recompute"],
        help="stepwise: one call per batch (compiles in seconds); fused: one program per schedule "
        "(faster steps, longer first compile); _recompute: the backward program recomputes "
        "matrix products instead of reading them stored (less memory)",
    )
    tp.add_argument(
        "--eval-batches",
        type=int,
        default=4,
        help="dev mini-batches evaluated after every epoch, and test mini-batches at the end (0: the whole split)",
    )
    tp.add_argument(
        "--epochs", type=int, default=None, help="train this many epochs (overrides --steps; default: --steps)"
    )
    tp.add_argument(
        "--optimizer", default="adam", choices=["adagrad", "adam", "sgd"], help="the optax optimizer (default adam)"
    )
    tp.add_argument(
        "--debug-checks",
        action="store_true",
        help="the engine's debug checks: a NaN or inf state stops the run naming its node, op type and instance, "
        "a non-finite gradient naming its parameter (slower: states are read back every step)",
    )
    tp.add_argument(
        "--dropout",
        type=float,
        default=0.0,
        help="dropout rate of the leaf embeddings and the classifier input (treelstm, childsum_treelstm); "
        "training steps draw per-node masks from the step key, evaluation is deterministic",
    )
    tp.add_argument(
        "--weight-decay",
        type=float,
        default=0.0,
        help="L2 strength: adds wd * param to every gradient before the optimizer (a wd/2 |params|^2 loss term, "
        "as Tai et al. 2015; not AdamW's decoupled decay)",
    )
    tp.add_argument(
        "--lr-schedule",
        default="warmup_cosine",
        choices=["warmup_cosine", "constant"],
        help="warmup_cosine: --warmup-steps then cosine decay; constant: --lr throughout (Tai et al.'s Adagrad)",
    )
    tp.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early stopping: stop after this many dev evaluations without a better dev score "
        "(root accuracy for SST, else accuracy over every node)",
    )
    tp.add_argument(
        "--embeddings",
        default=None,
        metavar="PATH",
        help="GloVe-format text file (word then floats per line, .gz allowed) whose vectors initialise the "
        "embedding rows of the vocabulary's words; others keep their random values",
    )
    tp.add_argument("--embed", type=int, default=None, help="SST models: embedding size (default: --hidden)")
    tp.add_argument(
        "--vocab-size",
        type=int,
        default=5000,
        help="SST models: vocabulary size, most frequent training words (0: every training word)",
    )
    tp.add_argument("--checkpoint-dir", default=None, help="orbax checkpoint directory")
    tp.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    tp.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tp.add_argument("--log", default=None, help="append metrics as JSON lines to this file")
    tp.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split every mini-batch over this many devices (data parallel; on a CPU, host devices)",
    )
    tp.add_argument(
        "--processes",
        type=int,
        default=1,
        help="train as this many local processes (jax.distributed, gloo on CPUs): each builds, schedules and "
        "runs its share of every mini-batch, one all-reduce of the gradients per step",
    )
    tp.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="several hosts: process 0's address (with --num-processes, --process-id; or the EDBATCH_COORDINATOR, "
        "EDBATCH_NUM_PROCESSES, EDBATCH_PROCESS_ID environment variables)",
    )
    tp.add_argument("--num-processes", type=int, default=None, help="several hosts: processes in the group")
    tp.add_argument("--process-id", type=int, default=None, help="several hosts: this process, 0 .. N-1")
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument(
        "--no-precompile",
        dest="precompile",
        action="store_false",
        help="compile during the first steps instead of ahead of them, at the sizes of the mini-batches "
        "seen so far (by default: every program the run needs, at its final sizes, before step 1)",
    )
    tp.add_argument(
        "--rebuild",
        action="store_true",
        help="draw new mini-batches every epoch (the training split shuffled again), each built, scheduled, laid "
        "out and planned while the previous step runs (by default the first shuffle's mini-batches are built once "
        "and every epoch runs them in a new order)",
    )
    tp.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_compile_cache(tp, "auto")
    tp.set_defaults(func=train_command)

    zp = sub.add_parser("table", help="write the workload table (nodes, LB, batches per policy) as Markdown")
    zp.add_argument("--model", default=None, help="comma-separated workloads (default: all)")
    zp.add_argument("--data-root", default=None, help="folder with trees/, lattice/, tags/ (default: synthetic data)")
    zp.add_argument("--batches", type=int, default=10, help="mini-batches averaged per workload")
    zp.add_argument("--out", default=None, help="write the Markdown page here")
    zp.add_argument("--seed", type=int, default=0)
    zp.set_defaults(func=workloads_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)[1:]
    args.compile_cache_dir = resolve_compile_cache(getattr(args, "compile_cache", None))  # the commands read it
    if args.compile_cache_dir is not None:
        try:
            enable_compile_cache(args.compile_cache_dir)
        except OSError as e:
            raise SystemExit(f"edbatch {args.command}: --compile-cache: {e}") from e
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
