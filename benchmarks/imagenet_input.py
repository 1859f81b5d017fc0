"""ImageNet input: the thread-pool ``ImageNetLoader`` against the grain pipeline.

Writes an ImageNet-like ``imagenet2012`` set in tfds's own ``array_record`` format with
no download and no TensorFlow (``write_dataset``: real JPEG files, 300-500 px sides,
quality 90, smooth colour fields plus noise so that they are as large as photos), then
times decode + random-resized crop + mirror + normalise + batching, images/s, for:

* ``threads``: ``ImageNetLoader`` (today's loader), ``W`` decode threads;
* ``grain-mp``: ``GrainImageNetLoader``, ``W`` worker processes of one thread each;
* ``grain-threads``: the grain pipeline in this process, ``W`` threads.

Each measurement runs in a fresh process; the kinds are interleaved (A B C A B C ...)
and repeated, and the report gives min and median. Besides wall-clock images/s it
records CPU seconds per image over every process involved, the figure that the
machine's other load disturbs least and that a linear-scaling estimate can use.

    python benchmarks/imagenet_input.py --out benchmarks/results/imagenet-input-DATE
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

KINDS = ("threads", "grain-mp", "grain-threads")
CORES_TPU_HOST = 96  # a TPU v4/v5p VM host: what the linear-scaling estimate is for


# ---------------------------------------------------------------------------
# The data set


def smooth_jpeg(rng: np.random.Generator, min_side: int = 300, max_side: int = 500) -> bytes:
    """A JPEG (quality 90) of a random smooth colour field plus noise, sides in range.

    The noise (sigma 12) makes the files about 65 KB, near a photo of this size; a
    noise-free field compresses to a third of that and decodes twice as fast.
    """
    from PIL import Image

    width, height = (int(side) for side in rng.integers(min_side, max_side + 1, 2))
    cells = rng.integers(0, 256, (*rng.integers(4, 16, 2), 3), dtype=np.uint8)
    field = Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(field, np.float32) + rng.normal(0, 12, (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_dataset(
    data_dir: str, num_train: int, num_validation: int, min_side: int = 300, max_side: int = 500
) -> str:
    """Write ``imagenet2012`` into ``data_dir`` as tfds ``array_record``; returns its folder.

    tfds's own imagenet2012 builder, with its example generation replaced by generated
    JPEGs (so the features, file names and metadata are tfds's), so that
    ``tfds.data_source("imagenet2012", data_dir=data_dir)`` reads it as real data.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as real

    class Generated(real.Builder, skip_registration=True):  # type: ignore[call-arg]
        name = "imagenet2012"

        @classmethod
        def _get_pkg_dir_path(cls) -> Any:  # metadata (labels, citation) of the real one
            return real.Builder._get_pkg_dir_path()

        def _split_generators(self, dl_manager: Any) -> dict[str, Iterator[Any]]:
            counts = {"train": num_train, "validation": num_validation}
            return {split: self._generate_examples(split, n) for split, n in counts.items()}

        def _generate_examples(self, split: str, n: int) -> Iterator[Any]:  # type: ignore[override]
            rng = np.random.default_rng(["train", "validation"].index(split))
            for i in range(n):
                name = f"{split}_{i:07d}.JPEG"
                image = smooth_jpeg(rng, min_side, max_side)
                yield name, {"file_name": name, "image": image, "label": int(rng.integers(1000))}

    builder = Generated(data_dir=data_dir, file_format="array_record")
    manual = os.path.join(data_dir, "downloads", "manual")  # unused: nothing is downloaded
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    return str(builder.data_dir)


def ensure_dataset(data_dir: str, num_train: int, num_validation: int) -> dict[str, Any]:
    """Write the set unless ``data_dir`` already has one of these sizes; describe it."""
    import tensorflow_datasets as tfds

    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    splits = builder.info.splits if builder.is_prepared() else {}
    sizes = {name: split.num_examples for name, split in splits.items()}
    if sizes != {"train": num_train, "validation": num_validation}:
        write_dataset(data_dir, num_train, num_validation)
    source = tfds.data_source("imagenet2012", split="train", data_dir=data_dir, download=False)
    folder = tfds.builder("imagenet2012", data_dir=data_dir).data_dir
    files = [os.path.join(folder, f) for f in os.listdir(folder) if "array_record" in f]
    shapes = np.array([source[i]["image"].shape[:2] for i in range(0, len(source), 50)])
    return {
        "num_train": num_train,
        "num_validation": num_validation,
        "bytes_per_image": round(sum(map(os.path.getsize, files)) / (num_train + num_validation)),
        "mean_height_width": [round(v) for v in shapes.mean(axis=0)],
        "format": "tfds imagenet2012 5.1.0, array_record, JPEG quality 90",
    }


# ---------------------------------------------------------------------------
# One measurement (run in a fresh process)


def _loader(kind: str, workers: int, data_dir: str, batch: int) -> Any:
    common = {"data_dir": data_dir, "seed": 0, "train": True}
    if kind == "threads":
        from sparsenet_jax.data.imagenet import ImageNetLoader

        return ImageNetLoader("train", batch, num_workers=workers, **common)
    from sparsenet_jax.data.imagenet_grain import GrainImageNetLoader

    if kind == "grain-mp":  # W processes of one thread each
        return GrainImageNetLoader(
            "train", batch, num_workers=workers, threads_per_worker=1, **common
        )
    return GrainImageNetLoader("train", batch, num_workers=0, threads_per_worker=workers, **common)


def _cpu_seconds() -> float:
    """CPU time of this process and of its live children (grain's workers)."""
    import psutil

    usage = resource.getrusage(resource.RUSAGE_SELF)
    total = usage.ru_utime + usage.ru_stime
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(kind: str, workers: int, data_dir: str, batch: int, warmup: int, timed: int) -> dict:
    """Time ``warmup + timed`` batches; the rate counts the last ``timed`` only.

    The consumer takes each batch as soon as it is ready, so after the warm-up the
    buffers are empty and the rate is the producers' rate.
    """
    start = time.perf_counter()
    loader = _loader(kind, workers, data_dir, batch)
    batches = iter(loader)
    stamps = []
    for _ in range(warmup + timed):
        images = next(batches).images
        assert images.shape == (batch, 224, 224, 3) and images.dtype == np.float32
        stamps.append(time.perf_counter())
        if len(stamps) == warmup:
            cpu_start = _cpu_seconds()
    cpu = _cpu_seconds() - cpu_start
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    steady = stamps[-1] - stamps[warmup - 1]
    return {
        "kind": kind,
        "workers": workers,
        "first_batch_s": round(stamps[0] - start, 3),
        "images_per_s": round(timed * batch / steady, 1),
        "cpu_ms_per_image": round(1000 * cpu / (timed * batch), 2),
    }


def measure_in_fresh_process(kind: str, workers: int, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--measure", kind, "--workers", str(workers)]
    command += ["--data-dir", args.data_dir, "--batch", str(args.batch)]
    command += ["--warmup", str(args.warmup), "--timed", str(args.timed)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} x{workers} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------
# The campaign and its report


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def busiest_processes(count: int = 6) -> list[str]:
    """What else is running: the busiest processes (CPU % over 0.5 s), commands truncated."""
    import psutil

    procs = list(psutil.process_iter(["pid", "cmdline"]))
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    usage = []
    for proc in procs:
        try:
            command = " ".join(proc.info["cmdline"] or [])[:70]
            usage.append((proc.cpu_percent(None), command))
        except psutil.Error:
            pass
    return [f"{cpu:.0f}% {command}" for cpu, command in sorted(usage, reverse=True)[:count]]


def summarise(runs: list[dict]) -> list[dict]:
    """Per (kind, workers): min and median of images/s and CPU ms per image."""
    rows = []
    for kind in KINDS:
        for workers in sorted({r["workers"] for r in runs}):
            mine = [r for r in runs if r["kind"] == kind and r["workers"] == workers]
            if not mine:
                continue
            rate = [r["images_per_s"] for r in mine]
            cpu = [r["cpu_ms_per_image"] for r in mine]
            per_core = 1000 / statistics.median(cpu)  # images per CPU-second
            rows.append(
                {
                    "kind": kind,
                    "workers": workers,
                    "repeats": len(mine),
                    "images_per_s_min": min(rate),
                    "images_per_s_median": statistics.median(rate),
                    "images_per_s_per_worker_median": round(statistics.median(rate) / workers, 1),
                    "cpu_ms_per_image_min": min(cpu),
                    "cpu_ms_per_image_median": statistics.median(cpu),
                    "first_batch_s_median": statistics.median(r["first_batch_s"] for r in mine),
                    "estimate_96_cores_images_per_s": round(per_core * CORES_TPU_HOST),
                }
            )
    return rows


def markdown(result: dict) -> str:
    """The report's table, one line per (kind, workers)."""
    lines = [
        "| loader | workers | images/s min | images/s median | per worker | "
        "CPU ms/image median | first batch s | 96-core linear estimate, images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["summary"]:
        lines.append(
            f"| {r['kind']} | {r['workers']} | {r['images_per_s_min']} | "
            f"{r['images_per_s_median']} | {r['images_per_s_per_worker_median']} | "
            f"{r['cpu_ms_per_image_median']} | {r['first_batch_s_median']} | "
            f"{r['estimate_96_cores_images_per_s']} |"
        )
    return "\n".join(lines) + "\n"


def campaign(args: argparse.Namespace) -> dict:
    dataset = ensure_dataset(args.data_dir, args.num_train, args.num_validation)
    load_before, busy_before, runs = load_average(), busiest_processes(), []
    for repeat in range(args.repeats):
        for workers in args.workers:
            for kind in args.kinds:  # interleaved: A B C, A B C, ...
                run = measure_in_fresh_process(kind, workers, args)
                runs.append({**run, "repeat": repeat, "load_average": load_average()})
                print(json.dumps(runs[-1]), flush=True)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores ({_cpu_model()}), CPU only",
        "command": " ".join(sys.argv),
        "dataset": dataset,
        "batch": args.batch,
        "warmup_batches": args.warmup,
        "timed_batches": args.timed,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "busiest_processes_before": busy_before,
        "busiest_processes_after": busiest_processes(),
        "runs": runs,
        "summary": summarise(runs),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/tmp/sparsenet_imagenet_input")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-validation", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="per-host batch")
    parser.add_argument("--warmup", type=int, default=6, help="batches before the clock")
    parser.add_argument("--timed", type=int, default=30, help="batches timed")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    parser.add_argument("--measure", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:  # one measurement, in this (fresh) process
        result = measure(
            args.measure, args.workers[0], args.data_dir, args.batch, args.warmup, args.timed
        )
        print(json.dumps(result))
        return
    result = campaign(args)
    print(markdown(result))
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(result, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(result))


if __name__ == "__main__":
    main()
