"""Reliability guarantees: no run can silently ruin another, or itself.

One test (or a few) per guarantee, each a fault a user can cause: two runs on
one workdir, a diverging run with frequent checkpoints, flipped bytes or an
empty folder among the checkpoints, changed flags on resume, Ctrl-C, a kill
while a file is rewritten, a network too big for the machine. Each case runs
``python -m sparsenet_jax.train`` as a user would, on a tiny network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenet_jax._files import write_atomic
from sparsenet_jax.training import steps
from sparsenet_jax.training.checkpoints import Checkpoints
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.signals import StopRequested, StopSignals
from train_helpers import (
    EVERY,
    STEPS,
    assert_one_clear_error,
    assert_same_checkpoint,
    checkpoint_steps,
    cli_env,
    copy_run,
    error_lines,
    load_checkpoint,
    read_metrics,
    run_train,
    snapshot,
    start_long_run,
    train_cmd,
    truncate_files,
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


def test_a_start_up_signal_swallowed_by_a_library_is_still_seen():
    """A signal whose StopRequested lands where Python ignores errors (a ``__del__``,
    a weakref callback) must still stop the run at the next check."""

    class Finalised:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs here; the error it raises is ignored

    with pytest.raises(StopRequested) as caught, StopSignals() as stop:
        hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
        try:
            Finalised()  # dropped at once: __del__ runs and swallows the raise
        finally:
            sys.unraisablehook = hook
        stop.check()
    assert caught.value.signum == signal.SIGTERM


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


# ---------------------------------------------------------------------------
# 8. Issue 18, round three: what a workdir is, checked before it is trusted


def test_a_refused_start_leaves_no_config_json(tmp_path, cache_dir):
    """Issue 18 item 2: a start refused by the memory check writes no identity."""
    workdir = tmp_path / "run"
    huge = run_train(workdir, "--model", "densenet-1000-100", cache_dir=cache_dir)
    assert_one_clear_error(huge, 1, "memory")
    assert not (workdir / "config.json").exists()
    fixed = run_train(workdir, "--max-steps", "2", cache_dir=cache_dir)
    assert fixed.returncode == 0, fixed.stderr


def test_lost_config_json_still_refuses_another_batch_size(tmp_path, cache_dir, straight):
    """Issue 18 item 3: the checkpoints carry the identity when config.json is gone."""
    workdir = copy_run(straight, tmp_path / "run")
    (workdir / "config.json").unlink()
    before = snapshot(workdir)
    result = run_train(workdir, "--max-steps", "10", "--batch-size", "16", cache_dir=cache_dir)
    assert_one_clear_error(result, 1, "batch_size: workdir has 32, asked 16", "checkpoint")
    assert snapshot(workdir) == before  # nothing moved, nothing written


def test_lost_config_json_resumes_with_the_same_settings_and_is_rewritten(
    tmp_path, cache_dir, straight
):
    """Issue 18 item 3: the same command resumes, and config.json is written again."""
    workdir = copy_run(straight, tmp_path / "run")
    (workdir / "config.json").unlink()
    result = run_train(workdir, "--max-steps", "10", *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "resumed from step 8" in result.stderr
    assert json.loads((workdir / "config.json").read_text())["batch_size"] == 32


def test_unreadable_config_json_is_refused_and_moves_no_checkpoint(tmp_path, cache_dir, straight):
    """Issue 18 item 3: `[1,2]` in config.json, then another model: one line, nothing moved."""
    workdir = copy_run(straight, tmp_path / "run")
    (workdir / "config.json").write_text("[1, 2]\n")
    before = snapshot(workdir)
    result = run_train(workdir, "--model", "sparsenet-13-8", cache_dir=cache_dir)
    assert_one_clear_error(result, 1, "config.json", "not a configuration")
    assert snapshot(workdir) == before
    assert not (workdir / "checkpoints_unreadable").exists()


def test_a_resume_with_the_other_imagenet_loader_is_refused(tmp_path):
    """Issue 17 bug 2: the loader is part of the identity, recorded resolved."""
    from sparsenet_jax.training import config as config_lib
    from sparsenet_jax.training import identity
    from sparsenet_jax.training.build import resolve_loader

    values = {**config_lib.RECIPES["imagenet"], "recipe": "imagenet", "workdir": str(tmp_path)}
    grain = config_lib.from_dict({**values, "loader": "grain"})
    threads = config_lib.from_dict({**values, "loader": "threads"})
    assert resolve_loader(threads) == "threads"
    (tmp_path / "config.json").write_text(config_lib.to_json(grain))
    with pytest.raises(TrainingError, match="loader: workdir has 'grain', asked 'threads'"):
        identity.check_identity(tmp_path, threads, None)
    digits = config_lib.from_dict({**config_lib.RECIPES["digits"], "workdir": "unused"})
    assert resolve_loader(digits) == "memory"


def test_config_json_records_how_the_network_ran(straight):
    """Issue 17 bug 3: the resolved dtype, loader and the data's facts are recorded."""
    saved = json.loads((straight / "config.json").read_text())
    assert saved["dtype"] == "float32" and saved["loader"] == "memory"
    assert saved["data"]["num_classes"] == 10 and saved["data"]["mean"] == [0.3058]


def test_tpu_defaults_are_recorded_in_the_resolved_config():
    """Issue 17 bug 3: on TPU bf16 and shared statistics are what config.json records."""
    from sparsenet_jax.training import config as config_lib
    from sparsenet_jax.training.build import resolve

    config = config_lib.from_dict({**config_lib.RECIPES["digits"], "workdir": "unused"})
    on_tpu = resolve(config, "tpu")
    assert on_tpu.dtype == "bfloat16" and on_tpu.model_kwargs == {"share_stats": True}
    assert resolve(config, "cpu").model_kwargs == {"conv_impl": "auto"}
    chosen = dataclasses.replace(config, model_kwargs={"share_stats": False})
    assert resolve(chosen, "tpu").model_kwargs == {"share_stats": False}


def test_export_uses_the_verified_restore_and_names_the_step(tmp_path, straight):
    """Issue 18 item 4 / issue 17 bug 4: a flipped byte is caught; the step exported is printed."""
    pytest.importorskip("flatbuffers")
    workdir = copy_run(straight, tmp_path / "run")
    _flip_a_byte_in_the_largest_file(workdir / "checkpoints" / "8")
    out = tmp_path / "model.jax"
    result = _export(workdir, out)
    assert result.returncode == 0, result.stderr
    assert "from step 6" in result.stdout
    assert "checkpoint 8" in result.stderr and "checksum" in result.stderr
    assert json.loads((tmp_path / "model.jax.json").read_text())["step"] == 6
    assert (workdir / "checkpoints" / "8").is_dir()  # export only reads


def test_export_with_every_checkpoint_corrupt_is_one_line(tmp_path, straight):
    """Issue 18 item 4: one error line, no `Event loop is closed` tracebacks."""
    pytest.importorskip("flatbuffers")
    workdir = copy_run(straight, tmp_path / "run")
    for step in (4, 6, 8):
        _flip_a_byte_in_the_largest_file(workdir / "checkpoints" / str(step))
    result = _export(workdir, tmp_path / "model.jax")
    assert_one_clear_error(result, 1, "every checkpoint", "unreadable")
    assert "Event loop is closed" not in result.stderr
    assert len(result.stderr.splitlines()) <= 4, result.stderr  # 3 warnings + the error


def _flip_a_byte_in_the_largest_file(folder) -> None:
    largest = max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    largest.write_bytes(bytes(data))


def _export(workdir, out) -> subprocess.CompletedProcess:
    cmd = ["-m", "sparsenet_jax.export", "--workdir", str(workdir), "--out", str(out)]
    return subprocess.run(
        [sys.executable, *cmd, "--platforms", "cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )


def test_a_missed_epoch_end_evaluation_is_caught_up_on_resume(tmp_path, cache_dir):
    """Issue 18 item 8: a stop on an epoch's last step saved without evaluating."""
    workdir = tmp_path / "run"
    epoch = 1497 // 32  # digits: 46 steps an epoch at batch 32
    first = run_train(workdir, "--max-steps", str(epoch), cache_dir=cache_dir)
    assert first.returncode == 0, first.stderr
    # What a stop at that step leaves: the checkpoint, no test record.
    metrics = workdir / "metrics.jsonl"
    kept = [r for r in metrics.read_text().splitlines() if '"split": "test"' not in r]
    metrics.write_text("".join(r + "\n" for r in kept))
    again = run_train(workdir, "--max-steps", str(epoch + 2), cache_dir=cache_dir)
    assert again.returncode == 0, again.stderr
    tested = [r["step"] for r in read_metrics(workdir) if r["split"] == "test"]
    assert tested == [epoch, epoch + 2]


@pytest.mark.slow  # two training runs (51 s); the fast job keeps the NaN-stop tests
def test_a_diverged_run_is_not_resumed_from_ruin(tmp_path, cache_dir):
    """Issue 18 item 12: the reproduction: --lr 1e6 with frequent saves, then a sane lr."""
    workdir = tmp_path / "run"
    sane = run_train(
        workdir, "--max-steps", "4", "--checkpoint-every-steps", "2", cache_dir=cache_dir
    )
    assert sane.returncode == 0, sane.stderr
    ruin = run_train(
        workdir,
        "--max-steps",
        "40",
        "--lr",
        "1e6",
        "--checkpoint-every-steps",
        "2",
        "--keep-checkpoints",
        "20",
        "--log-every-steps",
        "1",
        cache_dir=cache_dir,
    )  # fmt: skip  (health is judged per logged window: one step each here)
    assert ruin.returncode == 1, ruin.stderr
    ruined = [s for s in checkpoint_steps(workdir) if s > 4]
    assert ruined, "the diverging run saved finite-but-ruined states"
    refused = run_train(workdir, "--max-steps", "40", "--lr", "0.1", cache_dir=cache_dir)
    line = assert_one_clear_error(refused, 1, "diverging", "--restore-step 4")
    assert f"checkpoint {max(ruined)}" in line
    back = run_train(
        workdir, "--max-steps", "8", "--lr", "0.1", "--restore-step", "4", cache_dir=cache_dir
    )
    assert back.returncode == 0, back.stderr
    assert "resumed from step 4" in back.stderr
    assert all(s <= 8 for s in checkpoint_steps(workdir))
    assert len(list((workdir / "checkpoints_abandoned").iterdir())) >= len(ruined)


def test_a_malformed_config_history_line_is_skipped_with_a_warning(tmp_path, cache_dir, straight):
    """Issue 18, noisy: a bad config_history.jsonl line no longer crashes the resume."""
    workdir = copy_run(straight, tmp_path / "run")
    (workdir / "config_history.jsonl").write_text('{"changed": 3}\n[1]\n{"changed": {"lr": 1}}\n')
    result = run_train(workdir, "--max-steps", "10", *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_an_older_config_json_without_the_loader_still_resumes(tmp_path, cache_dir, straight):
    """Issue 18, noisy: a field an older version did not record is not demanded."""
    workdir = copy_run(straight, tmp_path / "run")
    saved = json.loads((workdir / "config.json").read_text())
    for key in ("loader", "image_size", "data", "init_from", "restore_step"):
        saved.pop(key)
    (workdir / "config.json").write_text(json.dumps(saved))
    for manifest in (workdir / "checkpoint_checksums").glob("*.json"):
        manifest.write_text(json.dumps(json.loads(manifest.read_text())["sha256"]))
    result = run_train(workdir, "--max-steps", "10", *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr


def test_epochs_follow_the_data_on_disk_not_the_catalogue(tmp_path, cache_dir):
    """Issue 18 item 9: a CIFAR cache of 640 images makes 20-step epochs, said in one line."""
    cache = tmp_path / "tfds" / "sparsenet_jax_cache"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 640), ("test", 100)):
        np.save(
            cache / f"cifar10-{split}-images.npy",
            rng.integers(0, 256, (count, 32, 32, 3), np.uint8),
        )
        np.save(cache / f"cifar10-{split}-labels.npy", rng.integers(0, 10, count).astype(np.int32))
    result = run_train(
        tmp_path / "run", "--recipe", "cifar10", "--model", "sparsenet-13-6", "--max-steps", "2",
        "--eval-batch-size", "100", "--data-dir", str(tmp_path / "tfds"), cache_dir=cache_dir,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "2 steps (20 a epoch)" in result.stderr
    assert "read 640 train and 100 test images" in result.stderr
