"""What one switch buys: variants of a network timed in interleaved rounds, in one process.

    python benchmarks/ablation.py sparsenet-bc-100-24 '{"pointwise_as_dot": false}' '{}'
    python benchmarks/ablation.py sparsenet-40-24 '{}' '{"remat": true}' --rounds 5
    python benchmarks/ablation.py --memory-only sparsenet-40-24 '{}' --vs densenet-40-24

Each variant is ``create_model(preset, **kwargs)``; the first is the
baseline. All train steps are compiled first (XLA memory analysis and FLOPs
are read then), and then timed round-robin, one step of each per round, so
that a machine whose speed drifts (other tenants, clocks) slows every variant
alike; the ratio to the baseline is the median of the per-round ratios.
``--vs`` adds whole presets (default kwargs) to compare, e.g. a dense
network against a sparse one at equal depth and growth.
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

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import run as suite  # noqa: E402  (benchmarks/run.py: the suite's helpers)


def compile_variant(preset: str, kwargs: dict[str, Any], batch: int) -> dict[str, Any]:
    """Compile one variant's train step on real inputs; memory, FLOPs and a step closure."""
    import jax

    model, tx, mesh, steps = suite._make_steps(preset, kwargs)
    state = steps.create_train_state(model, tx, 0, (1, *suite.IMAGE_SHAPE), mesh)
    images, labels = suite._fake_batch(batch)
    data = steps.global_batch({"image": images, "label": labels}, mesh)
    start = time.perf_counter()
    train = (
        steps.jit_train_step(steps.make_train_step(model, tx), mesh).lower(state, data).compile()
    )
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def step() -> float:
        begin = time.perf_counter()
        holder["state"], metrics = train(holder["state"], data)
        jax.block_until_ready(metrics)
        return time.perf_counter() - begin

    memory = suite._memory(train)
    return {
        "preset": preset,
        "kwargs": kwargs,
        "compile_s": compile_s,
        "train_flops": suite._flops(train),
        "temp_mib": memory["temp_mib"],
        "xla_peak_mib": memory["xla_peak_mib"],
        "step": step,
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("variants", nargs="+", help="JSON create_model kwargs; first = baseline")
    parser.add_argument("--vs", nargs="*", default=[], help="more presets, default kwargs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--memory-only", action="store_true", help="compile, do not time")
    parser.add_argument("--json", type=pathlib.Path, help="also write the results here")
    args = parser.parse_args(argv)
    suite._setup_jax()
    plan = [(args.preset, json.loads(v)) for v in args.variants] + [(p, {}) for p in args.vs]
    rows = []
    for preset, kwargs in plan:
        suite.log(f"compiling {preset} {json.dumps(kwargs)}")
        rows.append(compile_variant(preset, kwargs, args.batch))
    if not args.memory_only:
        for row in rows:  # warm-up: first calls allocate
            row["step"]()
        times: list[list[float]] = [[] for _ in rows]
        for r in range(args.rounds):
            for i, row in enumerate(rows):
                times[i].append(row["step"]())
            suite.log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{t[-1]:.2f} s" for t in times))
        for i, row in enumerate(rows):
            row["step_s"] = statistics.median(times[i])
            row["images_per_s"] = args.batch / row["step_s"]
            row["time_vs_baseline"] = statistics.median(
                t / b for t, b in zip(times[i], times[0], strict=True)
            )
    base = rows[0]
    print(f"\n{args.preset}, batch {args.batch}, {suite.machine_info()['cpu']}")
    print(
        "| variant | compile s | GFLOP/step | XLA temp MiB | temp vs baseline | img/s | time vs baseline |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        row.pop("step")
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
    result = {"machine": suite.machine_info(), "versions": suite.versions(), "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
