"""The GPU table: our train and eval steps against the PyTorch peer on one GPU, plus the recipe.

Usage (from the repository root, on a machine with a CUDA GPU)::

    python benchmarks/gpu.py                              # 4 presets, float32 and bfloat16
    python benchmarks/gpu.py --presets sparsenet-40-24 --dtypes bfloat16 --recipe-seconds 60

Three measurements, each in a fresh process so that neither framework holds
GPU memory while the other runs:

1. ours: every (preset, dtype) run is built with ``build_run`` (the cifar10
   recipe's step: uint8 batch in, on-device augmentation, SGD update),
   compiled and timed, one after another. (Compiling them side by side in
   threads was tried on an H200: XLA:GPU's autotuners then share the GPU, and
   eight compiles had not finished after 480 s, where one takes 14-31 s.)
2. the PyTorch eager peer (``torch_bench.bench_torch``): the same networks,
   float32, or bfloat16 autocast over float32 parameters; cuDNN autotuning on.
3. the cifar10 recipe itself on synthetic data: its network, batch and dtype,
   train steps back to back for ``--recipe-seconds``, then the eval step; the
   300-epoch figure is projected from those step times (input pipeline and
   checkpoints not included).

Writes ``gpu-<date>.json`` and ``.md`` to ``--out-dir``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

from jax_bench import bench_jax, fake_batch, setup_jax
from machine import HERE, git_revision, log, machine_info, versions
from report import fmt, row, table_head
from timing import Repeats, best_seconds, run_isolated
from torch_bench import bench_torch

PRESETS = ("sparsenet-40-24", "densenet-40-12", "sparsenet-bc-100-24", "densenet-bc-100-12")
DTYPES = ("float32", "bfloat16")
RECIPE = "cifar10"


def gpu_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{device.platform}: {device.device_kind}"


def bench_ours(
    presets: Sequence[str], dtypes: Sequence[str], batch: int, how: Repeats
) -> list[dict[str, Any]]:
    """Our steps of every (preset, dtype) (``jax_bench.bench_jax``), one after another."""
    return [
        {**bench_jax(p, batch, {"dtype": d}, how), "dtype": d, "device": gpu_name()}
        for p in presets
        for d in dtypes
    ]


def bench_peers(
    presets: Sequence[str], dtypes: Sequence[str], batch: int, how: Repeats, device: str
) -> list[dict[str, Any]]:
    """The PyTorch peer of every (preset, dtype), on ``device``, one process for all."""
    return [bench_torch(p, batch, how=how, device=device, dtype=d) for p in presets for d in dtypes]


def listed(result: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, Any]]:
    """A measurement process's rows; its error (``run_isolated``'s dict) as the one row."""
    return result if isinstance(result, list) else [result]


def time_recipe(seconds: float, dtype: str) -> dict[str, Any]:
    """The recipe's train step back to back for ``seconds`` on synthetic data, then its eval step."""
    import jax

    from sparsenet_jax.training import config as config_lib
    from sparsenet_jax.training.build import build_run

    setup_jax()
    config = config_lib.from_dict({**config_lib.RECIPES[RECIPE], "recipe": RECIPE, "dtype": dtype})
    run = build_run(config)
    holder = {"state": run.init_state()}
    train_batches = [fake_batch(run, True, seed) for seed in range(8)]
    start = time.perf_counter()
    train = run.train_step.lower(holder["state"], train_batches[0]).compile()
    compile_s = time.perf_counter() - start
    holder["state"], _ = train(holder["state"], train_batches[0])  # warm-up
    jax.block_until_ready(holder["state"])
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for data in train_batches:  # block once per round: steps queue as in training
            holder["state"], metrics = train(holder["state"], data)
        jax.block_until_ready((holder["state"], metrics))
        steps += len(train_batches)
    train_s = (time.perf_counter() - start) / steps
    eval_data = fake_batch(run, False)
    evaluate = run.eval_step.lower(holder["state"], eval_data).compile()
    eval_s = best_seconds(lambda: jax.block_until_ready(evaluate(holder["state"], eval_data)), 5)
    eval_steps = -(-run.info.num_test // config.eval_batch_size)
    epoch_s = run.steps_per_epoch * train_s + eval_steps * eval_s
    return {
        "model": config.model,
        "dtype": dtype,
        "batch": config.batch_size,
        "eval_batch": config.eval_batch_size,
        "epochs": config.epochs,
        "device": gpu_name(),
        "train_compile_s": compile_s,
        "timed_s": seconds,
        "timed_steps": steps,
        "train_step_s": train_s,
        "train_images_per_s": config.batch_size / train_s,
        "eval_step_s": eval_s,
        "epoch_s": epoch_s,
        "recipe_hours": epoch_s * config.epochs / 3600,
    }


def render(results: dict[str, Any]) -> str:
    """The markdown table of one run of this script."""
    ours = {(r["preset"], r["dtype"]): r for r in results["ours"]}
    peers = {(r["preset"], r["dtype"]): r for r in results["peer"]}
    lines = [
        f"# GPU: {results['device']} ({results['date']})",
        "",
        f"`python benchmarks/gpu.py {' '.join(results['argv'])}` at {results['git']}; "
        f"versions {json.dumps(results['versions'])}. Batch {results['batch']} of 32×32×3 "
        "uint8 images; ours = the trainer's step (on-device augmentation, SGD update); "
        "peer = PyTorch eager, same network, bfloat16 = autocast over float32 parameters.",
        "",
        *table_head(
            [
                "preset",
                "dtype",
                "ours train img/s",
                "peer train img/s",
                "ours ÷ peer train",
                "ours eval img/s",
                "peer eval img/s",
                "ours ÷ peer eval",
                "ours train compile s",
            ],
            text_columns=2,
        ),
    ]
    for key, mine in ours.items():
        peer = peers.get(key, {})
        ratio = {
            kind: mine.get(f"{kind}_images_per_s", 0) / peer[f"{kind}_images_per_s"]
            if peer.get(f"{kind}_images_per_s")
            else None
            for kind in ("train", "eval")
        }
        lines.append(
            row(
                [
                    f"`{key[0]}`",
                    key[1],
                    fmt(mine.get("train_images_per_s"), 0),
                    fmt(peer.get("train_images_per_s"), 0),
                    fmt(ratio["train"], 2),
                    fmt(mine.get("eval_images_per_s"), 0),
                    fmt(peer.get("eval_images_per_s"), 0),
                    fmt(ratio["eval"], 2),
                    fmt(mine.get("train_compile_s"), 1),
                ]
            )
        )
    for recipe in results["recipe"]:
        lines += [
            "",
            (
                f"cifar10 recipe on synthetic data ({recipe.get('model')}, {recipe.get('dtype')}, "
                f"batch {recipe.get('batch')}): {fmt(recipe.get('train_images_per_s'), 0)} img/s "
                f"over {recipe.get('timed_steps')} train steps in {fmt(recipe.get('timed_s'), 0)} s; "
                f"eval step {fmt(1000 * recipe.get('eval_step_s', 0), 1)} ms; projected "
                f"{fmt(recipe.get('epoch_s'), 1)} s an epoch, {fmt(recipe.get('recipe_hours'), 2)} h "
                f"for {recipe.get('epochs')} epochs (step times only: no input pipeline, "
                "checkpoints or logging)."
            ),
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="timed windows a step")
    parser.add_argument("--steps", type=int, default=10, help="steps a timed window")
    parser.add_argument("--recipe-seconds", type=float, default=180.0)
    parser.add_argument("--recipe-dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--peer-device", default="cuda", help="torch device of the peer")
    parser.add_argument("--out-dir", type=pathlib.Path, default=HERE / "results")
    args = parser.parse_args(argv)
    how = Repeats(warmup=3, repeats=args.repeats, steps=args.steps)
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "argv": list(argv) if argv is not None else [],
        "git": git_revision(),
        "machine": machine_info(),
        "versions": versions(),
        "batch": args.batch,
    }
    results["ours"] = listed(run_isolated(bench_ours, args.presets, args.dtypes, args.batch, how))
    results["device"] = results["ours"][0].get("device", "unknown")
    results["peer"] = (
        []
        if args.no_peer
        else listed(
            run_isolated(bench_peers, args.presets, args.dtypes, args.batch, how, args.peer_device)
        )
    )
    results["recipe"] = [
        run_isolated(time_recipe, args.recipe_seconds, d) for d in args.recipe_dtypes
    ]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"gpu-{results['date'][:10]}"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1))
    stem.with_suffix(".md").write_text(render(results))
    log(f"wrote {stem}.json and .md")
    print(render(results))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
