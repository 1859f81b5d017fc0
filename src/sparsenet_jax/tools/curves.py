"""Training curves: loss and accuracy against epoch from one or more runs' ``metrics.jsonl``.

A ``--seeds N`` run writes one record a replica at each step, each with its
``seed``: such a run is drawn as the mean over its seeds, with a shaded band of
± one standard deviation (the spread the trainer's closing line reports), so
runs overlaid stay one line each. A run of one seed is drawn as before.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparsenet_jax._files import read_jsonl
from sparsenet_jax.tools.figures import new_figure, output_path, save

METRICS_FILE = "metrics.jsonl"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def load_metrics(workdir: str | Path) -> list[dict[str, Any]]:
    """The records of ``WORKDIR/metrics.jsonl``, one JSON object per line.

    A usable record is an object with a string ``"split"`` and a numeric ``"epoch"``
    or ``"step"``. Lines are read by :func:`sparsenet_jax._files.read_jsonl`; a record that is not
    usable is skipped with a :class:`UserWarning` naming the file.

    Raises:
      FileNotFoundError: the workdir has no ``metrics.jsonl``.
    """
    file = Path(workdir) / METRICS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {str(workdir)!r} (looked for {file})")
    records = []
    for number, record in enumerate(read_jsonl(file), start=1):
        if not isinstance(record.get("split"), str):
            warnings.warn(f"{file}: record {number} skipped, no string 'split'", stacklevel=2)
        elif not (_is_number(record.get("epoch")) or _is_number(record.get("step"))):
            warnings.warn(
                f"{file}: record {number} skipped, no numeric 'epoch' or 'step'", stacklevel=2
            )
        else:
            records.append(record)
    return records


_SPLIT_STYLE: dict[str, dict[str, Any]] = {
    "train": {"linestyle": "-", "alpha": 0.85},
    "test": {"linestyle": "--"},
}


def plot_curves(
    path: str | Path,
    workdirs: Sequence[str | Path],
    labels: Sequence[str] | None = None,
) -> Path:
    """Plot loss and accuracy against epoch for one or more training runs.

    Reads ``WORKDIR/metrics.jsonl`` of each run (see :func:`load_metrics`). Left panel
    loss, right panel accuracy; one colour per run, solid lines for train and dashed
    with markers for test (other splits dotted). If no record has an ``"epoch"``,
    ``"step"`` is the x axis instead. A ``--seeds`` run (records with a ``"seed"``)
    is drawn as its seeds' mean with a band of ± one standard deviation.

    Args:
      path: output file; ``.png``, ``.svg`` or ``.pdf`` picks the format.
      workdirs: run directories.
      labels: legend label per run; default each workdir's name.

    Returns:
      The path written.

    Raises:
      FileNotFoundError: a workdir has no ``metrics.jsonl``.
      ValueError: no usable records in any run, or ``labels`` of the wrong length.
    """
    runs = _load_runs(workdirs, labels)
    out = output_path(path)
    all_records = [r for _, records in runs for r in records]
    x_key = "epoch" if any(_is_number(r.get("epoch")) for r in all_records) else "step"
    metrics = ["loss", "accuracy"]
    fig = new_figure(11.0, 4.4)
    axes = fig.subplots(1, len(metrics))
    for i, (label, records) in enumerate(runs):
        _draw_run(axes, metrics, label, records, x_key, colour=f"C{i % 10}")
    _finish_axes(axes, metrics, x_key)
    fig.suptitle("Training curves" if len(runs) == 1 else f"Training curves ({len(runs)} runs)")
    return save(fig, out)


def _load_runs(
    workdirs: Sequence[str | Path], labels: Sequence[str] | None
) -> list[tuple[str, list[dict[str, Any]]]]:
    """(label, records) of each run; errors for no runs, wrong labels or no records at all."""
    if isinstance(workdirs, str | Path):
        workdirs = [workdirs]
    if not workdirs:
        raise ValueError("give at least one workdir")
    if labels is None:
        labels = [Path(w).resolve().name or str(w) for w in workdirs]
    if len(labels) != len(workdirs):
        raise ValueError(f"got {len(labels)} labels for {len(workdirs)} workdirs")
    runs = [(label, load_metrics(w)) for label, w in zip(labels, workdirs, strict=True)]
    if not any(records for _, records in runs):
        raise ValueError(f"no usable records in {METRICS_FILE} of {', '.join(map(str, workdirs))}")
    for (label, records), w in zip(runs, workdirs, strict=True):
        if not records:
            warnings.warn(f"run {label!r} ({w}) has no usable records", stacklevel=3)
    return runs


def _draw_run(
    axes: Any,
    metrics: Sequence[str],
    label: str,
    records: list[dict[str, Any]],
    x_key: str,
    colour: str,
) -> None:
    """One run's lines in every panel: one line per split (a --seeds run's: their mean)."""
    splits = sorted({r["split"] for r in records}, key=lambda s: (s != "train", s != "test", s))
    for split in splits:
        rows = [r for r in records if r["split"] == split and _is_number(r.get(x_key))]
        rows.sort(key=lambda r: (r[x_key], r.get("step", 0) if _is_number(r.get("step")) else 0))
        style = _SPLIT_STYLE.get(split, {"linestyle": ":"})
        seeds = seeds_of(rows)
        for ax, metric in zip(axes, metrics, strict=True):
            pts = [(r[x_key], r[metric]) for r in rows if _is_number(r.get(metric))]
            if not pts:
                continue
            name = f"{label} — {split}"
            spread = None
            if len(seeds) > 1:
                xs_, ys_, spread = _over_seeds(rows, x_key, metric)
                pts = list(zip(xs_, ys_, strict=True))
                name += f" (mean ± std of {len(seeds)} seeds)"
            xs, ys = zip(*pts, strict=True)
            marker = "o" if split != "train" and len(pts) <= 60 else None
            ax.plot(
                xs,
                ys,
                color=colour,
                marker=marker,
                markersize=3.5,
                linewidth=1.4,
                label=name,
                **style,
            )
            if spread is not None:
                lower = [y - d for y, d in zip(ys, spread, strict=True)]
                upper = [y + d for y, d in zip(ys, spread, strict=True)]
                ax.fill_between(xs, lower, upper, color=colour, alpha=0.2, linewidth=0)


def seeds_of(records: Sequence[dict[str, Any]]) -> list[int]:
    """The seeds a ``--seeds`` run's records name, in order; ``[]`` for a run of one seed."""
    return sorted({r["seed"] for r in records if _is_number(r.get("seed"))})


def _over_seeds(
    rows: Sequence[dict[str, Any]], x_key: str, metric: str
) -> tuple[list[float], list[float], list[float]]:
    """At each x, the mean of ``metric`` over the seeds' records and their standard deviation.

    The deviation is the sample one (``ddof=1``), as in the trainer's closing line;
    an x that only one seed reached has none (0).
    """
    by_x: dict[float, list[float]] = {}
    for r in rows:
        if _is_number(r.get(metric)):
            by_x.setdefault(r[x_key], []).append(float(r[metric]))
    xs = sorted(by_x)
    means = [statistics.fmean(by_x[x]) for x in xs]
    spread = [statistics.stdev(by_x[x]) if len(by_x[x]) > 1 else 0.0 for x in xs]
    return xs, means, spread


def _finish_axes(axes: Any, metrics: Sequence[str], x_key: str) -> None:
    """Labels, grids, a note in empty panels, and one legend for both panels."""
    for ax, metric in zip(axes, metrics, strict=True):
        ax.set_xlabel(x_key)
        ax.set_ylabel(metric)
        ax.set_title(metric.capitalize())
        ax.grid(True, alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, f"no '{metric}' values", transform=ax.transAxes, ha="center")
    legend: dict[str, Any] = {}  # label -> handle, from both panels, first seen wins
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(text, handle)
    if legend:
        axes[-1].legend(list(legend.values()), list(legend), fontsize=8, loc="best")
