"""Policy files against bad input: every corrupt file gives a PolicyFileError that names the file, line and field.

Also the atomic writer under them: killed saves leave no lasting temporaries, and files get ordinary modes.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import depth_trap

import edbatch_jax as eb
from edbatch_jax import io as eb_io
from edbatch_jax.fsm import encoding as enc
from edbatch_jax.fsm.policy_file import MAX_FILE_BYTES

OP_TYPES = ("a", "b", "x")


def _states(encoding: str, k: int) -> list[tuple[int, ...]]:
    """Every reachable non-empty state over ``k`` op types, in a fixed order."""
    states = {}
    for counts in itertools.product(range(3), repeat=k):
        for typewise in itertools.product(range(2), repeat=k):
            if any(counts):
                states.setdefault(enc.state_tuple(counts, encoding, np.add(counts, typewise)), None)
    return sorted(states, key=lambda s: (len(s), s))


def _policy(encoding: str = "sort") -> eb.FSMPolicy:
    """A small policy over ``OP_TYPES``: every other reachable state maps to its first ready type."""
    k = len(OP_TYPES)
    table = {state: enc.ready_types(state, encoding, k)[0] for state in _states(encoding, k)[::2]}
    settings_ = {"alpha": 0.4, "n_step": 10, "bootstrap": True}
    provenance = {"seed": 0, "lower_bound": 4.0, "curve": {"eval_episodes": [0, 50], "eval_batches": [9.0, 8.0]}}
    return eb.FSMPolicy(OP_TYPES, encoding, table, settings=settings_, provenance=provenance)


def _graph() -> eb.Graph:
    """Chains a->b->a... with an "x" after every b: a graph over ``OP_TYPES``."""
    return depth_trap(3)


POLICIES = {e: _policy(e) for e in enc.ENCODINGS}
GRAPH = _graph()


def _text(data) -> str:
    return json.dumps(data, indent=1)


def _load_error(path, op_types=OP_TYPES) -> str:
    with pytest.raises(eb.PolicyFileError) as err:
        eb.FSMPolicy.load(path, op_types=op_types)
    return str(err.value)


def _line_of(text: str, needle: str, occurrence: int = 0) -> int:
    """1-based line of the ``occurrence``-th ``needle`` in ``text``."""
    starts = [m.start() for m in re.finditer(re.escape(needle), text)]
    return text.count("\n", 0, starts[occurrence]) + 1


def _assert_valid(policy: eb.FSMPolicy) -> None:
    """A loaded policy's table holds only legal actions, and it schedules a graph correctly."""
    k = len(policy.op_types)
    for state, action in policy.table.items():
        assert enc.state_problem(state, policy.encoding, k) is None
        assert action in enc.ready_types(state, policy.encoding, k)
    if sorted(policy.op_types) == sorted(GRAPH.op_types):
        eb.validate_schedule(GRAPH, eb.schedule(GRAPH, policy))


# ----------------------------------------------------------------------------- hole 1: wrong types, with lines
ENTRY = 3  # the table entry the cases below break


def _set(path, value):
    def mutate(d):
        node = d
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(d):
        node = d
        for p in path[:-1]:
            node = node[p]
        del node[path[-1]]

    return mutate


WRONG_VALUES = [[], ["a"], {}, {"a": 1}, "a", 1.5, 7, True, False, None]
TYPE_CASES = (
    [(("table", ENTRY), v, "table entry 3 must be an object") for v in WRONG_VALUES if not isinstance(v, dict)]
    + [(("table", ENTRY, "state"), v, "'state' must be a list") for v in WRONG_VALUES if not isinstance(v, list)]
    + [
        (("table", ENTRY, "state", 0), v, "'state' must be a list of op type names, item 0")
        for v in WRONG_VALUES
        if not isinstance(v, str)
    ]
    + [(("table", ENTRY, "action"), v, "'action' must be an op type name") for v in WRONG_VALUES if v != "a"]
    + [(("settings",), v, "'settings' must be an object") for v in WRONG_VALUES if not isinstance(v, dict)]
    + [(("provenance",), v, "'provenance' must be an object") for v in WRONG_VALUES if not isinstance(v, dict)]
    + [(("settings", "alpha"), v, "'settings.alpha' must be a number") for v in ["0.4", [], {}, True, None]]
    + [(("settings", "n_step"), v, "'settings.n_step' must be an integer") for v in [2.5, "10", True, None]]
    + [(("settings", "bootstrap"), v, "'settings.bootstrap' must be true or false") for v in [1, "yes", None]]
    + [(("settings", "alpha"), v, "'settings.alpha' is out of range") for v in [0, 1.5, -3]]
    + [(("settings", "n_step"), 0, "'settings.n_step' is out of range")]
    + [(("provenance", "seed"), v, "'provenance.seed' must be an integer") for v in ["0", 0.5, None]]
    + [(("provenance", "lower_bound"), v, "'provenance.lower_bound' must be a non-negative") for v in [-1, "4"]]
    + [(("provenance", "curve"), v, "'provenance.curve' must be an object") for v in [[], "c", 3]]
    + [(("provenance", "curve", "eval_batches"), v, "eval_batches' must be a list") for v in [{}, "c", 3]]
    + [
        (("provenance", "curve", "eval_batches", 1), v, "eval_batches' must be a list of non-negative numbers")
        for v in ["c", None, -2.0]
    ]
    + [
        (("provenance", "curve", "eval_episodes", 1), v, "eval_episodes' must be a list of non-negative integers")
        for v in [1.5, -1, "1"]
    ]
    + [(("op_types", 1), v, "'op_types' must be a list of op type names, item 1") for v in [1, None, [], {}]]
    + [(("op_types",), v, "'op_types' must be a non-empty list") for v in [[], "abx", {}, None, 3]]
    + [(("encoding",), v, "unknown encoding") for v in [["sort"], {}, None, 1, "zigzag", "SORT"]]
    + [(("fallback",), v, "unknown fallback") for v in [["last"], {}, None, 0, "random"]]
)


@pytest.mark.parametrize("path, value, message", TYPE_CASES, ids=lambda x: repr(x)[:30])
def test_wrong_types_name_the_field_and_line(tmp_path, path, value, message):
    data = POLICIES["sort"].to_dict()
    _set(path, "SENTINEL")(data)
    line = _line_of(_text(data), '"SENTINEL"')  # where the broken value starts: the text before it is the same
    _set(path, value)(data)
    p = tmp_path / "p.json"
    p.write_text(_text(data))
    msg = _load_error(p)
    assert message in msg and msg.startswith(f"{p}, line {line}: "), msg


def test_missing_and_unknown_fields(tmp_path):
    p = tmp_path / "p.json"
    cases = [
        (_delete(("table", ENTRY, "action")), "must be an object with 'state' and 'action'"),
        (_set(("table", ENTRY, "weight"), 1), "table entry 3 has an unknown field 'weight'"),
        (_delete(("table",)), "missing field 'table'"),
        (_delete(("op_types",)), "missing field 'op_types'"),
        (_delete(("version",)), "unsupported version None"),
        (_delete(("format",)), "not an edbatch FSM policy"),
        (_set(("fallbak",), "first"), "unknown field 'fallbak'"),
    ]
    for mutate, message in cases:
        data = POLICIES["sort"].to_dict()
        mutate(data)
        p.write_text(_text(data))
        assert message in _load_error(p)
    for root in ([], "policy", 3, None, True):
        p.write_text(json.dumps(root))
        assert "not a JSON object" in _load_error(p)


# ----------------------------------------------------------------------------- hole 2: duplicates
def test_conflicting_duplicate_entries_and_keys_are_refused(tmp_path):
    p = tmp_path / "p.json"
    data = POLICIES["sort"].to_dict()
    entry = data["table"][ENTRY]
    other = next(t for t in entry["state"] if t != entry["action"])
    data["table"].append({"state": entry["state"], "action": other})
    text = _text(data)
    p.write_text(text)
    msg = _load_error(p)
    # an entry starts at its "{", the line above its "state"
    first, second = (_line_of(text, '"state"', i) - 1 for i in (ENTRY, len(data["table"]) - 1))
    assert msg.startswith(f"{p}, line {second}: table entries {ENTRY} (line {first}) and {len(data['table']) - 1}")
    assert "two actions" in msg
    # an identical repeat says nothing new: accepted
    data["table"][-1] = dict(entry)
    p.write_text(_text(data))
    assert eb.FSMPolicy.load(p).table == POLICIES["sort"].table

    base = _text(POLICIES["sort"].to_dict())
    dup_top = base.replace('"fallback": "last",', '"fallback": "last",\n "fallback": "first",')
    p.write_text(dup_top)
    msg = _load_error(p)
    line = _line_of(dup_top, '"fallback"')
    assert f"key 'fallback' appears twice in the top-level object (lines {line} and {line + 1})" in msg
    state = '"state": ["a"]'
    dup_entry = base.replace('"action":', f'{state},\n  "action":', 1)
    p.write_text(dup_entry)
    assert "key 'state' appears twice in field 'table[0]'" in _load_error(p)
    dup_setting = base.replace('"alpha": 0.4', '"alpha": 0.4, "alpha": 0.9')
    p.write_text(dup_setting)
    assert "key 'alpha' appears twice in field 'settings'" in _load_error(p)


# ----------------------------------------------------------------------------- hole 3: what is not a policy file
def test_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    errors = []

    def load():
        try:
            eb.FSMPolicy.load(fifo)
        except Exception as e:  # handed to the test thread
            errors.append(e)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the reader (it waits for a writer), then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail("loading a FIFO blocked")
    assert len(errors) == 1 and isinstance(errors[0], eb.PolicyFileError)
    assert str(errors[0]) == f"{fifo}: cannot read policy file: it is a named pipe (FIFO), not a regular file"


def test_files_that_are_not_policies(tmp_path):
    assert "it is a folder, not a regular file" in _load_error(tmp_path)
    if os.path.exists("/dev/null"):
        assert "it is a character device" in _load_error("/dev/null")
    assert _load_error(tmp_path / "missing.json").endswith("cannot read policy file: no such file")
    (tmp_path / "f").write_text("")
    assert "no such file" in _load_error(tmp_path / "f" / "policy.json")
    assert "cannot read policy file" in _load_error(str(tmp_path / "nul\0.json"))
    p = tmp_path / "p.json"
    for text in ("", "   \n\n"):
        p.write_text(text)
        assert _load_error(p) == f"{p}: corrupt policy file: it is empty (expected a JSON object)"
    with open(p, "wb") as f:  # sparse: no disk used
        f.truncate(MAX_FILE_BYTES + 1)
    assert f"policy file too large ({MAX_FILE_BYTES + 1} bytes; the limit is 256 MiB)" in _load_error(p)
    text = _text(POLICIES["sort"].to_dict())
    line = _line_of(text, '"encoding"')
    p.write_bytes(text.replace('"sort"', '"s\xf6rt"').encode("latin-1"))
    msg = _load_error(p)
    assert f"{p}, line {line}: corrupt policy file: byte 0xf6" in msg and "not UTF-8" in msg
    p.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a byte order mark is harmless
    assert eb.FSMPolicy.load(p).num_entries == POLICIES["sort"].num_entries
    p.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in _load_error(p)
    p.write_text(text[: len(text) // 2])
    assert f"{p}, line {text[: len(text) // 2].count(chr(10)) + 1}: corrupt policy file (not valid JSON" in _load_error(
        p
    )


@pytest.mark.parametrize(
    "old, new",
    [
        ('"alpha": 0.4', '"alpha": NaN'),
        ('"alpha": 0.4', '"alpha": Infinity'),
        ('"alpha": 0.4', '"alpha": -Infinity'),
        ('"alpha": 0.4', '"alpha": 1e400'),
        ('"seed": 0', '"seed": ' + "9" * 5000),
        ('"version": 1', '"version": NaN'),
        ('"lower_bound": 4.0', '"lower_bound": -1e999'),
    ],
)
def test_non_finite_numbers_are_refused(tmp_path, old, new):
    text = _text(POLICIES["sort"].to_dict())
    assert old in text
    p = tmp_path / "p.json"
    p.write_text(text.replace(old, new))
    field = old.split('"')[1]
    msg = _load_error(p)
    assert msg.startswith(f"{p}, line {_line_of(text, old)}: corrupt policy file: ")
    assert f"in field '{'settings.' if field == 'alpha' else ''}" in msg and "is not a finite number" in msg


# ----------------------------------------------------------------------------- other checks of the loader
@pytest.mark.parametrize(
    "mutate, message",
    [
        (_set(("version",), 2), "unsupported version 2, written by a newer edbatch_jax (this library reads version 1)"),
        (_set(("version",), 0), "unsupported version 0 (this library reads version 1)"),
        (_set(("version",), "1"), "unsupported version '1' (expected an integer"),
        (_set(("version",), 1.0), "unsupported version 1.0 (expected an integer"),
        (_set(("version",), True), "unsupported version True (expected an integer"),
        (_set(("format",), ["edbatch-fsm"]), "not an edbatch FSM policy"),
        (_set(("op_types",), ["a", "b", "a"]), "'op_types' has duplicates: 'a' appears twice"),
        (_set(("op_types",), [f"t{i}" for i in range(5000)]), "'op_types' lists 5000 op types; a policy has at most"),
        (_set(("op_types",), [f"t{i}" for i in range(300)]), "table entry 0: unknown op type 'a'"),
        (_set(("table", ENTRY, "state"), ["a", "b", "x", "a", "b"]), "is not a valid 'sort' state"),
        (_set(("table", ENTRY, "state"), ["a"] * 10_000), "is not a valid 'sort' state"),
        (_set(("table", ENTRY, "state"), ["a*"]), "unknown op type 'a*'"),
        (_set(("table", ENTRY, "action"), "nope"), "unknown op type 'nope'"),
        (_set(("table", ENTRY, "action"), -1), "'action' must be an op type name, got the integer -1"),
    ],
)
def test_meaningless_values_are_refused(tmp_path, mutate, message):
    data = POLICIES["sort"].to_dict()
    mutate(data)
    p = tmp_path / "p.json"
    p.write_text(_text(data))
    assert message in _load_error(p, op_types=None)


def test_encoding_specific_states_and_op_types_argument(tmp_path):
    p = tmp_path / "p.json"
    for encoding, state in [("max", ["a", "b"]), ("max", ["a", "b", "x"]), ("set", ["b", "a"]), ("sort", [])]:
        data = POLICIES[encoding].to_dict()
        data["table"][0]["state"] = state
        p.write_text(_text(data))
        assert "state" in _load_error(p)
    data = POLICIES["sort_complete"].to_dict()
    data["op_types"] = ["a", "a*", "x"]
    p.write_text(_text(data))
    assert "cannot both be named" in _load_error(p, op_types=None)
    POLICIES["sort"].save(p)
    msg = _load_error(p, op_types=("a", "b", "y"))
    assert "the policy is for op types ['a', 'b', 'x'], but the model has ['a', 'b', 'y']" in msg
    assert "only in the policy: ['x']; only in the model: ['y']" in msg
    assert "but the model has" in _load_error(p, op_types=("a", "b", "x", "x"))
    with pytest.raises(TypeError, match="op_types must be a sequence"):
        eb.FSMPolicy.load(p, op_types="abx")
    with pytest.raises(eb.PolicyFileError, match=r"^<dict>: table entry 0: 'state' must be a list"):
        eb.FSMPolicy.from_dict({**POLICIES["sort"].to_dict(), "table": [{"state": 1, "action": "a"}]})
    for encoding, policy in POLICIES.items():  # every encoding round-trips, in any op type order
        policy.save(p)
        loaded = eb.FSMPolicy.load(p, op_types=("x", "a", "b"))
        assert loaded.table == policy.table
        assert loaded.encoding == encoding and loaded.settings == policy.settings
        _assert_valid(loaded)


# ----------------------------------------------------------------------------- hole 4: killed saves
_KILLED_SAVE = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("atomic_io", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
def hang(src, dst):
    print(os.path.basename(src), flush=True)
    time.sleep(60)
os.replace = hang
module.write_text_atomic(sys.argv[2], "{half written", prefix=".fsm-")
"""


def test_killed_save_leaves_the_file_and_its_temporary_is_removed_by_the_next_save(tmp_path):
    path = tmp_path / "policy.json"
    POLICIES["sort"].save(path)
    before = path.read_text()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVE, eb_io.__file__, str(path)], stdout=subprocess.PIPE, text=True
    )
    killed = child.stdout.readline().strip()  # the temporary exists, fully written, not yet renamed
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    assert killed == f".fsm-policy.json.{child.pid}.{killed.split('.')[-2]}.tmp"
    assert (tmp_path / killed).exists() and path.read_text() == before
    eb.FSMPolicy.load(path)
    live = f".fsm-policy.json.{os.getppid()}.abcd.tmp"  # a save still running elsewhere: kept
    mine = f".fsm-policy.json.{os.getpid()}.ef01.tmp"
    other_target = f".fsm-other.json.{child.pid}.abcd.tmp"  # another file's: not this save's business
    longer_name = f".fsm-policy.json.7.{child.pid}.abcd.tmp"  # the temporary of "policy.json.7"
    not_ours = ".fsm-policy.json.notes.tmp"
    for name in (live, mine, other_target, longer_name, not_ours):
        (tmp_path / name).write_text("x")
    POLICIES["set"].save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["policy.json", live, mine, other_target, longer_name, not_ours])
    assert eb.FSMPolicy.load(path).encoding == "set"


def test_failed_save_removes_its_temporary(tmp_path, monkeypatch):
    path = tmp_path / "policy.json"

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(eb_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        POLICIES["sort"].save(path)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- hole 5: file modes
def test_saved_files_get_the_mode_open_would_give_and_keep_theirs(tmp_path):
    path = tmp_path / "policy.json"
    old = os.umask(0o022)
    try:
        POLICIES["sort"].save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
        os.chmod(path, 0o640)
        POLICIES["set"].save(path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        os.umask(0o027)
        POLICIES["sort"].save(tmp_path / "other.json")
        assert stat.S_IMODE(os.stat(tmp_path / "other.json").st_mode) == 0o640
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- fuzz
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8) | st.sampled_from(OP_TYPES),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def _nodes(value, path=()):
    """Paths of every value in a JSON tree (the root included)."""
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from _nodes(child, path + (key,))


def _json_type(value):
    return float if isinstance(value, int) and not isinstance(value, bool) else type(value)


@st.composite
def corrupt_files(draw):
    """The bytes of a valid policy file with one to three random corruptions."""
    encoding = draw(st.sampled_from(enc.ENCODINGS))
    data = copy.deepcopy(POLICIES[encoding].to_dict())
    text_edits = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "delete", "duplicate", "truncate", "flip"]))
        paths = list(_nodes(data))
        if kind == "replace":
            path = draw(st.sampled_from(paths))
            old = data
            for p in path:
                old = old[p]
            new = draw(JSON_VALUES)
            if _json_type(new) is _json_type(old):  # another type: wrap it
                new = {"v": new} if isinstance(old, list) else [new]
            if path:
                _set(path, new)(data)
            else:
                data = new
        elif kind == "delete":
            keyed = [p for p in paths if p]
            if keyed:
                _delete(draw(st.sampled_from(keyed)))(data)
        elif kind == "duplicate":
            table = data.get("table") if isinstance(data, dict) else None
            if isinstance(table, list) and table and isinstance(table[0], dict):
                entry = dict(draw(st.sampled_from(table)))
                entry["action"] = draw(st.sampled_from(OP_TYPES))
                table.insert(draw(st.integers(0, len(table))), entry)
        else:
            text_edits.append((kind, draw(st.integers(0, 10**9)), draw(st.integers(1, 255))))
    raw = json.dumps(data, indent=1).encode()
    for kind, where, mask in text_edits:
        i = where % max(len(raw), 1)
        raw = raw[:i] if kind == "truncate" else raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :] if raw else raw
    return raw


@pytest.fixture(scope="module")
def fuzz_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "policy.json"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=corrupt_files(), give_types=st.booleans())
def test_corrupt_files_load_validly_or_raise_policy_file_error(fuzz_path, raw, give_types):
    fuzz_path.write_bytes(raw)
    try:
        policy = eb.FSMPolicy.load(fuzz_path, op_types=OP_TYPES if give_types else None)
    except eb.PolicyFileError as e:
        assert str(e).startswith(str(fuzz_path))
        event("refused")
    else:
        _assert_valid(policy)
        event("loaded")
