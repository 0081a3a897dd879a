"""Policy files: the versioned JSON format of :class:`~edbatch_jax.fsm.FSMPolicy`, read and checked.

File format (``format: "edbatch-fsm"``, ``version: 1``)::

  {"format": "edbatch-fsm", "version": 1,
   "op_types": ["leaf", "internal", "loss"], "encoding": "sort",
   "fallback": "last",
   "table": [{"state": ["internal", "loss"], "action": "internal"}, ...],
   "settings": {...}, "provenance": {...}}

:func:`read_policy_file` reads only regular UTF-8 files of at most
:data:`MAX_FILE_BYTES` (a FIFO or a folder is refused before it is opened),
and checks every field's type and range (the known ``settings`` and
``provenance`` fields included; unknown ones there are kept as they are):
duplicate JSON keys, NaN or infinite numbers, unknown fields and two table
entries giving one state different actions are refused with a
:class:`PolicyFileError` naming the file, line and field. A state is checked
as a tuple (:func:`~edbatch_jax.fsm.encoding.state_problem`: its ids and the
encoding's shape), with no state space enumerated: a policy may have up to
:data:`~edbatch_jax.fsm.encoding.MAX_TYPES` op types. The table lists the
visited states only; :meth:`~edbatch_jax.fsm.FSMPolicy.save` writes one
entry per line. The line of a
field is found by a position-tracking walk over the text, run only when
there is an error to locate. Host-side; writing is
:meth:`FSMPolicy.save <edbatch_jax.fsm.FSMPolicy.save>` (atomic).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edbatch_jax.errors import EdbatchError
from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.qlearning import QLearningSettings

if TYPE_CHECKING:
    from edbatch_jax.fsm.policy import FSMPolicy

__all__ = [
    "FALLBACKS",
    "FORMAT",
    "MAX_FILE_BYTES",
    "SUPPORTED_VERSIONS",
    "VERSION",
    "PolicyFileError",
    "policy_from_data",
    "read_policy_file",
]

FORMAT = "edbatch-fsm"
VERSION = 1
FALLBACKS = ("last", "first", "typewise")
"""Rules for states missing from the table:

* ``"last"`` — the reference's: the last type of the state tuple (for
  ``sort``: the ready type with the fewest ready nodes);
* ``"first"`` — the first type of the state tuple (for ``sort``: the most
  ready nodes);
* ``"typewise"`` — the type-wise ratio greedy choice (tracks ``|TF_t|``,
  which costs a little more per step).
"""


class PolicyFileError(EdbatchError):
    """A policy file is unreadable, corrupt, of another version, or for other op types."""


# ------------------------------------------------------------------ reading policy files
SUPPORTED_VERSIONS = (1,)
"""The policy file versions :meth:`FSMPolicy.load` reads."""

MAX_FILE_BYTES = 256 << 20
"""Largest policy file :meth:`FSMPolicy.load` reads (256 MiB; real ones are a few KiB)."""

_MAX_TYPES = enc.MAX_TYPES
_MAX_INT_DIGITS = 64
_FIELDS = ("format", "version", "op_types", "encoding", "fallback", "table", "settings", "provenance")
_REQUIRED = ("format", "version", "op_types", "encoding", "table")
_SETTING_TYPES = {f.name: type(f.default) for f in dataclasses.fields(QLearningSettings)}
# known provenance fields (others are kept as they are): what each must be
_PROVENANCE_KINDS = {
    "created": "a string",
    "model": "a string",
    "data": "a string",
    "seed": "an integer",
    "num_graphs": "a positive integer",
    "batch_size": "a positive integer",
    "episodes": "a non-negative integer",
    "nodes_per_graph": "a non-negative number",
    "lower_bound": "a non-negative number",
    "best_batches": "a non-negative number",
    "best_ratio": "a non-negative number",
    "setup_seconds": "a non-negative number",
    "learn_seconds": "a non-negative number",
}
_CURVE_KINDS = {
    "train_batches": "a non-negative number",
    "eval_episodes": "a non-negative integer",
    "eval_batches": "a non-negative number",
}


class _DuplicateKey(Exception):
    """Raised while parsing: an object has the same key twice (located afterwards)."""


class _BadNumber(Exception):
    """Raised while parsing: NaN, an infinity, or a number too large to mean anything (located afterwards)."""


def _pairs_hook(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKey
    return out


def _parse_constant(word: str):
    raise _BadNumber


def _parse_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _BadNumber
    return value


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
        raise _BadNumber
    return int(literal)


_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?")
_WORDS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")


class _JSONWalk:
    """Where every value of a JSON text starts, by path; duplicate keys and meaningless numbers.

    Only run to locate a problem, so it may be slow; on a syntax error it keeps what it
    found before the error.

    Attributes:
      offsets: path (a tuple of keys and list indices) -> offset of the value's first character.
      duplicates: ``(path of the object, key, offset of the first key, offset of the second)``.
      bad_numbers: ``(path, offset, literal)`` of NaN, infinities and overflowing numbers.
    """

    def __init__(self, text: str):
        self.text = text
        self.offsets: dict[tuple, int] = {}
        self.duplicates: list[tuple] = []
        self.bad_numbers: list[tuple] = []
        try:
            self._value(0, ())
        except (ValueError, IndexError, RecursionError):
            pass

    def _skip(self, i: int) -> int:
        return _WS.match(self.text, i).end()

    def _value(self, i: int, path: tuple) -> int:
        text = self.text
        i = self._skip(i)
        self.offsets.setdefault(path, i)
        c = text[i]
        if c == "{":
            keys: dict[str, int] = {}
            i = self._skip(i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                i = self._skip(i)
                if text[i] != '"':
                    raise ValueError(i)
                key, end = json.decoder.scanstring(text, i + 1)
                if key in keys:
                    self.duplicates.append((path, key, keys[key], i))
                else:
                    keys[key] = i
                i = self._skip(end)
                if text[i] != ":":
                    raise ValueError(i)
                i = self._skip(self._value(i + 1, path + (key,)))
                if text[i] == "}":
                    return i + 1
                if text[i] != ",":
                    raise ValueError(i)
                i += 1
        if c == "[":
            i = self._skip(i + 1)
            if text[i] == "]":
                return i + 1
            n = 0
            while True:
                i = self._skip(self._value(i, path + (n,)))
                n += 1
                if text[i] == "]":
                    return i + 1
                if text[i] != ",":
                    raise ValueError(i)
                i += 1
        if c == '"':
            return json.decoder.scanstring(text, i + 1)[1]
        for word in _WORDS:
            if text.startswith(word, i):
                if word not in ("true", "false", "null"):
                    self.bad_numbers.append((path, i, word))
                return i + len(word)
        m = _NUMBER.match(text, i)
        if m is None:
            raise ValueError(i)
        try:
            (_parse_float if m.group(1) or m.group(2) else _parse_int)(m.group())
        except _BadNumber:
            self.bad_numbers.append((path, i, m.group()))
        return m.end()


def _field(path: Sequence) -> str:
    """``("table", 3, "state")`` -> ``"table[3].state"``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _kind(value: Any) -> str:
    """The JSON type of a value, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, int):
        return f"the integer {_short(value)}"
    if isinstance(value, float):
        return f"the number {_short(value)}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, (list, tuple)):
        return f"a list ({len(value)} items)"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_kind(value: Any, kind: str) -> bool:
    """Whether a JSON value is of a kind of :data:`_PROVENANCE_KINDS`."""
    if kind == "a string":
        return isinstance(value, str)
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "a non-negative number":
        return number and value >= 0
    integer = isinstance(value, int) and not isinstance(value, bool)
    return integer and (
        kind == "an integer"
        or (kind == "a non-negative integer" and value >= 0)
        or (kind == "a positive integer" and value >= 1)
    )


def _check_op_types_arg(op_types: Sequence[str] | None) -> tuple[str, ...] | None:
    """The caller's ``op_types`` as a tuple of names (None stays None)."""
    if op_types is None:
        return None
    if isinstance(op_types, str) or not all(isinstance(t, str) for t in op_types):
        raise TypeError(f"op_types must be a sequence of op type names, got {_short(op_types)}")
    return tuple(op_types)


def _regular_file_problem(mode: int) -> str | None:
    """Why a file of this ``st_mode`` cannot be a policy file (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ]
    what = next((name for test, name in kinds if test(mode)), "not a regular file")
    return f"cannot read policy file: it is {what}, not a regular file"


def _read_policy_text(path: str) -> str:
    """The text of a policy file: a regular UTF-8 file of at most :data:`MAX_FILE_BYTES`."""

    def fail(msg: str, line: int | None = None):
        raise PolicyFileError(f"{path}{f', line {line}' if line else ''}: {msg}") from None

    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        fail("cannot read policy file: no such file")
    except (OSError, ValueError) as e:
        fail(f"cannot read policy file ({getattr(e, 'strerror', None) or e})")
    problem = _regular_file_problem(info.st_mode)
    if problem:  # before opening: opening a FIFO would wait for a writer
        fail(problem)
    if info.st_size > MAX_FILE_BYTES:
        fail(f"policy file too large ({info.st_size} bytes; the limit is {MAX_FILE_BYTES >> 20} MiB)")
    try:
        # non-blocking: a FIFO put there since the check above cannot hang the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        fail(f"cannot read policy file ({e.strerror or e})")
    with os.fdopen(fd, "rb") as f:
        problem = _regular_file_problem(os.fstat(fd).st_mode)
        if problem:
            fail(problem)
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            fail(f"cannot read policy file ({e.strerror or e})")
    if len(data) > MAX_FILE_BYTES:
        fail(f"policy file too large (over {MAX_FILE_BYTES >> 20} MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(
            f"corrupt policy file: byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8 "
            "(policy files are UTF-8 JSON)",
            data.count(b"\n", 0, e.start) + 1,
        )
    text = text.removeprefix("\ufeff")  # a byte order mark some editors add
    if not text.strip():
        fail("corrupt policy file: it is empty (expected a JSON object)")
    return text


class _Reader:
    """Validates a parsed policy file; messages name the file, the line (when the text is known) and the field."""

    def __init__(self, source: str, text: str | None):
        self.source = source
        self.text = text
        self._walk: _JSONWalk | None = None

    def walk(self) -> _JSONWalk:
        if self._walk is None:
            self._walk = _JSONWalk(self.text or "")
        return self._walk

    def line(self, offset: int) -> int:
        return self.text.count("\n", 0, offset) + 1

    def line_of(self, path: Sequence) -> int | None:
        """The line where the value at ``path`` starts (or its closest enclosing value), if the text is known."""
        if self.text is None:
            return None
        path = tuple(path)
        offsets = self.walk().offsets
        while path and path not in offsets:
            path = path[:-1]
        return self.line(offsets[path]) if path in offsets else None

    def fail(self, path: Sequence, msg: str):
        line = self.line_of(path)
        raise PolicyFileError(f"{self.source}{f', line {line}' if line else ''}: {msg}") from None

    def parse(self) -> Any:
        """The JSON value of the text; refuses duplicate keys, NaN, infinities and absurdly long numbers."""
        try:
            return json.loads(
                self.text,
                object_pairs_hook=_pairs_hook,
                parse_constant=_parse_constant,
                parse_float=_parse_float,
                parse_int=_parse_int,
            )
        except _DuplicateKey:
            if self.walk().duplicates:
                path, key, first, second = self.walk().duplicates[0]
                where = f"field '{_field(path)}'" if path else "the top-level object"
                raise PolicyFileError(
                    f"{self.source}, line {self.line(second)}: corrupt policy file: key {_short(key)} appears twice "
                    f"in {where} (lines {self.line(first)} and {self.line(second)})"
                ) from None
            raise PolicyFileError(f"{self.source}: corrupt policy file: an object has a duplicate key") from None
        except _BadNumber:
            if self.walk().bad_numbers:
                path, offset, literal = self.walk().bad_numbers[0]
                raise PolicyFileError(
                    f"{self.source}, line {self.line(offset)}: corrupt policy file: {_short(literal)} in field "
                    f"'{_field(path)}' is not a finite number of at most {_MAX_INT_DIGITS} digits"
                ) from None
            raise PolicyFileError(
                f"{self.source}: corrupt policy file: a number is NaN, infinite or too long"
            ) from None
        except json.JSONDecodeError as e:
            raise PolicyFileError(
                f"{self.source}, line {e.lineno}: corrupt policy file (not valid JSON: {e.msg} at column {e.colno})"
            ) from None
        except RecursionError:
            raise PolicyFileError(f"{self.source}: corrupt policy file (not valid JSON: nested too deeply)") from None
        except ValueError as e:
            raise PolicyFileError(f"{self.source}: corrupt policy file (not valid JSON: {e})") from None

    # ------------------------------------------------------------ fields
    def policy(self, cls, data: Any, op_types: tuple[str, ...] | None) -> FSMPolicy:
        """The policy of a parsed file (:meth:`FSMPolicy.from_dict`)."""
        if not isinstance(data, dict):
            self.fail((), f"not an edbatch FSM policy: not a JSON object (the file holds {_kind(data)})")
        fmt = data.get("format")
        if fmt != FORMAT:
            self.fail(("format",), f"not an edbatch FSM policy (format {_short(fmt)}, expected {FORMAT!r})")
        self.version(data)
        unknown = [k for k in data if k not in _FIELDS]
        if unknown:
            self.fail(
                (unknown[0],),
                f"unknown field {_short(unknown[0])} (a version {VERSION} policy file has {list(_FIELDS)})",
            )
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            self.fail((), f"missing field {missing[0]!r} (a version {VERSION} policy file needs {list(_REQUIRED)})")
        names = self.op_types(data["op_types"], op_types)
        encoding = data["encoding"]
        if not isinstance(encoding, str) or encoding not in enc.ENCODINGS:
            self.fail(("encoding",), f"unknown encoding {_short(encoding)} (expected one of {list(enc.ENCODINGS)})")
        fallback = data.get("fallback", "last")
        if not isinstance(fallback, str) or fallback not in FALLBACKS:
            self.fail(("fallback",), f"unknown fallback {_short(fallback)} (expected one of {list(FALLBACKS)})")
        table = self.table(data["table"], names, encoding)
        settings = self.settings(data.get("settings", {}))
        provenance = self.provenance(data.get("provenance", {}))
        try:
            return cls(names, encoding, table, fallback, settings, provenance)
        except ValueError as e:  # every check above should have caught it first
            self.fail((), f"inconsistent policy file ({e})")

    def version(self, data: dict) -> None:
        version = data.get("version")
        supported = ", ".join(map(str, SUPPORTED_VERSIONS))
        if isinstance(version, bool) or not isinstance(version, int):
            self.fail(
                ("version",),
                f"unsupported version {_short(version)} (expected an integer; this library reads version {supported})",
            )
        if version not in SUPPORTED_VERSIONS:
            newer = ", written by a newer edbatch_jax" if version > max(SUPPORTED_VERSIONS) else ""
            self.fail(("version",), f"unsupported version {version}{newer} (this library reads version {supported})")

    def op_types(self, names: Any, op_types: tuple[str, ...] | None) -> list[str]:
        path = ("op_types",)
        if not isinstance(names, list) or not names:
            self.fail(path, f"'op_types' must be a non-empty list of op type names, got {_kind(names)}")
        for j, name in enumerate(names):
            if not isinstance(name, str):
                self.fail(path + (j,), f"'op_types' must be a list of op type names, item {j} is {_kind(name)}")
        dup = next((n for j, n in enumerate(names) if n in names[:j]), None)
        if dup is not None:
            self.fail(path, f"'op_types' has duplicates: {_short(dup)} appears twice")
        if len(names) > _MAX_TYPES:
            self.fail(path, f"'op_types' lists {len(names)} op types; a policy has at most {_MAX_TYPES}")
        if op_types is not None:
            # the policy schedules any graph whose op types it knows: the model may have fewer
            absent = sorted(set(op_types) - set(names))
            if absent:
                extra = sorted(set(names) - set(op_types))
                self.fail(
                    path,
                    f"the policy is for op types {names}, but the model has {list(op_types)} "
                    f"(only in the policy: {extra}; only in the model: {absent})",
                )
            dup = next((n for j, n in enumerate(op_types) if n in op_types[:j]), None)
            if dup is not None:
                self.fail(
                    path,
                    f"the policy is for op types {names}, but the model has {list(op_types)}, which repeats {dup!r}",
                )
        return names

    def table(self, table: Any, names: list[str], encoding: str) -> dict[tuple[int, ...], int]:
        if not isinstance(table, list):
            self.fail(("table",), f"'table' must be a list of entries, got {_kind(table)}")
        k = len(names)
        index = {n: i for i, n in enumerate(names)}
        marked = encoding == "sort_complete"
        if marked:
            clash = next((n for n in names if n + "*" in index), None)
            if clash is not None:
                self.fail(
                    ("op_types",),
                    f"op types {clash!r} and {clash + '*'!r} cannot both be named in a 'sort_complete' table "
                    "(a trailing '*' marks a complete type)",
                )
        actions: dict[tuple[int, ...], int] = {}
        entry_of = {}  # state -> table entry that set it
        for i, entry in enumerate(table):
            path = ("table", i)
            if not isinstance(entry, dict) or "state" not in entry or "action" not in entry:
                self.fail(path, f"table entry {i} must be an object with 'state' and 'action', got {_kind(entry)}")
            extra = [key for key in entry if key not in ("state", "action")]
            if extra:
                self.fail(path + (extra[0],), f"table entry {i} has an unknown field {_short(extra[0])}")
            state, action = entry["state"], entry["action"]
            if not isinstance(state, list):
                self.fail(
                    path + ("state",), f"table entry {i}: 'state' must be a list of op type names, got {_kind(state)}"
                )
            if not isinstance(action, str):
                self.fail(path + ("action",), f"table entry {i}: 'action' must be an op type name, got {_kind(action)}")
            if len(state) > k + 1:
                self.fail(path + ("state",), f"table entry {i}: {_short(state)} is not a valid {encoding!r} state")
            ids = []
            for j, name in enumerate(state):
                if not isinstance(name, str):
                    self.fail(
                        path + ("state", j),
                        f"table entry {i}: 'state' must be a list of op type names, item {j} is {_kind(name)}",
                    )
                complete = marked and name.endswith("*") and name[:-1] in index
                base = name[:-1] if complete else name
                if base not in index:
                    self.fail(path + ("state", j), f"table entry {i}: unknown op type {_short(name)}")
                ids.append(index[base] + k * complete)
            if action not in index:
                self.fail(path + ("action",), f"table entry {i}: unknown op type {_short(action)}")
            ids = tuple(ids)
            problem = enc.state_problem(ids, encoding, k)
            if problem is not None:
                self.fail(
                    path + ("state",), f"table entry {i}: {_short(state)} is not a valid {encoding!r} state ({problem})"
                )
            a = index[action]
            if a not in enc.ready_types(ids, encoding, k):
                self.fail(
                    path + ("action",), f"table entry {i}: action {action!r} is not ready in state {_short(state)}"
                )
            s = ids
            if actions.get(s, a) != a:
                first = entry_of[s]
                line = self.line_of(("table", first))
                self.fail(
                    path,
                    f"table entries {first}{f' (line {line})' if line else ''} and {i} give state {_short(state)} "
                    f"two actions ({names[actions[s]]!r} and {action!r})",
                )
            actions[s] = a
            entry_of.setdefault(s, i)
        return actions

    def settings(self, settings: Any) -> dict:
        if not isinstance(settings, dict):
            self.fail(("settings",), f"'settings' must be an object, got {_kind(settings)}")
        for key, value in settings.items():
            want = _SETTING_TYPES.get(key)
            if want is None:
                continue  # a setting this library does not know: kept as it is
            path = ("settings", key)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = isinstance(value, bool) if want is bool else number and (want is float or isinstance(value, int))
            if not ok:
                expected = {bool: "true or false", int: "an integer", float: "a number"}[want]
                self.fail(path, f"'settings.{key}' must be {expected}, got {_kind(value)}")
            try:
                QLearningSettings(**{key: value})
            except (ValueError, TypeError) as e:
                self.fail(path, f"'settings.{key}' is out of range ({e})")
        return settings

    def provenance(self, provenance: Any) -> dict:
        if not isinstance(provenance, dict):
            self.fail(("provenance",), f"'provenance' must be an object, got {_kind(provenance)}")
        for key, value in provenance.items():
            kind = _PROVENANCE_KINDS.get(key)
            if kind is not None and not _is_kind(value, kind):
                self.fail(("provenance", key), f"'provenance.{key}' must be {kind}, got {_kind(value)}")
        curve = provenance.get("curve", {})
        if not isinstance(curve, dict):
            self.fail(("provenance", "curve"), f"'provenance.curve' must be an object, got {_kind(curve)}")
        for key, kind in _CURVE_KINDS.items():
            values = curve.get(key, [])
            path = ("provenance", "curve", key)
            if not isinstance(values, list):
                self.fail(path, f"'provenance.curve.{key}' must be a list, got {_kind(values)}")
            bad = next((j for j, v in enumerate(values) if not _is_kind(v, kind)), None)
            if bad is not None:
                noun = kind.split(" ", 1)[1] + "s"  # "a non-negative number" -> "non-negative numbers"
                self.fail(
                    path + (bad,),
                    f"'provenance.curve.{key}' must be a list of {noun}, item {bad} is {_kind(values[bad])}",
                )
        if len(curve.get("eval_episodes", [])) != len(curve.get("eval_batches", [])):
            self.fail(
                ("provenance", "curve"),
                "'provenance.curve.eval_episodes' and 'eval_batches' must have the same length",
            )
        return provenance


def policy_from_data(
    cls: type[FSMPolicy], data: Any, op_types: Sequence[str] | None = None, source: str = "<dict>"
) -> FSMPolicy:
    """A policy of class ``cls`` (:class:`~edbatch_jax.fsm.FSMPolicy`) from parsed policy-file data, checked.

    Raises:
      PolicyFileError: a field of the wrong type or range, naming it and ``source``.
      TypeError: ``op_types`` is not a sequence of names.
    """
    return _Reader(source, None).policy(cls, data, _check_op_types_arg(op_types))


def read_policy_file(cls: type[FSMPolicy], path: str | os.PathLike, op_types: Sequence[str] | None = None) -> FSMPolicy:
    """A policy of class ``cls`` read from the policy file ``path``, checked (see the module docstring).

    Raises:
      PolicyFileError: unreadable, corrupt or mismatched file, naming the file, line and field.
      TypeError: ``op_types`` is not a sequence of names.
    """
    op_types = _check_op_types_arg(op_types)
    path = os.fspath(path)
    reader = _Reader(path, _read_policy_text(path))
    return reader.policy(cls, reader.parse(), op_types)
