"""A huge network is refused at once, in one line, by arithmetic on its blocks (issue 18 item 1).

Each command runs in a child process capped at a few GiB of address space and
a time limit, so a check that grows with the number of layers fails fast
instead of eating the machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import jax
import pytest

from sparsenet_jax.training import memory
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError

CAP_BYTES = 6 * 1024**3  # jax itself reserves a few GiB of address space
HUGE_DEPTH = '{"depth": 1000000000}'
# Depths of about 10⁹ that fit each family's layout rule.
DEPTHS = {
    "sparsenet-40-24": 3 * 10**9 + 4,
    "densenet-40-12": 3 * 10**9 + 4,
    "resnet-56": 6 * 10**8 + 2,
    "sparse-resnet-164": 9 * 10**8 + 2,
}


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))


def _run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return _run_python("-m", *args, timeout=timeout)


def _run_python(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_capped,
        env=env,
    )


def _one_line_refusal(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr[-2000:]
    assert "parameters" in lines[0] and "choose a smaller model" in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "flags",
    [["--model", "densenet-1000-100"], ["--model-kwargs", HUGE_DEPTH]],
    ids=["densenet-1000-100", "depth-1e9"],
)
def test_aot_refuses_a_huge_network_at_once(flags):
    """Issue 18 item 1: aot traced densenet-1000-100 for 5 minutes, then died of std::bad_alloc."""
    line = _one_line_refusal(_run("sparsenet_jax.aot", *flags))
    assert "TPU v5e chip's HBM" in line


def test_train_refuses_a_billion_layers_at_once(tmp_path):
    """Issue 18 item 1: train with depth 1e9 grew to 22 GB building a list a layer."""
    workdir = tmp_path / "run"
    done = _run(
        "sparsenet_jax.train", "--recipe", "digits", "--workdir", str(workdir),
        "--model-kwargs", HUGE_DEPTH,
    )  # fmt: skip
    _one_line_refusal(done)
    assert not (workdir / "checkpoints").exists()


def test_export_refuses_a_huge_network_before_restoring(tmp_path):
    """Issue 18 item 1: export checks the size from config.json before any checkpoint is read."""
    config = {"model": "sparsenet-40-24", "dataset": "cifar10", "model_kwargs": {"depth": 10**9}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "model.jax"
    done = _run("sparsenet_jax.export", "--workdir", str(tmp_path), "--out", str(out))
    assert _one_line_refusal(done).startswith("error: sparsenet-40-24 has")
    assert not out.exists()


def test_the_arithmetic_is_closed_form():
    """Issue 18 item 1: a billion layers count at once (in a capped child: a list a layer fails)."""
    code = (
        "from sparsenet_jax.model.arithmetic import expected_params\n"
        "from sparsenet_jax.model.presets import create_model\n"
        f"for name, depth in {DEPTHS!r}.items():\n"
        "    assert expected_params(create_model(name, depth=depth)) > 10**12, name\n"
    )
    done = _run_python("-c", code, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]


def test_check_size_refuses_before_building_anything():
    """Issue 18 item 1: the bound alone refuses, naming the device and the capacity."""
    config = TrainConfig(model="densenet-1000-100", dataset="cifar10", batch_size=64)
    with pytest.raises(TrainingError, match=r"more than the 1\.0 GiB of the test device"):
        memory.check_size(config, devices=1, capacity=1024**3, where="the test device")
    small = TrainConfig(model="sparsenet-7-4", dataset="digits", batch_size=16)
    assert memory.check_size(small, devices=1, capacity=1024**3) is not None


def test_the_bound_is_below_the_traced_estimate():
    """The arithmetic is a lower bound: it never refuses what the traced estimate accepts."""
    from sparsenet_jax.training.build import build_run

    for name in ("sparsenet-7-4", "densenet-bc-10-4", "resnet-8"):
        config = TrainConfig(
            model=name, dataset="digits", batch_size=16, eval_batch_size=16, dtype="float32"
        )
        run = build_run(config, devices=jax.devices()[:1])
        bound = memory.size_bound(run.model, 16, run.image_shape[0])
        need = memory.estimate(run)
        assert bound.num_params == need.num_params
        assert bound.state_bytes <= need.state_bytes + need.grad_bytes
        assert 0 < bound.activation_bytes <= need.activation_bytes
