"""Speed, memory and compile-time benchmarks of sparsenet_jax, with a PyTorch eager peer.

Usage (from the repository root)::

    python benchmarks/run.py --quick      # a few minutes: 2 presets, short sweep
    python benchmarks/run.py              # the full suite (see benchmarks/RESULTS.md)
    python benchmarks/run.py --presets sparsenet-40-24 --model-kwargs '{"dtype": "bfloat16"}'
    python benchmarks/run.py --side-by-side --presets sparsenet-40-24 --conv-impls xla auto

``--side-by-side`` is the comparison for a busy machine: ours (one contender
per ``--conv-impls``) and the peer eager and under ``torch.compile`` (default
mode), each in its own process kept alive for the whole comparison, timed
in interleaved rounds (``timing.interleave``), so that every contender sees
the same load; ratios are the median of the per-round ratios. It reports each
contender's compile time (ours: trace + lower + compile; ``torch.compile``:
its first call) and does not wait for a quiet machine.

For every preset (batch 64 of 32×32×3 uint8 images, float32 compute) it
measures the trainer's own train and eval steps (``build_run`` on the cifar10
recipe: on-device augmentation and normalisation included): parameters, XLA
FLOPs per step, trace/lower and compile time, images/s, XLA's memory estimate
and the process's peak RSS, and the FLOP/s reached as a share of this
machine's float32 matmul peak (measured in the same run). The PyTorch peer
(``torch_peer.py``) runs the same network eagerly for train and eval images/s.
A sweep compiles the train step at growing depth, sparse and dense schedules.

Each measurement runs in a fresh spawned process, so compile caches, thread
pools and peak RSS do not leak between presets or between JAX and PyTorch.
Results go to ``benchmarks/results/<date>-<machine>[-quick].json`` and ``.md``.
This file is the command line; the work is in ``machine.py`` (probes),
``timing.py``, ``jax_bench.py`` (ours), ``torch_bench.py`` (the peer) and
``report.py`` (markdown).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from jax_bench import (
    DEFAULT_DTYPE,
    bench_config,
    bench_jax,
    compile_point,
    jax_contender,
    matmul_peak,
)
from machine import (
    HERE,
    background_cores,
    git_revision,
    log,
    machine_info,
    machine_slug,
    versions,
    wait_for_idle,
)
from report import to_markdown
from sparsenet_jax.model.cpu_conv import CONV_IMPLS
from timing import Contender, Repeats, in_process, interleave, load_average, ratios, run_isolated
from torch_bench import TORCH_MODES, bench_torch, torch_contender

DEFAULT_PRESETS = (
    "sparsenet-40-24",
    "densenet-40-12",
    "sparsenet-bc-100-24",
    "densenet-bc-100-12",
    "resnet-110",
    "sparse-resnet-110",
)
DEFAULT_SWEEP_SPARSE = ("sparsenet-bc-100-12", "sparsenet-bc-202-12", "sparsenet-bc-400-12")
DEFAULT_SWEEP_DENSE = ("densenet-bc-100-12", "densenet-bc-190-12", "densenet-bc-250-12")
QUICK_PRESETS = ("sparsenet-40-24", "densenet-40-12")
QUICK_SWEEP_SPARSE = ("sparsenet-bc-52-12", "sparsenet-bc-100-12")
QUICK_SWEEP_DENSE = ("densenet-bc-52-12", "densenet-bc-100-12")
INPUT = "uint8 images, augmented and normalised on device (the trainer's step, build_run)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 presets, short timing, short sweep")
    p.add_argument("--presets", nargs="+", help=f"default: {' '.join(DEFAULT_PRESETS)}")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, help="timed repeats (default 5; quick 2)")
    p.add_argument("--steps", type=int, help="steps per repeat (default 2; quick 1)")
    p.add_argument("--warmup", type=int, help="warm-up steps (default 2; quick 1)")
    p.add_argument("--peak-repeats", type=int, default=10, help="matmul peak: best of N")
    p.add_argument(
        "--model-kwargs",
        type=json.loads,
        default={},
        help='JSON dict passed to create_model, e.g. \'{"dtype": "bfloat16"}\'',
    )
    p.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--sweep-sparse", nargs="*", help="presets of the sparse compile sweep")
    p.add_argument("--sweep-dense", nargs="*", help="presets of the dense compile sweep")
    p.add_argument("--no-sweep", action="store_true", help="skip the compile-time sweep")
    p.add_argument(
        "--max-background",
        type=float,
        default=0.25,
        help="cores other processes may use during a timed window before it is discarded "
        "and re-timed (default 0.25)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=1800.0,
        help="per measurement, wait up to this many seconds in all for a quiet machine "
        "(default 1800; 0 = measure at once and only record the load)",
    )
    p.add_argument(
        "--compile-attempts",
        type=int,
        default=3,
        help="compile a disturbed compile-time point again, up to this many times",
    )
    p.add_argument(
        "--side-by-side",
        action="store_true",
        help="ours vs the peer eager and under torch.compile, interleaved in long-lived "
        "processes (no matmul peak, no sweep)",
    )
    p.add_argument(
        "--conv-impls",
        nargs="*",
        default=["auto"],
        choices=CONV_IMPLS,
        help="side by side: our contenders, the model's conv_impl options (xla: XLA's "
        "convolutions; shift-dw: GEMM weight gradients; gemm: all GEMMs; auto: the CPU "
        "default)",
    )
    p.add_argument(
        "--torch-modes",
        nargs="*",
        default=list(TORCH_MODES),
        choices=TORCH_MODES,
        help="side by side: the peer's contenders (default: eager compile)",
    )
    p.add_argument("--rounds", type=int, help="side by side: interleaved rounds (default 5)")
    p.add_argument(
        "--max-seconds",
        type=float,
        help="side by side: start no round that would end later than this many seconds "
        "after the start (at least one round runs)",
    )
    p.add_argument("--out-dir", type=pathlib.Path, default=HERE / "results")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--stem", help="the result files' name without extension (overrides --tag)")
    p.add_argument(
        "--in-process", action="store_true", help="no subprocesses (debugging; RSS is cumulative)"
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with ``--quick``'s or the full suite's defaults filled in."""
    args = _parser().parse_args(argv)
    args.started = time.monotonic()
    quick = args.quick
    args.presets = args.presets or list(QUICK_PRESETS if quick else DEFAULT_PRESETS)
    args.repeats = args.repeats or (2 if quick else 5)
    args.steps = args.steps or (1 if quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.rounds = args.rounds or (2 if quick else 5)
    if args.sweep_sparse is None:
        args.sweep_sparse = list(QUICK_SWEEP_SPARSE if quick else DEFAULT_SWEEP_SPARSE)
    if args.sweep_dense is None:
        args.sweep_dense = list(QUICK_SWEEP_DENSE if quick else DEFAULT_SWEEP_DENSE)
    if args.no_sweep:
        args.sweep_sparse = args.sweep_dense = []
    return args


def check_names(names: Sequence[str], batch: int, model_kwargs: dict[str, Any]) -> None:
    """Fail before a long run, not in its middle, on a name or override the config rejects."""
    for name in names:
        try:
            bench_config(name, batch, model_kwargs)
        except ValueError as err:  # ConfigError: one line naming the field, no traceback
            raise SystemExit(f"benchmarks/run.py: {err}") from None


@dataclasses.dataclass
class Suite:
    """The measurements of one invocation, each on a quiet machine in a fresh process."""

    args: argparse.Namespace

    def call(self, fn: Callable[..., dict[str, Any]], *a: Any, **k: Any) -> dict[str, Any]:
        """``fn`` isolated, started on a quiet machine (it re-times disturbed repeats itself)."""
        args = self.args
        if args.wait_idle > 0:
            load = wait_for_idle(args.wait_idle, args.max_background)
        else:
            load = background_cores(1.0)
        isolated = in_process if args.in_process else run_isolated
        return {**isolated(fn, *a, **k), "background_cores_before": load}

    def compile_clean(self, name: str) -> dict[str, Any]:
        """The least disturbed of up to ``--compile-attempts`` compile-time measurements."""
        # A compile cannot be re-timed in the same process (tracing caches warm up):
        # compile again in a fresh one when other processes disturbed it.
        args, best = self.args, dict[str, Any]()
        for attempt in range(1, max(1, args.compile_attempts) + 1):
            point = self.call(compile_point, name, args.batch, args.model_kwargs)
            if "error" in point:
                return point
            if not best or point["background_cores"] < best["background_cores"]:
                best = {**point, "attempts": attempt}
            if point["background_cores"] <= args.max_background:
                break
            log(f"  disturbed ({point['background_cores']:.2f} cores elsewhere); compiling again")
        log(f"  {best['lower_s']:.1f} s lower + {best['compile_s']:.1f} s compile")
        return best

    def measure(self, fn: Callable[..., dict[str, Any]], name: str, label: str) -> dict[str, Any]:
        """One framework's train and eval images/s for preset ``name``."""
        args = self.args
        how = Repeats(args.warmup, args.repeats, args.steps, args.max_background, args.wait_idle)
        out = self.call(fn, name, args.batch, args.model_kwargs, how)
        if "error" not in out:
            log(
                f"  {label} {name}: {out['train_images_per_s']:.1f} train img/s, "
                f"{out['eval_images_per_s']:.1f} eval img/s"
            )
        return out

    def preset(self, name: str, progress: str, peer: bool) -> dict[str, Any]:
        """Compile time, our steps and (with ``peer``) the PyTorch peer's, for one preset."""
        log(f"{progress} {name}: jax compile time")
        row: dict[str, Any] = {"preset": name, "compile": self.compile_clean(name), "torch": None}
        log(f"{progress} {name}: jax steps")
        row["jax"] = ours = self.measure(bench_jax, name, "jax")
        if peer:
            log(f"{progress} {name}: torch peer")
            row["torch"] = theirs = self.measure(bench_torch, name, "torch")
            if "params" in ours and theirs.get("params", ours["params"]) != ours["params"]:
                log(f"  WARNING: parameter counts differ: {ours['params']} vs {theirs['params']}")
        return row


def new_results(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    """The result file's header: date, command, machine, versions, git and settings."""
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/run.py", *(argv or sys.argv[1:])]),
        "machine": machine_info(),
        "versions": versions(),
        "git": git_revision(),
        "config": {
            "batch": args.batch,
            "repeats": args.repeats,
            "steps": args.steps,
            "warmup": args.warmup,
            "peak_repeats": args.peak_repeats,
            "model_kwargs": args.model_kwargs,
            "dtype": str(args.model_kwargs.get("dtype", DEFAULT_DTYPE)),
            "input": INPUT,
            "quick": args.quick,
            "max_background_cores": args.max_background,
            "wait_idle_s": args.wait_idle,
            "side_by_side": args.side_by_side,
            "rounds": args.rounds,
            "max_seconds": args.max_seconds,
            "conv_impls": args.conv_impls,
            "torch_modes": args.torch_modes,
        },
        "presets": [],
        "compile_sweep": [],
    }


def write_results(results: dict[str, Any], args: argparse.Namespace) -> pathlib.Path:
    """``<date>-<machine>[-quick][-tag].json`` and ``.md`` in ``--out-dir``; the JSON's path."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date'][:10]}-{machine_slug(results['machine'])}"
    stem += "-quick" if args.quick else ""
    stem += f"-{args.tag}" if args.tag else ""
    stem = args.stem or stem
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(to_markdown(results))
    log(f"wrote {json_path} and {md_path}")
    return json_path


def contender_label(framework: str, kind: str) -> str:
    """``jax (xla conv)``, ``jax (auto conv)``, ``torch eager``, ``torch.compile``."""
    if framework == "jax":
        return f"jax ({kind} conv)"
    return "torch eager" if kind == "eager" else "torch.compile"


def side_by_side(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One preset: every contender set up in turn (so compilations do not overlap),
    then ``--rounds`` interleaved rounds of ``--steps`` train and eval steps each."""
    plan: list[tuple[str, Callable[..., dict[str, Any]], dict[str, Any]]] = [
        (contender_label("jax", impl), jax_contender, {"conv_impl": impl})
        for impl in args.conv_impls
    ]
    plan += [
        (contender_label("torch", mode), torch_contender, {"mode": mode})
        for mode in args.torch_modes
    ]
    row: dict[str, Any] = {"preset": name, "contenders": {}, "setup_loadavg": {}}
    contenders: list[Contender] = []
    try:
        for label, setup, extra in plan:
            log(f"{name}: setting up {label} (load average {load_average():.2f})")
            c = Contender(
                label, setup, name, args.batch, args.model_kwargs, warmup=args.warmup, **extra
            )
            contenders.append(c)
            row["contenders"][label] = c.info
            row["setup_loadavg"][label] = load_average()
        log(f"{name}: {args.rounds} interleaved rounds of {args.steps} step(s) per kind")
        deadline = None if args.max_seconds is None else args.started + args.max_seconds
        row["times"] = interleave(contenders, args.rounds, args.steps, deadline=deadline)
    finally:
        for c in contenders:
            c.close()
    row["summary"] = summarize(row["times"], args.batch)
    return row


def summarize(times: dict[str, Any], batch: int) -> dict[str, Any]:
    """Per kind and contender: median images/s, the load, and the median per-round
    speed ratio against every other contender (``vs``: theirs s ÷ ours s)."""
    out: dict[str, Any] = {}
    for kind, by_label in times.items():
        out[kind] = {}
        for label, row in by_label.items():
            out[kind][label] = {
                "images_per_s": batch / statistics.median(row["seconds"]),
                "max_background_cores": max(row["background_cores"]),
                "loadavg_range": [min(row["loadavg"]), max(row["loadavg"])],
                "vs": {
                    other: statistics.median(ratios(by_label, label, other))
                    for other in by_label
                    if other != label
                },
            }
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the suite and write the result files; returns the results."""
    args = parse_args(argv)
    check_names(
        [*args.presets, *args.sweep_sparse, *args.sweep_dense], args.batch, args.model_kwargs
    )
    suite, results = Suite(args), new_results(args, argv)
    info = results["machine"]
    if args.side_by_side:
        log(
            f"machine: {info['cpu']}, {info['cores']} cores; side by side: {', '.join(args.presets)}"
        )
        results["side_by_side"] = [side_by_side(args, name) for name in args.presets]
        write_results(results, args)
        print(to_markdown(results), flush=True)
        return results
    log(f"machine: {info['cpu']}, {info['cores']} cores; presets: {', '.join(args.presets)}")
    log("matmul peak")
    results["matmul_peak"] = suite.call(
        matmul_peak, 2048, args.peak_repeats, args.max_background, args.wait_idle
    )
    log(f"  {results['matmul_peak'].get('gflops', float('nan')):.1f} GFLOP/s")
    peer = results["versions"]["torch"] is not None and not args.no_peer
    for i, name in enumerate(args.presets, start=1):
        progress = f"[{i}/{len(args.presets)}]"
        results["presets"].append(suite.preset(name, progress, peer))
    sweep = [*args.sweep_sparse, *args.sweep_dense]
    for i, name in enumerate(sweep, start=1):
        log(f"[sweep {i}/{len(sweep)}] {name}: compile train step")
        results["compile_sweep"].append({"preset": name, **suite.compile_clean(name)})
    write_results(results, args)
    print(to_markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
