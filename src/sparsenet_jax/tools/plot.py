"""Figures: the connection schedule of a block (here), and training curves (from :mod:`~sparsenet_jax.tools.curves`).

* :func:`connectivity_matrix` — which earlier output each layer reads, as a 0/1 array.
* :func:`plot_schedule` — dense and sparse schedules side by side as heat maps
  (the paper's "which layer reads which" picture).
* :func:`plot_curves` — loss and accuracy against epoch from the ``metrics.jsonl``
  of one or more training runs, train and test, runs overlaid.

Command line::

    python -m sparsenet_jax.tools.plot schedule --layers 16 --base 2 --out schedule.png
    python -m sparsenet_jax.tools.plot curves RUN_A RUN_B --out curves.png --labels a b

matplotlib is imported only inside the plotting functions, so importing this module
costs nothing extra. Figures are drawn on matplotlib's Agg canvas directly (no pyplot,
no global backend switch), so they are safe to make from a notebook or a thread. The
output format follows the file extension: ``.png``, ``.svg`` or ``.pdf``.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from sparsenet_jax.model.schedule import Schedule
from sparsenet_jax.tools.curves import load_metrics, plot_curves
from sparsenet_jax.tools.figures import new_figure, output_path, save

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["connectivity_matrix", "load_metrics", "main", "plot_curves", "plot_schedule"]


# Schedule heat map: empty cell, a layer reads it, the block output reads it.
_EMPTY, _LAYER, _OUTPUT = "#f4f4f4", "#1f4e79", "#d95f02"


def connectivity_matrix(schedule: Schedule, num_layers: int) -> np.ndarray:
    """The 0/1 connection matrix of one block with ``num_layers`` layers.

    Layout, shape ``(n + 2, n + 1)`` with ``n = num_layers``:

    * column ``c`` is the source ``x_c`` (``x_0`` is the block input);
    * row ``r`` is the reader: row 0 is the block input itself and reads nothing
      (kept so that row and column indices name the same ``x``), rows ``1 … n`` are
      the layers, and row ``n + 1`` is the block output (what the transition receives),
      treated as a virtual layer ``n + 1``.

    Entry ``[r, c]`` is 1 when reader ``r`` reads ``x_c``. Row sums are the number of
    inputs of each layer; the array is strictly lower-triangular.
    """
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 0:
        raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
    n = num_layers
    matrix = np.zeros((n + 2, n + 1), dtype=np.int8)
    for layer in range(1, n + 1):
        matrix[layer, list(schedule.inputs(layer))] = 1
    matrix[n + 1, list(schedule.block_output(n))] = 1
    return matrix


def _schedule_title(schedule: Schedule) -> str:
    if schedule.kind == "dense":
        return "dense (DenseNet / ResNet)"
    return f"sparse, base {schedule.base} (SparseNet)"


def _draw_schedule(ax: Axes, schedule: Schedule, num_layers: int) -> None:
    from matplotlib.colors import ListedColormap

    n = num_layers
    matrix = connectivity_matrix(schedule, n)
    shown = matrix[1:].astype(np.int8)  # rows: layers 1 … n, then the block output
    shown[n] *= 2  # colour the block output's row apart
    ax.imshow(
        shown,
        cmap=ListedColormap([_EMPTY, _LAYER, _OUTPUT]),
        vmin=0,
        vmax=2,
        interpolation="nearest",
        aspect="equal",
    )
    # Cell borders.
    ax.set_xticks(np.arange(-0.5, n + 1, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, n + 1, 1.0), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0 if n <= 32 else 0.5)
    ax.tick_params(which="minor", length=0)
    ax.axhline(n - 0.5, color="black", linewidth=1.2)  # layers above, block output below

    step = max(1, math.ceil((n + 1) / 24))  # keep tick labels legible for long blocks
    cols = [c for c in range(n + 1) if c % step == 0 or c == n]
    ax.set_xticks(cols, [str(c) for c in cols])
    rows = [r for r in range(n) if (r + 1) % step == 0 or r == 0] + [n]
    ax.set_yticks(rows, [str(r + 1) for r in rows[:-1]] + ["out"])
    ax.tick_params(which="major", length=2, labelsize=8)
    for spine in ax.spines.values():
        spine.set_visible(False)

    ax.set_xlabel("source output $x_i$  (0 = block input)")
    ax.set_ylabel("reading layer $l$  (out = block output)")
    in_layers = int(matrix[1 : n + 1].sum())
    in_output = int(matrix[n + 1].sum())
    ax.set_title(
        f"{_schedule_title(schedule)}\n"
        f"{in_layers + in_output} connections ({in_layers} into layers + {in_output} into output)",
        fontsize=10,
    )


def plot_schedule(
    path: str | Path,
    num_layers: int = 16,
    kinds: Sequence[str] = ("dense", "sparse"),
    base: int = 2,
) -> Path:
    """Draw the connection matrix of one block for each schedule kind, side by side.

    Args:
      path: output file; ``.png``, ``.svg`` or ``.pdf`` picks the format.
      num_layers: layers in the block (>= 1).
      kinds: schedule kinds to draw, left to right.
      base: base of the sparse schedule.

    Returns:
      The path written.
    """
    from matplotlib.patches import Patch

    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be an int >= 1, got {num_layers!r}")
    if not kinds:
        raise ValueError("kinds must name at least one schedule kind")
    schedules = [Schedule(kind, base) for kind in kinds]  # type: ignore[arg-type]
    out = output_path(path)

    side = min(7.0, max(3.2, 0.26 * (num_layers + 1) + 1.4))
    fig = new_figure(side * len(schedules) + 0.4, side + 0.9)
    axes = fig.subplots(1, len(schedules), squeeze=False)[0]
    for ax, schedule in zip(axes, schedules, strict=True):
        _draw_schedule(ax, schedule, num_layers)
    fig.suptitle(f"Which earlier outputs each layer reads (one block, {num_layers} layers)")
    fig.legend(
        handles=[
            Patch(facecolor=_LAYER, label="layer $l$ reads $x_i$"),
            Patch(facecolor=_OUTPUT, label="block output (to the transition) includes $x_i$"),
            Patch(facecolor=_EMPTY, edgecolor="#bbbbbb", label="not read"),
        ],
        loc="outside lower center",
        ncols=3 if len(schedules) > 1 else 1,
        frameon=False,
        fontsize=9,
    )
    return save(fig, out)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparsenet_jax.tools.plot",
        description="Draw SparseNet connection schedules or training curves.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sched = sub.add_parser("schedule", help="dense vs sparse connection heat maps of one block")
    sched.add_argument("--layers", type=int, default=16, help="layers in the block (default 16)")
    sched.add_argument("--base", type=int, default=2, help="sparse schedule base (default 2)")
    sched.add_argument(
        "--kinds", nargs="+", choices=("dense", "sparse"), default=["dense", "sparse"]
    )
    sched.add_argument("--out", default="schedule.png", help=".png, .svg or .pdf")

    curves = sub.add_parser("curves", help="loss and accuracy from WORKDIR/metrics.jsonl")
    curves.add_argument("workdirs", nargs="+", metavar="WORKDIR")
    curves.add_argument("--labels", nargs="+", help="legend label per workdir")
    curves.add_argument("--out", default="curves.png", help=".png, .svg or .pdf")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; bad input exits 2 with a one-line error."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            if args.command == "schedule":
                out = plot_schedule(args.out, args.layers, args.kinds, args.base)
            else:
                out = plot_curves(args.out, args.workdirs, args.labels)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.error(str(e))
    print(out)
    return 0


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a warning as one line, without the source location."""
    print(f"warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
