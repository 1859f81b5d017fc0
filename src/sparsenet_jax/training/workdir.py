"""The lock that keeps one run per workdir (``workdir/lock``).

What the workdir holds is described by :mod:`~sparsenet_jax.training.identity`
(``config.json``) and :mod:`~sparsenet_jax.training.checkpoints`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time
from typing import Any

import jax

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
