"""On CPU, XLA's per-call buffers come from glibc's main heap, which keeps them."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from sparsenet_jax.training.host_memory import user_tuned_malloc

# One call of a program whose 128 MiB intermediate is XLA's temporary block, allocated
# and freed by a worker thread of the CPU backend. Prints the size of glibc's main heap
# afterwards (mallinfo2 covers the main arena only): the block is in it, and stays,
# only where that thread allocates from the main heap and the heap is not trimmed.
_MAIN_HEAP = """
import ctypes, sys
import jax, jax.numpy as jnp
from sparsenet_jax.training.platforms import setup_platforms
if sys.argv[1] == "trainer":
    setup_platforms()
wide = jax.jit(lambda x, a, b: jnp.tanh(x @ a) @ b)
wide(jnp.ones((65536, 16)), jnp.ones((16, 512)), jnp.ones((512, 4))).block_until_ready()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
print(mallinfo2().arena)
"""
_BLOCK = 128 << 20


def _main_heap_bytes(mode: str) -> int:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run(
        [sys.executable, "-c", _MAIN_HEAP, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_user_settings_win() -> None:
    assert not user_tuned_malloc({"PATH": "/bin"})
    assert user_tuned_malloc({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert user_tuned_malloc({"MALLOC_ARENA_MAX": "4"})
    assert not user_tuned_malloc({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only"
)
def test_the_trainers_cpu_setup_keeps_xlas_blocks_in_the_main_heap() -> None:
    """Without the setting, the worker thread's 128 MiB block is a private mapping, made
    and unmapped (and faulted in page by page) at every call; with the trainer's
    ``setup_platforms`` on CPU it stays in the main heap for the next call to reuse."""
    plain = _main_heap_bytes("plain")
    if plain >= _BLOCK:
        pytest.skip(f"this malloc keeps large blocks in its main heap by itself ({plain} B)")
    trainer = _main_heap_bytes("trainer")
    assert trainer >= _BLOCK, (trainer, plain)
