"""Fault matrix: what a user sees, and what is left on disk, when a run goes wrong.

Each case runs ``python -m sparsenet_jax.train`` in a subprocess, as a user
would, and checks the exit status, the one line that says what happened (no
Python traceback) and the state of the workdir afterwards. Bad command lines
are checked in process too (the parser is the same code, and 40 subprocesses
would cost a minute and a half). Loading converted weights must never run code
from the file.

Decided behaviour (see ``Checkpoints.resume``): when every checkpoint
of a workdir is unreadable the run refuses (exit 1) and asks the user to move
the folder away, rather than silently training from step 0 over it; when only
some are, the broken ones are moved to ``checkpoints_unreadable/`` and the
newest good one is used. Further guarantees are in ``test_reliability.py``.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import time

import pytest

from sparsenet_jax.model.presets import create_model
from sparsenet_jax.training import flags
from train_helpers import (
    EVERY,
    STEPS,
    TMP_MARK,
    assert_one_clear_error,
    assert_same_checkpoint,
    checkpoint_steps,
    cli_env,
    copy_run,
    read_metrics,
    run_train,
    snapshot,
    train_cmd,
    truncate_files,
)

# ---------------------------------------------------------------------------
# Interrupted and failed checkpoint writes


def test_kill_9_during_a_checkpoint_write_then_resume(tmp_path, cache_dir, straight):
    """SIGKILL while orbax writes: resume from the last finished checkpoint, end bit-exact."""
    workdir = tmp_path / "run"
    args = ("--max-steps", str(STEPS), "--checkpoint-every-steps", "1")
    proc = subprocess.Popen(
        train_cmd(workdir, *args),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(cache_dir),
    )
    folder = workdir / "checkpoints"
    deadline = time.time() + 240
    killed_during = None
    # A save of this model takes ~0.3 s on 2 cores; poll fast enough to land inside one.
    while killed_during is None and time.time() < deadline and proc.poll() is None:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            names = []
        pending = [n for n in names if TMP_MARK in n and int(n.split(".")[0]) >= 3]
        if pending:
            proc.send_signal(signal.SIGKILL)
            killed_during = pending[0]
        else:
            time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before a save could be interrupted"
    completed = checkpoint_steps(workdir)
    leftovers = [n for n in os.listdir(folder) if TMP_MARK in n]
    assert leftovers, f"the write of {killed_during} finished before the kill landed"
    assert completed and max(completed) < STEPS

    result = run_train(workdir, *args, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    # No progress lost beyond the last finished checkpoint; the half-written one is not used.
    assert f"resumed from step {max(completed)}" in result.stderr
    assert_same_checkpoint(straight, workdir, STEPS)
    assert not [n for n in os.listdir(folder) if TMP_MARK in n]
    logged = [r["step"] for r in read_metrics(workdir) if r["split"] == "train"]
    assert logged == [r["step"] for r in read_metrics(straight) if r["split"] == "train"]


@pytest.fixture
def disk(tmp_path):
    """A 4 MB tmpfs: a real file system that runs out of space."""
    where = tmp_path / "disk"
    where.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"cannot mount a tmpfs to fill up ({err}); needs root and mount(8)")
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def _save_fails_on_a_full_disk(disk, cache_dir, straight) -> pathlib.Path:
    workdir = copy_run(straight, disk / "run")
    for step in (6, 8):  # back to a run that stopped at step 4
        shutil.rmtree(workdir / "checkpoints" / str(step))
    before = snapshot(workdir / "checkpoints" / "4")
    free = shutil.disk_usage(disk).free
    with open(disk / "filler", "wb") as f:  # room for metrics lines, not for a ~300 kB checkpoint
        f.write(b"\0" * (free - 40_000))

    result = run_train(workdir, "--max-steps", "6", *EVERY, cache_dir=cache_dir)
    folder = workdir / "checkpoints"
    assert_one_clear_error(
        result,
        1,
        f"error: could not save a checkpoint in {folder}: no space left on device",
        "the last complete checkpoint is step 4",
    )
    assert checkpoint_steps(workdir) == [4]
    assert snapshot(folder / "4") == before
    assert_same_checkpoint(straight, workdir, 4)
    return workdir


def test_full_disk_keeps_the_last_checkpoint_and_says_so(disk, cache_dir, straight):
    _save_fails_on_a_full_disk(disk, cache_dir, straight)


@pytest.mark.slow
def test_full_disk_then_free_space_resumes(disk, cache_dir, straight):
    workdir = _save_fails_on_a_full_disk(disk, cache_dir, straight)
    (disk / "filler").unlink()
    # The same command goes on from step 4 as if nothing had happened.
    result = run_train(workdir, "--max-steps", "6", *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert "resumed from step 4" in result.stderr
    assert checkpoint_steps(workdir) == [4, 6]
    assert not [p for p in (workdir / "checkpoints").iterdir() if TMP_MARK in p.name]
    assert_same_checkpoint(straight, workdir, 6)


# ---------------------------------------------------------------------------
# Broken checkpoints


def test_truncated_latest_checkpoint_is_skipped_and_replaced(tmp_path, cache_dir, straight):
    workdir = copy_run(straight, tmp_path / "run")
    truncate_files(workdir / "checkpoints" / str(STEPS))
    result = run_train(workdir, "--max-steps", str(STEPS), *EVERY, cache_dir=cache_dir)
    assert result.returncode == 0, result.stderr
    assert f"checkpoint {STEPS} in {workdir / 'checkpoints'} is unreadable" in result.stderr
    assert "resumed from step 6" in result.stderr
    assert "Traceback" not in result.stderr
    # Steps 7-8 were trained again and the broken checkpoint replaced by a good one.
    assert checkpoint_steps(workdir) == [4, 6, 8]
    assert_same_checkpoint(straight, workdir, STEPS)


def test_every_checkpoint_broken_refuses_to_start_over(tmp_path, cache_dir, straight):
    workdir = copy_run(straight, tmp_path / "run")
    for step in checkpoint_steps(workdir):
        truncate_files(workdir / "checkpoints" / str(step))
    before = snapshot(workdir / "checkpoints"), (workdir / "metrics.jsonl").read_bytes()
    result = run_train(workdir, "--max-steps", str(STEPS), *EVERY, cache_dir=cache_dir)
    assert_one_clear_error(
        result,
        1,
        f"every checkpoint in {workdir / 'checkpoints'} is unreadable (steps 4, 6, 8)",
        "move that folder away",
    )
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3 and all("unreadable" in w for w in warnings)  # one a checkpoint
    # Nothing overwritten, nothing trained (config.json is rewritten, with the same identity).
    assert (snapshot(workdir / "checkpoints"), (workdir / "metrics.jsonl").read_bytes()) == before
    assert not (workdir / "checkpoints" / "0").exists()


# ---------------------------------------------------------------------------
# Datasets


def test_resume_with_another_dataset_is_refused(tmp_path, cache_dir, straight):
    workdir = copy_run(straight, tmp_path / "run")
    before = snapshot(workdir)
    result = run_train(
        workdir, "--max-steps", str(STEPS + 2), "--dataset", "cifar10", cache_dir=cache_dir
    )
    assert_one_clear_error(
        result,
        1,
        "holds a run of another configuration",
        "dataset: workdir has 'digits', asked 'cifar10'",
    )
    assert snapshot(workdir) == before


def test_unknown_dataset_name(tmp_path):
    workdir = tmp_path / "run"
    result = run_train(workdir, "--dataset", "mnist", timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error: --dataset: unknown 'mnist'" in last
    assert "choose from digits, cifar10, cifar100, imagenet2012" in last
    assert not workdir.exists()


def test_dataset_not_downloaded(tmp_path):
    data_dir, workdir = tmp_path / "empty", tmp_path / "run"
    data_dir.mkdir()
    result = run_train(workdir, "--dataset", "cifar100", "--data-dir", str(data_dir), timeout=120)
    assert_one_clear_error(
        result,
        1,
        f"cifar100 is not prepared in {data_dir}",
        f"python -m sparsenet_jax.data prepare cifar100 --data-dir {data_dir}",
    )
    assert not (workdir / "checkpoints").exists()
    assert not (
        workdir / "config.json"
    ).exists()  # issue 18 item 2: a refused start leaves no trace


def test_workdir_that_is_a_file(tmp_path):
    workdir = tmp_path / "run"
    workdir.write_text("not a folder")
    result = run_train(workdir, timeout=120)
    assert_one_clear_error(result, 1, "File exists", str(workdir))
    assert workdir.read_text() == "not a folder"


# ---------------------------------------------------------------------------
# Bad command lines: exit 2, one line naming the flag, no traceback


BAD_FLAGS = [
    (["--batch-size", "0"], "--batch-size: must be >= 1, got 0"),
    (["--batch-size", "-32"], "--batch-size: must be >= 1, got -32"),
    (["--eval-batch-size", "0"], "--eval-batch-size: must be >= 1"),
    (["--epochs", "0"], "--epochs: must be >= 1"),
    (["--epochs", "1.5"], "invalid int value: '1.5'"),
    (["--max-steps", "-1"], "--max-steps: must be >= 0"),
    (["--lr", "0"], "--lr: must be > 0"),
    (["--lr", "nan"], "--lr: must be a finite number, got nan"),
    (["--lr", "inf"], "--lr: must be a finite number, got inf"),
    (["--lr", "fast"], "invalid float value: 'fast'"),
    (["--lr-boundaries", "-5"], "--lr-boundaries: must be increasing positive epochs"),
    (["--lr-boundaries", "150,100"], "--lr-boundaries: must be increasing positive epochs"),
    (["--lr-boundaries", "10,nan"], "--lr-boundaries: must be increasing positive epochs"),
    (["--lr-boundaries", "10;20"], "expected numbers separated by commas"),
    (["--lr-decay", "0"], "--lr-decay: must be in (0, 1]"),
    (["--lr-decay", "2"], "--lr-decay: must be in (0, 1]"),
    (["--momentum", "-0.1"], "--momentum: must be in [0, 1)"),
    (["--momentum", "1"], "--momentum: must be in [0, 1)"),
    (["--weight-decay=-1e-4"], "--weight-decay: must be >= 0"),
    (["--weight-decay", "-1e-4"], "argument --weight-decay: expected one argument"),
    (["--weight-decay", "nan"], "--weight-decay: must be a finite number"),
    (["--weight-decay", "inf"], "--weight-decay: must be a finite number"),
    (["--augment-pad", "-1"], "--augment-pad: must be >= 0"),
    (["--seed", "-1"], "--seed: must be >= 0"),
    (["--seed", str(2**32)], "--seed: must be < 2**32"),
    (["--log-every-steps", "0"], "--log-every-steps: must be >= 1"),
    (["--eval-every-epochs", "0"], "--eval-every-epochs: must be >= 1"),
    (["--checkpoint-every-steps", "-2"], "--checkpoint-every-steps: must be >= 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints: must be >= 1"),
    (["--num-processes", "0"], "--num-processes: must be >= 1"),
    (["--process-id", "-1"], "--process-id: must be in [0, num_processes=None)"),
    (
        ["--num-processes", "2", "--process-id", "2"],
        "--process-id: must be in [0, num_processes=2)",
    ),
    (["--nesterov", "maybe"], "expected true or false, got 'maybe'"),
    (["--augment-flip", "2"], "expected true or false, got '2'"),
    (["--progress", "yes please"], "expected true or false"),
    (["--distributed", "none"], "expected true or false"),
    (["--dtype", "float16"], "--dtype: must be one of float32, bfloat16, got 'float16'"),
    (["--dtype", "bfloat"], "did you mean 'bfloat16'"),
    (["--recipe", "imagenett"], "did you mean 'imagenet'"),
    (["--recipe", "mnist"], "choose from cifar10, cifar100, imagenet, cifar10-cpu, digits"),
    (["--workdir", ""], "--workdir: must not be empty"),
    (["--model", "sparsenett-40-24"], "Did you mean sparsenet-40-24"),
    (
        ["--model-kwargs", '{"growthrate": 3}'],
        "unknown key 'growthrate' (did you mean 'growth_rate'?)",
    ),
    (["--model-kwargs", '{"num_classes": 5}'], "'num_classes' is not allowed (set by the dataset)"),
    (["--model-kwargs", '{"in_channels": 3}'], "'in_channels' is not allowed (set by the dataset)"),
    (["--model-kwargs", '{"dtype": "bfloat16"}'], "'dtype' is not allowed (use --dtype)"),
    (["--model-kwargs", "[1, 2]"], "expected a JSON object"),
    (["--model-kwargs", '{"depth": "40"}'], "depth must be an integer, got '40'"),
    (["--model-kwargs", '{"depth": 41}'], "depth 41 does not fit"),
    (["--model-kwargs", '{"growth_rate": 2.5}'], "growth_rate must be an integer, got 2.5"),
    (["--model-kwargs", '{"base": 1}'], "schedule base must be >= 2, got 1"),
    (["--model-kwargs", '{"dropout_rate": 1.5}'], "dropout_rate must be in [0, 1), got 1.5"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else None
)
def test_bad_flag_exits_2_with_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        flags.parse_args(["--recipe", "digits", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("python -m sparsenet_jax.train: error: ")
    assert message in errors[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-kwargs", '{"growthrate": 3}'], "did you mean 'growth_rate'"),
        (["--seed", str(2**32)], "--seed: must be < 2**32"),
        (["--weight-decay", "nan"], "--weight-decay: must be a finite number"),
    ],
)
def test_bad_flag_through_the_real_cli(tmp_path, args, message):
    result = run_train(tmp_path / "run", *args, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()


def test_distributed_without_a_coordinator_says_what_to_pass(tmp_path, monkeypatch):
    # Nothing here tells JAX where the coordinator is (no TPU pod, SLURM or MPI).
    for var in [v for v in os.environ if v.startswith(("SLURM_", "OMPI_", "PMI_"))]:
        monkeypatch.delenv(var)
    result = run_train(tmp_path / "run", "--distributed", "true", timeout=120)
    assert_one_clear_error(result, 1, "--distributed", "--coordinator-address HOST:PORT")


def test_eval_batch_larger_than_the_test_set(tmp_path, cache_dir):
    # Before the fix a padded 100,000-image eval batch ended in std::bad_alloc (status 134).
    result = run_train(tmp_path / "run", "--eval-batch-size", "100000", cache_dir=cache_dir)
    assert_one_clear_error(result, 1, "eval_batch_size 100000 is larger than the 300 test images")


# ---------------------------------------------------------------------------
# The Python API names the offending value


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"depth": "40"}, TypeError, "depth must be an integer, got '40'"),
        ({"depth": True}, TypeError, "depth must be an integer, got True"),
        ({"depth": 0}, ValueError, "depth must be positive, got 0"),
        ({"growth_rate": 2.5}, TypeError, "growth_rate must be an integer, got 2.5"),
        ({"growth_rate": -6}, ValueError, "growth_rate must be positive, got -6"),
        ({"growth_rate": (6, 6)}, ValueError, "got (6, 6)"),
        ({"base": True}, TypeError, "schedule base must be an int, got True"),
        ({"base": 2.0}, TypeError, "schedule base must be an int, got 2.0"),
        ({"base": 1}, ValueError, "schedule base must be >= 2, got 1"),
        ({"bottleneck": "yes"}, TypeError, "bottleneck must be True or False, got 'yes'"),
        ({"dropout_rate": 1.5}, ValueError, "dropout_rate must be in [0, 1), got 1.5"),
        ({"num_classes": -1}, ValueError, "num_classes must be a positive integer, got -1"),
        ({"num_classes": 2.0}, ValueError, "num_classes must be a positive integer, got 2.0"),
        ({"in_channels": 0}, ValueError, "in_channels must be a positive integer, got 0"),
        ({"compression": float("nan")}, ValueError, "compression must be in (0, 1], got nan"),
        ({"block_impl": "fast"}, ValueError, "block_impl must be one of"),
        ({"growthrate": 3}, TypeError, "unknown override(s) ['growthrate']"),
        ({"dropout_rate": "0.5"}, TypeError, "dropout_rate must be a number, got '0.5'"),
        ({"dtype": "nope"}, TypeError, "dtype must be a floating dtype, got 'nope'"),
        ({"dtype": "int32"}, TypeError, "dtype must be a floating dtype, got 'int32'"),
        ({"remat": "yes"}, TypeError, "remat must be True or False, got 'yes'"),
        ({"pointwise_as_dot": 1}, TypeError, "pointwise_as_dot must be True or False, got 1"),
        ({"share_stats": "on"}, TypeError, "share_stats must be True or False, got 'on'"),
    ],
)
def test_create_model_names_the_bad_value(kwargs, error, names):
    with pytest.raises(error) as info:
        create_model("sparsenet-13-6", **kwargs)
    assert names in str(info.value)


@pytest.mark.parametrize(
    ("name", "names"),
    [
        (3, "model name must be a string, got 3"),
        (None, "model name must be a string, got None"),
        ("", "unknown model ''"),
        ("sparsenet", "unknown model 'sparsenet'"),
        ("resnet-9", "depth 9 does not fit"),
        ("densenet-bc-13-6", "depth 13 does not fit"),
    ],
)
def test_create_model_bad_names(name, names):
    with pytest.raises((TypeError, ValueError)) as info:
        create_model(name)
    assert names in str(info.value)


# ---------------------------------------------------------------------------
# Safe loading: a tampered .pth must not run code


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: a stand-in for any code."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("wrap", ["bare", "in_state_dict"])
def test_tampered_pth_is_refused_without_running_code(tmp_path, wrap):
    torch = pytest.importorskip("torch")
    from sparsenet_jax.model.convert import load_state_dict

    marker = tmp_path / "pwned"
    payload = _Payload(marker)
    obj = payload if wrap == "bare" else {"features.conv0.weight": torch.zeros(2), "x": payload}
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    assert not marker.exists()

    with pytest.raises(ValueError) as info:
        load_state_dict(path)
    assert f"refusing to load {path}" in str(info.value)
    assert not marker.exists()

    # Control: an unsafe load of the same file does run the payload.
    torch.load(path, weights_only=False)
    assert marker.exists()
