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
