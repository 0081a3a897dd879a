"""Programs of a small expression language: 48 typed node kinds, an interpreter, a reader and a generator.

A program is an expression tree over digits, evaluated modulo 10, so every
program (and every subexpression) has a value in ``0..9``: the label a
model learns to predict from the tree ("learning to execute"). The node
kinds, by arity:

* leaves: ``num`` (payload: the digit), ``var`` (payload: the variable
  ``a``..``z``, whose value is fixed: :data:`VAR_VALUES`), ``true`` (1),
  ``false`` (0), ``none`` (0);
* unary: ``attr`` (payload ``k`` in ``0..9``: ``x + k``), ``expr`` and
  ``ret`` and ``pos`` (``x``), ``truth`` (``x != 0``), ``double`` (``2x``),
  ``not`` (``x == 0``), ``neg`` (``-x``), ``succ`` (``x + 1``), ``pred``
  (``x - 1``), ``parity`` (``x % 2``), ``square`` (``x * x``), ``half``
  (``x // 2``), ``inv`` (``9 - x``);
* binary: ``add``, ``sub``, ``mul``, ``div`` (floor; 0 by 0), ``mod`` (0 by
  0), ``pow``, ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge``, ``and``
  (Python's: ``a`` if ``a == 0`` else ``b``), ``or``, ``bitand``,
  ``bitor``, ``bitxor``, ``lshift`` (``a * 2**b``), ``rshift`` (``a >> b``);
* ternary: ``if`` (``b`` if ``a != 0`` else ``c``), ``clamp``
  (``min(max(a, b), c)``);
* variadic, 1 to :data:`MAX_ARGS` arguments: ``call`` (payload ``k``:
  ``k + sum``), ``count`` (the number of arguments), ``maximum``,
  ``minimum``, ``sum``, ``prod``, ``all`` (1 if none is 0), ``any`` (1 if
  one is not 0).

Every result is taken modulo 10.

Text format (:func:`read_programs`, :func:`format_program`): one program
per line as an s-expression, optionally after its label, e.g.
``7 (add (attr.4 x) (call.2 3 b 5))``: a leaf is a digit, a variable
``a``..``z``, ``true``, ``false`` or ``none``; an inner node is ``(kind
arg ...)``, with ``kind.k`` for the kinds with a payload (``attr``,
``call``). Without a label the interpreter's value is the label.

A :class:`ProgramTree` is in post-order (children before their parent, the
root last), its children in CSR form, as
:class:`~edbatch_jax.zoo.data.nary.NaryTree`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence

import numpy as np

from edbatch_jax.errors import EdbatchError
from edbatch_jax.zoo.data.nary import check_child_links

__all__ = [
    "KINDS",
    "MAX_ARGS",
    "NUM_VALUES",
    "PAYLOAD_SIZES",
    "VAR_VALUES",
    "ProgramFileError",
    "ProgramTree",
    "evaluate_programs",
    "format_program",
    "kind_arity",
    "parse_program",
    "read_programs",
    "synthetic_programs",
]

NUM_VALUES = 10
"""Values (and labels) are ``0..9``: every result is taken modulo 10."""

MAX_ARGS = 6
"""The most arguments a variadic kind takes (the least is 1)."""

# Node kind, arity (-1: variadic), payload values (0: none), and the Python construct whose frequency it takes.
# Frequencies: node counts of `ast.walk` over the 168 top-level modules of CPython 3.11.7's standard library
# (Lib/*.py), measured once; a comparison counts once per operator, `Is` with `Eq` and `IsNot` with `NotEq`.
# The semantics are the language's own (module docstring); the constructs only give the kinds Python's spread.
_KIND_TABLE = (
    ("var", 0, 26, "Name", 116688),
    ("num", 0, 10, "Constant (not bool or None)", 38770),
    ("none", 0, 0, "Constant None", 4884),
    ("true", 0, 0, "Constant True", 1125),
    ("false", 0, 0, "Constant False", 1058),
    ("attr", 1, 10, "Attribute", 34552),
    ("expr", 1, 0, "Expr", 11440),
    ("truth", 1, 0, "If", 11197),
    ("ret", 1, 0, "Return", 7030),
    ("double", 1, 0, "keyword", 3238),
    ("not", 1, 0, "UnaryOp Not", 1821),
    ("neg", 1, 0, "UnaryOp USub", 1090),
    ("succ", 1, 0, "AugAssign", 848),
    ("pred", 1, 0, "Starred", 267),
    ("parity", 1, 0, "Assert", 208),
    ("square", 1, 0, "Yield, YieldFrom", 245),
    ("half", 1, 0, "Lambda", 110),
    ("inv", 1, 0, "UnaryOp Invert", 32),
    ("pos", 1, 0, "UnaryOp UAdd", 5),
    ("eq", 2, 0, "Compare Eq, Is", 3698),
    ("add", 2, 0, "BinOp Add", 2433),
    ("ne", 2, 0, "Compare NotEq, IsNot", 1591),
    ("mod", 2, 0, "BinOp Mod", 1442),
    ("and", 2, 0, "BoolOp And", 1262),
    ("sub", 2, 0, "BinOp Sub", 847),
    ("or", 2, 0, "BoolOp Or", 786),
    ("mul", 2, 0, "BinOp Mult, MatMult", 733),
    ("lt", 2, 0, "Compare Lt", 573),
    ("gt", 2, 0, "Compare Gt", 474),
    ("le", 2, 0, "Compare LtE", 316),
    ("div", 2, 0, "BinOp FloorDiv, Div", 283),
    ("ge", 2, 0, "Compare GtE", 276),
    ("bitand", 2, 0, "BinOp BitAnd", 237),
    ("bitor", 2, 0, "BinOp BitOr", 139),
    ("lshift", 2, 0, "BinOp LShift", 133),
    ("pow", 2, 0, "BinOp Pow", 129),
    ("rshift", 2, 0, "BinOp RShift", 60),
    ("bitxor", 2, 0, "BinOp BitXor", 32),
    ("clamp", 3, 0, "Slice", 1255),
    ("if", 3, 0, "IfExp", 222),
    ("call", -1, 10, "Call", 29144),
    ("count", -1, 0, "Tuple", 4954),
    ("maximum", -1, 0, "List", 1361),
    ("prod", -1, 0, "Dict", 543),
    ("sum", -1, 0, "JoinedStr", 389),
    ("all", -1, 0, "ListComp", 266),
    ("any", -1, 0, "GeneratorExp", 186),
    ("minimum", -1, 0, "Set", 71),
)
# Arguments of a `Call` (positional and keyword) in the same modules: 1 to 5, and 6 or more.
_CALL_ARGS = np.array([15442, 6208, 1822, 497, 228, 293], np.float64)

KINDS: tuple[str, ...] = tuple(k[0] for k in _KIND_TABLE)
"""The node kinds in id order (leaves first, then unary, binary, ternary and variadic kinds)."""

_ARITY = np.array([k[1] for k in _KIND_TABLE], np.int64)
_PAYLOAD = np.array([k[2] for k in _KIND_TABLE], np.int64)
_COUNTS = np.array([k[4] for k in _KIND_TABLE], np.float64)
_KIND_ID = {k: i for i, k in enumerate(KINDS)}

PAYLOAD_SIZES: dict[str, int] = {k[0]: k[2] for k in _KIND_TABLE if k[2]}
"""Kind -> the number of payload values of the kinds that carry one (``num``, ``var``, ``attr``, ``call``)."""

VAR_VALUES = (7 * np.arange(26) + 3) % NUM_VALUES
"""int64 ``[26]``: the fixed value of each variable ``a``..``z``."""
VAR_VALUES.setflags(write=False)

_CONSTANTS = {"true": 1, "false": 0, "none": 0}


def kind_arity(kind: str) -> int:
    """The number of arguments of a kind: 0 to 3, or ``-1`` for a variadic kind (1 to :data:`MAX_ARGS`)."""
    return int(_ARITY[_KIND_ID[kind]])


class ProgramFileError(EdbatchError):
    """A program that cannot be read: the message names the file, the line and what was expected."""


@dataclasses.dataclass(frozen=True, eq=False)
class ProgramTree:
    """One program: node kinds and payloads in post-order, children in CSR, and its label.

    Attributes:
      kinds: int32 ``[n]``: the kind id of every node (an index of :data:`KINDS`).
      payloads: int32 ``[n]``: the payload of the kinds that carry one
        (``0 <= p <`` :data:`PAYLOAD_SIZES` of the kind), ``-1`` elsewhere.
      child_ptr: int32 ``[n + 1]``: node ``k``'s children are
        ``child_idx[child_ptr[k]:child_ptr[k + 1]]``, in argument order.
      child_idx: int32 ``[n - 1]``: every node but the root is one node's child.
      label: the program's value (``0..9``).

    Raises:
      ValueError: arrays that do not describe one post-order tree, a kind
        with the wrong number of children, or a payload out of range.
    """

    kinds: np.ndarray
    payloads: np.ndarray
    child_ptr: np.ndarray
    child_idx: np.ndarray
    label: int

    def __post_init__(self):
        for name in ("kinds", "payloads", "child_ptr", "child_idx"):
            arr = np.asarray(getattr(self, name))
            if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"ProgramTree.{name} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
            arr = arr.astype(np.int32)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        n = self.kinds.size
        if n == 0:
            raise ValueError("a ProgramTree must have at least one node")
        if self.payloads.size != n or self.child_ptr.size != n + 1:
            raise ValueError(f"{n} kinds need {n} payloads and {n + 1} child_ptr entries")
        counts = np.diff(self.child_ptr)
        if self.child_ptr[0] != 0 or np.any(counts < 0) or self.child_ptr[-1] != self.child_idx.size:
            raise ValueError("ProgramTree.child_ptr must rise from 0 to len(child_idx)")
        if np.any((self.kinds < 0) | (self.kinds >= len(KINDS))):
            raise ValueError(f"kind ids must be in 0..{len(KINDS) - 1}")
        arity = _ARITY[self.kinds]
        bad = np.flatnonzero(np.where(arity < 0, (counts < 1) | (counts > MAX_ARGS), counts != arity))
        if bad.size:
            k = int(bad[0])
            kind = int(self.kinds[k])
            raise ValueError(f"node {k} ({KINDS[kind]}) has {counts[k]} children, expected {_arity_text(kind)}")
        size = _PAYLOAD[self.kinds]
        bad = np.flatnonzero(np.where(size > 0, (self.payloads < 0) | (self.payloads >= size), self.payloads != -1))
        if bad.size:
            k = int(bad[0])
            raise ValueError(f"node {k} ({KINDS[self.kinds[k]]}) has payload {self.payloads[k]}")
        check_child_links(counts, self.child_idx)
        if not 0 <= int(self.label) < NUM_VALUES:
            raise ValueError(f"ProgramTree.label must be in 0..{NUM_VALUES - 1}, got {self.label}")
        object.__setattr__(self, "label", int(self.label))

    @property
    def num_nodes(self) -> int:
        """Number of nodes."""
        return self.kinds.size

    @property
    def num_children(self) -> np.ndarray:
        """int32 ``[n]``: the children of every node (0 at leaves)."""
        return np.diff(self.child_ptr)

    @property
    def root(self) -> int:
        """The root's id (the last node)."""
        return self.num_nodes - 1

    def values(self) -> np.ndarray:
        """int64 ``[n]``: the interpreter's value of every node (:func:`evaluate_programs`)."""
        return evaluate_programs([self])[0]


def _arity_text(kind_id: int) -> str:
    a = int(_ARITY[kind_id])
    return f"1 to {MAX_ARGS}" if a < 0 else str(a)


# ---------------------------------------------------------------------------
# The interpreter (vectorised over all nodes of all programs, one height level at a time)
# ---------------------------------------------------------------------------


def _binary(name: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    safe = np.maximum(b, 1)
    ops = {
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "div": lambda: np.where(b == 0, 0, a // safe),
        "mod": lambda: np.where(b == 0, 0, a % safe),
        "pow": lambda: a**b,
        "eq": lambda: a == b,
        "ne": lambda: a != b,
        "lt": lambda: a < b,
        "le": lambda: a <= b,
        "gt": lambda: a > b,
        "ge": lambda: a >= b,
        "and": lambda: np.where(a == 0, a, b),
        "or": lambda: np.where(a != 0, a, b),
        "bitand": lambda: a & b,
        "bitor": lambda: a | b,
        "bitxor": lambda: a ^ b,
        "lshift": lambda: a << b,
        "rshift": lambda: a >> b,
    }
    return ops[name]()


def _unary(name: str, x: np.ndarray, payload: np.ndarray) -> np.ndarray:
    ops = {
        "attr": lambda: x + payload,
        "expr": lambda: x,
        "ret": lambda: x,
        "pos": lambda: x,
        "truth": lambda: x != 0,
        "double": lambda: 2 * x,
        "not": lambda: x == 0,
        "neg": lambda: -x,
        "succ": lambda: x + 1,
        "pred": lambda: x - 1,
        "parity": lambda: x % 2,
        "square": lambda: x * x,
        "half": lambda: x // 2,
        "inv": lambda: 9 - x,
    }
    return ops[name]()


def _variadic(name: str, v: np.ndarray, starts: np.ndarray, counts: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """The kind ``name`` of nodes whose argument values are ``v[starts[i]:starts[i] + counts[i]]`` (non-empty)."""
    ops = {
        "call": lambda: np.add.reduceat(v, starts) + payload,
        "count": lambda: counts,
        "maximum": lambda: np.maximum.reduceat(v, starts),
        "minimum": lambda: np.minimum.reduceat(v, starts),
        "sum": lambda: np.add.reduceat(v, starts),
        "prod": lambda: np.multiply.reduceat(v, starts),  # at most 9**6: no overflow
        "all": lambda: np.minimum.reduceat(v != 0, starts),
        "any": lambda: np.maximum.reduceat(v != 0, starts),
    }
    return ops[name]()


def _evaluate(kinds: np.ndarray, payloads: np.ndarray, child_ptr: np.ndarray, child_idx: np.ndarray) -> np.ndarray:
    """int64 ``[N]``: the value of every node of concatenated post-order trees (``child_idx`` global)."""
    n = kinds.size
    counts = np.diff(child_ptr)
    parent = np.repeat(np.arange(n), counts)
    height = np.zeros(n, np.int64)
    while True:  # one pass per level: a node's height is one more than its highest child's
        new = np.zeros(n, np.int64)
        np.maximum.at(new, parent, height[child_idx] + 1)
        if np.array_equal(new, height):
            break
        height = new
    values = np.zeros(n, np.int64)
    for h in range(int(height.max()) + 1):
        level = np.flatnonzero(height == h)
        for kind in np.unique(kinds[level]).tolist():
            nodes = level[kinds[level] == kind]
            name, a = KINDS[kind], int(_ARITY[kind])
            args = [values[child_idx[child_ptr[nodes] + j]] for j in range(max(a, 0))]
            if name == "num":
                out = payloads[nodes]
            elif name == "var":
                out = VAR_VALUES[payloads[nodes]]
            elif a == 0:
                out = np.full(nodes.size, _CONSTANTS[name])
            elif a == 1:
                out = _unary(name, args[0], payloads[nodes])
            elif a == 2:
                out = _binary(name, args[0], args[1])  # at most 9 ** 9: no overflow
            elif name == "if":
                out = np.where(args[0] != 0, args[1], args[2])
            elif name == "clamp":
                out = np.minimum(np.maximum(args[0], args[1]), args[2])
            else:
                k = counts[nodes]
                gather = np.repeat(child_ptr[nodes], k) + np.arange(k.sum()) - np.repeat(np.cumsum(k) - k, k)
                out = _variadic(name, values[child_idx[gather]], np.cumsum(k) - k, k, payloads[nodes])
            values[nodes] = np.asarray(out, np.int64) % NUM_VALUES
    return values


def evaluate_programs(programs: Sequence[ProgramTree]) -> list[np.ndarray]:
    """The interpreter: int64 ``[n]`` values (``0..9``) of every node of every program, the root's last.

    Each kind as in the module docstring (``0 ** 0`` is 1). Vectorised: one pass per tree level and kind
    over all programs at once.
    """
    if not programs:
        return []
    sizes = np.array([p.num_nodes for p in programs], np.int64)
    kinds, payloads, ptr, idx = _concat(programs, sizes)
    return np.split(_evaluate(kinds, payloads, ptr, idx), np.cumsum(sizes)[:-1])


def _concat(programs: Sequence[ProgramTree], sizes: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kinds, payloads and children in CSR (global ids) of concatenated programs."""
    offsets = np.cumsum(sizes) - sizes
    kinds = np.concatenate([p.kinds for p in programs]).astype(np.int64)
    payloads = np.concatenate([p.payloads for p in programs]).astype(np.int64)
    counts = np.concatenate([p.num_children for p in programs])
    ptr = np.zeros(kinds.size + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    idx = np.concatenate([p.child_idx for p in programs]).astype(np.int64)
    idx += np.repeat(offsets, sizes - 1)
    return kinds, payloads, ptr, idx


# ---------------------------------------------------------------------------
# Text format
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\(|\)|[^\s()]+", re.ASCII)
_LEAF_TOKENS = {
    **{str(d): (_KIND_ID["num"], d) for d in range(10)},
    **{chr(ord("a") + v): (_KIND_ID["var"], v) for v in range(26)},
    **{c: (_KIND_ID[c], -1) for c in _CONSTANTS},
}
_LEAF_TEXT = {v: k for k, v in _LEAF_TOKENS.items()}


def format_program(program: ProgramTree, *, label: bool = True) -> str:
    """One line of the text format: the s-expression, after the label unless ``label=False``.

    The inverse of :func:`parse_program`.
    """
    kinds, payloads = program.kinds.tolist(), program.payloads.tolist()
    ptr, idx = program.child_ptr.tolist(), program.child_idx.tolist()
    text: list[str] = []
    for k in range(program.num_nodes):  # post-order: the children's texts are made
        if ptr[k] == ptr[k + 1]:
            text.append(_LEAF_TEXT[(kinds[k], payloads[k])])
            continue
        head = KINDS[kinds[k]] + (f".{payloads[k]}" if payloads[k] >= 0 else "")
        text.append(f"({head} {' '.join(text[c] for c in idx[ptr[k] : ptr[k + 1]])})")
    return f"{program.label} {text[-1]}" if label else text[-1]


def parse_program(line: str, *, source: str = "<string>", line_no: int = 0) -> ProgramTree:
    """Parses one program of the text format, e.g. ``"7 (add (attr.4 x) (call.2 3 b 5))"``.

    The parser is iterative (an explicit stack), so deep programs are fine.

    Args:
      line: the program, optionally after its label (an integer ``0..9``).
      source: a name for the input (a file name) in error messages.
      line_no: the line number in error messages.

    Returns:
      The :class:`ProgramTree` (post-order); its label the one given, else
      the interpreter's value.

    Raises:
      ProgramFileError: ``"{source}:{line_no}: ..."`` for an empty line,
        unbalanced parentheses, an unknown kind or leaf, a kind with the
        wrong number of arguments or a missing or bad payload, a bad label,
        or text after the program.
    """
    toks = _TOKEN_RE.findall(line)

    def error(msg: str, at: int | None = None) -> ProgramFileError:
        where = ""
        if at is not None and at < len(toks):
            where = f" (column {[m.start() for m in _TOKEN_RE.finditer(line)][at] + 1})"
        text = line.strip()
        return ProgramFileError(f"{source}:{line_no}: {msg}{where}: {text if len(text) <= 60 else text[:60] + '...'!r}")

    if not toks:
        raise error("empty line, expected a program")
    label, i = None, 0
    if toks[0] not in ("(", ")") and len(toks) > 1:  # a token, then more: the label
        if not re.fullmatch(r"[0-9]+", toks[0]) or int(toks[0]) >= NUM_VALUES:
            raise error(f"expected a label (an integer 0..{NUM_VALUES - 1}) before the program, got {toks[0]!r}", 0)
        label, i = int(toks[0]), 1
    kinds: list[int] = []
    payloads: list[int] = []
    counts: list[int] = []
    children: list[int] = []
    stack: list[tuple[int, int, int, list[int]]] = []  # open nodes: kind, payload, token position, children
    start = i
    while i < len(toks):
        tok = toks[i]
        if i > start and not stack:
            raise error(f"unexpected {tok!r} after the end of the program", i)
        if tok == "(":
            if i + 1 >= len(toks) or toks[i + 1] in ("(", ")"):
                raise error("expected a node kind after '('", i + 1)
            head = toks[i + 1]
            name, _, pay = head.partition(".")
            kind = _KIND_ID.get(name)
            if kind is None or _ARITY[kind] == 0:
                raise error(f"unknown node kind {name!r}; expected one of {', '.join(KINDS[5:])}", i + 1)
            size = int(_PAYLOAD[kind])
            if size and not (re.fullmatch(r"[0-9]+", pay) and int(pay) < size):
                raise error(f"{name} needs a payload: {name}.k with k in 0..{size - 1}, got {head!r}", i + 1)
            if not size and "." in head:
                raise error(f"{name} takes no payload, got {head!r}", i + 1)
            stack.append((kind, int(pay) if size else -1, i + 1, []))
            i += 2
            continue
        if tok == ")":
            if not stack:
                raise error("unbalanced parentheses: unexpected ')'", i)
            kind, pay, at, kids = stack.pop()
            a = int(_ARITY[kind])
            if (a < 0 and not 1 <= len(kids) <= MAX_ARGS) or (a > 0 and len(kids) != a):
                raise error(f"{KINDS[kind]} takes {_arity_text(kind)} arguments, got {len(kids)}", at)
            children.extend(kids)
            counts.append(len(kids))
        else:
            leaf = _LEAF_TOKENS.get(tok)
            if leaf is None:
                raise error(f"unknown leaf {tok!r}; expected a digit, a variable a..z, true, false or none", i)
            kind, pay = leaf
            counts.append(0)
        kinds.append(kind)
        payloads.append(pay)
        if stack:
            stack[-1][3].append(len(kinds) - 1)
        i += 1
    if stack:
        raise error(f"unbalanced parentheses: {len(stack)} unclosed '('")
    ptr = np.zeros(len(kinds) + 1, np.int32)
    np.cumsum(counts, out=ptr[1:])
    kinds_a, payloads_a, idx = np.array(kinds, np.int32), np.array(payloads, np.int32), np.array(children, np.int32)
    if label is None:
        label = int(_evaluate(kinds_a.astype(np.int64), payloads_a.astype(np.int64), ptr.astype(np.int64), idx)[-1])
    return ProgramTree(kinds_a, payloads_a, ptr, idx, label)


def read_programs(path: str | os.PathLike, *, limit: int | None = None) -> list[ProgramTree]:
    """Reads a file of programs, one per line (blank lines and lines starting with ``#`` are skipped).

    Args:
      path: the file.
      limit: if given, read at most this many programs.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ProgramFileError: ``"{path}:{line_no}: ..."`` for a malformed line (1-based line numbers).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"program file not found: {path!r}")
    programs: list[ProgramTree] = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if limit is not None and len(programs) >= limit:
                break
            if line.strip() and not line.lstrip().startswith("#"):
                programs.append(parse_program(line, source=path, line_no=line_no))
    return programs


# ---------------------------------------------------------------------------
# Synthetic programs
# ---------------------------------------------------------------------------


def _kind_probabilities(mask: np.ndarray, smoothing: float) -> np.ndarray:
    """The measured frequencies of the kinds in ``mask``, mixed with ``smoothing`` of a uniform draw."""
    p = np.where(mask, _COUNTS, 0.0)
    return (1 - smoothing) * p / p.sum() + smoothing * mask / mask.sum()


def synthetic_programs(
    num: int, *, seed: int = 0, max_depth: int = 12, inner: float = 0.95, decay: float = 0.92, smoothing: float = 0.1
) -> list[ProgramTree]:
    """Random programs whose kinds have the skewed frequencies of Python's own syntax trees.

    Grown top-down one depth level at a time for all programs at once: the
    root is an inner node; a node at depth ``d >= 1`` is an inner node with
    probability ``inner * decay ** (d - 1)`` (0 at ``max_depth``), else a
    leaf. Inner kinds, and leaf kinds, are drawn with the frequencies of
    their Python constructs in the standard library (``_KIND_TABLE``)
    mixed with ``smoothing`` of a uniform draw (so that rare kinds such as
    ``pos`` still occur); a variadic kind takes 1 to 6 arguments with the
    frequencies of the argument counts of Python calls. Digits are uniform,
    variables Zipf-distributed over ``a``..``z``, ``attr`` and ``call``
    payloads uniform. The label is the interpreter's value. With the
    defaults, programs have 17 nodes on average (1 in 11 over 40), all 48
    kinds occur in 200 programs, and the labels 0 and 1 (comparisons,
    truth tests) make 43 % of the programs.

    The same arguments give the same programs.
    """
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if num == 0:
        return []
    rng = np.random.default_rng(seed)
    p_leaf = _kind_probabilities(_ARITY == 0, smoothing)
    p_inner = _kind_probabilities(_ARITY != 0, smoothing)
    p_args = _CALL_ARGS / _CALL_ARGS.sum()
    zipf = 1.0 / np.arange(1, 27)
    # per level: program, parent (global id, -1 at roots), position among its siblings, kind, payload
    prog, parent, sib = np.arange(num), np.full(num, -1), np.zeros(num, np.int64)
    levels, first = [], 0
    for depth in range(max_depth + 1):
        m = prog.size
        if m == 0:
            break
        if depth == 0:
            is_inner = np.ones(m, bool)
        else:
            is_inner = rng.random(m) < (inner * decay ** (depth - 1) if depth < max_depth else 0.0)
        kind = np.where(is_inner, rng.choice(len(KINDS), m, p=p_inner), rng.choice(len(KINDS), m, p=p_leaf))
        arity = np.where(_ARITY[kind] < 0, 1 + rng.choice(MAX_ARGS, m, p=p_args), _ARITY[kind])
        payload = np.where(_PAYLOAD[kind] > 0, rng.integers(0, 10, m), -1)
        var = kind == _KIND_ID["var"]
        payload[var] = rng.choice(26, int(var.sum()), p=zipf / zipf.sum())
        levels.append((prog, parent, sib, kind, payload, arity, np.full(m, depth)))
        ids = first + np.arange(m)
        first += m
        prog, parent = np.repeat(prog, arity), np.repeat(ids, arity)
        sib = np.arange(parent.size) - np.repeat(np.cumsum(arity) - arity, arity)
    prog, parent, sib, kind, payload, arity, depth = (np.concatenate(x) for x in zip(*levels))
    # post-order ids: post(v) = pre(v) - depth(v) + size(v) - 1, sizes bottom-up and pre-order ids top-down
    n = kind.size
    size = np.ones(n, np.int64)
    for d in range(int(depth.max()), 0, -1):
        at = np.flatnonzero(depth == d)
        np.add.at(size, parent[at], size[at])
    pre = np.zeros(n, np.int64)
    for d in range(1, int(depth.max()) + 1):
        at = np.flatnonzero(depth == d)  # siblings are consecutive, in order, within a level
        before = np.cumsum(size[at]) - size[at]
        before -= before[np.flatnonzero(sib[at] == 0)][np.cumsum(sib[at] == 0) - 1]
        pre[at] = pre[parent[at]] + 1 + before
    sizes = np.bincount(prog, minlength=num)
    new = np.cumsum(sizes)[prog] - sizes[prog] + pre - depth + size - 1  # global post-order id
    order = np.empty(n, np.int64)
    order[new] = np.arange(n)
    kinds_g, payload_g, counts = kind[order], payload[order], arity[order]
    edges = np.flatnonzero(parent >= 0)
    edges = edges[np.lexsort((new[edges], new[parent[edges]]))]
    child = new[edges]
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    values = _evaluate(kinds_g, payload_g, ptr, child)
    offsets = np.cumsum(sizes) - sizes
    local = child - np.repeat(offsets, sizes - 1)
    bounds = np.cumsum(sizes)[:-1]
    out = []
    for k, (kn, pl, ch, c) in enumerate(
        zip(
            np.split(kinds_g, bounds),
            np.split(payload_g, bounds),
            np.split(local, np.cumsum(sizes - 1)[:-1]),
            np.split(counts, bounds),
        )
    ):
        p = np.zeros(c.size + 1, np.int32)
        np.cumsum(c, out=p[1:])
        out.append(ProgramTree(kn, pl, p, ch, int(values[offsets[k] + sizes[k] - 1])))
    return out
