"""Run the training CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

# The reference run of the fault tests: 8 steps, a checkpoint every 2 (4, 6, 8 kept).
STEPS = 8
EVERY = ("--checkpoint-every-steps", "2")

# A tiny network on the offline digits data keeps every run to seconds.
TINY_ARGS = [
    "--recipe",
    "digits",
    "--model",
    "sparsenet-13-6",
    "--batch-size",
    "32",
    "--log-every-steps",
    "2",
]


# The suite compiles at LLVM's -O0 (set by conftest.py; see there why).
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"


def fast_compile_on() -> bool:
    """Whether the suite compiles at -O0: unless SPARSENET_TESTS_XLA_OPT=default."""
    return os.environ.get("SPARSENET_TESTS_XLA_OPT", "fast") == "fast"


def cli_env(
    cache_dir: pathlib.Path | None = None, optimised: bool = False, **extra: str
) -> dict[str, str]:
    """The environment of a CLI subprocess: CPU, the suite's XLA flags plus ``extra``'s.

    ``optimised``: compile at XLA's default optimisation, for a run whose steps, not its
    compiles, take the time (a learning test: -O0 code trains several times slower).
    """
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
    flags = f"{os.environ.get('XLA_FLAGS', '')} {extra.get('XLA_FLAGS', '')}".split()
    if optimised:
        flags = [f for f in flags if f != FAST_COMPILE_FLAG]
    env["XLA_FLAGS"] = " ".join(flags)
    if cache_dir is not None:  # identical programs compile once across subprocesses
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    return env


def train_cmd(workdir: pathlib.Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sparsenet_jax.train",
        *TINY_ARGS,
        "--workdir",
        str(workdir),
        *args,
    ]


def run_train(
    workdir: pathlib.Path, *args: str, cache_dir=None, timeout=300, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_cmd(workdir, *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cli_env(cache_dir, **env),
    )


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    folder = workdir / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def load_checkpoint(workdir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
    """A finished checkpoint's arrays, flattened to path → numpy."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager((workdir / "checkpoints").absolute()) as manager:
        tree = manager.restore(step, args=ocp.args.StandardRestore())
    flat = jax.tree_util.tree_leaves_with_path(tree)
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def start_long_run(workdir: pathlib.Path, cache_dir=None, *args: str) -> subprocess.Popen:
    """A run that would go on for minutes; returns once it has saved a checkpoint."""
    proc = subprocess.Popen(
        train_cmd(workdir, "--max-steps", "2000", "--checkpoint-every-steps", "2", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(cache_dir),
    )
    deadline = time.time() + 240
    while not checkpoint_steps(workdir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    return proc


# Workdir helpers shared by the fault and reliability tests.

TMP_MARK = ".orbax-checkpoint-tmp"


def copy_run(source: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    shutil.copytree(source, dest)
    return dest


def assert_same_checkpoint(a: pathlib.Path, b: pathlib.Path, step: int) -> None:
    want, got = load_checkpoint(a, step), load_checkpoint(b, step)
    assert want.keys() == got.keys()
    for key in want:
        np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
    """Every file under ``folder`` → its bytes (to show that nothing was touched).

    The workdir's ``lock`` is left out: each run writes its own PID there.
    """
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.relative_to(folder) != pathlib.Path("lock")
    }


def truncate_files(folder: pathlib.Path) -> None:
    """Cut every file to half its length: a copy or a write stopped midway, not garbage."""
    for path in folder.rglob("*"):
        if path.is_file():
            os.truncate(path, path.stat().st_size // 2)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_one_clear_error(result: subprocess.CompletedProcess, status: int, *parts: str) -> str:
    """Exit ``status``, no traceback, exactly one ``error:`` line holding every part."""
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]
