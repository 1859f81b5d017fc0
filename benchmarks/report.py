"""The benchmark suite's results as markdown: a header and one function per table.

    python benchmarks/report.py benchmarks/results/2026-11-25-amd-epyc-2c-main.json

renders a result file again (``run.py`` writes the same text next to its JSON).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

NOTES = (
    "Columns: *GFLOP/train step (XLA)* and *XLA mem* come from XLA's cost and memory "
    "analysis of the compiled train step (XLA mem = temp + arguments + outputs; the "
    "donated state is counted in both arguments and outputs). *GFLOP/train step (torch "
    "counter)* is PyTorch's FlopCounterMode on one peer step: convolutions and matmuls "
    "only, an independent check of XLA's count. *lower + compile* = tracing + lowering "
    "+ XLA compilation of the train step, in a fresh process with abstract inputs "
    "(as in the sweep), compiled again when other processes disturbed it. *train GFLOP/s* = "
    "XLA FLOPs ÷ median step "
    "time; *% of matmul peak* compares it with the matmul above. *peak RSS* = the "
    "measuring process's high-water mark (a fresh process per preset and per framework, "
    "so it includes initialisation, compilation and timing). *peer* = PyTorch eager "
    "(`benchmarks/torch_peer.py`): SGD Nesterov step / `inference_mode` forward. *busy "
    "elsewhere* = the most CPU that other processes used during any timed window of "
    "the row's kept repeats (machine busy time − the measuring process's own CPU "
    "time); repeats above the run's threshold were discarded and timed again, so it "
    "stays near 0 unless the wait for a quiet machine ran out."
)


def fmt(value: Any, digits: int = 1) -> str:
    """A table cell: thousands separators, ``digits`` decimals for floats, ``—`` for None."""
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table_head(columns: Sequence[str], text_columns: int = 1) -> list[str]:
    """A title row and the separator: text columns left-aligned, numbers right-aligned."""
    aligns = ["---"] * text_columns + ["---:"] * (len(columns) - text_columns)
    return [row(columns), row(aligns)]


def max_background(*measurements: dict[str, Any]) -> float | None:
    """The worst load other processes put on the CPU during the timed windows."""
    values = [
        m[f"{kind}_background_cores"]
        for m in measurements
        for kind in ("train", "eval")
        if f"{kind}_background_cores" in m
    ]
    return max(values) if values else None


def compile_total(preset_row: dict[str, Any]) -> float | None:
    """Lower + compile seconds: the dedicated fresh-process measurement if there is one."""
    point = preset_row.get("compile") or {}
    if "total_s" in point:
        return point["total_s"]
    ours = preset_row.get("jax") or {}
    if "train_lower_s" in ours:
        return ours["train_lower_s"] + ours["train_compile_s"]
    return None


def header(results: dict[str, Any]) -> list[str]:
    """Title, command, versions, timing setup and the matmul peak."""
    info, ver, cfg = results["machine"], results["versions"], results["config"]
    peak = results.get("matmul_peak") or {}
    # Files written before the step came from build_run have neither key: float32 input.
    data = cfg.get("dtype", "float32") + (f", {cfg['input']}" if cfg.get("input") else "")
    return [
        f"# Benchmarks {results['date']} — {info['cpu']}, {info['cores']} cores",
        "",
        f"- command: `{results['command']}`",
        f"- git: {results.get('git')}; jax {ver.get('jax')}, jaxlib {ver.get('jaxlib')}, "
        f"flax {ver.get('flax')}, torch {ver.get('torch')}, python {ver.get('python')}",
        f"- batch {cfg['batch']} × 32×32×3, {data}; median of {cfg['repeats']} repeats × "
        f"{cfg['steps']} steps after {cfg['warmup']} warm-up steps; "
        f"model kwargs {json.dumps(cfg['model_kwargs'])}",
        f"- XLA float32 matmul peak ({peak.get('n')}³, best of {cfg['peak_repeats']}): "
        f"**{fmt(peak.get('gflops'))} GFLOP/s** "
        f"(other processes meanwhile: {fmt(peak.get('background_cores'), 2)} cores)",
    ]


def ours_table(results: dict[str, Any]) -> list[str]:
    """Our train and eval steps, one row per preset."""
    columns = ["preset", "params", "GFLOP/train step (XLA)", "GFLOP/train step (torch counter)"]
    columns += ["lower + compile s", "train img/s", "eval img/s", "train GFLOP/s"]
    columns += ["% of matmul peak", "XLA mem MiB", "peak RSS MiB"]
    lines = ["", "## Ours (sparsenet_jax train and eval steps)", "", *table_head(columns)]
    peak = (results.get("matmul_peak") or {}).get("gflops")
    for preset in results["presets"]:
        ours, peer = preset.get("jax") or {}, preset.get("torch") or {}
        if "error" in ours:
            lines.append(row([preset["preset"], f"error: {ours['error'][:100]}"] + [""] * 9))
            continue
        flops, counted = ours.get("train_flops"), peer.get("torch_counted_train_flops")
        gflops = ours.get("train_gflops_per_s")
        cells = [preset["preset"], fmt(ours["params"]), fmt(flops / 1e9 if flops else None)]
        cells += [fmt(counted / 1e9 if counted else None), fmt(compile_total(preset))]
        cells += [fmt(ours["train_images_per_s"]), fmt(ours["eval_images_per_s"]), fmt(gflops)]
        cells += [fmt(100 * gflops / peak if gflops and peak else None)]
        cells += [fmt(ours.get("train_xla_peak_mib"), 0), fmt(ours["peak_rss_mib"], 0)]
        lines.append(row(cells))
    return lines


def peer_table(results: dict[str, Any]) -> list[str]:
    """Ours against the PyTorch peer, for the presets that ran both; empty if none did."""
    rows = []
    for preset in results["presets"]:
        ours, peer = preset.get("jax") or {}, preset.get("torch") or {}
        if "error" in ours or not peer:
            continue
        if "error" in peer:
            rows.append(row([preset["preset"], f"error: {peer['error'][:100]}"] + [""] * 7))
            continue
        cells = [preset["preset"]]
        for kind in ("train", "eval"):
            mine, theirs = ours[f"{kind}_images_per_s"], peer[f"{kind}_images_per_s"]
            cells += [fmt(mine), fmt(theirs), fmt(mine / theirs, 2)]
        cells += [fmt(peer["peak_rss_mib"], 0), fmt(max_background(ours, peer), 2)]
        rows.append(row(cells))
    if not rows:
        return []
    columns = ["preset", "ours train img/s", "peer train img/s", "ours ÷ peer train"]
    columns += ["ours eval img/s", "peer eval img/s", "ours ÷ peer eval"]
    columns += ["peer peak RSS MiB", "busy elsewhere (cores)"]
    return ["", "## Ours vs the PyTorch eager peer", "", *table_head(columns), *rows]


def sweep_table(results: dict[str, Any]) -> list[str]:
    """Train-step compile time against depth; empty without a sweep."""
    sweep = results.get("compile_sweep") or []
    if not sweep:
        return []
    columns = ["preset", "schedule", "units", "params", "trace + lower s", "XLA compile s"]
    columns += ["total s", "GFLOP/step"]
    lines = ["", "## Train-step compile time against depth", "", *table_head(columns, 2)]
    for point in sweep:
        if "error" in point:
            lines.append(row([point["preset"], f"error: {point['error'][:100]}"] + [""] * 6))
            continue
        flops = point["train_flops"]
        cells = [point["preset"], point["schedule"], str(point["units"]), fmt(point["params"])]
        cells += [fmt(point["lower_s"]), fmt(point["compile_s"]), fmt(point["total_s"])]
        cells += [fmt(flops / 1e9 if flops else None)]
        lines.append(row(cells))
    return lines


SIDE_BY_SIDE_NOTES = (
    "Side by side (`run.py --side-by-side`): every contender lives in its own process "
    "for the whole comparison; they are set up (compiled) one after another, then timed "
    "in interleaved rounds, each round one window of train steps and one of eval steps "
    "per contender, one contender computing at a time. *img/s* = batch ÷ the median "
    "window; *×* columns = the median over rounds of the per-round ratio (theirs s ÷ "
    "ours s; > 1: the row is faster), robust to a load that changes between rounds. "
    "*compile s*: ours = trace + lower + XLA compile of the train step (eval step in "
    "brackets); torch.compile = its first train call (eval in brackets), compilation "
    "plus one step, with whatever inductor's on-disk cache already held. *load* = the "
    "1-minute load average after each window (min–max) and *elsewhere* the most cores "
    "other processes used during a window: the windows were not discarded when busy."
)


def _compile_cell(info: dict[str, Any]) -> str:
    if info.get("framework") == "jax":
        return f"{fmt(info.get('train_compile_total_s'))} ({fmt(info.get('eval_lower_compile_s'))})"
    if info.get("compile_mode"):
        return f"{fmt(info.get('train_first_call_s'))} ({fmt(info.get('eval_first_call_s'))})"
    return "—"


def side_by_side_table(results: dict[str, Any]) -> list[str]:
    """One table per preset and step kind: every contender against every other."""
    lines: list[str] = []
    for entry in results.get("side_by_side", []):
        labels = list(entry["contenders"])
        for kind, by_label in entry.get("summary", {}).items():
            lines += ["", f"## {entry['preset']}: {kind} step, side by side", ""]
            columns = ["contender", "img/s", *(f"× {o}" for o in labels), "compile s"]
            lines += table_head([*columns, "load", "elsewhere"])
            for label in labels:
                cell = by_label[label]
                ratios = ["—" if o == label else f"{cell['vs'][o]:.2f}" for o in labels]
                low, high = cell["loadavg_range"]
                lines.append(
                    row(
                        [
                            label,
                            fmt(cell["images_per_s"]),
                            *ratios,
                            _compile_cell(entry["contenders"][label]),
                            f"{low:.1f}–{high:.1f}",
                            fmt(cell["max_background_cores"], 2),
                        ]
                    )
                )
    return lines


def side_by_side_header(results: dict[str, Any]) -> list[str]:
    info, ver, cfg = results["machine"], results["versions"], results["config"]
    return [
        f"# Side by side {results['date']} — {info['cpu']}, {info['cores']} cores",
        "",
        f"- command: `{results['command']}`",
        f"- git: {results.get('git')}; jax {ver.get('jax')}, jaxlib {ver.get('jaxlib')}, "
        f"flax {ver.get('flax')}, torch {ver.get('torch')}, python {ver.get('python')}",
        f"- batch {cfg['batch']} × 32×32×3, {cfg.get('dtype')}; {cfg.get('rounds')} "
        f"interleaved rounds × {cfg['steps']} steps after {cfg['warmup']} warm-up steps; "
        f"model kwargs {json.dumps(cfg['model_kwargs'])}",
    ]


def to_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: header, our numbers, ours vs the peer, compile-time sweep
    (or, for ``--side-by-side`` files, the side-by-side tables)."""
    if "side_by_side" in results:
        lines = side_by_side_header(results) + side_by_side_table(results)
        return "\n".join([*lines, "", SIDE_BY_SIDE_NOTES, ""])
    lines = header(results) + ours_table(results) + peer_table(results) + sweep_table(results)
    return "\n".join([*lines, "", NOTES, ""])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Render benchmark result files as markdown.")
    parser.add_argument("json", nargs="+", type=pathlib.Path, help="files run.py wrote")
    for path in parser.parse_args(argv).json:
        sys.stdout.write(to_markdown(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
