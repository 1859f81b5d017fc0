"""Shared figure plumbing: an Agg figure without pyplot, and the output format from the name."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = (".png", ".svg", ".pdf")


def output_path(path: str | Path) -> Path:
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(
            f"cannot tell the figure format from {str(out)!r}: use one of {', '.join(FORMATS)}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format=path.suffix.lower()[1:], dpi=150, bbox_inches="tight")
    return path


def new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig
