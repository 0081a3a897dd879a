"""Where a step's time goes: a JAX profiler trace of the compiled programs, attributed by the names in them.

The engines trace every part of a batch inside a named scope
(:func:`edbatch_jax.engine.common.scope`), which XLA keeps in each
instruction's metadata: an op's own computation (``edbatch.op.<op type>``),
the reads of operands and cotangents (``edbatch.gather``: gathers, or slices
where the layout made operands contiguous), the writes of outputs
(``edbatch.write``), a variadic op's reduction of its arguments
(``edbatch.aggregate``), the accumulation of operand cotangents and
parameter gradients (``edbatch.accumulate``), lane masks and guards
(``edbatch.lanes``), the loss and optimizer update (``edbatch.update``) and the fused engine's residual stores and reads
(``edbatch.store``). :func:`profile_calls` runs a function under
``jax.profiler.trace``, reads the executed instructions' times from the trace
(each instruction's own time: a loop's or a branch's time less the
instructions inside it) and looks every instruction up in the optimised HLO
that XLA dumped when it compiled the program (:func:`start_hlo_dump`, which
must run before JAX compiles anything). What the host does between programs
(dispatch, Python, transfers) is the wall time the device was idle.

Categories (:data:`CATEGORIES`), each in milliseconds per call:

* ``op:<op type>``: the arithmetic of one op type (forward, and its pullback
  in a training step);
* ``gather``, ``write``, ``accumulate``, ``store``: data movement, as above;
* ``aggregate``: a variadic op's reduction of its arguments per node
  (segment sums, means, maxima, softmax weights; its ``edge`` function
  counts as the op's arithmetic);
* ``lanes``: lane masks and guards (padding lanes and lanes without a
  cotangent kept from poisoning values and gradients);
* ``update``: the loss and its cotangent, and the optimizer update;
* ``loop/branch``: the own time of ``while``, ``conditional`` and ``call``
  instructions (the loop's bookkeeping and the branch dispatch);
* ``other device``: instructions in no scope (loop counters, the tables'
  unpacking, zero buffers, copies);
* ``host``: wall time with no instruction running.

Host-side; a profile of one process's CPU or GPU programs. Used by
``edbatch bench --profile``.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import functools
import glob
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax

from edbatch_jax.errors import EdbatchError

__all__ = [
    "CATEGORIES",
    "ProfileError",
    "StepProfile",
    "format_profiles",
    "hlo_dump_dir",
    "profile_calls",
    "start_hlo_dump",
]

CATEGORIES = (
    "op",
    "gather",
    "aggregate",
    "write",
    "accumulate",
    "store",
    "lanes",
    "update",
    "loop/branch",
    "other device",
    "host",
)
_LOOP_OPCODES = frozenset({"while", "conditional", "call"})
_state: dict[str, str | None] = {"dir": None}


class ProfileError(EdbatchError):
    """A profile that cannot be taken: the compiled programs' HLO was not dumped, or the trace holds no program."""


def start_hlo_dump(directory: str | None = None) -> str:
    """Makes XLA write the optimised HLO of every program it compiles from now on to ``directory`` (by default a
    new temporary folder, removed when the process exits); returns it.

    Must run before JAX's backend starts (before the first computation): XLA
    reads its flags once. Programs loaded from the persistent compilation
    cache are not compiled, so not dumped: keep that cache off while profiling.
    """
    if directory is None:  # a folder of our own: removed when the process exits
        directory = tempfile.mkdtemp(prefix="edbatch-hlo-")
        atexit.register(shutil.rmtree, directory, True)
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_dump_to={directory} --xla_dump_hlo_as_text".strip()
    _state["dir"] = directory
    return directory


def hlo_dump_dir() -> str | None:
    """The folder :func:`start_hlo_dump` chose, or ``None``."""
    return _state["dir"]


@dataclasses.dataclass(frozen=True)
class StepProfile:
    """Milliseconds per call of one profiled function, by category.

    Attributes:
      label: what was profiled (e.g. ``"treelstm fused agenda/planned train"``).
      calls: calls inside the trace.
      wall_ms: wall time per call.
      device_ms: per category, the instructions' own time per call; op types
        as ``"op:<name>"``.
      host_ms: wall time per call with no instruction running.
      unattributed_ms: instruction time of programs whose HLO was not dumped
        (counted in ``other device``).
    """

    label: str
    calls: int
    wall_ms: float
    device_ms: dict
    host_ms: float
    unattributed_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        """Instruction time plus host time per call (more than ``wall_ms`` where instructions ran in parallel)."""
        return sum(self.device_ms.values()) + self.host_ms

    def shares(self) -> dict:
        """Each category's share of :attr:`total_ms` (op types summed under ``"op"`` and listed as
        ``"op:<name>"``), in :data:`CATEGORIES` order then op types by time."""
        total = self.total_ms or 1.0
        out = {"op": sum(v for k, v in self.device_ms.items() if k.startswith("op:")) / total}
        for cat in CATEGORIES[1:-1]:
            out[cat] = self.device_ms.get(cat, 0.0) / total
        out["host"] = self.host_ms / total
        ops = sorted((k for k in self.device_ms if k.startswith("op:")), key=lambda k: -self.device_ms[k])
        out.update({k: self.device_ms[k] / total for k in ops})
        return out

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"shares": self.shares()}


# ------------------------------------------------------------------ the dumped HLO
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<rest>.*)$")
_OPCODE = re.compile(r"\s(?P<op>[a-z][a-z0-9\-]*)\(")
_OP_NAME = re.compile(r'op_name="(?P<n>[^"]*)"')
_CALLS = re.compile(r"calls=%?(?P<c>[\w.\-]+)")
_SCOPE_NAME = re.compile(r"edbatch\.([A-Za-z0-9_.\-]+)")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")


def _label(op_name: str) -> str | None:
    """The innermost ``edbatch.*`` scope of an instruction's ``op_name`` metadata, as a category."""
    found = _SCOPE_NAME.findall(op_name)  # also inside transformations' names: "jvp(vmap(edbatch.op.cell))"
    if not found:
        return None
    part = found[-1]
    return "op:" + part[3:] if part.startswith("op.") else part


@functools.cache
def _read_module(path: str) -> dict[str, tuple[str, str | None]]:
    """``{instruction: (opcode, category or None)}`` of one dumped module; a fusion without a scope of its own
    takes the most frequent scope among the instructions it fuses. Read once per path: XLA writes a module's
    file once, when it compiles it (do not modify the result)."""
    info: dict[str, tuple[str, str | None]] = {}
    calls: dict[str, str] = {}
    members: dict[str, list] = collections.defaultdict(list)
    computation = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = _INSTRUCTION.match(line)
            if m is None or " = " not in line:
                c = _COMPUTATION.match(line)
                if c is not None and "=" not in line.split("{")[0]:
                    computation = c.group("name")
                continue
            rest = m.group("rest")
            op = _OPCODE.search(" " + rest)
            opcode = op.group("op") if op else "?"
            meta = _OP_NAME.search(rest)
            label = _label(meta.group("n")) if meta else None
            info[m.group("name")] = (opcode, label)
            if computation is not None and label is not None:
                members[computation].append(label)
            if opcode == "fusion":
                called = _CALLS.search(rest)
                if called:
                    calls[m.group("name")] = called.group("c")
    for name, comp in calls.items():
        opcode, label = info[name]
        if label is None and members.get(comp):
            info[name] = (opcode, collections.Counter(members[comp]).most_common(1)[0][0])
    return info


def _modules(directory: str) -> dict[int, dict]:
    out = {}
    for path in glob.glob(os.path.join(directory, "module_*after_optimizations.txt")):
        out[int(os.path.basename(path).split(".")[0][len("module_") :])] = _read_module(path)
    return out


# ------------------------------------------------------------------ the trace
def _events(trace_dir: str) -> list[tuple[str, int, int, int, str]]:
    """``(line key, start ns, duration ns, program id, instruction)`` of every executed instruction."""
    from jax.profiler import ProfileData

    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise ProfileError(f"the profiler wrote no trace under {trace_dir}")
    out = []
    for path in files:
        data = ProfileData.from_file(path)
        for plane in data.planes:
            for line in plane.lines:
                key = f"{plane.name}/{line.name}"
                for e in line.events:
                    stats = dict(e.stats)
                    if "hlo_op" not in stats or "program_id" not in stats:
                        continue
                    out.append((key, int(e.start_ns), int(e.duration_ns), int(stats["program_id"]), stats["hlo_op"]))
    return out


def _self_times(events: list) -> list[tuple[int, int, int, str, int]]:
    """``(start, end, program id, instruction, own ns)`` per event: its duration less that of the events nested
    in it on the same line (a loop's body, a branch's instructions)."""
    by_line = collections.defaultdict(list)
    for key, start, dur, pid, name in events:
        by_line[key].append((start, start + dur, pid, name))
    out = []
    for spans in by_line.values():
        spans.sort(key=lambda s: (s[0], -s[1]))
        own = [s[1] - s[0] for s in spans]
        stack: list[int] = []
        for i, (start, end, _, _) in enumerate(spans):
            while stack and spans[stack[-1]][1] <= start:
                stack.pop()
            if stack:
                own[stack[-1]] -= end - start
            stack.append(i)
        out += [(s, e, p, n, max(o, 0)) for (s, e, p, n), o in zip(spans, own)]
    return out


def _busy_ns(spans: list[tuple[int, int]]) -> int:
    """Length of the union of ``[start, end)`` intervals."""
    total, reach = 0, None
    for start, end in sorted(spans):
        if reach is None or start > reach:
            total += end - start
            reach = end
        elif end > reach:
            total += end - reach
            reach = end
    return total


def profile_calls(fn: Callable[[], Any], calls: int, label: str, hlo_dir: str | None = None) -> StepProfile:
    """Profiles ``calls`` calls of ``fn`` (each waited for with ``jax.block_until_ready``).

    Run ``fn`` once before, so that its compilations fall outside the trace.
    ``hlo_dir``: where XLA dumped the optimised HLO (default: the folder of
    :func:`start_hlo_dump`). Raises :class:`ProfileError` when there is no
    dump, or the trace holds no executed instruction.
    """
    hlo_dir = hlo_dir or hlo_dump_dir()
    if not hlo_dir or not os.path.isdir(hlo_dir):
        raise ProfileError(
            "no HLO dump to attribute the trace with: call edbatch_jax.apps.profile.start_hlo_dump() before JAX "
            "compiles anything (edbatch bench --profile does)"
        )
    with tempfile.TemporaryDirectory(prefix="edbatch-trace-") as trace_dir:
        jax.profiler.start_trace(trace_dir)
        try:
            t0 = time.perf_counter()
            for _ in range(calls):
                jax.block_until_ready(fn())
            wall = time.perf_counter() - t0
        finally:
            jax.profiler.stop_trace()
        events = _events(trace_dir)
    if not events:
        raise ProfileError(f"the trace of {label!r} holds no executed instruction")
    modules = _modules(hlo_dir)
    device: dict[str, float] = collections.defaultdict(float)
    unattributed = 0.0
    spans = []
    for start, end, pid, name, own in _self_times(events):
        spans.append((start, end))
        info = modules.get(pid)
        if info is None:
            unattributed += own
            device["other device"] += own
            continue
        opcode, category = info.get(name, ("?", None))
        if opcode in _LOOP_OPCODES:
            category = "loop/branch"
        device[category or "other device"] += own
    per_call = lambda ns: ns / 1e6 / calls
    host_ns = max(wall * 1e9 - _busy_ns(spans), 0.0)
    return StepProfile(
        label=label,
        calls=calls,
        wall_ms=wall * 1e3 / calls,
        device_ms={k: per_call(v) for k, v in device.items() if v > 0},
        host_ms=per_call(host_ns),
        unattributed_ms=per_call(unattributed),
    )


def format_profiles(profiles: list[StepProfile], top_ops: int = 6) -> str:
    """A Markdown table: one row per profile, the share of each category (and of the ``top_ops`` costliest op
    types) in percent, and the wall time per call."""
    head = ["profiled", "ms/call", *CATEGORIES, "costliest op types"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in profiles:
        s = p.shares()
        ops = [f"{k[3:]} {100 * v:.0f}" for k, v in s.items() if k.startswith("op:")][:top_ops]
        cells = [p.label, f"{p.wall_ms:.2f}", *(f"{100 * s[c]:.1f}" for c in CATEGORIES), ", ".join(ops)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
