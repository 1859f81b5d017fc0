"""Starts, stops and summaries that say one line: aot under SIGTERM (issue 18 item 13), a
JAX_PLATFORMS this machine lacks, libtpu's start-up chatter on CPU (issue 18, "Noisy"), a
start that does not import PyTorch for TensorBoard, and the best evaluation's epoch."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from sparsenet_jax.tools import aot

TINY = ["--recipe", "digits", "--model", "sparsenet-7-4", "--batch-size", "16"]
TINY += ["--eval-batch-size", "16"]
NO_TPU = pytest.mark.skipif(not aot.libtpu_available(), reason="needs libtpu (the [tpu] extra)")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return {**env, **extra}


def _maps(pid: int) -> str:
    """The files a process has mapped (its shared libraries); empty once it has ended."""
    try:
        return pathlib.Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return ""


def _libtpu_loaded(pid: int) -> bool:
    return "libtpu" in _maps(pid)


@NO_TPU
def test_aot_stops_on_sigterm_with_one_line():
    """Issue 18 item 13: SIGTERM while aot compiles printed libtpu's crash stack."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsenet_jax.aot", *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while not _libtpu_loaded(proc.pid) and proc.poll() is None:
            assert time.monotonic() < deadline, "libtpu never loaded"
            time.sleep(0.2)
        time.sleep(3)  # past the topology: compiling now
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)  # at once, not after the compile
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines() == ["SIGTERM: stopped the TPU check: nothing was written"]


@pytest.mark.parametrize("platform", ["cuda", "bogus", "tpu"])
@pytest.mark.parametrize("command", ["train", "aot"])
def test_a_platform_this_machine_lacks_is_one_line(platform, command, tmp_path):
    """Issue 18, Noisy: JAX_PLATFORMS=tpu|cuda|bogus with no such device gave 29–50 lines."""
    if platform == "tpu" and not aot.libtpu_available():
        pytest.skip("without libtpu, tpu is just an unknown platform")
    args = [*TINY, "--workdir", str(tmp_path / "run")] if command == "train" else TINY
    done = subprocess.run(
        [sys.executable, "-m", f"sparsenet_jax.{command}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(JAX_PLATFORMS=platform),
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: JAX_PLATFORMS={platform}: "), lines


@NO_TPU
def test_a_cpu_run_prints_no_libtpu_chatter(tmp_path):
    """Issue 18, Noisy: with the [tpu] extra, every CPU run printed `unexpected worker hostname`.

    The run stops in one line right after the backends start (its eval batch
    is larger than the test set); libtpu is allowed to load despite any lockfile.
    """
    done = subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.train", "--dataset", "digits",
         "--model", "sparsenet-7-4", "--eval-batch-size", "1000",
         "--workdir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(ALLOW_MULTIPLE_LIBTPU_LOAD="1"),
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [
        "error: eval_batch_size 1000 is larger than the 300 test images"
    ]


def test_tensorboard_events_without_importing_torch(tmp_path):
    """tensorboardX imports torch whenever it can (about 2 s of every trainer start);
    the metrics writer hides it during that import, and only then."""
    site, marker = tmp_path / "site", tmp_path / "torch-was-imported"
    (site / "torch").mkdir(parents=True)
    (site / "torch" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'a').close()\nraise ImportError('a stand-in torch')\n"
    )
    script = f"""
import pathlib
from sparsenet_jax.training.reporting import MetricsWriter
writer = MetricsWriter(pathlib.Path({str(tmp_path)!r}), 0)
writer.write({{"split": "train", "step": 1, "loss": 0.5}})
writer.close()
assert not pathlib.Path({str(marker)!r}).exists(), "tensorboardX imported torch"
try:
    import torch
except ImportError:
    pass
assert pathlib.Path({str(marker)!r}).exists(), "torch stayed hidden after tensorboardX loaded"
"""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=_env(PYTHONPATH=path, JAX_PLATFORMS="cpu"),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    events = list((tmp_path / "tensorboard").iterdir())
    assert events and all(event.stat().st_size > 0 for event in events)


def test_the_summary_names_the_epoch_of_the_best_evaluation(tmp_path):
    """A run stopped by --max-steps within its first epoch said 'epoch 1' (rounded up)."""
    from sparsenet_jax.training.reporting import best_so_far

    records = [
        {"split": "test", "step": 60, "epoch": 60 / 781, "accuracy": 0.2294},
        {"split": "test", "step": 3, "epoch": 3 / 781, "accuracy": 0.2, "seed": 2},
        {"split": "test", "step": 1495, "epoch": 13.0, "accuracy": 0.99, "seed": 1},
        {"split": "test", "step": 1610, "epoch": 14.0, "accuracy": 0.98, "seed": 1},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    assert best_so_far(path) == {None: (0.2294, 0.08), 1: (0.99, 13), 2: (0.2, 0.004)}
    assert str(best_so_far(path)[1][1]) == "13"


def test_a_resume_without_its_metrics_file_says_what_is_lost(tmp_path, capsys):
    """metrics.jsonl deleted, then resumed: the summary's best accuracy would silently
    count only the new evaluations."""
    from sparsenet_jax.training.reporting import MetricsWriter

    MetricsWriter(tmp_path / "new", 0).close()  # a first start: nothing to say
    assert capsys.readouterr().err == ""
    (tmp_path / "resumed").mkdir()
    MetricsWriter(tmp_path / "resumed", 460).close()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: {tmp_path / 'resumed' / 'metrics.jsonl'} is missing: the records of steps "
        "1-460 are lost, and the best test accuracy counts only the evaluations from here on"
    ]


# Each command: its module, its arguments (WORKDIR: a fresh folder) and its line for a
# Ctrl-C that comes while it loads.
_STARTS = {
    "train": (
        [*TINY, "--workdir", "WORKDIR"],
        "SIGINT before the first step finished: nothing to save",
    ),
    "aot": (TINY, "SIGINT: stopped the TPU check: nothing was written"),
    "export": (
        ["--workdir", "WORKDIR", "--out", "WORKDIR/m.jax"],
        "SIGINT: stopped the export: nothing was written",
    ),
}


@pytest.mark.skipif(not pathlib.Path("/proc/self/maps").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize(
    ("entry", "form"),
    [("train", "python -m"), ("train", "script"), ("aot", "script"), ("export", "python -m")],
)
def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path, entry, form):
    """SIGINT in a command's first seconds (importing jax) printed a KeyboardInterrupt
    traceback, or died of a segmentation fault with no message; now one line."""
    command = [sys.executable, "-m", f"sparsenet_jax.{entry}"]
    if form == "script":
        command = [str(pathlib.Path(sys.executable).parent / f"sparsenet-{entry}")]
        if not pathlib.Path(command[0]).exists():
            pytest.skip(f"{command[0]} is not installed (pip install -e . writes it)")
    args, line = _STARTS[entry]
    workdir = tmp_path / "r"
    proc = subprocess.Popen(
        [*command, *(a.replace("WORKDIR", str(workdir)) for a in args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(JAX_PLATFORMS="cpu"),
    )
    try:
        deadline = time.monotonic() + 60
        while "jaxlib" not in _maps(proc.pid) and proc.poll() is None:
            assert time.monotonic() < deadline, "jaxlib never loaded"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)  # jax is loading; flax, optax and orbax are to come
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err
    assert err.strip().splitlines() == [line]
    assert not workdir.exists()
