"""python -m sparsenet_jax.aot: the chip table, the roofline, the one-line failures, and (slow)
a real compile for a TPU topology with libtpu's compile-only devices."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import pytest

from sparsenet_jax.model.presets import create_model
from sparsenet_jax.tools import aot, aot_report, tpu_chips
from sparsenet_jax.tools.tpu_chips import GiB
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training.build import build_run

TINY = ["--recipe", "digits", "--model", "sparsenet-7-4", "--batch-size", "16"]
TINY += ["--eval-batch-size", "16"]


def test_chip_table_holds_the_published_figures():
    v5e, v6e, v4 = (tpu_chips.CHIPS[name] for name in ("v5e", "v6e", "v4"))
    assert (v5e.peak_flops, v5e.hbm_bandwidth, v5e.hbm_bytes) == (197e12, 819e9, 16 * GiB)
    assert (v6e.peak_flops, v6e.hbm_bandwidth, v6e.hbm_bytes) == (918e12, 1638e9, 32 * GiB)
    assert (v4.peak_flops, v4.hbm_bandwidth, v4.hbm_bytes) == (275e12, 1200e9, 32 * GiB)
    assert all(chip.source.startswith("https://cloud.google.com/tpu/docs/") for chip in (v5e, v6e))


@pytest.mark.parametrize(
    ("name", "chip", "chips"),
    [("v5e:1x1", "v5e", 1), ("v5e:2x2", "v5e", 4), ("V6E:1x1", "v6e", 1), ("v4:2x2x1", "v4", 4)],
)
def test_parse_topology(name, chip, chips):
    topology = tpu_chips.parse_topology(name)
    assert (topology.chip.name, topology.num_chips) == (chip, chips)
    assert topology.name == name.lower()


@pytest.mark.parametrize("name", ["v5e", "v5e:", "v5e:2y2", "v9z:1x1", "tpu:1x1", "v5e:0x1"])
def test_parse_topology_refuses(name):
    with pytest.raises(ValueError, match=r"topolog|chip"):
        tpu_chips.parse_topology(name)


def test_roofline_takes_the_slower_of_compute_and_memory():
    chip = tpu_chips.CHIPS["v5e"]
    # 1 s of compute, 2 s of HBM traffic: memory-bound, 64 images in 2 s.
    line = tpu_chips.roofline(197e12, 2 * 819e9, 64, chip)
    assert (line.compute_s, line.memory_s, line.step_s) == (1.0, 2.0, 2.0)
    assert line.bound == "memory" and line.images_per_s == 32.0
    line = tpu_chips.roofline(3 * 197e12, 819e9, 64, chip)
    assert line.bound == "compute" and line.images_per_s == pytest.approx(64 / 3)


@pytest.mark.skipif(not aot.libtpu_available(), reason="needs libtpu (the [tpu] extra)")
def test_a_v4_chip_is_two_compile_only_devices():
    """Issue 17: libtpu gives each v4 TensorCore its own device: figures are added up per chip.

    The run is built on libtpu's own compile-only devices, as aot builds it.
    """
    config = config_lib.from_dict(
        {**config_lib.RECIPES["digits"], "model": "sparsenet-7-4", "eval_batch_size": 16}
    )
    for name, devices, per_chip in (("v4:2x2x1", 8, 2), ("v5e:2x2", 4, 1)):
        topology = tpu_chips.parse_topology(name)
        run = build_run(config, devices=aot.topology_devices(topology))
        assert run.mesh.size == devices
        assert aot_report.devices_per_chip(run, topology) == per_chip


def test_not_fit_message_is_one_line_in_gib():
    message = tpu_chips.not_fit_message(int(20.5 * GiB), int(15.75 * GiB), tpu_chips.CHIPS["v5e"])
    assert message.startswith("needs 20.50 GiB of the chip's 15.75 GiB")
    assert "\n" not in message


@pytest.mark.parametrize(
    "message",
    [
        # The wording libtpu 0.0.42 used for sparsenet-40-24 at batch 8192 (there 28.98G):
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (20.31G) exceeds available HBM (15.75G).",
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in "
        "memory space hbm. Used 20.31G of 15.75G hbm. Exceeded hbm capacity by 4.56G.",
    ],
)
def test_compiler_out_of_memory_becomes_does_not_fit(message):
    class Lowered:
        def compile(self):
            raise RuntimeError(message)

    class Step:
        def lower(self, *args):
            return Lowered()

    with pytest.raises(aot.DoesNotFit) as caught:
        aot.compile_step(Step())
    assert caught.value.need_bytes == int(20.31 * GiB)
    assert caught.value.capacity_bytes == int(15.75 * GiB)


def test_other_compile_errors_are_not_swallowed():
    class Step:
        def lower(self, *args):
            raise TypeError("not a shape")

    with pytest.raises(TypeError):
        aot.compile_step(Step())


def test_without_libtpu_one_line_names_the_extra(monkeypatch, capsys):
    monkeypatch.setattr(aot, "libtpu_available", lambda: False)
    assert aot.main(TINY) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and "pip install 'sparsenet_jax[tpu]'" in err


def test_a_network_too_big_for_the_chip_exits_1_with_one_line(capsys):
    """Issue 17: the real check refuses, by arithmetic, before libtpu or the compiler start."""
    assert aot.main(["--recipe", "cifar10", "--model", "densenet-1000-100", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("error: densenet-1000-100 has 50,427,203,410 parameters")
    assert "more than the 16.0 GiB of a TPU v5e chip's HBM" in err


@pytest.mark.skipif(not aot.libtpu_available(), reason="needs libtpu (the [tpu] extra)")
def test_not_fitting_exits_1_with_one_line(monkeypatch, capsys):
    """Issue 17: only the TPU compiler is replaced (by its out-of-HBM answer); on a v4 chip
    of two devices the per-device figures the compiler gives are doubled."""

    def out_of_hbm(self, *args, **kwargs):
        raise RuntimeError(
            "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in "
            "memory space hbm. Used 20.00G of 15.75G hbm. Exceeded hbm capacity by 4.25G."
        )

    monkeypatch.setattr(jax.stages.Lowered, "compile", out_of_hbm)
    assert aot.main([*TINY, "--topology", "v4:1x1x1", "--json"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == "needs 40.00 GiB of the chip's 31.50 GiB (TPU v4 HBM)\n"


def test_bad_topology_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as caught:
        aot.main([*TINY, "--topology", "v5e:2y2"])
    assert caught.value.code == 2
    assert "topology" in capsys.readouterr().err


def _cost(flops: float, bytes_accessed: float, temp: int) -> aot_report.StepCost:
    return aot_report.StepCost(
        trace_s=1.0,
        compile_s=2.0,
        compile_cpu_s=3.0,
        argument_bytes=1000,
        output_bytes=900,
        alias_bytes=800,
        temp_bytes=temp,
        code_bytes=5,
        flops=flops,
        bytes_accessed=bytes_accessed,
    )


def test_report_arithmetic_and_text():
    config = config_lib.from_dict(
        {**config_lib.RECIPES["digits"], "model": "sparsenet-7-4", "workdir": "/tmp/unused"}
    )
    run = build_run(config, devices=jax.devices()[:1])
    topology = tpu_chips.parse_topology("v5e:1x1")
    result = aot_report.report(
        run, topology, _cost(197e9, 819e9, 10**6), _cost(1.0, 1.0, 2 * 10**6)
    )
    assert result["hbm_bytes"] == 1000 + 900 - 800 + 2 * 10**6  # the larger step: eval
    assert result["fits"] is True and result["hbm_capacity_bytes"] == 16 * GiB
    assert result["roofline_bound"] == "memory"  # 1 s of HBM traffic, 1 ms of compute
    assert result["roofline_images_per_s"] == pytest.approx(config.batch_size, rel=1e-3)
    assert result["bytes_accessed_per_image"] == pytest.approx(819e9 / config.batch_size)
    assert json.loads(json.dumps(result)) == result  # plain JSON, dtypes as strings
    report = aot_report.text(result)
    assert "roofline" in report and "197 TFLOP/s" in report and "819 GB/s" in report


def test_report_of_several_seeds_counts_their_images_and_says_how_many_fit():
    config = config_lib.from_dict(
        {**config_lib.RECIPES["digits"], "model": "sparsenet-7-4", "workdir": "/tmp/unused"}
    )
    run = build_run(dataclasses.replace(config, seeds=4), devices=jax.devices()[:1])
    topology = tpu_chips.parse_topology("v5e:1x1")
    train = dataclasses.replace(_cost(197e9, 819e9, 0), temp_bytes=3 * GiB - 1100)
    result = aot_report.report(run, topology, train, _cost(1.0, 1.0, 10**6))
    assert result["seeds"] == 4 and result["images_per_step"] == 4 * config.batch_size
    assert result["hbm_bytes"] == 3 * GiB - 1100 + 1100  # arguments + outputs − donated
    # 4 replicas in 3 GiB: 0.75 GiB each, so 16 GiB holds 21 of them
    assert result["hbm_bytes_per_seed"] == 3 * GiB // 4 and result["max_seeds"] == 21
    assert result["roofline_images_per_s"] == pytest.approx(4 * config.batch_size, rel=1e-3)
    assert result["bytes_accessed_per_image"] == pytest.approx(819e9 / (4 * config.batch_size))
    report = aot_report.text(result).splitlines()
    assert f"batch {config.batch_size} × 4 seeds" in report[0]
    assert report[-1] == (
        "largest --seeds that fits in HBM: 21 "
        "(0.75 GiB a replica, this compile of 4 scaled; compile --seeds 21 to confirm)"
    )
    assert aot_report.max_seeds(17 * GiB, 1, 16 * GiB) == 0  # not even one


def test_seeds_compile_n_replicas_and_report_the_largest_that_fits(monkeypatch, capsys):
    """``--seeds 2`` reaches the compiler: on CPU figures (the TPU compiler replaced by
    XLA:CPU's), the report's HBM is two replicas' and its answer is scaled from it."""
    monkeypatch.setattr(aot, "topology_devices", lambda topology: jax.devices("cpu")[:1])
    compiled = []
    real_compile = aot.compile_step

    def spy(step, *args):
        compiled.append(args[1]["image"].shape)
        return real_compile(step, *args)

    monkeypatch.setattr(aot, "compile_step", spy)
    assert aot.main([*TINY, "--seeds", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert compiled == [(2, 16, 32, 32, 1), (16, 32, 32, 1)]  # a batch a replica; eval shared
    assert result["seeds"] == 2 and result["images_per_step"] == 32
    assert result["max_seeds"] == 2 * result["hbm_capacity_bytes"] // result["hbm_bytes"]
    assert result["max_seeds"] > 2


def _libtpu_missing() -> bool:
    return not aot.libtpu_available()


@pytest.mark.slow
@pytest.mark.skipif(
    _libtpu_missing(), reason="libtpu not installed: pip install 'sparsenet_jax[tpu]'"
)
def test_aot_compiles_a_tiny_model_for_v5e(tmp_path):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path)}  # must be ignored
    proc = subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.aot", *TINY, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["topology"] == "v5e:1x1" and result["fits"] is True
    assert result["dtype"] == "bfloat16"  # "auto" on a TPU
    for key in ("train_compile_s", "eval_compile_s", "flops_per_step", "bytes_accessed_per_step"):
        assert result[key] > 0, key
    assert 0 < result["hbm_bytes"] < result["hbm_capacity_bytes"] == 16 * GiB
    assert result["roofline_images_per_s"] > 0
    assert not list(tmp_path.iterdir())  # nothing cached: the compile times are real
    kwargs = result["model_kwargs"]
    assert kwargs["dtype"] == "bfloat16" and kwargs["share_stats"] is True  # TPU defaults
    model = create_model(result["model"], result["num_classes"], **kwargs)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jax.numpy.zeros(model.default_input_shape))
    )
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes["params"])) == result["num_params"]
