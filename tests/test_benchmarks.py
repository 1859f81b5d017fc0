"""The benchmark suite: the PyTorch peer against the reference vectors, and a smoke run.

The peer tests skip when torch is absent (CI's default job does not install it).
"""

from __future__ import annotations

import importlib
import json
import os
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
from sparsenet_jax.model import convert

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py``: the folder is not a package, its scripts import
    each other by module name (and spawned measurement processes do too)."""
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


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
    torch_bench, timing = _load("torch_bench"), _load("timing")
    out = torch_bench.bench_torch("sparsenet-13-6", batch=8, how=timing.Repeats(1, 1, 1))
    assert out["train_images_per_s"] > 0 and out["eval_images_per_s"] > 0
    assert out["params"] == _jax_param_count(sj.create_model("sparsenet-13-6"))
    assert out["torch_counted_train_flops"] > 0


def test_peer_bench_bfloat16_autocast() -> None:
    pytest.importorskip("torch")
    torch_bench, timing = _load("torch_bench"), _load("timing")
    out = torch_bench.bench_torch(
        "sparsenet-13-6", batch=8, how=timing.Repeats(1, 1, 1), dtype="bfloat16"
    )
    assert out["dtype"] == "bfloat16" and out["device"] == "cpu"
    assert out["train_images_per_s"] > 0 and out["eval_images_per_s"] > 0


@pytest.mark.slow  # about 20 s: the default run stays near 10 minutes
def test_gpu_script_measures_ours_and_the_peer(tmp_path) -> None:
    """benchmarks/gpu.py end to end, with the peer on the CPU: both rows, the files."""
    pytest.importorskip("torch")
    gpu = _load("gpu")
    argv = ["--presets", "sparsenet-13-6", "--dtypes", "bfloat16", "--batch", "8"]
    argv += ["--repeats", "1", "--steps", "1", "--recipe-dtypes", "--peer-device", "cpu"]
    gpu.main([*argv, "--out-dir", str(tmp_path)])
    (json_path,) = tmp_path.glob("gpu-*.json")
    results = json.loads(json_path.read_text())
    (ours,), (peer,) = results["ours"], results["peer"]
    assert ours["preset"] == peer["preset"] == "sparsenet-13-6"
    assert ours["dtype"] == peer["dtype"] == "bfloat16"
    assert ours["params"] == peer["params"]
    for row in (ours, peer):
        assert row["train_images_per_s"] > 0 and row["eval_images_per_s"] > 0
    assert json_path.with_suffix(".md").read_text() == gpu.render(results)
    assert "| `sparsenet-13-6` | bfloat16 |" in gpu.render(results)


@pytest.mark.slow
def test_recipe_timing_projects_an_epoch_from_its_steps() -> None:
    gpu = _load("gpu")
    out = gpu.time_recipe(1.0, "float32")
    assert out["model"] == "sparsenet-40-24" and out["batch"] == 64 and out["epochs"] == 300
    assert out["timed_steps"] >= 8 and out["train_step_s"] > 0 and out["eval_step_s"] > 0
    steps_per_epoch = 50_000 // 64
    expected = steps_per_epoch * out["train_step_s"] + 20 * out["eval_step_s"]
    assert out["epoch_s"] == pytest.approx(expected)
    assert out["recipe_hours"] == pytest.approx(out["epoch_s"] * 300 / 3600)


@pytest.mark.slow  # about 20 s: the default run stays near 10 minutes
def test_suite_in_process_writes_json_and_markdown(tmp_path) -> None:
    """The whole CLI on a tiny preset, in process: our steps, a compile point, the files."""
    run = _load("run")
    argv = ["--presets", "sparsenet-13-6", "--batch", "8", "--repeats", "1", "--steps", "1"]
    argv += ["--warmup", "1", "--peak-repeats", "1", "--no-peer", "--no-sweep"]
    argv += ["--wait-idle", "0", "--compile-attempts", "1", "--in-process"]
    results = run.main([*argv, "--out-dir", str(tmp_path), "--tag", "smoke"])
    assert results["matmul_peak"]["gflops"] > 0
    (row,) = results["presets"]
    ours, point = row["jax"], row["compile"]
    assert ours["params"] == point["params"] == _jax_param_count(sj.create_model("sparsenet-13-6"))
    assert ours["train_flops"] > ours["eval_flops"] > 0
    for key in ("train_images_per_s", "eval_images_per_s", "train_xla_peak_mib", "peak_rss_mib"):
        assert ours[key] > 0, key
    assert point["compile_s"] > 0 and point["units"] == 9 and point["schedule"] == "sparse"
    # The compile point (abstract inputs) and the timed step (real inputs) are one step.
    assert point["train_flops"] == pytest.approx(ours["train_flops"])
    assert results["config"]["dtype"] == "float32" and "uint8" in results["config"]["input"]

    (json_path,) = tmp_path.glob("*-smoke.json")
    assert json.loads(json_path.read_text()) == results
    table = json_path.with_suffix(".md").read_text()
    assert table == _load("report").to_markdown(results)
    assert "| sparsenet-13-6 |" in table and "float32, uint8 images" in table
    assert "PyTorch eager peer" not in table and "compile time against depth" not in table


def test_fake_batches_are_what_the_trainer_compiles_for() -> None:
    """The benchmarks feed ``build_run``'s steps the batches the input pipeline delivers."""
    jax_bench = _load("jax_bench")
    from sparsenet_jax.training.build import build_run

    run = build_run(jax_bench.bench_config("sparsenet-13-6", 8, {"dropout_rate": 0.0}))
    assert run.config.dataset == "cifar10" and run.config.eval_batch_size == 8
    for train in (True, False):
        batch, spec = jax_bench.fake_batch(run, train), run.abstract_batch(train)
        assert batch.keys() == spec.keys()
        for key, array in batch.items():
            assert (array.shape, array.dtype) == (spec[key].shape, spec[key].dtype), key
            assert array.sharding == spec[key].sharding, key
    assert batch["image"].dtype == np.uint8


def test_bench_config_takes_dtype_from_model_kwargs() -> None:
    jax_bench, run = _load("jax_bench"), _load("run")
    config = jax_bench.bench_config("sparsenet-13-6", 16, {"dtype": "bfloat16", "remat": True})
    assert (config.dtype, config.model_kwargs) == ("bfloat16", {"remat": True})
    assert (config.batch_size, config.eval_batch_size) == (16, 16)
    assert jax_bench.bench_config("sparsenet-13-6", 16).dtype == "float32"  # not "auto"
    with pytest.raises(SystemExit, match="model_kwargs: unknown key 'remta'"):
        run.check_names(["sparsenet-13-6"], 16, {"remta": True})
    with pytest.raises(SystemExit, match="model"):
        run.check_names(["sparsenet-41-24"], 16, {})


@pytest.mark.parametrize(
    "stem",
    sorted(
        p.stem
        for p in (BENCH_DIR / "results").glob("*.json")
        if p.with_suffix(".md").exists()
        and not p.name.startswith(("tpu-", "imagenet-input"))
        and p.name != "cpu-peers-2026-11-27.json"  # the runs' files combined; its .md is prose
    ),
)
def test_report_renders_the_recorded_results_unchanged(stem: str) -> None:
    """Result files of earlier versions still render, to the markdown written with them."""
    report = _load("report")
    results = json.loads((BENCH_DIR / "results" / f"{stem}.json").read_text())
    assert report.to_markdown(results) == (BENCH_DIR / "results" / f"{stem}.md").read_text()


def test_run_isolated_returns_the_result_or_the_error() -> None:
    timing, machine = _load("timing"), _load("machine")
    assert timing.run_isolated(machine.machine_slug, {"cpu": "AMD EPYC", "cores": 2}) == (
        "amd-epyc-2c"
    )
    assert timing.run_isolated(machine.machine_slug, {}) == {"error": "KeyError: 'cpu'"}


def test_time_repeats_discards_nothing_without_a_threshold() -> None:
    timing = _load("timing")
    calls = []
    out = timing.Repeats(warmup=2, repeats=3, steps=2).time(lambda: calls.append(1))
    assert len(calls) == 2 + 3 * 2
    assert len(out["repeats_s"]) == 3 and out["discarded_repeats"] == 0
    assert out["median_s"] == sorted(out["repeats_s"])[1]


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
    preset = '{"xla_options": {"xla_cpu_opt_preset": "CPU_OPT_PRESET_FAST_RUNTIME"}}'
    variants = ["sparsenet-13-6", "{}", '{"pointwise_as_dot": false}', preset]
    variants += ["--vs", "densenet-13-6"]
    result = ablation.main([*variants, "--batch", "2", "--rounds", "2", "--json", str(out)])
    rows = result["rows"]
    assert [(r["preset"], r["kwargs"]) for r in rows] == [
        ("sparsenet-13-6", {}),
        ("sparsenet-13-6", {"pointwise_as_dot": False}),
        ("sparsenet-13-6", json.loads(preset)),
        ("densenet-13-6", {}),
    ]
    assert json.loads(out.read_text())["rows"] == rows
    assert rows[0]["time_vs_baseline"] == 1.0
    for row in rows:
        assert row["step_s"] > 0 and row["temp_mib"] > 0 and row["train_flops"] > 0
    # A dense block holds more activations than a sparse one of the same depth.
    assert rows[3]["temp_mib"] > rows[0]["temp_mib"]
    # The XLA options reach the compiler: one it does not know is refused.
    with pytest.raises(Exception, match="xla_no_such_option"):
        ablation.compile_variant("sparsenet-13-6", {"xla_options": {"xla_no_such_option": 1}}, 2)


@pytest.mark.slow  # about 20 s: the default run stays near 10 minutes
def test_side_by_side_interleaves_our_conv_impls(tmp_path) -> None:
    """``run.py --side-by-side`` without the peer: both conv impls of ours, long-lived
    processes, interleaved rounds, the files; the shift conv changes no parameter."""
    run = _load("run")
    argv = ["--side-by-side", "--presets", "sparsenet-13-6", "--batch", "8", "--rounds", "2"]
    argv += ["--steps", "1", "--warmup", "1", "--conv-impls", "xla", "gemm", "--torch-modes"]
    results = run.main([*argv, "--out-dir", str(tmp_path), "--stem", "peers"])
    (entry,) = results["side_by_side"]
    labels = ["jax (xla conv)", "jax (gemm conv)"]
    assert list(entry["contenders"]) == labels
    xla, gemm = (entry["contenders"][label] for label in labels)
    assert xla["params"] == gemm["params"] == _jax_param_count(sj.create_model("sparsenet-13-6"))
    assert gemm["conv_impl"] == "gemm" and xla["train_compile_total_s"] > 0
    for kind in ("train", "eval"):
        for label in labels:
            assert len(entry["times"][kind][label]["seconds"]) == 2
            assert entry["summary"][kind][label]["images_per_s"] > 0
        assert list(entry["summary"][kind][labels[0]]["vs"]) == [labels[1]]
    assert json.loads((tmp_path / "peers.json").read_text()) == results
    table = (tmp_path / "peers.md").read_text()
    assert table == _load("report").to_markdown(results)
    assert "## sparsenet-13-6: train step, side by side" in table
    assert "| jax (gemm conv) |" in table


def test_side_by_side_summary_is_the_median_per_round_ratio() -> None:
    run = _load("run")
    times = {
        "train": {
            "a": {"seconds": [1.0, 2.0, 4.0], "background_cores": [0, 1, 0], "loadavg": [2, 3, 4]},
            "b": {"seconds": [2.0, 2.0, 2.0], "background_cores": [0, 0, 0], "loadavg": [2, 3, 4]},
        }
    }
    summary = run.summarize(times, batch=8)["train"]
    assert summary["a"]["images_per_s"] == 4.0 and summary["b"]["images_per_s"] == 4.0
    assert summary["a"]["vs"]["b"] == 1.0  # per round 2, 1, 0.5: median 1
    assert summary["b"]["vs"]["a"] == 1.0
    assert summary["a"]["max_background_cores"] == 1 and summary["a"]["loadavg_range"] == [2, 4]
    assert run.contender_label("jax", "gemm") == "jax (gemm conv)"
    assert run.contender_label("torch", "compile") == "torch.compile"


def test_conv_impl_kwargs_sets_the_models_option() -> None:
    jax_bench = _load("jax_bench")
    assert jax_bench.conv_impl_kwargs("gemm", {"dtype": "bfloat16"}) == {
        "dtype": "bfloat16",
        "conv_impl": "gemm",
    }
    with pytest.raises(ValueError, match="expected one of xla, shift-dw, gemm, auto"):
        jax_bench.conv_impl_kwargs("winograd")


def test_peer_torch_compile_wiring() -> None:
    """``prepare_torch`` with torch.compile (backend "eager": the wiring, no code generation)."""
    pytest.importorskip("torch")
    torch_bench = _load("torch_bench")
    result, train_once, eval_once = torch_bench.prepare_torch(
        "sparsenet-13-6", batch=8, compile_mode="default", compile_backend="eager"
    )
    assert result["compile_mode"] == "default" and result["compile_backend"] == "eager"
    assert result["train_first_call_s"] > 0 and result["eval_first_call_s"] > 0
    assert result["torch_counted_train_flops"] > 0
    train_once()
    eval_once()
    with pytest.raises(ValueError, match="expected one of eager, compile"):
        torch_bench.torch_contender("sparsenet-13-6", mode="max-autotune")


def test_interleave_takes_turns_and_stops_at_the_deadline() -> None:
    timing = _load("timing")
    calls: list[tuple[str, str]] = []

    class Fake:
        def __init__(self, label: str) -> None:
            self.label = label

        def window(self, kind: str, steps: int) -> dict[str, float]:
            calls.append((self.label, kind))
            return {"seconds": 0.5 if self.label == "a" else 1.0, "background_cores": 0.0}

    fakes = [Fake("a"), Fake("b")]
    out = timing.interleave(fakes, rounds=3, steps=1)
    assert calls[:4] == [("a", "train"), ("b", "train"), ("a", "eval"), ("b", "eval")]
    assert len(out["train"]["a"]["seconds"]) == 3 and len(out["eval"]["b"]["loadavg"]) == 3
    assert timing.ratios(out["train"], "a", "b") == [2.0, 2.0, 2.0]
    calls.clear()
    out = timing.interleave(fakes, rounds=3, steps=1, deadline=0.0)  # already past: one round
    assert len(out["train"]["a"]["seconds"]) == 1 and len(calls) == 4


def test_profile_step_groups_the_ops_of_a_traced_step() -> None:
    """``profile_step.py`` on a tiny preset: the trace's ops are matched with the HLO."""
    profile_step = _load("profile_step")
    out = profile_step.profile("sparsenet-13-6", 8, "shift-dw")  # forward: XLA's conv
    assert out["threads"] >= 1 and 0 < out["busy_share"] <= 1.5
    assert 0 < out["cores_busy"] <= 2 * (os.cpu_count() or 1)
    groups = out["groups"]
    # shift-dw's GEMM weight gradients contract x's major dimension: XLA's own dots
    assert "dot, XLA's own (asynchronous: ms not its cost)" in groups
    assert any(g.startswith("convolution, window 3x3") for g in groups)
    assert groups.get("unmatched", {"ms": 0.0})["ms"] < 0.5 * out["op_ms"]


def test_profile_step_classifies_hlo_instructions() -> None:
    profile_step = _load("profile_step")
    hlo = "\n".join(
        [
            "%fused_dw (p0: f32[8,4,4,3], p1: f32[8,4,4,2]) -> f32[3,3,3,2] {",
            "  ROOT %c = f32[3,3,3,2]{3,2,1,0} convolution(%p0, %p1), window={size=4x4 pad=1_1x1_1}",
            "}",
            "%fused_dot (p0: f32[8,4], p1: f32[4,2]) -> f32[8,2] {",
            "  ROOT %d = f32[8,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, "
            "rhs_contracting_dims={0}",
            "}",
            "ENTRY %main (a: f32[8,4,4,3]) -> f32[3,3,3,2] {",
            "  %ynn_fusion.1 = f32[3,3,3,2]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dw",
            "  %transpose.2 = f32[3,2]{1,0} transpose(%x), dimensions={1,0}",
            "  %concatenate.3 = f32[6,2]{1,0} concatenate(%y, %z), dimensions={0}",
            "  %ynn_fusion.4 = f32[8,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, "
            'metadata={op_name="jit(step)/transpose(jvp(Net))/conv/dot_general"}',
            "  %ynn_fusion.5 = f32[8,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_dot, "
            'metadata={op_name="jit(step)/jvp(Net)/conv/dot_general"}',
            "  ROOT %dot.6 = f32[3,2]{1,0} dot(%a, %b), lhs_contracting_dims={0}, "
            "rhs_contracting_dims={0}",
            "}",
        ]
    )
    kinds = profile_step.hlo_kinds(hlo)
    assert kinds["ynn_fusion.1"] == "convolution, window 4x4"
    assert kinds["ynn_fusion.4"] == "dot, backward" and kinds["ynn_fusion.5"] == "dot, forward"
    assert kinds["dot.6"] == "dot, XLA's own (asynchronous: ms not its cost)"
    assert kinds["transpose.2"] == "transpose/copy"
    assert kinds["concatenate.3"] == "concatenate"


def test_packed_subset_keeps_the_first_files_of_each_class(tmp_path) -> None:
    packed = _load("packed_subset")
    files = [bytes([i]) * (i + 1) for i in range(6)]  # distinct "files" of distinct lengths
    labels = np.array([0, 1, 0, 1, 0, 1])
    source = packed.write_packed(tmp_path / "all.npz", ["a", "b"], (files, labels), (files, labels))
    out = packed.packed_subset(source, tmp_path / "sub.npz", 2, 1)
    with np.load(out) as sub:
        offsets, buf = sub["train_offsets"], sub["train_jpeg"]
        kept = [buf[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(offsets) - 1)]
        assert kept == [files[0], files[2], files[1], files[3]]
        assert list(sub["train_labels"]) == [0, 0, 1, 1] and list(sub["test_labels"]) == [0, 1]
    with pytest.raises(ValueError, match=r"all\.npz: class a has 3 train files"):
        packed.packed_subset(source, tmp_path / "big.npz", 4, 1)


def test_real_data_report_summarises_each_network_over_its_seeds(tmp_path) -> None:
    report = _load("real_data_report")
    ours = [
        {"split": "train", "step": 1, "seed": 0, "images_per_sec": 100.0},
        {"split": "train", "step": 2, "seed": 0, "images_per_sec": 300.0},
        {"split": "train", "step": 2, "seed": 1, "images_per_sec": 300.0},
        *(
            {"split": "test", "epoch": e, "seed": s, "accuracy": a}
            for e, s, a in [(1, 0, 0.5), (2, 0, 0.7), (1, 1, 0.4), (2, 1, 0.6)]
        ),
    ]
    (tmp_path / "ours-net.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ours))
    peer = [
        {"kind": "header", "config": {"model": "net", "seed": 0}},
        {"kind": "epoch", "epoch": 1, "test_accuracy": 0.65, "img_per_s": 50.0},
    ]
    (tmp_path / "torch-net-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in peer))
    rows = report.summary(tmp_path, report.read(tmp_path))
    assert "| ours net | 2 | 70.00, 60.00 | 65.00 ± 7.07 | 200 |" in rows
    assert "| PyTorch net | 1 | 65.00 | 65.00 ± 0.00 | 50 |" in rows


def test_tpu_table_render_keeps_the_hand_written_sections(tmp_path) -> None:
    tpu = _load("tpu")
    page = tmp_path / "tpu-v5e.md"
    page.write_text("# old title\n\nold table\n\n## Notes by hand\n\nkept text\n")
    tpu.write_markdown(page, "# new title\n\nnew table\n")
    assert page.read_text() == "# new title\n\nnew table\n\n## Notes by hand\n\nkept text\n"
    fresh = tmp_path / "fresh.md"
    tpu.write_markdown(fresh, "# only the table\n")
    assert fresh.read_text() == "# only the table\n"


def test_tpu_shapes_takes_the_replica_mode() -> None:
    import argparse

    tpu_shapes = _load("tpu_shapes")
    parser = argparse.ArgumentParser()
    tpu_shapes.add_flags(parser)
    assert parser.parse_args(["--replica-mode", "unroll"]).replica_mode == "unroll"
    assert parser.parse_args([]).replica_mode is None  # the backend's default
    with pytest.raises(SystemExit):
        parser.parse_args(["--replica-mode", "pmap"])


def test_tpu_table_row_of_a_failed_compile_has_every_column() -> None:
    tpu = _load("tpu")
    row = {"model": "densenet-bc-190-40", "dtype": "bfloat16", "error": "needs 19.23 GiB"}
    line = tpu.row_md(row)
    header = tpu.render({"machine": {"cpu": "x", "cores": 2}, "versions": {}, "rows": []})
    columns = next(h for h in header.splitlines() if h.startswith("| model")).count("|")
    assert line.count("|") == columns
    assert "| — | needs 19.23 GiB |" in line
