"""Writing a file so that a crash leaves the old or the new one, and reading JSON lines.

Every file the package writes for keeps (``config.json``, ``metrics.jsonl``
rewrites, checkpoint manifests, dataset caches, exported artifacts) goes
through :func:`write_atomic`; every JSON-lines file it reads goes through
:func:`read_jsonl`. A leaf module: it imports nothing of the package.
"""

from __future__ import annotations

import json
import os
import pathlib
import threading
import warnings
from collections.abc import Callable
from typing import IO, Any

Content = bytes | str | Callable[[IO[bytes]], None]


def write_atomic(path: str | os.PathLike[str], content: Content) -> None:
    """Replace ``path`` with ``content``: a kill at any moment leaves the old or the new file.

    Args:
      path: the file to write; its folder must exist.
      content: bytes, text (UTF-8), or a function that writes into the open
        binary file (``lambda f: np.save(f, array)``).

    The data is written to a temporary file beside ``path``, flushed to disk
    and renamed over ``path`` in one step; the temporary file is removed
    whatever happens, so an error leaves no ``.tmp`` file behind.
    """
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with tmp.open("wb") as f:
            if callable(content):
                content(f)
            else:
                f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one a line.

    Blank lines are ignored. A line that is not a JSON object is skipped with
    a :class:`UserWarning` naming the file and line, except a torn last line
    (no newline at its end: a kill mid-write), which is skipped silently.

    Raises:
      OSError: the file cannot be read.
    """
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            record, why = None, f"not JSON ({err.msg})"
        else:
            why = "not a JSON object"
        if isinstance(record, dict):
            records.append(record)
        elif number < len(lines):  # the last piece has no newline: a torn write
            warnings.warn(f"{path}:{number}: skipped, {why}", stacklevel=2)
    return records
