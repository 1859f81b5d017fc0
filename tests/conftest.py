"""Shared test helpers: where the reference vectors are, and how to read them."""

from __future__ import annotations

import fcntl
import os
import pathlib
import shutil

import numpy as np
import pytest

from train_helpers import (
    EVERY,
    FAST_COMPILE_FLAG,
    STEPS,
    checkpoint_steps,
    fast_compile_on,
    run_train,
)

# The suite is compile-bound: it builds hundreds of small XLA:CPU programs. LLVM's
# optimisation of XLA's generated loops changes how fast a program runs and, at most,
# float32 rounding (XLA:CPU leaves fast-math off; a vectorised sum rounds differently
# from a sequential one), so the tests, and the subprocesses they start (which inherit
# the environment), compile at -O0: the default run took 12 min instead of 17 on the
# 2-core machine, and every test passed both ways with the newest jax. Under jax 0.7.2
# at -O0 one reference test's rounding noise exceeded its bound, so CI's Colab job
# (.ci/colab_pins.sh) runs at the default level, as do CI's PyTorch comparisons:
# SPARSENET_TESTS_XLA_OPT=default. CI's quickstart and soak run outside pytest.
# A test whose subprocess trains for long asks for the default (``cli_env(optimised=True)``).


def pytest_configure(config):
    """Before any test starts a jax backend (which reads XLA_FLAGS once)."""
    if fast_compile_on():
        flags = os.environ.get("XLA_FLAGS", "")
        if FAST_COMPILE_FLAG not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {FAST_COMPILE_FLAG}".strip()


DATA_DIR = pathlib.Path(__file__).parent / "data"
SHARED_REFERENCE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"

# Reference file → (preset name, number of classes).
TINY_REFERENCES = {
    "tiny_sparsenet_d25_k6_c10.npz": ("sparsenet-25-6", 10),
    "tiny_sparsenet_bc_d46_k6_c10.npz": ("sparsenet-bc-46-6", 10),
    "tiny_densenet_d13_k6_c10.npz": ("densenet-13-6", 10),
}
LARGE_REFERENCES = {
    "sparsenet40_k24_c100.npz": ("sparsenet-40-24", 100),
    "densenet40_k12_c10.npz": ("densenet-40-12", 10),
}


def reference_path(filename: str) -> pathlib.Path:
    """The file in tests/data, else in ../shared/reference; skip when absent."""
    for folder in (DATA_DIR, SHARED_REFERENCE):
        if (folder / filename).exists():
            return folder / filename
    pytest.skip(f"reference vector {filename} not found in {DATA_DIR} or {SHARED_REFERENCE}")


def all_references() -> list[tuple[str, str, int]]:
    return [(f, n, c) for f, (n, c) in {**TINY_REFERENCES, **LARGE_REFERENCES}.items()]


def load_reference(filename: str) -> dict[str, np.ndarray]:
    with np.load(reference_path(filename), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A compilation cache shared by one test process's training subprocesses.

    One per pytest-xdist worker, not one for all: jax writes a cache entry in place
    (no rename), so a worker could read another's half-written entry.
    """
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="session")
def straight(tmp_path_factory, cache_dir):
    """An uninterrupted run (checkpoints 4, 6, 8 kept): the reference, and a workdir to copy.

    Made once a test run and only read: under pytest-xdist the first worker to ask
    makes it while the other waits on a lock.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's own
    folder = root / "straight"
    with open(root / "straight.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "made").exists():
            shutil.rmtree(folder, ignore_errors=True)
            result = run_train(
                folder / "run", "--max-steps", str(STEPS), *EVERY, cache_dir=cache_dir
            )
            assert result.returncode == 0, result.stderr
            (folder / "made").touch()
    workdir = folder / "run"
    assert checkpoint_steps(workdir) == [4, 6, 8]
    return workdir
