"""build_run: the one place that makes a run's model, state and jitted steps."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenet_jax.model.presets import create_model
from sparsenet_jax.training import build
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training import mesh as mesh_lib
from sparsenet_jax.training.build import backend_defaults, build_run, resolve_dtype
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.loop import itstime


def digits_config(**overrides):
    values = {**config_lib.RECIPES["digits"], "model": "sparsenet-13-6", "workdir": "unused"}
    return config_lib.from_dict({**values, **overrides})


@pytest.fixture(scope="module")
def run():
    return build_run(digits_config(batch_size=32, eval_batch_size=100))


def test_auto_dtype_is_bfloat16_on_tpu_only():
    assert resolve_dtype("auto", "tpu") == "bfloat16"
    assert resolve_dtype("auto", "cpu") == resolve_dtype("auto", "gpu") == "float32"
    assert resolve_dtype("float32", "tpu") == "float32"


def test_shared_statistics_on_tpu_and_the_gemm_weight_gradient_on_cpu():
    assert backend_defaults("tpu") == {"share_stats": True}
    assert backend_defaults("cpu") == {"conv_impl": "auto"}
    assert backend_defaults("gpu") == {}
    # channel_bucket needs XLA's convolution: asking for it drops the CPU default.
    assert backend_defaults("cpu", {"channel_bucket": 128}) == {}
    bucketed = build_run(digits_config(model_kwargs={"channel_bucket": 16}))
    assert bucketed.model.conv_impl == "xla"


def test_backend_defaults_reach_the_model_and_model_kwargs_override_them(monkeypatch):
    on_cpu = build_run(digits_config())
    assert on_cpu.model.share_stats is False and on_cpu.model.conv_impl == "auto"
    assert build_run(digits_config(model_kwargs={"conv_impl": "xla"})).model.conv_impl == "xla"
    monkeypatch.setattr(build, "backend_defaults", lambda *_: {"share_stats": True})
    shared = build_run(digits_config())
    assert shared.model.share_stats is True and shared.model_kwargs["share_stats"] is True
    mine = build_run(digits_config(model_kwargs={"share_stats": False}))
    assert mine.model.share_stats is False and mine.model_kwargs["share_stats"] is False


def test_run_describes_the_config(run):
    assert run.config.dtype == "float32"  # auto, resolved for this CPU
    assert run.steps_per_epoch == run.info.num_train // 32
    assert run.total_steps == run.config.epochs * run.steps_per_epoch
    assert run.model_kwargs == {"in_channels": 1, "dtype": "float32", "conv_impl": "auto"}
    # model_kwargs rebuild the same network.
    rebuilt = create_model(run.config.model, run.info.num_classes, **run.model_kwargs)
    assert jnp.dtype(rebuilt.dtype) == jnp.dtype(run.model.dtype)
    assert rebuilt.clone(dtype=run.model.dtype) == run.model
    assert run.num_params == 13_774


def test_abstract_state_and_batch_match_the_real_ones(run):
    state = run.init_state()
    chex.assert_trees_all_equal_shapes_and_dtypes(state, run.abstract_state())
    batch = run.abstract_batch(train=False)
    assert batch["image"].shape == (100, 32, 32, 1) and batch["image"].dtype == np.uint8
    assert batch["mask"].dtype == np.float32 and "mask" not in run.abstract_batch(train=True)


def test_the_steps_compile_ahead_of_time_and_run(run):
    compiled = run.train_step.lower(run.abstract_state(), run.abstract_batch(True)).compile()
    assert compiled.cost_analysis() is not None
    rng = np.random.default_rng(0)
    local = {
        "image": rng.integers(0, 256, (32, 32, 32, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 32).astype(np.int32),
    }
    state, metrics = run.train_step(run.init_state(), mesh_lib.global_batch(local, run.mesh))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eval_batch_size": 301}, "larger than the 300 test images"),
        ({"batch_size": 2000}, "larger than the 1497 training images"),
    ],
)
def test_batch_sizes_that_cannot_work_are_refused(overrides, message):
    with pytest.raises(TrainingError, match=message):
        build_run(digits_config(**overrides))


def test_batch_not_divisible_by_the_devices_is_refused():
    """Two CPU devices in a fresh process: a batch of 33 cannot be split."""
    code = (
        "import jax; jax.config.update('jax_num_cpu_devices', 2)\n"
        "from test_build import digits_config\n"
        "from sparsenet_jax.training.build import build_run\n"
        "build_run(digits_config(batch_size=33))\n"
    )
    path = os.pathsep.join(
        filter(None, [str(pathlib.Path(__file__).parent), os.environ.get("PYTHONPATH")])
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 1
    assert "batch_size 33 must be divisible by the 2 devices" in result.stderr


@pytest.mark.parametrize(
    "step, every, total, due",
    [(10, 10, 100, True), (11, 10, 100, False), (100, 30, 100, True), (5, 0, 100, False)],
)
def test_itstime(step, every, total, due):
    assert itstime(step, every, total) is due
