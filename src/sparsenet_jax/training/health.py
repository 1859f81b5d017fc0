"""Was a checkpoint saved while the run was diverging? Judged from what the run logged.

A checkpoint of step ``s`` is *healthy* when the training loss that the run
logged for the window holding step ``s + 1`` (the first step computed from
that state; else the last window before ``s``) is finite and at most
``DIVERGED_FACTOR × ln(classes)``: ten times the loss of guessing uniformly
(23.0 for 10 classes). A run learning, or one merely stuck at chance, stays
far below it; a run whose weights have blown up but are still finite (a huge
learning rate) logs losses orders of magnitude above it. The trainer will not
resume silently from a checkpoint that is not healthy (see ``--restore-step``).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Sequence
from typing import Any

from sparsenet_jax._files import read_jsonl

DIVERGED_FACTOR = 10.0


def loss_limit(num_classes: int) -> float:
    """The largest training loss of a healthy run: ten times chance's ``ln(classes)``."""
    return DIVERGED_FACTOR * math.log(max(num_classes, 2))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the run logged about the state of ``step``."""

    step: int
    loss: float | None  # None: nothing was logged about it
    logged_at: int | None
    healthy: bool


def _train_records(records: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """(step, loss) of each logged window; with ``--seeds``, the worst replica's loss."""
    worst: dict[int, float] = {}
    for record in records:
        step, loss = record.get("step"), record.get("loss")
        if record.get("split") == "train" and isinstance(step, int) and _is_number(loss):
            worst[step] = _worse(worst.get(step), float(loss))  # type: ignore[arg-type]
    return sorted(worst.items())


def _worse(a: float | None, b: float) -> float:
    if a is None:
        return b
    if not (math.isfinite(a) and math.isfinite(b)):
        return a if not math.isfinite(a) else b
    return max(a, b)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def judge(records: Sequence[dict[str, Any]], step: int, num_classes: int) -> Verdict:
    """The verdict on the checkpoint of ``step`` from the run's ``metrics.jsonl`` records."""
    pairs = _train_records(records)
    after = [(s, loss) for s, loss in pairs if s >= step + 1]
    before = [(s, loss) for s, loss in pairs if s <= step]
    chosen = after[0] if after else (before[-1] if before else None)
    if chosen is None:
        return Verdict(step, None, None, True)
    logged_at, loss = chosen
    healthy = math.isfinite(loss) and loss <= loss_limit(num_classes)
    return Verdict(step, loss, logged_at, healthy)


def read_records(workdir: pathlib.Path) -> list[dict[str, Any]]:
    path = workdir / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []
