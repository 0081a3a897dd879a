"""Generates the API reference page (``docs/api.md``) from the docstrings.

``python tools/apidoc.py docs/api.md`` rewrites the page; a test checks
that the committed page equals what this module generates.
"""

from __future__ import annotations

import inspect
import re
import sys

import edbatch_jax as eb
from edbatch_jax import training
from edbatch_jax.apps import bench, op_calls, peers
from edbatch_jax.training import loop as train
from edbatch_jax.training import parallel
from edbatch_jax.zoo import workloads
from edbatch_jax.io import write_text_atomic

__all__ = ["render"]

SECTIONS = (
    ("Graphs", eb, ("GraphBuilder", "Graph", "batch_graphs", "unbatch_graph", "validate_graph", "GraphError")),
    ("Analysis", eb, ("lower_bound", "node_depth", "topological_order", "type_depths", "typewise_depth", "children")),
    (
        "Scheduling",
        eb,
        (
            "schedule",
            "Schedule",
            "validate_schedule",
            "ScheduleError",
            "Policy",
            "FrontierPolicy",
            "DepthPolicy",
            "AgendaPolicy",
            "TypewisePolicy",
            "Frontier",
            "TypewiseFrontier",
            "register_policy",
        ),
    ),
    ("Learned FSM policy", eb, ("learn_fsm", "FSMPolicy", "FSMDecision", "PolicyFileError")),
    ("Memory layout", eb, ("plan_layout", "LayoutPlan", "PQTree", "PQTreeError")),
    (
        "Execution",
        eb,
        (
            "run",
            "run_unbatched",
            "Engine",
            "StepwiseEngine",
            "FusedEngine",
            "ExecutionPlan",
            "Op",
            "OpError",
            "linen_op",
            "nnx_op",
            "NNXCells",
            "bucket",
            "enable_compile_cache",
        ),
    ),
    (
        "Training",
        eb,
        ("MiniBatch", "make_minibatch", "Trainer", "plan_ahead", "loss_and_grads"),
    ),
    (
        "More of training (`edbatch_jax.training`, `edbatch_jax.training.loop`)",
        None,
        (
            training.make_engine,
            training.batched_loss,
            training.root_loss_nodes,
            training.variadic_ops,
            train.TrainConfig,
            train.train,
        ),
    ),
    (
        "Data parallelism (`edbatch_jax.training.parallel`)",
        None,
        (
            parallel.ShardedTrainer,
            parallel.make_shards,
            parallel.sharded_loss,
            parallel.split_instances,
            parallel.shard_devices,
            parallel.use_cpu_devices,
        ),
    ),
    (
        "Workloads and benchmarks (`edbatch_jax.zoo.workloads`, `edbatch_jax.apps.bench`, "
        "`edbatch_jax.apps.op_calls`, `edbatch_jax.apps.peers`)",
        None,
        (
            workloads.load_workload,
            workloads.Workload,
            workloads.default_policy_path,
            bench.run_benchmarks,
            bench.BenchResult,
            op_calls.op_calls_ms,
            op_calls.plan_flops,
            op_calls.matmul_gflops,
            peers.run_dynet,
            peers.comparison_table,
            peers.PeerError,
        ),
    ),
)


def _signature(obj) -> str:
    try:
        sig = inspect.signature(obj)
        if (
            inspect.isclass(obj)
            and obj.__init__ is not object.__init__
            and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values())
        ):
            init = inspect.signature(obj.__init__)  # a metaclass hides the constructor's signature (flax.nnx)
            sig = init.replace(parameters=list(init.parameters.values())[1:], return_annotation=inspect.Signature.empty)
    except (TypeError, ValueError):
        return ""
    return re.sub(r"ForwardRef\(('[^']*')\)", r"\1", str(sig))


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _entry(name: str, obj) -> list[str]:
    kind = "class" if inspect.isclass(obj) else "function" if callable(obj) else "value"
    lines = [f"### `{name}`", ""]
    if kind != "value":
        lines += ["```python", f"{'class ' if kind == 'class' else ''}{name}{_signature(obj)}", "```", ""]
    lines += [_summary(obj) or "(no docstring)", ""]
    if kind == "class":
        methods = [
            (m, f)
            for m, f in vars(obj).items()
            if not m.startswith("_") and (inspect.isfunction(f) or isinstance(f, (classmethod, staticmethod, property)))
        ]
        for m, f in methods:
            target = f.fget if isinstance(f, property) else getattr(f, "__func__", f)
            sig = "" if isinstance(f, property) else _signature(target)
            lines.append(f"* `{m}{sig}`: {_summary(target) or '-'}")
        if methods:
            lines.append("")
    return lines


def render() -> str:
    """The whole page (Markdown)."""
    out = [
        "# API reference",
        "",
        "Generated from the docstrings by `python tools/apidoc.py docs/api.md`.",
        "`import edbatch_jax as eb` gives every name of the first six sections.",
        "",
    ]
    for title, module, names in SECTIONS:
        out += [f"## {title}", ""]
        for item in names:
            if isinstance(item, str):
                out += _entry(f"eb.{item}", getattr(module, item))
            else:
                out += _entry(f"{item.__module__}.{item.__qualname__}", item)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/apidoc.py OUT.md")
    write_text_atomic(sys.argv[1], render().rstrip("\n"))  # the writer ends the file with one newline
    print(f"wrote {sys.argv[1]}")
