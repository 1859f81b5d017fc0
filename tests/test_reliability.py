"""Reliability guarantees: no run can silently ruin another, or itself.

One test (or a few) per guarantee, each a fault a user can cause: two runs on
one workdir, a diverging run with frequent checkpoints, flipped bytes or an
empty folder among the checkpoints, changed flags on resume, Ctrl-C, a kill
while a file is rewritten, a network too big for the machine. Each case runs
``python -m sparsenet_jax.train`` as a user would, on a tiny network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenet_jax.training import steps
from sparsenet_jax.training.checkpoints import Checkpoints
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.signals import StopRequested, StopSignals
from sparsenet_jax.training.workdir import write_atomic
from test_faults import (
    assert_one_clear_error,
    assert_same_checkpoint,
    copy_run,
    error_lines,
    truncate_files,
)
from train_helpers import (
    EVERY,
    STEPS,
    checkpoint_steps,
    cli_env,
    load_checkpoint,
    run_train,
    start_long_run,
    train_cmd,
)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


# ---------------------------------------------------------------------------
# 1. One run per workdir


@pytest.mark.slow  # several full runs: in the slow job
def test_second_run_on_a_live_workdir_exits_at_once(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    first = start_long_run(workdir, cache_dir)
    try:
        started = time.time()
        second = run_train(workdir, "--max-steps", "2000", *EVERY, cache_dir=cache_dir)
        assert time.time() - started < 60
        line = assert_one_clear_error(second, 1, "is in use by another run", f"PID {first.pid}")
        assert "on host " in line
        assert first.poll() is None  # the live run goes on untouched
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # The dead run's lock is taken over: the same command resumes.
    saved = max(checkpoint_steps(workdir))
    result = run_train(workdir, "--max-steps", str(saved + 2), *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert f"resumed from step {saved}" in result.stderr


# ---------------------------------------------------------------------------
# 2. Nothing non-finite is ever saved


def test_diverging_run_never_saves_non_finite_values(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    # Checkpoints every step, losses checked only every 50: the state check must catch it.
    args = ("--max-steps", "20", "--lr", "1e30", "--checkpoint-every-steps", "1")
    result = run_train(workdir, *args, "--log-every-steps", "50", cache_dir=cache_dir)
    assert_one_clear_error(result, 1, "non-finite", "not saved")
    for step in checkpoint_steps(workdir):
        for key, value in load_checkpoint(workdir, step).items():
            assert np.all(np.isfinite(value)), f"step {step} saved non-finite {key}"


def test_checkpoints_refuse_a_non_finite_state(tmp_path):
    state = steps.TrainState(
        step=jnp.array(3),
        params={"w": jnp.array([1.0, jnp.nan])},
        batch_stats={"mean": jnp.zeros(2)},
        opt_state=(),
    )
    checkpoints = Checkpoints(tmp_path, keep=2)
    with pytest.raises(TrainingError, match="non-finite parameters"):
        checkpoints.save(state)
    checkpoints.close()
    assert not (tmp_path / "checkpoints" / "3").exists()


# ---------------------------------------------------------------------------
# 3. Checkpoints are verified on restore


def flip_a_byte(folder) -> None:
    """Change one byte in the middle of the largest file: silent corruption, same size."""
    target = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def test_flipped_bytes_are_detected_and_the_checkpoint_skipped(tmp_path, cache_dir, straight):
    workdir = copy_run(straight, tmp_path / "run")
    flip_a_byte(workdir / "checkpoints" / str(STEPS))
    result = run_train(workdir, "--max-steps", str(STEPS), *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = warning_lines(result.stderr)
    assert len(warnings) == 1, result.stderr
    assert f"checkpoint {STEPS}" in warnings[0] and "checksum mismatch" in warnings[0]
    assert "resumed from step 6" in result.stderr
    assert_same_checkpoint(straight, workdir, STEPS)  # trained again, bit-exact
    assert any((workdir / "checkpoints_unreadable").iterdir())  # kept for the user to inspect


@pytest.mark.parametrize("broken", ["empty", "truncated"])
def test_one_broken_folder_does_not_hide_the_good_ones(tmp_path, cache_dir, straight, broken):
    workdir = copy_run(straight, tmp_path / "run")
    folder = workdir / "checkpoints" / "10"
    if broken == "empty":
        folder.mkdir()
    else:  # a copy stopped midway
        shutil.copytree(workdir / "checkpoints" / "8", folder)
        truncate_files(folder)
    result = run_train(workdir, "--max-steps", "10", *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = warning_lines(result.stderr)
    assert len(warnings) == 1 and "checkpoint 10" in warnings[0], result.stderr
    assert "resumed from step 8" in result.stderr
    assert checkpoint_steps(workdir) == [6, 8, 10]


# ---------------------------------------------------------------------------
# 4. Resume means the same run


@pytest.mark.parametrize(
    "flag, value, saved",
    [("--batch-size", "16", "32"), ("--seed", "1", "0"), ("--augment-pad", "0", "2")],
)
def test_flags_that_change_what_a_step_means_are_refused(
    tmp_path, cache_dir, straight, flag, value, saved
):
    workdir = copy_run(straight, tmp_path / "run")
    result = run_train(workdir, "--max-steps", "10", flag, value, cache_dir=cache_dir)
    field = flag[2:].replace("-", "_")
    assert_one_clear_error(result, 1, f"{field}: workdir has {saved}, asked {value}")
    assert checkpoint_steps(workdir) == [4, 6, 8]


@pytest.mark.slow  # several full runs: in the slow job
def test_flags_that_change_only_the_future_are_recorded(tmp_path, cache_dir, straight):
    workdir = copy_run(straight, tmp_path / "run")
    config_before = (workdir / "config.json").read_bytes()
    result = run_train(workdir, "--max-steps", "10", "--lr", "0.05", *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "resuming with changed settings" in result.stderr and "lr 0.1 -> 0.05" in result.stderr
    assert (workdir / "config.json").read_bytes() == config_before
    history = [json.loads(line) for line in (workdir / "config_history.jsonl").open()]
    assert history[-1]["changed"] == {"lr": [0.1, 0.05], "max_steps": [8, 10]}
    # The same command again changes nothing more.
    again = run_train(workdir, "--max-steps", "10", "--lr", "0.05", *EVERY, cache_dir=cache_dir)
    assert again.returncode == 0, again.stderr
    assert len((workdir / "config_history.jsonl").read_text().splitlines()) == 1


# ---------------------------------------------------------------------------
# 5. Ctrl-C behaves like SIGTERM; exit codes say what happened


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_saves_and_exits_non_zero(tmp_path, cache_dir, signum, code):
    workdir = tmp_path / "run"
    proc = start_long_run(workdir, cache_dir)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    name = signal.Signals(signum).name
    stopped_at = int(err.split(f"{name}: saved checkpoint at step ")[1].split()[0])
    assert stopped_at in checkpoint_steps(workdir)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_start_up_stops_at_once(tmp_path, signum, code):
    """Before the first step (loading, compiling) there is nothing to save: stop, say so."""
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(workdir, "--max-steps", "2000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),  # no shared cache: compiling keeps the run in its start-up
    )
    deadline = time.time() + 120
    while not (workdir / "lock").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert "nothing to save" in err or "saved checkpoint at step" in err


def test_a_start_up_signal_wrapped_by_a_library_still_stops_the_run():
    """jax 0.7 turns an exception raised inside tracing into a plain Exception
    ("couldn't apply typeof to args"); the stop must still read as the signal."""

    def library_call():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here, raising StopRequested
        except BaseException as err:
            raise RuntimeError("couldn't apply typeof to args") from err

    with pytest.raises(StopRequested) as caught, StopSignals():
        library_call()
    assert caught.value.signum == signal.SIGINT


def test_an_ordinary_error_at_start_up_stays_an_error():
    with pytest.raises(ValueError), StopSignals():
        raise ValueError("bad")


@pytest.mark.slow
def test_ctrl_c_twice_stops_at_once(tmp_path, cache_dir):
    workdir = tmp_path / "run"
    proc = start_long_run(workdir, cache_dir)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    started = time.time()
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert time.time() - started < 30


# ---------------------------------------------------------------------------
# 6. Files are replaced atomically


def test_write_atomic_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old\n")

    def killed(fd):
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


# ---------------------------------------------------------------------------
# 7. Refuse what cannot work, before it hurts the machine


def test_a_network_too_big_for_the_machine_is_refused_at_once(tmp_path):
    started = time.time()
    result = subprocess.run(
        train_cmd(tmp_path / "run", "--recipe", "cifar10", "--model", "densenet-1000-100"),
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    line = assert_one_clear_error(result, 1, "50,427,203,410 parameters", "GiB")
    assert "memory" in line
    assert time.time() - started < 60
    assert error_lines(result.stderr) == [line]


def test_memory_estimate_counts_state_and_activations():
    from sparsenet_jax.training import config as config_lib
    from sparsenet_jax.training import memory
    from sparsenet_jax.training.build import build_run

    config = config_lib.from_dict(
        {**config_lib.RECIPES["digits"], "model": "sparsenet-13-6", "workdir": "unused"}
    )
    run = build_run(config)
    need = memory.estimate(run)
    assert need.num_params == run.num_params == 13_774
    # float32 parameters + momentum (+ a scalar step and BN statistics).
    assert need.state_bytes > 2 * 4 * need.num_params
    assert need.grad_bytes == 4 * need.num_params
    # At least the stem output of every image of the batch is kept for the backward pass.
    assert need.activation_bytes >= config.batch_size * 32 * 32 * 12 * 4
    assert jax.devices()[0].platform == "cpu" and memory.check_fits(run) is not None
