"""What one switch buys: variants of a network timed in interleaved rounds, in one process.

    python benchmarks/ablation.py sparsenet-bc-100-24 '{"pointwise_as_dot": false}' '{}'
    python benchmarks/ablation.py sparsenet-40-24 '{}' '{"remat": true}' --rounds 5
    python benchmarks/ablation.py --memory-only sparsenet-40-24 '{}' --vs densenet-40-24
    python benchmarks/ablation.py sparsenet-40-24 '{}' \
        '{"xla_options": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"}}'

Each variant is the trainer's run (``build_run`` on the cifar10 recipe, as
``jax_bench.bench_config`` makes it) with ``model_kwargs`` set to the
variant's JSON (its ``"xla_options"`` entry, if any, is not a model keyword but XLA
options for that variant's compile); the first is the baseline. All train steps are
compiled first (XLA memory analysis and FLOPs are read then), and then timed
round-robin, one step of each per round, so that a machine whose speed
drifts (other tenants, clocks) slows every variant alike; the ratio to the
baseline is the median of the per-round ratios. ``--vs`` adds whole presets
(default kwargs) to compare, e.g. a dense network against a sparse one at
equal depth and growth.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from jax_bench import bench_config, compile_train, fake_batch, setup_jax
from machine import log, machine_info, versions


def compile_variant(preset: str, kwargs: dict[str, Any], batch: int) -> dict[str, Any]:
    """Compile one variant's train step on real inputs; memory, FLOPs and a step closure."""
    import jax

    from sparsenet_jax.training.build import build_run

    model_kwargs = {k: v for k, v in kwargs.items() if k != "xla_options"}
    run = build_run(bench_config(preset, batch, model_kwargs))
    holder = {"state": run.init_state()}  # the step donates the state: keep the newest
    data = fake_batch(run, train=True)
    train, fields = compile_train(run, holder["state"], data, kwargs.get("xla_options"))

    def step() -> float:
        begin = time.perf_counter()
        holder["state"], metrics = train(holder["state"], data)
        jax.block_until_ready(metrics)
        return time.perf_counter() - begin

    return {
        "preset": preset,
        "kwargs": kwargs,
        "compile_s": fields["train_lower_s"] + fields["train_compile_s"],
        "train_flops": fields["train_flops"],
        "temp_mib": fields["train_temp_mib"],
        "xla_peak_mib": fields["train_xla_peak_mib"],
        "step": step,
    }


def time_round_robin(rows: list[dict[str, Any]], rounds: int, batch: int) -> None:
    """One step of every variant per round; adds ``step_s``, ``images_per_s`` and
    ``time_vs_baseline`` (the median per-round ratio to the first row) to each row."""
    for row in rows:  # warm-up: first calls allocate
        row["step"]()
    times: list[list[float]] = [[] for _ in rows]
    for r in range(rounds):
        for i, row in enumerate(rows):
            times[i].append(row["step"]())
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{t[-1]:.2f} s" for t in times))
    for i, row in enumerate(rows):
        row["step_s"] = statistics.median(times[i])
        row["images_per_s"] = batch / row["step_s"]
        row["time_vs_baseline"] = statistics.median(
            t / b for t, b in zip(times[i], times[0], strict=True)
        )


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """The rows as a markdown table, ratios against the first row."""
    base = rows[0]
    print(f"\n{title}")
    print(
        "| variant | compile s | GFLOP/step | XLA temp MiB | temp vs baseline | img/s | time vs baseline |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        label = f"{row['preset']} {json.dumps(row['kwargs'])}"
        flops = row["train_flops"] / 1e9 if row["train_flops"] else float("nan")
        temp_ratio = row["temp_mib"] / base["temp_mib"]
        timing = (
            f"{row['images_per_s']:.2f} | {row['time_vs_baseline']:.2f}×"
            if "step_s" in row
            else "— | —"
        )
        print(
            f"| {label} | {row['compile_s']:.1f} | {flops:.1f} | {row['temp_mib']:,.0f} | "
            f"{temp_ratio:.2f}× | {timing} |"
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("variants", nargs="+", help="JSON create_model kwargs; first = baseline")
    parser.add_argument("--vs", nargs="*", default=[], help="more presets, default kwargs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--memory-only", action="store_true", help="compile, do not time")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = parser.parse_args(argv)
    setup_jax()
    plan = [(args.preset, json.loads(v)) for v in args.variants] + [(p, {}) for p in args.vs]
    rows = []
    for preset, kwargs in plan:
        log(f"compiling {preset} {json.dumps(kwargs)}")
        rows.append(compile_variant(preset, kwargs, args.batch))
    if not args.memory_only:
        time_round_robin(rows, args.rounds, args.batch)
    for row in rows:
        row.pop("step")
    info = machine_info()
    print_table(rows, f"{args.preset}, batch {args.batch}, {info['cpu']}")
    result = {"machine": info, "versions": versions(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
