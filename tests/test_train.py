"""End-to-end tests of ``python -m sparsenet_jax.train`` on the offline digits data."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest

from train_helpers import (
    EVERY,
    STEPS,
    checkpoint_steps,
    cli_env,
    load_checkpoint,
    read_metrics,
    run_train,
    train_cmd,
)


def test_short_run_writes_everything(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    result = run_train(
        workdir, "--max-steps", "6", "--checkpoint-every-steps", "3", cache_dir=cache_dir
    )
    assert result.returncode == 0, result.stderr
    assert "done: sparsenet-13-6 on digits, step 6" in result.stdout
    assert "parameters" in result.stdout and "wall time" in result.stdout
    records = read_metrics(workdir)
    train = [r for r in records if r["split"] == "train"]
    test = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for r in train:
        assert {"epoch", "loss", "accuracy", "lr", "images_per_sec"} <= set(r)
        assert np.isfinite(r["loss"]) and 0 <= r["accuracy"] <= 1
    assert len(test) == 1 and test[0]["step"] == 6 and 0 <= test[0]["accuracy"] <= 1
    assert checkpoint_steps(workdir) == [3, 6]
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"] == "sparsenet-13-6" and saved["max_steps"] == 6
    assert any((workdir / "tensorboard").iterdir())
    assert "step 6/6" in result.stderr  # progress


def test_kill_9_then_resume_is_bit_exact(tmp_path, cache_dir, straight):
    """Killed (SIGKILL) mid-run once a checkpoint exists, then resumed: the same final
    state and metrics as the uninterrupted run (``straight``, the same flags)."""
    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        train_cmd(crashed, "--max-steps", str(STEPS), *EVERY),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(cache_dir),
    )
    deadline = time.time() + 240
    while not checkpoint_steps(crashed) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = checkpoint_steps(crashed)
    assert killed_at and max(killed_at) < STEPS

    result = run_train(crashed, "--max-steps", str(STEPS), *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    a, b = load_checkpoint(straight, STEPS), load_checkpoint(crashed, STEPS)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # The metrics file holds each step once, as an uninterrupted run's does.
    steps_logged = [r["step"] for r in read_metrics(crashed) if r["split"] == "train"]
    assert steps_logged == sorted(set(steps_logged))
    assert steps_logged == [r["step"] for r in read_metrics(straight) if r["split"] == "train"]


def test_nan_loss_stops_with_a_clear_message(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    result = run_train(
        workdir,
        "--max-steps",
        "20",
        "--lr",
        "1e30",
        "--checkpoint-every-steps",
        "50",
        cache_dir=cache_dir,
    )
    assert result.returncode == 1
    assert "error: the loss became nan" in result.stderr.lower()
    assert "Traceback" not in result.stderr
    assert "NaN or Inf found" not in result.stderr  # tensorboardX's line, once a record
    assert checkpoint_steps(workdir) == []  # nothing non-finite was saved


def test_corrupt_latest_checkpoint_falls_back(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    assert (
        run_train(
            workdir, "--max-steps", "4", "--checkpoint-every-steps", "2", cache_dir=cache_dir
        ).returncode
        == 0
    )
    assert checkpoint_steps(workdir) == [2, 4]
    for path in (workdir / "checkpoints" / "4").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    result = run_train(
        workdir, "--max-steps", "6", "--checkpoint-every-steps", "2", cache_dir=cache_dir
    )
    assert result.returncode == 0, result.stderr
    assert "checkpoint 4" in result.stderr and "unreadable" in result.stderr
    assert "resumed from step 2" in result.stderr


def test_resume_with_another_model_is_refused(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    assert run_train(workdir, "--max-steps", "2", cache_dir=cache_dir).returncode == 0
    result = run_train(workdir, "--max-steps", "4", "--model", "densenet-13-6", cache_dir=cache_dir)
    assert result.returncode == 1
    assert "holds a run of another configuration" in result.stderr
    assert "model: workdir has 'sparsenet-13-6', asked 'densenet-13-6'" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_is_a_clear_message(tmp_path):
    result = subprocess.run(
        train_cmd(tmp_path / "run", "--dataset", "cifar10", "--data-dir", str(tmp_path / "none")),
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert result.returncode == 1
    assert str(tmp_path / "none") in result.stderr and "prepare" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # no tfds search lines


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "abc"], "invalid int value"),
        (["--recipe", "cifar1O"], "did you mean 'cifar10'"),
        (["--dataset", "cifar"], "did you mean"),
        (["--lr", "-1"], "--lr: must be > 0"),
        (["--model", "sparsenet-41-24"], "depth 41"),
        (["--bogus-flag", "1"], "unrecognized arguments"),
        (["--model-kwargs", "{bad"], "not valid JSON"),
    ],
)
def test_bad_flags_exit_2_without_traceback(tmp_path, args, message):
    result = subprocess.run(
        train_cmd(tmp_path / "run", *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(),
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_every_field():
    import dataclasses

    from sparsenet_jax.training.config import TrainConfig
    from sparsenet_jax.training.flags import build_parser

    text = build_parser().format_help()
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in text


def _compilation(stderr: str) -> tuple[float, int]:
    """(seconds, programs read from the cache) from the run's "compilation:" log line."""
    line = next(x for x in stderr.splitlines() if x.startswith("compilation: "))
    seconds = float(line.split()[1])
    return seconds, int(line.split("(")[1].split()[0])


@pytest.mark.slow
def test_a_second_start_reads_the_compilation_cache(tmp_path):
    cache = tmp_path / "cache"
    args = ("--max-steps", "4", "--compilation-cache-dir", str(cache))
    first = run_train(tmp_path / "a", *args)
    second = run_train(tmp_path / "b", *args)  # a new workdir: the same programs, not a resume
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    (first_s, first_hits), (second_s, second_hits) = map(
        _compilation, (first.stderr, second.stderr)
    )
    assert first_hits == 0 and second_hits >= 2  # the train and eval steps at least
    assert second_s <= 0.2 * first_s, (first_s, second_s)
