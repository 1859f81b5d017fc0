"""Timing shared by the benchmarks: repeats that a busy machine cannot spoil, fresh processes.

Framework-free: the callables passed in block until their work is done
(``jax.block_until_ready``; PyTorch's CPU ops are synchronous).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from typing import Any

from machine import BusyMeter, log, wait_for_idle


def time_repeats(
    run: Callable[[], Any],
    warmup: int,
    repeats: int,
    steps: int,
    max_background: float | None = None,
    max_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Seconds per call: ``warmup`` calls, then ``repeats`` timed runs of ``steps`` calls.

    Args:
      run: one call of the work; it must block until the work is done.
      warmup, repeats, steps: untimed calls; timed windows; calls per window.
      max_background: a window during which other processes used more than
        this many cores is discarded and re-run once the machine is quiet again
        (for up to ``max_wait_s`` seconds; after that every window counts).
        ``None``: every window counts.
      max_wait_s: the whole budget for waiting on a quiet machine.

    Returns:
      ``median_s`` (of the kept windows, per call), ``repeats_s`` (every kept
      window, per call), ``background_cores`` (the worst load among them) and
      ``discarded_repeats``.
    """
    for _ in range(warmup):
        run()
    kept: list[float] = []
    loads: list[float] = []
    discarded = 0
    deadline = time.monotonic() + max_wait_s
    while len(kept) < repeats:
        with BusyMeter() as meter:
            for _ in range(steps):
                run()
        contaminated = max_background is not None and meter.cores > max_background
        if contaminated and time.monotonic() < deadline:
            discarded += 1
            log(f"    re-timing a disturbed repeat ({meter.cores:.2f} cores busy elsewhere)")
            wait_for_idle(deadline - time.monotonic(), max_background or 0.0)
            continue
        kept.append(meter.seconds / steps)
        loads.append(meter.cores)
    return {
        "median_s": statistics.median(kept),
        "repeats_s": kept,
        "background_cores": max(loads),
        "discarded_repeats": discarded,
    }


def best_seconds(run: Callable[[], Any], repeats: int) -> float:
    """The fastest of ``repeats`` single calls, after one warm-up call (compile, allocate)."""
    return min(time_repeats(run, warmup=1, repeats=repeats, steps=1)["repeats_s"])


def timing_fields(kind: str, timing: dict[str, Any], batch: int) -> dict[str, Any]:
    """``time_repeats`` output as ``{kind}_step_s``, ``{kind}_images_per_s``, … fields."""
    return {
        f"{kind}_step_s": timing["median_s"],
        f"{kind}_repeats_s": timing["repeats_s"],
        f"{kind}_images_per_s": batch / timing["median_s"],
        f"{kind}_background_cores": timing["background_cores"],
        f"{kind}_discarded_repeats": timing["discarded_repeats"],
    }


@dataclasses.dataclass(frozen=True)
class Repeats:
    """How a benchmark times its steps: the arguments of :func:`time_repeats` but ``run``."""

    warmup: int = 2
    repeats: int = 5
    steps: int = 2
    max_background: float | None = None
    max_wait_s: float = 0.0

    def time(self, run: Callable[[], Any]) -> dict[str, Any]:
        return time_repeats(
            run, self.warmup, self.repeats, self.steps, self.max_background, self.max_wait_s
        )


def time_train_eval(
    label: str,
    train_once: Callable[[], Any],
    eval_once: Callable[[], Any],
    how: Repeats,
    batch: int,
) -> dict[str, Any]:
    """Both steps of one framework timed, as ``train_*`` and ``eval_*`` fields."""
    log(f"  {label}: timing train")
    fields = timing_fields("train", how.time(train_once), batch)
    log(f"  {label}: timing eval")
    fields.update(timing_fields("eval", how.time(eval_once), batch))
    return fields


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn(*args, **kwargs)`` in a fresh spawned process; an error becomes ``{"error": ...}``.

    A fresh process per measurement keeps compile caches, thread pools and the
    peak RSS from leaking between presets or between JAX and PyTorch.
    """
    ctx = mp.get_context("spawn")  # fork would inherit JAX's threads and memory
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except Exception as err:  # a failed preset must not end a long run
            log(f"  FAILED: {type(err).__name__}: {err}")
            return {"error": f"{type(err).__name__}: {err}"}


def in_process(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn(*args, **kwargs)`` here (debugging: RSS and caches accumulate)."""
    return fn(*args, **kwargs)


# Side by side: each contender (a framework and its settings) lives in its own spawned
# process for the whole comparison, and the driver asks each in turn for one timed window,
# so that a machine whose load changes (other developers' jobs) slows every contender
# alike. Only one contender computes at a time; the others wait on their pipe.

_STEPS: dict[str, Callable[[], Any]] = {}


def register_steps(**steps: Callable[[], Any]) -> None:
    """Keep this process's step closures (``train=…, eval=…``) for :func:`timed_window`."""
    _STEPS.update(steps)


def timed_window(kind: str, steps: int) -> dict[str, float]:
    """``steps`` calls of the registered step ``kind``: seconds per call and the load meanwhile."""
    with BusyMeter() as meter:
        for _ in range(steps):
            _STEPS[kind]()
    return {"seconds": meter.seconds / steps, "background_cores": meter.cores}


def load_average() -> float:
    """The 1-minute load average (``/proc/loadavg``; NaN where there is none)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


class Contender:
    """One benchmark kept alive in a fresh spawned process between calls.

    ``setup(*args, **kwargs)`` runs there first (build, compile, warm up, and
    :func:`register_steps`); its result is :attr:`info`. Then :meth:`window`
    times the registered steps on request.
    """

    def __init__(self, label: str, setup: Callable[..., dict[str, Any]], *a: Any, **k: Any):
        self.label = label
        ctx = mp.get_context("spawn")
        self.pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx)
        try:
            self.info: dict[str, Any] = self.pool.submit(setup, *a, **k).result()
        except Exception as err:
            self.pool.shutdown(cancel_futures=True)
            raise RuntimeError(f"{label}: {type(err).__name__}: {err}") from err

    def window(self, kind: str, steps: int) -> dict[str, float]:
        return self.pool.submit(timed_window, kind, steps).result()

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def interleave(
    contenders: list[Contender],
    rounds: int,
    steps: int,
    kinds: tuple[str, ...] = ("train", "eval"),
    deadline: float | None = None,
) -> dict[str, Any]:
    """``rounds`` rounds; in each, every contender times ``steps`` calls of each kind in turn.

    With ``deadline`` (a ``time.monotonic()`` value), no round starts that the
    last round's duration says would end after it; the first round always runs.

    Returns, per kind, per contender label: the seconds per call of every round
    (``seconds``), the other processes' load during each window
    (``background_cores``) and the 1-minute load average after it (``loadavg``).
    """
    last_round_s = 0.0
    out: dict[str, Any] = {
        kind: {c.label: {"seconds": [], "background_cores": [], "loadavg": []} for c in contenders}
        for kind in kinds
    }
    for r in range(rounds):
        begin = time.monotonic()
        if r and deadline is not None and begin + last_round_s > deadline:
            log(f"  stopping after {r} round(s): the time budget is spent")
            break
        for kind in kinds:
            for c in contenders:
                window = c.window(kind, steps)
                row = out[kind][c.label]
                row["seconds"].append(window["seconds"])
                row["background_cores"].append(window["background_cores"])
                row["loadavg"].append(load_average())
        last = ", ".join(
            f"{c.label} {out[kinds[0]][c.label]['seconds'][-1]:.2f} s" for c in contenders
        )
        log(f"  round {r + 1}/{rounds} ({kinds[0]}): {last}; load {load_average():.2f}")
        last_round_s = time.monotonic() - begin
    return out


def ratios(times: dict[str, Any], label: str, base: str) -> list[float]:
    """Per-round speed of ``label`` over ``base`` (base seconds ÷ label seconds; > 1 = faster)."""
    return [b / a for a, b in zip(times[label]["seconds"], times[base]["seconds"], strict=True)]
