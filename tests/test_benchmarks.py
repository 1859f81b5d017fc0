"""The benchmark suite: the PyTorch peer against the reference vectors, and a smoke run.

The peer tests skip when torch is absent (CI's default job does not install it).
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from conftest import TINY_REFERENCES, load_reference
from sparsenet_jax import convert

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the folder is not a package)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    module_name = f"benchmarks_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _jax_param_count(model: Any) -> int:
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    return sj.count_params(shapes)


@pytest.mark.parametrize("filename", sorted(TINY_REFERENCES))
def test_peer_matches_reference_logits(filename: str) -> None:
    torch = pytest.importorskip("torch")
    peer = _load("torch_peer")
    ref = load_reference(filename)
    meta = json.loads(str(ref["meta"]))
    net = peer.from_official_call(meta["official_call"])
    state = {
        k[len("sd/") :]: torch.from_numpy(v.copy()) for k, v in ref.items() if k.startswith("sd/")
    }
    net.load_state_dict(state, strict=True)  # official names, official shapes
    x = torch.from_numpy(ref["x"])
    with torch.no_grad():
        net.eval()
        logits_eval = net(x).numpy()
        net.train()
        logits_train = net(x).numpy()
    for ours, key in ((logits_eval, "logits_eval"), (logits_train, "logits_train")):
        assert np.abs(ours - ref[key]).max() <= 1e-4 * np.abs(ref[key]).max(), key
    name, classes = TINY_REFERENCES[filename]
    jax_count = _jax_param_count(sj.create_model(name, num_classes=classes))
    assert peer.count_params(net) == meta["num_params"] == jax_count


@pytest.mark.parametrize("name", ["resnet-20", "sparse-resnet-20"])
def test_peer_summation_matches_jax(name: str) -> None:
    """No official vectors exist for the sum family: compare with our JAX model instead."""
    torch = pytest.importorskip("torch")
    peer = _load("torch_peer")
    model = sj.create_model(name, num_classes=10)
    torch.manual_seed(0)
    net = peer.from_jax_model(model)
    with torch.no_grad():  # random BN statistics and affine, so every mapping matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    # .copy(): on CPU, JAX may alias the numpy view of a torch tensor, and the
    # train-mode forward below updates the running statistics in place.
    state = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    variables = convert.from_torch_state_dict(model, state)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        net.eval()
        peer_eval = net(torch.from_numpy(x)).numpy()
        net.train()
        peer_train = net(torch.from_numpy(x)).numpy()
    x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
    ours_eval = jax.jit(model.apply)(variables, x_nhwc)
    ours_train, _ = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=["batch_stats"]))(
        variables, x_nhwc
    )
    for ours, theirs in ((ours_eval, peer_eval), (ours_train, peer_train)):
        assert np.abs(np.asarray(ours) - theirs).max() <= 1e-4 * np.abs(theirs).max()
    assert peer.count_params(net) == _jax_param_count(model)


def test_peer_param_counts_equal_jax_for_default_presets() -> None:
    pytest.importorskip("torch")
    peer = _load("torch_peer")
    run = _load("run")
    for name in run.DEFAULT_PRESETS:
        model = sj.create_model(name, num_classes=10)
        assert peer.count_params(peer.from_jax_model(model)) == _jax_param_count(model), name


def test_peer_bench_smoke() -> None:
    pytest.importorskip("torch")
    run = _load("run")
    out = run.bench_torch("sparsenet-13-6", batch=8, repeats=1, steps_per_repeat=1, warmup=1)
    assert out["train_images_per_s"] > 0 and out["eval_images_per_s"] > 0
    assert out["params"] == _jax_param_count(sj.create_model("sparsenet-13-6"))


def test_measurements_smoke() -> None:
    """The JAX measurements on a tiny preset, in process; needs no torch."""
    run = _load("run")
    peak = run.matmul_peak(n=128, repeats=2)
    assert peak["gflops"] > 0
    ours = run.bench_jax("sparsenet-13-6", batch=8, repeats=1, steps_per_repeat=1, warmup=1)
    assert ours["params"] == _jax_param_count(sj.create_model("sparsenet-13-6"))
    assert ours["train_flops"] > ours["eval_flops"] > 0
    for key in ("train_images_per_s", "eval_images_per_s", "train_xla_peak_mib", "peak_rss_mib"):
        assert ours[key] > 0, key
    point = run.compile_point("sparsenet-13-6", batch=8)
    assert point["compile_s"] > 0 and point["units"] == 9
    assert point["train_flops"] == pytest.approx(ours["train_flops"])

    results = {
        "date": "2000-01-01T00:00:00",
        "command": "test",
        "machine": run.machine_info(),
        "versions": run.versions(),
        "git": None,
        "config": {
            "batch": 8,
            "repeats": 1,
            "steps": 1,
            "warmup": 1,
            "peak_repeats": 2,
            "model_kwargs": {},
        },
        "matmul_peak": peak,
        "presets": [{"preset": "sparsenet-13-6", "jax": ours, "torch": None}],
        "compile_sweep": [point],
    }
    table = run.to_markdown(results)
    assert "| sparsenet-13-6 |" in table and "compile time against depth" in table


def test_parse_args_quick_and_kwargs() -> None:
    run = _load("run")
    args = run.parse_args(["--quick", "--model-kwargs", '{"dropout_rate": 0.0}'])
    assert args.presets == list(run.QUICK_PRESETS) and args.repeats == 2
    assert args.model_kwargs == {"dropout_rate": 0.0}
    assert run.parse_args(["--no-sweep"]).sweep_sparse == []


@pytest.mark.parametrize("with_torch", [False, True], ids=["xla", "xla-and-torch"])
def test_conv_kernels_measures_every_product(tmp_path, with_torch: bool) -> None:
    if with_torch:
        pytest.importorskip("torch")
    kernels = _load("conv_kernels")
    out = tmp_path / "rows.json"
    argv = ["--batch", "2", "--size", "8", "--repeats", "1", "--json", str(out)]
    rows = kernels.main(argv + ([] if with_torch else ["--no-torch"]))
    assert json.loads(out.read_text()) == rows
    assert [(r["kernel"], r["cin"], r["cout"]) for r in rows] == list(kernels.DEFAULT_SHAPES)
    for row in rows:
        products = ["xla conv fwd", "xla conv dx", "xla conv dw"]
        products += ["xla matmul fwd", "xla matmul dx", "xla matmul dw"] * (row["kernel"] == 1)
        products += ["torch fwd", "torch dx", "torch dw"] * with_torch
        assert sorted(k for k in row if k not in ("kernel", "cin", "cout")) == sorted(products)
        assert all(np.isfinite(row[p]) and row[p] > 0 for p in products)


@pytest.mark.slow
def test_ablation_times_variants_round_robin(tmp_path) -> None:
    ablation = _load("ablation")
    out = tmp_path / "ablation.json"
    variants = ["sparsenet-13-6", "{}", '{"pointwise_as_dot": false}', "--vs", "densenet-13-6"]
    result = ablation.main([*variants, "--batch", "2", "--rounds", "2", "--json", str(out)])
    rows = result["rows"]
    assert [(r["preset"], r["kwargs"]) for r in rows] == [
        ("sparsenet-13-6", {}),
        ("sparsenet-13-6", {"pointwise_as_dot": False}),
        ("densenet-13-6", {}),
    ]
    assert json.loads(out.read_text())["rows"] == rows
    assert rows[0]["time_vs_baseline"] == 1.0
    for row in rows:
        assert row["step_s"] > 0 and row["temp_mib"] > 0 and row["train_flops"] > 0
    # A dense block holds more activations than a sparse one of the same depth.
    assert rows[2]["temp_mib"] > rows[0]["temp_mib"]
