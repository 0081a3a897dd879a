"""Atomic file writes: a temporary file in the destination folder, then a rename.

The temporary file of a write to ``folder/name`` is ``folder/<prefix><name>.<pid>.<random>.tmp``: a
write killed before its rename leaves the old file intact and that temporary behind, and the next
write to the same file removes the temporaries of writers that no longer run (on this machine).
"""

from __future__ import annotations

import os
import secrets
import stat

__all__ = ["write_text_atomic"]

_TMP_SUFFIX = ".tmp"


def _temp_name(prefix: str, name: str) -> str:
    """A fresh temporary name for ``name``: ``<prefix><name>.<pid>.<random>.tmp``."""
    return f"{prefix}{name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"


def _temp_pid(entry: str, prefix: str, name: str) -> int | None:
    """The writer's pid if ``entry`` is a temporary of a write to ``name`` (see :func:`_temp_name`), else None."""
    head = f"{prefix}{name}."
    if not entry.startswith(head) or not entry.endswith(_TMP_SUFFIX):
        return None
    pid, _, tag = entry[len(head) : -len(_TMP_SUFFIX)].partition(".")
    # the random tag has no dot, so a longer target name ("name.7") is never taken for this one
    if not (pid.isdigit() and pid.isascii()) or not tag or "." in tag:
        return None
    return int(pid)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process of another user counts)."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill would end the process: never ask there
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True  # exists but is not ours, or cannot be asked: keep its file
    return True


def _remove_stale_temporaries(directory: str, prefix: str, name: str) -> None:
    """Removes the temporaries of writes to ``name`` whose writer process no longer exists."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        pid = _temp_pid(entry, prefix, name)
        if pid is not None and not _alive(pid):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass  # removed by another writer meanwhile, or not ours to remove


def write_text_atomic(path: str | os.PathLike, text: str, prefix: str = ".tmp-") -> None:
    """Writes ``text`` (plus a final newline, UTF-8) to ``path`` so that readers see the old file or the new one.

    Creates the folder if needed. The new file gets the mode of the file it replaces, or for a new file
    the one ``open(path, "w")`` would give (``0o666`` less the umask). Temporaries left by killed
    writes to the same file are removed first; on any error this write's own temporary is removed.

    Args:
      path: the file to write.
      text: its content, without the final newline.
      prefix: start of the temporary file's name (a dot keeps it hidden).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(directory, exist_ok=True)
    _remove_stale_temporaries(directory, prefix, name)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None  # a new file: os.open's 0o666 less the umask, as open() would give
    while True:
        tmp = os.path.join(directory, _temp_name(prefix, name))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), mode)
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
