"""Atomic file writes: a temporary file in the destination folder, then a rename."""

from __future__ import annotations

import os
import tempfile

__all__ = ["write_text_atomic"]


def write_text_atomic(path: str | os.PathLike, text: str, prefix: str = ".tmp-") -> None:
    """Writes ``text`` (plus a final newline) to ``path`` so that readers see the old file or the new one.

    Creates the folder if needed; on any error the temporary file is removed.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
