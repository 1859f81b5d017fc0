"""Test-accuracy curves of real-data runs: ours (``metrics.jsonl`` records) and the peer's.

Usage::

    python benchmarks/real_data_report.py RESULTS_DIR --out curves.png

Reads ``ours-<model>.jsonl`` (our trainer's records, each with its ``seed``)
and ``torch-*.jsonl`` (``torch_train.py``'s records) in ``RESULTS_DIR``, prints
each run's test accuracy by epoch, and draws them on one figure.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Sequence

import numpy as np

Curves = dict[str, dict[float, float]]  # "label seed N" -> {epoch: test accuracy}


def ours_curves(path: pathlib.Path) -> Curves:
    model = path.stem.removeprefix("ours-")
    curves: Curves = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("split") == "test":
            label = f"ours {model} seed {record.get('seed', 0)}"
            curves.setdefault(label, {})[round(record["epoch"], 2)] = record["accuracy"]
    return curves


def peer_curves(path: pathlib.Path) -> Curves:
    curves: Curves = {}
    label = ""
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == "header":
            config = record["config"]
            label = f"PyTorch {config['model']} seed {config['seed']}"
        elif record["kind"] == "epoch":
            curves.setdefault(label, {})[round(record["epoch"], 2)] = record["test_accuracy"]
    return curves


def read(folder: pathlib.Path) -> Curves:
    curves: Curves = {}
    for path in sorted(folder.glob("ours-*.jsonl")):
        curves.update(ours_curves(path))
    for path in sorted(folder.glob("torch-*.jsonl")):
        curves.update(peer_curves(path))
    return curves


def last_accuracy(points: dict[float, float]) -> float:
    return points[max(points)]


def summary(folder: pathlib.Path, curves: Curves) -> list[str]:
    """One markdown row a network and implementation: seeds, last test accuracy each and
    their mean ± std, and the median train images/s (ours: all replicas of the program)."""
    rows = ["| run | seeds | last test accuracy, each | mean ± std | train img/s (median) |"]
    rows.append("|---|---:|---|---:|---:|")
    groups: dict[str, list[float]] = {}
    for label, points in curves.items():
        groups.setdefault(label.rsplit(" seed ", 1)[0], []).append(100 * last_accuracy(points))
    for name, accs in groups.items():
        speed = _median_speed(folder, name)
        spread = f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1) if len(accs) > 1 else 0:.2f}"
        each = ", ".join(f"{a:.2f}" for a in accs)
        rows.append(f"| {name} | {len(accs)} | {each} | {spread} | {speed:,.0f} |")
    return rows


def _median_speed(folder: pathlib.Path, name: str) -> float:
    implementation, model = name.split(" ", 1)
    speeds = []
    if implementation == "ours":
        for line in (folder / f"ours-{model}.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("split") == "train" and record.get("seed", 0) == 0:
                speeds.append(record["images_per_sec"])
    else:
        for path in folder.glob(f"torch-{model}*.jsonl"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["kind"] == "epoch" and record.get("img_per_s"):
                    speeds.append(record["img_per_s"])
    return float(np.median(speeds)) if speeds else float("nan")


def draw(curves: Curves, out: pathlib.Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.2))
    axes = figure.add_subplot()
    for label, points in curves.items():
        epochs = sorted(points)
        style = "--" if label.startswith("PyTorch") else "-"
        axes.plot(epochs, [100 * points[e] for e in epochs], style, marker=".", label=label)
    axes.set(xlabel="epoch", ylabel="test accuracy (%)", title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(out))


def main(argv: Sequence[str] | None = None) -> Curves:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=pathlib.Path)
    parser.add_argument("--out", type=pathlib.Path)
    parser.add_argument("--title", default="q75 CIFAR-10, test accuracy by epoch")
    args = parser.parse_args(argv)
    curves = read(args.folder)
    for label, points in curves.items():
        shown = " ".join(f"{e:g}:{100 * a:.2f}" for e, a in sorted(points.items()))
        print(f"{label}: {shown}")
    print("\n".join(summary(args.folder, curves)))
    if args.out:
        draw(curves, args.out, args.title)
    return curves


if __name__ == "__main__":
    main()
