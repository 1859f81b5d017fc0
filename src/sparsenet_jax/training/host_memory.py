"""Keep XLA:CPU's step buffers mapped from one step to the next (glibc's malloc settings).

XLA:CPU allocates all of a program's temporaries as one block on every call,
from one of its worker threads: about 1.1 GiB for a sparsenet-40-24 train step
at batch 64. glibc serves a block that large from a thread's arena with a fresh
``mmap`` and unmaps it when it is freed, so every step faults the whole block
in again, 4 KiB at a time: about 295,000 page faults and 0.7–0.9 CPU seconds of
kernel time per step on the 2-core development machine
(``benchmarks/results/cpu-gemm-conv-2026-12-06.md``).

:func:`reuse_host_memory` has glibc serve every thread from its main heap (one
arena), never ``mmap`` a block, and never give the heap's top back to the
system. From the second step on the block is reused: no page faults. It must
run before JAX starts its CPU backend, whose worker threads pick their arenas
at their first allocation. The cost: freed host memory stays with the process
(its resident size stays at its peak), and all threads share one arena's lock.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def user_tuned_malloc(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment sets glibc's malloc parameters itself (then they win)."""
    environ = dict(os.environ) if environ is None else environ
    if "malloc" in environ.get("GLIBC_TUNABLES", ""):
        return True
    return any(name.startswith("MALLOC_") for name in environ)  # MALLOC_ARENA_MAX, ...


def reuse_host_memory() -> bool:
    """Set glibc's malloc to reuse freed blocks (see the module docstring).

    Returns:
      Whether the settings were applied: False off Linux/glibc, or where the
      environment sets malloc's parameters itself.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc" or user_tuned_malloc():
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    # -1 is "never" for the trim threshold (mallopt(3)); each call returns 1 on success.
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    return all(mallopt(param, value) == 1 for param, value in settings)
