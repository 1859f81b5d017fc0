"""Run the training CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import pathlib
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


def cli_env(cache_dir: pathlib.Path | None = None, **extra: str) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
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
