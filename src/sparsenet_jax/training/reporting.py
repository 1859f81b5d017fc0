"""What a user sees of a run: the progress line, ``metrics.jsonl`` and TensorBoard events."""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from sparsenet_jax._files import read_jsonl, write_atomic
from sparsenet_jax.training.errors import warn

Record = dict[str, Any]


def duration(seconds: float) -> str:
    """``1h02m03s`` / ``2m03s``; ``?`` when unknown."""
    if not math.isfinite(seconds):
        return "?"
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """A one-line progress bar on a terminal; plain periodic lines otherwise."""

    def __init__(self, total: int, enabled: bool, stream: Any = sys.stderr) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()

    def update(self, step: int, epoch: float, fields: dict[str, float], eta_s: float) -> None:
        if not self.enabled:
            return
        done = step / max(self.total, 1)
        text = (
            f"step {step}/{self.total} ep {epoch:.2f} "
            + " ".join(f"{k} {v:.4g}" for k, v in fields.items())
            + f" ETA {duration(eta_s)}"
        )
        if self.tty:
            width = 24
            bar = "#" * int(width * done) + "-" * (width - int(width * done))
            self.stream.write(f"\r[{bar}] {100 * done:5.1f}% {text}\x1b[K")
        else:
            self.stream.write(f"[{100 * done:5.1f}%] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
            self.tty = False


def summary_writer_class() -> Any:
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX imports torch whenever it is installed, only to accept torch
    tensors; that import cost a trainer start about 2 s (and a few hundred MB).
    We write Python floats, so while tensorboardX loads, ``import torch`` is made
    to fail at once (``None`` in ``sys.modules``), unless torch is loaded already.
    That is process-wide: a thread importing torch at that moment would fail too
    (the trainer has none; a later ``import torch`` works).
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object a line) and TensorBoard events, on process 0."""

    def __init__(
        self,
        workdir: pathlib.Path,
        resume_step: int,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.enabled = jax.process_index() == 0
        self.on_record = on_record
        self.path = workdir / "metrics.jsonl"
        self.tb: Any = None
        if not self.enabled:
            return
        if self.path.exists():
            self._truncate_after(resume_step)
        elif resume_step > 0:
            warn(
                f"{self.path} is missing: the records of steps 1-{resume_step} are lost, and "
                "the best test accuracy counts only the evaluations from here on"
            )
        try:
            self.tb = summary_writer_class()(str(workdir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            warnings.warn("tensorboardX is missing: no TensorBoard events", stacklevel=2)

    def _truncate_after(self, step: int) -> None:
        # Records past the restored checkpoint came from a run that died; the
        # resumed run writes them again. Replaced atomically: a kill here
        # leaves the old file or the new one, never an empty one.
        kept = [rec for rec in read_jsonl(self.path) if rec.get("step", 0) <= step]
        write_atomic(self.path, "".join(json.dumps(rec) + "\n" for rec in kept))

    def write(self, record: Record) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_record is not None:
            self.on_record(record)
        if self.tb is not None:
            # A replica's curves go under its seed: train/loss/seed_3.
            suffix = f"/seed_{record['seed']}" if "seed" in record else ""
            for key, value in record.items():
                if key not in ("split", "step", "seed") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{record['split']}/{key}{suffix}", value, record["step"])

    def close(self) -> None:
        tb, self.tb = self.tb, None
        if tb is None:
            return
        try:
            tb.close()
        except OSError as err:  # a full disk: the run's own error says so; events are a bonus
            warn(f"TensorBoard events not flushed ({err.strerror})")


Best = dict[int | None, tuple[float, int | float]]
"""Best test accuracy and its epoch, by replica seed (``None``: a run of one seed)."""


def best_so_far(path: pathlib.Path) -> Best:
    """The best test accuracy and its epoch of each seed among an earlier run's records."""
    best: Best = {}
    if path.exists():
        for rec in read_jsonl(path):
            if rec.get("split") == "test":
                update_best(best, rec)
    return best


def update_best(best: Best, record: Record) -> None:
    """Fold one test record into ``best`` (its ``seed`` field, if any, says whose)."""
    seed = record.get("seed")
    if seed not in best or record["accuracy"] > best[seed][0]:
        best[seed] = (record["accuracy"], epoch_label(record["epoch"]))


def epoch_label(epoch: float) -> int | float:
    """An evaluation's epoch as a summary names it: 13 at an epoch's end, 0.08 within one
    (a run stopped by --max-steps)."""
    shown = round(epoch, 2) or float(f"{epoch:.1g}")  # 0.004, not 0, early in a long epoch
    return int(shown) if shown == int(shown) else shown


class StepTimer:
    """Images/s of the train steps alone: time spent evaluating and saving is left out."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.metrics: list[dict[str, jax.Array]] = []
        self.images = 0
        self.data_s = 0.0
        self.paused_s = 0.0
        self.start = time.time()

    def add(self, metrics: dict[str, jax.Array], images: int) -> None:
        self.metrics.append(metrics)
        self.images += images

    def pause(self, seconds: float) -> None:
        self.paused_s += seconds

    def elapsed(self) -> float:
        return max(time.time() - self.start - self.paused_s, 1e-9)

    def summary(
        self,
        step: int,
        steps_per_epoch: int,
        lr: Callable[[int], Any],
        seeds: Sequence[int] | None = None,
    ) -> list[Record]:
        """Mean train metrics over the window and its speeds, a record per replica; starts a new window.

        ``seeds`` names the replicas of a ``--seeds`` run (metrics with a
        leading replica axis); each record then has its ``seed``, and the speeds
        are the whole program's (all replicas' images).
        """
        records = summarise(self.metrics, step, steps_per_epoch, lr, seeds)
        speeds = {  # after summarise: it waits for the window's steps to finish
            "images_per_sec": self.images / self.elapsed(),
            "input_images_per_sec": self.images / max(self.data_s, 1e-9),
        }
        self.reset()
        return [{**record, **speeds} for record in records]


def summarise(
    window: Sequence[dict[str, jax.Array]],
    step: int,
    steps_per_epoch: int,
    lr: Callable[[int], Any],
    seeds: Sequence[int] | None = None,
) -> list[Record]:
    """The mean of each train metric over ``window`` (fetched from the devices), per replica."""
    values = jax.device_get(list(window))
    head: Record = {"split": "train", "step": step, "epoch": step / steps_per_epoch}
    means = {key: np.mean([v[key] for v in values], axis=0) for key in values[0]}
    rate = float(lr(step - 1))
    if seeds is None:
        return [{**head, **{k: float(v) for k, v in means.items()}, "lr": rate}]
    return [
        {**head, "seed": seed, **{k: float(v[i]) for k, v in means.items()}, "lr": rate}
        for i, seed in enumerate(seeds)
    ]


_COMPILE = {"seconds": 0.0, "cache_hits": 0}


def _on_duration(event: str, duration_secs: float, **kwargs: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILE["seconds"] += duration_secs


def _on_event(event: str, **kwargs: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _COMPILE["cache_hits"] += 1


class CompileClock:
    """Seconds spent in XLA compilation (a persistent-cache hit counts its read) since creation."""

    _listening = False

    def __init__(self) -> None:
        if not CompileClock._listening:
            jax.monitoring.register_event_duration_secs_listener(_on_duration)
            jax.monitoring.register_event_listener(_on_event)
            CompileClock._listening = True
        self._start = dict(_COMPILE)

    @property
    def seconds(self) -> float:
        return _COMPILE["seconds"] - self._start["seconds"]

    @property
    def cache_hits(self) -> int:
        return int(_COMPILE["cache_hits"] - self._start["cache_hits"])
