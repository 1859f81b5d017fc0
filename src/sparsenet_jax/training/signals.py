"""Signals and background errors: SIGTERM and Ctrl-C stop a run cleanly, and a failed
save is reported in one line instead of a traceback from every writer thread.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class StopRequested(BaseException):
    """Raised where a signal arrives before there is any state worth saving.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception``
    on the way (a fallback, a retry) swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """SIGTERM (preemption) and SIGINT (Ctrl-C) become a flag the loop checks after each step.

    Before the first step has finished (data loading, compilation) there is
    nothing to save, so a signal stops at once. Afterwards the loop saves and
    exits; a second signal while it saves stops the process immediately
    (the newest finished checkpoint stays the resume point).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.armed = False
        self._startup_signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def raised(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if not self.armed:
            # Remembered as well as raised: the raise can be swallowed (a signal
            # that lands in a ``__del__`` or a weakref callback becomes an
            # "ignored" error), and :meth:`check` must still see it.
            self._startup_signum = signum
            raise StopRequested(signum)
        if self.signum is not None:  # asked twice: do not wait for the save
            print(f"{signal.Signals(signum).name} again: stopping now", file=sys.stderr)
            os._exit(128 + signum)
        self.signum = signum

    def check(self) -> None:
        """Raise :class:`StopRequested` if a start-up signal came and was swallowed on its way."""
        if not self.armed and self._startup_signum is not None:
            raise StopRequested(self._startup_signum)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        # The signal's StopRequested is raised wherever Python happens to be, and
        # library code may turn it into another error on its way out (jax 0.7's
        # tracer wraps it as "couldn't apply typeof to args"): the signal is
        # still the reason the run stopped.
        if self._startup_signum is not None and isinstance(exc, Exception):
            raise StopRequested(self._startup_signum) from exc


class ExitOnSignal:
    """SIGTERM and Ctrl-C end a command that has nothing to save at once, with one line.

    For ``python -m sparsenet_jax.aot``: ``what`` names the work in the line.
    libtpu installs a crash handler that prints a stack trace for SIGTERM when
    it loads; :func:`reclaim` gives the signals back to this handler afterwards,
    and :func:`interruptible` keeps the main thread free to run it while a
    long call (a compile) works in another thread (issue 18 item 13).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> ExitOnSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in StopSignals.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        print(f"{signal.Signals(signum).name}: stopped {self.what}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def reclaim() -> None:
    """Reinstall Python's handlers of SIGTERM and SIGINT over any a native library set since.

    Call it on the main thread right after loading libtpu.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in StopSignals.SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:
            signal.signal(signum, handler)


def interruptible(work: Callable[[], T]) -> T:
    """``work()`` on a worker thread while the main thread waits, free to handle signals.

    A signal's Python handler runs only on the main thread, between bytecodes:
    during a minute-long compile it would wait for the compile to end.
    """
    if threading.current_thread() is not threading.main_thread():
        return work()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # handed to the caller as it is
            outcome["error"] = err

    thread = threading.Thread(target=target, name="interruptible", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class HoldBackgroundErrors:
    """Hold back errors raised off the main thread while the CLI runs.

    A failed checkpoint write (a full disk) fails in many orbax/tensorstore
    threads at once, each printing a traceback, and TensorBoard's exit hook
    fails again; the same error reaches the main thread, which reports it in
    one line. So: after a good run the held errors are printed as usual; after
    a failed one they are dropped, and so are those of the interpreter's exit.
    """

    def __enter__(self) -> HoldBackgroundErrors:
        self.held: list[Callable[[], object]] = []
        self._hooks = (sys.unraisablehook, threading.excepthook)
        sys.unraisablehook = lambda u: self.held.append(lambda: self._hooks[0](u))
        threading.excepthook = lambda a: self.held.append(lambda: self._hooks[1](a))
        for name in ("absl", "asyncio"):
            logging.getLogger(name).addFilter(self._hold)
        return self

    def _hold(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.held.append(lambda: logging.getLogger(record.name).handle(record))
        return False

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:  # the error is reported; stay quiet until exit
            return
        sys.unraisablehook, threading.excepthook = self._hooks
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(self._hold)
        for emit in self.held:
            emit()
