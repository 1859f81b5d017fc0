"""Speed, memory and compile-time benchmarks of sparsenet_jax, with a PyTorch eager peer.

Usage (from the repository root)::

    python benchmarks/run.py --quick      # a few minutes: 2 presets, short sweep
    python benchmarks/run.py              # the full suite (see benchmarks/RESULTS.md)
    python benchmarks/run.py --presets sparsenet-40-24 --model-kwargs '{"dtype": "bfloat16"}'

For every preset (batch 64 of 32×32×3, float32) it measures our jitted train
and eval steps (the project's own ``sparsenet_jax.steps``): parameters, XLA
FLOPs per step, trace/lower and compile time, images/s, XLA's memory estimate
and the process's peak RSS, and the FLOP/s reached as a share of this
machine's float32 matmul peak (measured in the same run). The PyTorch peer
(``torch_peer.py``) runs the same network eagerly for train and eval images/s.
A sweep compiles the train step at growing depth, sparse and dense schedules.

Each measurement runs in a fresh spawned process, so compile caches, thread
pools and peak RSS do not leak between presets or between JAX and PyTorch.
Results go to ``benchmarks/results/<date>-<machine>[-quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import multiprocessing as mp
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # torch_peer lives next to this file
    sys.path.insert(0, str(HERE))

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
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
MiB = 2**20


def log(msg: str) -> None:
    """A progress line with a wall-clock stamp (flushed: children share the terminal)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model, core count, memory and OS of this machine."""
    cpu = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            cpu = m.group(1).strip()
        if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
            flags = set(m.group(1).split())
    except OSError:
        pass
    mem_gib = None
    try:
        meminfo = pathlib.Path("/proc/meminfo").read_text()
        if m := re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M):
            mem_gib = round(int(m.group(1)) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "avx512f": "avx512f" in flags,
        "memory_gib": mem_gib,
        "os": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    """Package versions, read from metadata (no heavy imports in the parent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "sparsenet_jax"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """The repository's commit, with ``-dirty`` when tracked files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return (rev + ("-dirty" if dirty else "")) or None


def machine_slug(info: dict[str, Any]) -> str:
    """File-name-safe machine name, e.g. ``amd-epyc-2c``."""
    cpu = re.sub(r"\((r|tm)\)|cpu|processor|@.*$", "", info["cpu"], flags=re.I)
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40] or "cpu"
    return f"{cpu}-{info['cores']}c"


def cpu_seconds() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, CPU seconds of this process) so far."""
    busy = 0.0
    try:
        fields = pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        # user nice system idle iowait irq softirq steal …: all but idle and iowait are busy.
        ticks = [int(v) for v in fields[:8]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy, own.ru_utime + own.ru_stime


def background_cores(interval: float = 2.0) -> float:
    """Cores' worth of CPU other processes use, sampled over ``interval`` seconds.

    Call it from an idle process (the parent between measurements).
    """
    with BusyMeter() as meter:
        time.sleep(interval)
    return meter.cores


def wait_for_idle(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait_s``) until other processes use under ``threshold`` cores.

    Shared machines matter: an OpenMP peer with one core taken by another job
    runs several times slower, which would make any comparison meaningless.
    Returns the last background load measured.
    """
    start = time.monotonic()
    last_log = start
    while True:
        # Back-to-back 1 s samples: short quiet gaps between other jobs are caught.
        load = background_cores(1.0)
        now = time.monotonic()
        if load <= threshold:
            if now - start > 5:
                log(f"  quiet after {now - start:.0f} s of waiting")
            return load
        if now - start >= max_wait_s:
            log(f"  WARNING: measuring with {load:.2f} cores busy elsewhere")
            return load
        if now - last_log >= 60:
            log(f"  waiting for a quiet machine: other processes use {load:.2f} cores")
            last_log = now


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- timing


class BusyMeter:
    """Cores' worth of CPU other processes used while the ``with`` body ran.

    Machine busy time (``/proc/stat``) minus this process's own CPU time (all
    its threads), divided by the wall time. Near 0 on a quiet machine.
    """

    def __enter__(self) -> BusyMeter:
        self.busy0, self.own0 = cpu_seconds()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
        busy1, own1 = cpu_seconds()
        other = (busy1 - self.busy0) - (own1 - self.own0)
        self.cores = max(0.0, other) / max(self.seconds, 1e-9)


def time_repeats(
    run: Callable[[], Any],
    warmup: int,
    repeats: int,
    steps: int,
    max_background: float | None = None,
    max_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Seconds per call: ``warmup`` calls, then ``repeats`` timed runs of ``steps`` calls.

    ``run`` must block until its work is done (``block_until_ready`` for JAX).
    With ``max_background``, a repeat during which other processes used more
    than that many cores is discarded and re-run once the machine is quiet
    again (for up to ``max_wait_s`` seconds; after that every repeat counts).
    Returns the median of the kept repeats, every kept repeat, the worst
    background load among them and how many repeats were discarded.
    """
    for _ in range(warmup):
        run()
    kept: list[float] = []
    loads: list[float] = []
    discarded = 0
    deadline = time.monotonic() + max_wait_s
    while len(kept) < repeats:
        with BusyMeter() as meter:
            for _ in range(steps):
                run()
        contaminated = max_background is not None and meter.cores > max_background
        if contaminated and time.monotonic() < deadline:
            discarded += 1
            log(f"    re-timing a disturbed repeat ({meter.cores:.2f} cores busy elsewhere)")
            wait_for_idle(deadline - time.monotonic(), max_background or 0.0)
            continue
        kept.append(meter.seconds / steps)
        loads.append(meter.cores)
    return {
        "median_s": statistics.median(kept),
        "repeats_s": kept,
        "background_cores": max(loads),
        "discarded_repeats": discarded,
    }


def timing_fields(kind: str, timing: dict[str, Any], batch: int) -> dict[str, Any]:
    """``time_repeats`` output as ``{kind}_step_s``, ``{kind}_images_per_s``, … fields."""
    return {
        f"{kind}_step_s": timing["median_s"],
        f"{kind}_repeats_s": timing["repeats_s"],
        f"{kind}_images_per_s": batch / timing["median_s"],
        f"{kind}_background_cores": timing["background_cores"],
        f"{kind}_discarded_repeats": timing["discarded_repeats"],
    }


def _setup_jax() -> None:
    import jax

    # A persistent compilation cache would turn compile times into cache reads.
    jax.config.update("jax_enable_compilation_cache", False)


def matmul_peak(
    n: int = 2048,
    repeats: int = 10,
    max_background: float | None = None,
    max_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Float32 matmul FLOP/s of XLA on this machine: the best of ``repeats`` n×n×n products."""
    import jax
    import jax.numpy as jnp

    _setup_jax()
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    # Three products a sample: long enough for /proc/stat's 10 ms ticks to see contention.
    timing = time_repeats(
        lambda: matmul(a, b).block_until_ready(), 2, repeats, 3, max_background, max_wait_s
    )
    best = min(timing["repeats_s"])
    return {
        "n": n,
        "best_s": best,
        "gflops": 2 * n**3 / best / 1e9,
        "median_gflops": 2 * n**3 / timing["median_s"] / 1e9,
        "background_cores": timing["background_cores"],
        "discarded_repeats": timing["discarded_repeats"],
    }


# --------------------------------------------------------------------------- JAX


def _fake_batch(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((batch, *IMAGE_SHAPE), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    return images, labels


def _flops(compiled: Any) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None else None


def _memory(compiled: Any) -> dict[str, float | None]:
    stats = compiled.memory_analysis()
    if stats is None:
        return {"xla_peak_mib": None}
    fields = ("temp", "argument", "output", "alias", "generated_code")
    out: dict[str, float | None] = {
        f"{f}_mib": getattr(stats, f"{f}_size_in_bytes", 0) / MiB for f in fields
    }
    # temp + arguments + outputs: what the step holds at once, counting donated
    # (aliased) state twice — an upper bound; alias_mib says how much is shared.
    out["xla_peak_mib"] = sum(out[f"{f}_mib"] or 0.0 for f in ("temp", "argument", "output"))
    peak = getattr(stats, "peak_memory_in_bytes", None)
    out["xla_reported_peak_mib"] = peak / MiB if peak else None
    return out


def _make_steps(name: str, model_kwargs: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(model, optimizer, mesh, the steps module): the project's own API, nothing of ours."""
    import sparsenet_jax as sj
    from sparsenet_jax import steps

    model = sj.create_model(name, num_classes=NUM_CLASSES, **model_kwargs)
    tx = steps.make_optimizer(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    mesh = steps.data_mesh()
    return model, tx, mesh, steps


def bench_jax(
    name: str,
    batch: int = 64,
    repeats: int = 5,
    steps_per_repeat: int = 2,
    warmup: int = 2,
    model_kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    max_background: float | None = None,
    max_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Measure our train and eval steps for one preset (see the module docstring).

    ``max_background`` and ``max_wait_s`` are passed to :func:`time_repeats`.
    """
    import jax

    import sparsenet_jax as sj

    _setup_jax()
    model, tx, mesh, steps = _make_steps(name, model_kwargs or {})
    result: dict[str, Any] = {"preset": name, "batch": batch, "devices": len(jax.devices())}

    start = time.perf_counter()
    state = steps.create_train_state(model, tx, seed, (1, *IMAGE_SHAPE), mesh)
    jax.block_until_ready(state)
    result["init_s"] = time.perf_counter() - start
    result["params"] = sj.count_params(state.params)

    images, labels = _fake_batch(batch, seed)
    data = steps.global_batch({"image": images, "label": labels}, mesh)

    train_jit = steps.jit_train_step(steps.make_train_step(model, tx), mesh)
    with BusyMeter() as lowering:
        lowered = train_jit.lower(state, data)
    with BusyMeter() as compiling:
        train = lowered.compile()
    result["train_lower_s"], result["train_compile_s"] = lowering.seconds, compiling.seconds
    result["train_compile_background_cores"] = compiling.cores
    result["train_flops"] = _flops(train)
    result.update({f"train_{k}": v for k, v in _memory(train).items()})

    eval_jit = steps.jit_eval_step(steps.make_eval_step(model), mesh)
    start = time.perf_counter()
    evaluate = eval_jit.lower(state, data).compile()
    result["eval_lower_compile_s"] = time.perf_counter() - start
    result["eval_flops"] = _flops(evaluate)

    holder = {"state": state}  # the train step donates the state: keep the newest one

    def train_once() -> None:
        new_state, metrics = train(holder["state"], data)
        holder["state"] = new_state
        jax.block_until_ready((new_state, metrics))

    def eval_once() -> None:
        jax.block_until_ready(evaluate(holder["state"], data))

    timing = (warmup, repeats, steps_per_repeat, max_background, max_wait_s)
    log(f"  jax {name}: compiled in {result['train_compile_s']:.1f} s; timing train")
    result.update(timing_fields("train", time_repeats(train_once, *timing), batch))
    log(f"  jax {name}: timing eval")
    result.update(timing_fields("eval", time_repeats(eval_once, *timing), batch))
    for kind in ("train", "eval"):
        flops = result[f"{kind}_flops"]
        result[f"{kind}_gflops_per_s"] = (
            flops / result[f"{kind}_step_s"] / 1e9 if flops is not None else None
        )
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def abstract_train_inputs(model: Any, tx: Any, mesh: Any, steps: Any, batch: int) -> Any:
    """Shapes (with shardings) of the train step's arguments, without running the init."""
    import jax
    import jax.numpy as jnp

    replicated, batched = steps.shardings(mesh)
    state = jax.eval_shape(lambda: steps.create_train_state(model, tx, 0, (1, *IMAGE_SHAPE)))
    state = jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), state
    )
    data = {
        "image": jax.ShapeDtypeStruct((batch, *IMAGE_SHAPE), jnp.float32, sharding=batched),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=batched),
    }
    return state, data


def compile_point(
    name: str, batch: int = 64, model_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Trace/lower and compile time of the train step of one preset (nothing is run)."""
    import sparsenet_jax as sj

    _setup_jax()
    model, tx, mesh, steps = _make_steps(name, model_kwargs or {})
    state, data = abstract_train_inputs(model, tx, mesh, steps, batch)
    train_jit = steps.jit_train_step(steps.make_train_step(model, tx), mesh)
    with BusyMeter() as lowering:
        lowered = train_jit.lower(state, data)
    with BusyMeter() as compiling:
        compiled = lowered.compile()
    lower_s, compile_s = lowering.seconds, compiling.seconds
    return {
        "preset": name,
        "schedule": model.schedule.kind,
        "units": int(sum(model.block_sizes)),
        "params": sj.count_params(state.params),
        "lower_s": lower_s,
        "compile_s": compile_s,
        "total_s": lower_s + compile_s,
        "train_flops": _flops(compiled),
        "peak_rss_mib": peak_rss_mib(),
        # Other processes' load while lowering and compiling (cores; 0 = undisturbed).
        "background_cores": max(lowering.cores, compiling.cores),
    }


# --------------------------------------------------------------------------- PyTorch


def bench_torch(
    name: str,
    batch: int = 64,
    repeats: int = 5,
    steps_per_repeat: int = 2,
    warmup: int = 2,
    model_kwargs: dict[str, Any] | None = None,
    threads: int | None = None,
    seed: int = 0,
    max_background: float | None = None,
    max_wait_s: float = 0.0,
) -> dict[str, Any]:
    """Train and eval images/s of the PyTorch eager peer of one preset."""
    import torch

    import sparsenet_jax as sj
    import torch_peer

    threads = threads or machine_info()["cores"]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = sj.create_model(name, num_classes=NUM_CLASSES, **(model_kwargs or {}))
    net = torch_peer.from_jax_model(model)
    opt = torch_peer.make_sgd(net)
    images, labels = _fake_batch(batch, seed)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NHWC → NCHW
    y = torch.from_numpy(labels.astype(np.int64))

    def train_once() -> None:
        net.train()
        torch_peer.train_step(net, opt, x, y)

    def eval_once() -> None:
        net.eval()
        with torch.inference_mode():
            net(x)

    result: dict[str, Any] = {
        "preset": name,
        "threads": threads,
        "params": torch_peer.count_params(net),
    }
    # An independent FLOP count (convs and matmuls only, no BN or elementwise ops)
    # to sanity-check XLA's cost analysis, which counts those too.
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_once()
    result["torch_counted_train_flops"] = counter.get_total_flops()
    timing = (warmup, repeats, steps_per_repeat, max_background, max_wait_s)
    log(f"  torch {name}: timing train ({threads} threads)")
    result.update(timing_fields("train", time_repeats(train_once, *timing), batch))
    log(f"  torch {name}: timing eval")
    result.update(timing_fields("eval", time_repeats(eval_once, *timing), batch))
    result["peak_rss_mib"] = peak_rss_mib()
    return result


# --------------------------------------------------------------------------- orchestration


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``fn(*args, **kwargs)`` in a fresh spawned process; an error becomes ``{"error": ...}``."""
    ctx = mp.get_context("spawn")  # fork would inherit JAX's threads and memory
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        try:
            return pool.submit(fn, *args, **kwargs).result()
        except Exception as err:  # a failed preset must not end a long run
            log(f"  FAILED: {type(err).__name__}: {err}")
            return {"error": f"{type(err).__name__}: {err}"}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _max_background(*measurements: dict[str, Any]) -> float | None:
    """The worst load other processes put on the CPU during the timed windows."""
    values = [
        m[f"{kind}_background_cores"]
        for m in measurements
        for kind in ("train", "eval")
        if f"{kind}_background_cores" in m
    ]
    return max(values) if values else None


def _compile_total(row: dict[str, Any]) -> float | None:
    """Lower + compile seconds: the dedicated fresh-process measurement if there is one."""
    point = row.get("compile") or {}
    if "total_s" in point:
        return point["total_s"]
    ours = row.get("jax") or {}
    if "train_lower_s" in ours:
        return ours["train_lower_s"] + ours["train_compile_s"]
    return None


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def to_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: header, our numbers, ours vs the peer, compile-time sweep."""
    info, ver = results["machine"], results["versions"]
    peak = results.get("matmul_peak") or {}
    cfg = results["config"]
    lines = [
        f"# Benchmarks {results['date']} — {info['cpu']}, {info['cores']} cores",
        "",
        f"- command: `{results['command']}`",
        f"- git: {results.get('git')}; jax {ver.get('jax')}, jaxlib {ver.get('jaxlib')}, "
        f"flax {ver.get('flax')}, torch {ver.get('torch')}, python {ver.get('python')}",
        f"- batch {cfg['batch']} × 32×32×3, float32; median of {cfg['repeats']} repeats × "
        f"{cfg['steps']} steps after {cfg['warmup']} warm-up steps; "
        f"model kwargs {json.dumps(cfg['model_kwargs'])}",
        f"- XLA float32 matmul peak ({peak.get('n')}³, best of {cfg['peak_repeats']}): "
        f"**{_fmt(peak.get('gflops'))} GFLOP/s** "
        f"(other processes meanwhile: {_fmt(peak.get('background_cores'), 2)} cores)",
        "",
        "## Ours (sparsenet_jax train and eval steps)",
        "",
        _row(
            [
                "preset",
                "params",
                "GFLOP/train step (XLA)",
                "GFLOP/train step (torch counter)",
                "lower + compile s",
                "train img/s",
                "eval img/s",
                "train GFLOP/s",
                "% of matmul peak",
                "XLA mem MiB",
                "peak RSS MiB",
            ]
        ),
        _row(["---"] + ["---:"] * 10),
    ]
    peer_lines = [
        "",
        "## Ours vs the PyTorch eager peer",
        "",
        _row(
            [
                "preset",
                "ours train img/s",
                "peer train img/s",
                "ours ÷ peer train",
                "ours eval img/s",
                "peer eval img/s",
                "ours ÷ peer eval",
                "peer peak RSS MiB",
                "busy elsewhere (cores)",
            ]
        ),
        _row(["---"] + ["---:"] * 8),
    ]
    for row in results["presets"]:
        ours, peer = row.get("jax") or {}, row.get("torch") or {}
        if "error" in ours:
            lines.append(_row([row["preset"], f"error: {ours['error'][:100]}"] + [""] * 9))
            continue
        flops = ours.get("train_flops")
        counted = peer.get("torch_counted_train_flops")
        gflops = ours.get("train_gflops_per_s")
        frac = 100 * gflops / peak["gflops"] if gflops and peak.get("gflops") else None
        lines.append(
            _row(
                [
                    row["preset"],
                    _fmt(ours["params"]),
                    _fmt(flops / 1e9 if flops else None),
                    _fmt(counted / 1e9 if counted else None),
                    _fmt(_compile_total(row)),
                    _fmt(ours["train_images_per_s"]),
                    _fmt(ours["eval_images_per_s"]),
                    _fmt(gflops),
                    _fmt(frac),
                    _fmt(ours.get("train_xla_peak_mib"), 0),
                    _fmt(ours["peak_rss_mib"], 0),
                ]
            )
        )
        if not peer:
            continue
        if "error" in peer:
            peer_lines.append(_row([row["preset"], f"error: {peer['error'][:100]}"] + [""] * 7))
            continue
        peer_lines.append(
            _row(
                [
                    row["preset"],
                    _fmt(ours["train_images_per_s"]),
                    _fmt(peer["train_images_per_s"]),
                    _fmt(ours["train_images_per_s"] / peer["train_images_per_s"], 2),
                    _fmt(ours["eval_images_per_s"]),
                    _fmt(peer["eval_images_per_s"]),
                    _fmt(ours["eval_images_per_s"] / peer["eval_images_per_s"], 2),
                    _fmt(peer["peak_rss_mib"], 0),
                    _fmt(_max_background(ours, peer), 2),
                ]
            )
        )
    if len(peer_lines) > 5:
        lines += peer_lines
    sweep = results.get("compile_sweep") or []
    if sweep:
        lines += [
            "",
            "## Train-step compile time against depth",
            "",
            _row(
                [
                    "preset",
                    "schedule",
                    "units",
                    "params",
                    "trace + lower s",
                    "XLA compile s",
                    "total s",
                    "GFLOP/step",
                ]
            ),
            _row(["---", "---"] + ["---:"] * 6),
        ]
        for p in sweep:
            if "error" in p:
                lines.append(_row([p["preset"], f"error: {p['error'][:100]}"] + [""] * 6))
                continue
            lines.append(
                _row(
                    [
                        p["preset"],
                        p["schedule"],
                        str(p["units"]),
                        _fmt(p["params"]),
                        _fmt(p["lower_s"]),
                        _fmt(p["compile_s"]),
                        _fmt(p["total_s"]),
                        _fmt(p["train_flops"] / 1e9 if p["train_flops"] else None),
                    ]
                )
            )
    lines += [
        "",
        "Columns: *GFLOP/train step (XLA)* and *XLA mem* come from XLA's cost and memory "
        "analysis of the compiled train step (XLA mem = temp + arguments + outputs; the "
        "donated state is counted in both arguments and outputs). *GFLOP/train step (torch "
        "counter)* is PyTorch's FlopCounterMode on one peer step: convolutions and matmuls "
        "only, an independent check of XLA's count. *lower + compile* = tracing + lowering "
        "+ XLA compilation of the train step, in a fresh process with abstract inputs "
        "(as in the sweep), compiled again when other processes disturbed it. *train GFLOP/s* = XLA FLOPs ÷ median step "
        "time; *% of matmul peak* compares it with the matmul above. *peak RSS* = the "
        "measuring process's high-water mark (a fresh process per preset and per framework, "
        "so it includes initialisation, compilation and timing). *peer* = PyTorch eager "
        "(`benchmarks/torch_peer.py`): SGD Nesterov step / `inference_mode` forward. *busy "
        "elsewhere* = the most CPU that other processes used during any timed window of "
        "the row's kept repeats (machine busy time − the measuring process's own CPU "
        "time); repeats above the run's threshold were discarded and timed again, so it "
        "stays near 0 unless the wait for a quiet machine ran out.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    p.add_argument("--out-dir", type=pathlib.Path, default=HERE / "results")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument(
        "--in-process", action="store_true", help="no subprocesses (debugging; RSS is cumulative)"
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.presets = args.presets or list(QUICK_PRESETS if quick else DEFAULT_PRESETS)
    args.repeats = args.repeats or (2 if quick else 5)
    args.steps = args.steps or (1 if quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    if args.sweep_sparse is None:
        args.sweep_sparse = list(QUICK_SWEEP_SPARSE if quick else DEFAULT_SWEEP_SPARSE)
    if args.sweep_dense is None:
        args.sweep_dense = list(QUICK_SWEEP_DENSE if quick else DEFAULT_SWEEP_DENSE)
    if args.no_sweep:
        args.sweep_sparse = args.sweep_dense = []
    return args


def check_names(names: Sequence[str], model_kwargs: dict[str, Any]) -> None:
    """Fail before a long run, not in its middle, on a name or kwarg create_model rejects."""
    import sparsenet_jax as sj

    for name in names:
        sj.create_model(name, num_classes=NUM_CLASSES, **model_kwargs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the suite and write the result files; returns the results."""
    args = parse_args(argv)
    check_names([*args.presets, *args.sweep_sparse, *args.sweep_dense], args.model_kwargs)
    isolated = (lambda fn, *a, **k: fn(*a, **k)) if args.in_process else run_isolated
    quiet = {"max_background": args.max_background, "max_wait_s": args.wait_idle}

    def call(fn: Callable[..., dict[str, Any]], *a: Any, **k: Any) -> dict[str, Any]:
        # Start on a quiet machine; the measurement itself re-times disturbed repeats.
        if args.wait_idle > 0:
            load = wait_for_idle(args.wait_idle, args.max_background)
        else:
            load = background_cores(1.0)
        return {**isolated(fn, *a, **k), "background_cores_before": load}

    def compile_clean(name: str) -> dict[str, Any]:
        # A compile cannot be re-timed in the same process (tracing caches warm up):
        # compile again in a fresh one when other processes disturbed it.
        best: dict[str, Any] = {}
        for attempt in range(1, max(1, args.compile_attempts) + 1):
            point = call(compile_point, name, args.batch, args.model_kwargs)
            if "error" in point:
                return point
            if not best or point["background_cores"] < best["background_cores"]:
                best = {**point, "attempts": attempt}
            if point["background_cores"] <= args.max_background:
                break
            log(f"  disturbed ({point['background_cores']:.2f} cores elsewhere); compiling again")
        log(f"  {best['lower_s']:.1f} s lower + {best['compile_s']:.1f} s compile")
        return best

    info = machine_info()
    torch_ok = versions()["torch"] is not None
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/run.py", *(argv or sys.argv[1:])]),
        "machine": info,
        "versions": versions(),
        "git": git_revision(),
        "config": {
            "batch": args.batch,
            "repeats": args.repeats,
            "steps": args.steps,
            "warmup": args.warmup,
            "peak_repeats": args.peak_repeats,
            "model_kwargs": args.model_kwargs,
            "quick": args.quick,
            "max_background_cores": args.max_background,
            "wait_idle_s": args.wait_idle,
        },
        "presets": [],
        "compile_sweep": [],
    }
    log(f"machine: {info['cpu']}, {info['cores']} cores; presets: {', '.join(args.presets)}")
    log("matmul peak")
    results["matmul_peak"] = call(matmul_peak, 2048, args.peak_repeats, **quiet)
    log(f"  {results['matmul_peak'].get('gflops', float('nan')):.1f} GFLOP/s")
    timing = {"repeats": args.repeats, "steps_per_repeat": args.steps, "warmup": args.warmup}
    timing.update(quiet)
    total = len(args.presets)
    for i, name in enumerate(args.presets, start=1):
        log(f"[{i}/{total}] {name}: jax compile time")
        row: dict[str, Any] = {"preset": name, "compile": compile_clean(name), "torch": None}
        log(f"[{i}/{total}] {name}: jax steps")
        ours = call(bench_jax, name, args.batch, model_kwargs=args.model_kwargs, **timing)
        row["jax"] = ours
        if "error" not in ours:
            log(
                f"  jax {name}: {ours['train_images_per_s']:.1f} train img/s, "
                f"{ours['eval_images_per_s']:.1f} eval img/s"
            )
        if torch_ok and not args.no_peer:
            log(f"[{i}/{total}] {name}: torch peer")
            peer = call(bench_torch, name, args.batch, model_kwargs=args.model_kwargs, **timing)
            row["torch"] = peer
            if "error" not in peer:
                log(
                    f"  torch {name}: {peer['train_images_per_s']:.1f} train img/s, "
                    f"{peer['eval_images_per_s']:.1f} eval img/s"
                )
                if "params" in ours and peer["params"] != ours["params"]:
                    log(f"  WARNING: parameter counts differ: {ours['params']} vs {peer['params']}")
        results["presets"].append(row)
    sweep = [*args.sweep_sparse, *args.sweep_dense]
    for i, name in enumerate(sweep, start=1):
        log(f"[sweep {i}/{len(sweep)}] {name}: compile train step")
        results["compile_sweep"].append({"preset": name, **compile_clean(name)})

    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{results['date'][:10]}-{machine_slug(info)}"
    stem += "-quick" if args.quick else ""
    stem += f"-{args.tag}" if args.tag else ""
    json_path, md_path = args.out_dir / f"{stem}.json", args.out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    md_path.write_text(to_markdown(results))
    log(f"wrote {json_path} and {md_path}")
    print(to_markdown(results), flush=True)
    return results


if __name__ == "__main__":
    main()
