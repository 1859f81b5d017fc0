"""The workdir's own files: the lock that keeps one run per workdir, ``config.json``
and its history, and atomic replacement of anything rewritten.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import socket
import time
from typing import Any

import jax

from sparsenet_jax._files import write_atomic
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError


class WorkdirLock:
    """One run per workdir: an exclusive ``flock`` on ``workdir/lock``, held while the run lives.

    The kernel drops the lock when its process dies (even by kill -9), so a
    dead run's lock is taken over without a question; the file only says who
    holds a live one. Where the filesystem has no locks (some network mounts)
    the holder's PID is checked instead, on the same host.
    """

    def __init__(self, workdir: pathlib.Path) -> None:
        self.path = workdir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if jax.process_index() != 0:  # a multi-host run shares one workdir: host 0 holds it
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise TrainingError(self._busy_message()) from None
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            self._check_holder_without_flock()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _busy_message(self) -> str:
        holder = self._holder()
        who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return (
            f"{self.path.parent} is in use by another run ({who}); "
            "wait for it to end or use another --workdir"
        )

    def _check_holder_without_flock(self) -> None:
        holder = self._holder()
        if holder.get("host") != socket.gethostname() or holder.get("pid") == os.getpid():
            return  # another host's lock cannot be checked here; assume it is stale
        with contextlib.suppress(TypeError, ValueError):
            try:
                os.kill(int(holder["pid"]), 0)
            except ProcessLookupError:
                return  # its run is dead: take over
            except PermissionError:
                pass
            raise TrainingError(self._busy_message())

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_config(workdir: pathlib.Path, config: TrainConfig) -> None:
    """Refuse to resume a workdir with another identity; record allowed changes.

    ``config.json`` keeps the run's first configuration. Fields that change the
    meaning of the step counter or of the state (see ``IDENTITY_FIELDS``) must
    match it; other changes (a longer schedule, another learning rate) only
    affect the future: they are logged and appended to ``config_history.jsonl``.
    """
    path = workdir / "config.json"
    saved = _read_json(path)
    mine = json.loads(config_lib.to_json(config))
    if saved is None:
        if jax.process_index() == 0:
            write_atomic(path, config_lib.to_json(config) + "\n")
        return
    identity = set(config_lib.IDENTITY_FIELDS)
    mismatched = [k for k in sorted(identity) if saved.get(k) != mine.get(k)]
    if mismatched:
        diff = ", ".join(
            f"{k}: workdir has {saved.get(k)!r}, asked {mine[k]!r}" for k in mismatched
        )
        raise TrainingError(
            f"{workdir} holds a run of another configuration ({diff}); these settings fix "
            "what a step means: resume with the saved values or use a new --workdir"
        )
    _record_changes(workdir, _effective(workdir, saved), mine)


def _read_json(path: pathlib.Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _effective(workdir: pathlib.Path, saved: dict[str, Any]) -> dict[str, Any]:
    """The configuration the last start used: config.json plus the recorded changes."""
    effective = dict(saved)
    history = workdir / "config_history.jsonl"
    if history.exists():
        for line in history.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, AttributeError, KeyError):
                effective.update({k: v[1] for k, v in json.loads(line)["changed"].items()})
    return effective


# Where and how a run is watched, not what it computes.
_NOT_RECORDED = frozenset(
    {
        "workdir",
        "progress",
        "compilation_cache_dir",
        "data_dir",
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
    }
)


def _record_changes(workdir: pathlib.Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    changed = {
        k: [before.get(k), v]
        for k, v in now.items()
        if before.get(k) != v and k not in _NOT_RECORDED
    }
    if not changed or jax.process_index() != 0:
        return
    logging.getLogger("sparsenet_jax.train").info(
        "resuming with changed settings: %s",
        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()),
    )
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed}
    with (workdir / "config_history.jsonl").open("a") as f:
        f.write(json.dumps(entry) + "\n")
