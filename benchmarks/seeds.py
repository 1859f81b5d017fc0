"""``--seeds N`` against N solo runs: aggregate train images/s for N = 1, 2, 4, 8.

Usage (from the repository root)::

    python benchmarks/seeds.py --preset sparsenet-40-24 --seeds 1 2 4 8 --out seeds.json

Each N is the trainer's own step (``build_run`` with ``seeds=N``: the cifar10
recipe's uint8 batch in, augmentation, SGD update, state donated), compiled
and timed one after another in this process, on synthetic batches. N solo runs
one after another process N × batch images at the N = 1 rate, so
``speedup = aggregate(N) / aggregate(1)`` is what replicas buy over running
the seeds in turn. The compiled program is also searched for grouped
convolutions (``feature_group_count`` > 1), the form ``vmap`` gives a
convolution whose kernel is batched: XLA:GPU's gradients of those have been
reported slow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from jax_bench import bench_config, fake_arrays, flops, memory, setup_jax
from machine import BusyMeter, git_revision, log, machine_info, versions


def replica_batch(run: Any, seed: int = 0) -> dict[str, Any]:
    """One train batch of every replica, (N, B, ...) as the input pipeline stacks them."""
    from sparsenet_jax.training import mesh as mesh_lib

    n, size = run.seeds, run.config.batch_size
    arrays = [fake_arrays(size, run.image_shape, run.info.num_classes, seed + i) for i in range(n)]
    stacked = {k: np.stack([a[k] for a in arrays]) if n > 1 else arrays[0][k] for k in arrays[0]}
    return mesh_lib.global_batch(stacked, run.mesh, n > 1)


def grouped_convolutions(hlo_text: str) -> int:
    """How many convolutions of the optimised program have ``feature_group_count`` > 1."""
    counts = re.findall(r"feature_group_count=(\d+)", hlo_text)
    return sum(1 for c in counts if int(c) > 1)


def bytes_accessed(compiled: Any) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    value = (cost or {}).get("bytes accessed")
    return float(value) if value is not None else None


def measure(
    preset: str, batch: int, dtype: str, seeds: int, steps: int, repeats: int, mode: str | None
) -> dict:
    """Compile and time the train step of ``seeds`` replicas; aggregate images/s."""
    import jax

    from sparsenet_jax.training.build import build_run, default_replica_mode

    config = dataclasses.replace(bench_config(preset, batch, {"dtype": dtype}), seeds=seeds)
    run = build_run(config, replica_mode=mode)
    mode = mode or default_replica_mode(run.mesh.devices.flat[0].platform)
    state, data = run.init_state(), replica_batch(run)
    with BusyMeter() as compiling:
        compiled = run.train_step.lower(state, data).compile()
    for _ in range(3):  # warm-up
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, data)
        jax.block_until_ready((state, metrics))
        windows.append((time.perf_counter() - start) / steps)
    step_s = statistics.median(windows)
    return {
        "preset": preset,
        "batch": batch,
        "dtype": dtype,
        "seeds": seeds,
        "replica_mode": mode,
        "compile_s": compiling.seconds,
        "compile_background_cores": compiling.cores,
        "step_ms": 1e3 * step_s,
        "windows_ms": [1e3 * w for w in windows],
        "aggregate_images_per_sec": seeds * batch / step_s,
        "flops": flops(compiled),
        "bytes_accessed": bytes_accessed(compiled),
        "grouped_convolutions": grouped_convolutions(compiled.as_text()),
        **{f"xla_{k}": v for k, v in memory(compiled).items()},
        "device": f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind}",
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sparsenet-40-24")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=20, help="steps in a timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median kept)")
    parser.add_argument(
        "--modes", nargs="+", default=["default"], help="replica modes: vmap, unroll, default"
    )
    parser.add_argument("--out", type=pathlib.Path, help="write the rows and machine as JSON")
    args = parser.parse_args(argv)
    setup_jax()
    rows: list[dict[str, Any]] = []
    base = None  # N = 1 has no replicas: measured once, the base of every mode
    for mode in args.modes:
        for n in args.seeds:
            if n == 1 and base is not None:
                continue
            row = measure(
                args.preset,
                args.batch,
                args.dtype,
                n,
                args.steps,
                args.repeats,
                None if mode == "default" else mode,
            )
            if n == 1:
                base = row["aggregate_images_per_sec"]
                row["replica_mode"] = None
            row["speedup_vs_solo"] = row["aggregate_images_per_sec"] / base if base else None
            rows.append(row)
            log(
                f"{mode} seeds {n}: {row['aggregate_images_per_sec']:,.0f} img/s aggregate "
                f"({row['step_ms']:.1f} ms a step; compile {row['compile_s']:.1f} s; "
                f"{row['grouped_convolutions']} grouped convolutions)"
                + (f", {row['speedup_vs_solo']:.2f}× N=1" if base else "")
            )
            if args.out:  # after every row: a run stopped early keeps what it measured
                result = {"machine": machine_info(), "versions": versions(), "rows": rows}
                result["git"] = git_revision()
                args.out.write_text(json.dumps(result, indent=1))
    return rows


if __name__ == "__main__":
    main()
