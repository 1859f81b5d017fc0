"""Machine probes shared by the benchmarks: what the machine is, and how busy it is.

Nothing here imports JAX or PyTorch, so the parent of a benchmark run stays
light and its load readings are not disturbed by its own threads.
"""

from __future__ import annotations

import os
import pathlib
import platform
import re
import resource
import subprocess
import time
from importlib import metadata
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "sparsenet_jax")


def log(msg: str) -> None:
    """A progress line with a wall-clock stamp (flushed: children share the terminal)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _cpuinfo() -> tuple[str, set[str]]:
    """(CPU model name, CPU flags) from ``/proc/cpuinfo``; the platform's name elsewhere."""
    cpu = platform.processor() or "unknown"
    flags: set[str] = set()
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu, flags
    if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
        cpu = m.group(1).strip()
    if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
        flags = set(m.group(1).split())
    return cpu, flags


def _memory_gib() -> float | None:
    try:
        meminfo = pathlib.Path("/proc/meminfo").read_text()
    except OSError:
        return None
    m = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.M)
    return round(int(m.group(1)) / 2**20, 1) if m else None


def machine_info() -> dict[str, Any]:
    """CPU model, usable core count, AVX-512, memory and OS of this machine."""
    cpu, flags = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu,
        "cores": cores,
        "avx512f": "avx512f" in flags,
        "memory_gib": _memory_gib(),
        "os": platform.platform(),
    }


def machine_slug(info: dict[str, Any]) -> str:
    """File-name-safe machine name, e.g. ``amd-epyc-2c``."""
    cpu = re.sub(r"\((r|tm)\)|cpu|processor|@.*$", "", info["cpu"], flags=re.I)
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-")[:40] or "cpu"
    return f"{cpu}-{info['cores']}c"


def versions() -> dict[str, str | None]:
    """Package versions, read from metadata (no heavy imports in the parent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def git_revision() -> str | None:
    """The repository's commit, with ``-dirty`` when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout

    try:
        rev = git("rev-parse", "--short", "HEAD").strip()
        dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    except OSError:
        return None
    return (rev + ("-dirty" if dirty else "")) or None


def peak_rss_mib() -> float:
    """This process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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


class BusyMeter:
    """Cores' worth of CPU other processes used while the ``with`` body ran.

    Machine busy time (``/proc/stat``) minus this process's own CPU time (all
    its threads), divided by the wall time. Near 0 on a quiet machine.
    ``seconds`` is the body's wall time.
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

    Returns:
      The last background load measured, in cores.
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
