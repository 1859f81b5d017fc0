"""The TPU table: ``python -m sparsenet_jax.aot`` for the paper's networks, on a machine without a TPU.

Usage (from the repository root, with ``pip install -e '.[tpu]'``)::

    python benchmarks/tpu.py                                # every row not yet recorded
    python benchmarks/tpu.py --models sparsenet-40-24 --dtypes bfloat16 --redo
    python benchmarks/tpu.py --render                       # only rewrite the markdown

Each row compiles the trainer's train and eval steps (the cifar10 recipe for
CIFAR presets, imagenet for the ImageNet ones: their batch sizes) for
``--topology`` (default v5e:1x1, Colab's TPU) in a fresh process, and records
the command's JSON plus the wall and CPU time of the process and how many
cores other processes kept busy meanwhile (compile times on a shared 2-core
machine are only comparable at equal load; the CPU time less so).
Rows are appended to ``benchmarks/results/tpu-<chip>.json`` as they finish, so
a long run can be stopped and resumed; ``.md``'s table is rendered from the JSON,
and the hand-written sections after it (from its first ``## `` heading) are kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import pathlib
import resource
import subprocess
import sys
import time
from typing import Any

from machine import HERE, cpu_seconds, git_revision, log, machine_info, versions

RESULTS = HERE / "results"
# The rows that matter most first: the cifar10 recipe's network, the paper's
# largest CIFAR SparseNet, their DenseNet peers, and the ImageNet pair.
CORE = (
    "sparsenet-40-24",
    "sparsenet-bc-100-24",
    "densenet-40-12",
    "densenet-bc-100-12",
    "sparsenet-121-32",
    "densenet-121",
)
# The rest of the README's CIFAR presets (concatenation and summation).
REST = (
    "sparsenet-bc-100-12",
    "sparsenet-100-24",
    "sparsenet-bc-100-36",
    "densenet-100-12",
    "densenet-bc-190-40",
    "sparsenet-bc-400-12",
    "resnet-56",
    "sparse-resnet-56",
    "resnet-110",
    "sparse-resnet-110",
    "resnet-164",
    "sparse-resnet-164",
    "sparsenet-100-36",
    "sparsenet-100-16-32-64",
    "sparsenet-bc-100-16-32-64",
    "densenet-100-24",
    "densenet-bc-250-24",
    "sparsenet-100-32-64-128",
    "sparsenet-bc-100-32-64-128",
    "resnet-1001",
    "sparse-resnet-1001",
)
DTYPES = ("bfloat16", "float32")


def recipe_for(model: str) -> str:
    """The recipe whose network family ``model`` belongs to."""
    from sparsenet_jax.model.presets import parse_name  # light: no JAX arrays are built

    return "imagenet" if parse_name(model).family == "imagenet" else "cifar10"


def measure(model: str, dtype: str, topology: str, timeout_s: float) -> dict[str, Any]:
    """Run the aot command for one row in a fresh process; its JSON or its error line."""
    cmd = [sys.executable, "-m", "sparsenet_jax.aot", "--recipe", recipe_for(model)]
    cmd += ["--model", model, "--dtype", dtype, "--topology", topology, "--json"]
    busy0, _ = cpu_seconds()
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        outcome: dict[str, Any] = {"returncode": proc.returncode}
        if proc.stdout.strip():
            outcome.update(json.loads(proc.stdout))
        if proc.returncode:
            outcome["error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    except subprocess.TimeoutExpired:
        outcome = {"returncode": None, "error": f"no result in {timeout_s:.0f} s"}
    wall = time.perf_counter() - start
    busy1, _ = cpu_seconds()
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (child1.ru_utime + child1.ru_stime) - (child0.ru_utime + child0.ru_stime)
    return {
        "model": model,
        "dtype": dtype,
        "topology": topology,
        "command": " ".join(cmd[1:]),
        **outcome,
        "process_wall_s": round(wall, 1),
        "process_cpu_s": round(child_cpu, 1),
        "other_cores_busy": round(max(0.0, busy1 - busy0 - child_cpu) / wall, 2),
        "finished": dt.datetime.now().isoformat(timespec="seconds"),
        "revision": git_revision(),
    }


def load(path: pathlib.Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"machine": machine_info(), "versions": versions(), "rows": []}


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f}"


def row_md(row: dict[str, Any]) -> str:
    if "train_compile_s" not in row:  # the error in the batch column, the rest empty
        return f"| `{row['model']}` | {row['dtype']} | — | {row.get('error', '')} |" + " |" * 8
    stats = "shared" if row.get("model_kwargs", {}).get("share_stats") else "per reader"
    head = f"| `{row['model']}` | {row['dtype']} | {stats} |"
    temp = max(row["train_memory"]["temp_bytes"], row["eval_memory"]["temp_bytes"])
    fit = "" if row.get("fits", True) else f" (over the chip's {_gib(row['hbm_capacity_bytes'])})"
    return (
        f"{head} {row['batch_size']} | {row['train_compile_s']:.0f} / "
        f"{row['train_compile_cpu_s']:.0f} | {row['eval_compile_s']:.0f} / "
        f"{row['eval_compile_cpu_s']:.0f} | {_gib(row['hbm_bytes'])}{fit} | {temp / 2**20:,.0f} | "
        f"{row['bytes_accessed_per_image'] / 1e6:,.1f} | "
        f"{row['flops_per_step'] / row['batch_size'] / 1e9:.2f} | "
        f"{row['roofline_images_per_s']:,.0f} ({row['roofline_bound']}) | "
        f"{row['other_cores_busy']:.1f} |"
    )


def render(data: dict[str, Any]) -> str:
    rows = sorted(data["rows"], key=lambda r: ((CORE + REST).index(r["model"]), r["dtype"]))
    topology = rows[0]["topology"] if rows else "?"
    lines = [
        f"# TPU {topology}: compile without a TPU (`benchmarks/tpu.py`)",
        "",
        f"Machine that compiled: {data['machine']['cpu']}, {data['machine']['cores']} cores; "
        f"jax {data['versions'].get('jax')}, libtpu via `jax[tpu]`. Each row is "
        "`python -m sparsenet_jax.aot --recipe R --model M --dtype D --json` (cifar10 recipe, "
        "batch 64, for CIFAR presets; imagenet recipe, batch 256 at 224×224, for ImageNet "
        "ones). Compile = wall / CPU seconds of the TPU compiler on this machine; "
        '"busy" = cores other processes kept busy meanwhile (2 = the whole machine: '
        "wall times are then several times an idle machine's; CPU seconds are less affected). "
        "HBM = arguments + temporaries + outputs − donated, the larger of the two steps; "
        "bytes and FLOPs are the train step's, from XLA's cost analysis; roofline = "
        "batch / max(FLOPs / 197 TFLOP/s, bytes / 819 GB/s) (v5e, "
        "https://cloud.google.com/tpu/docs/v5e; float32 at the bf16 peak: JAX's default "
        'TPU precision is one bf16 pass). BN stats: "shared" = each output\'s BatchNorm '
        "statistics computed once for all its readers (`share_stats`, the TPU default since "
        '2026-11-26); "per reader" = rows measured before that default.',
        "",
        "| model | dtype | BN stats | batch | train compile s (wall / CPU) | eval compile s | HBM GiB "
        "| temp MiB | bytes accessed / image, MB | GFLOP / image | roofline img/s | busy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(row_md(r) for r in rows),
    ]
    missing = [m for m in CORE + REST if m not in {r["model"] for r in rows}]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def write_markdown(path: pathlib.Path, table: str) -> None:
    """Write the rendered ``table`` to ``path``, keeping the hand-written sections that
    follow the table there (everything from the first ``## `` heading on)."""
    old = path.read_text() if path.exists() else ""
    start = old.find("\n## ")
    tail = old[start:] if start >= 0 else ""
    path.write_text(table + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(CORE + REST))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--topology", default="v5e:1x1")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds a row")
    parser.add_argument("--redo", action="store_true", help="measure recorded rows again")
    parser.add_argument("--render", action="store_true", help="only rewrite the markdown")
    args = parser.parse_args()
    stem = RESULTS / f"tpu-{args.topology.split(':')[0]}"
    data = load(stem.with_suffix(".json"))
    for model in [] if args.render else args.models:
        for dtype in args.dtypes:
            done = {(r["model"], r["dtype"], r["topology"]) for r in data["rows"]}
            if (model, dtype, args.topology) in done and not args.redo:
                continue
            log(f"{model} {dtype} on {args.topology}")
            row = measure(model, dtype, args.topology, args.timeout)
            log(f"  {row.get('train_compile_s', row.get('error'))} s train compile")
            data["rows"] = [
                r for r in data["rows"] if (r["model"], r["dtype"], r["topology"]) != row_key(row)
            ] + [row]
            stem.with_suffix(".json").write_text(json.dumps(data, indent=1) + "\n")
            write_markdown(stem.with_suffix(".md"), render(data))
    write_markdown(stem.with_suffix(".md"), render(data))


def row_key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["model"], row["dtype"], row["topology"]


if __name__ == "__main__":
    main()
