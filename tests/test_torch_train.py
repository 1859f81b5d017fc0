"""benchmarks/torch_train.py: the PyTorch peer trained with our recipe (tiny runs on the CPU).

Needs torch (the ``[bench]`` extra): .ci/run's PyTorch job selects these by name
(``-k torch``); without torch they skip.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys
from types import ModuleType
from typing import Any

import jax
import numpy as np
import pytest

import sparsenet_jax as sj
from image_folders import encode, write_packed
from sparsenet_jax import data as data_lib
from sparsenet_jax.model import convert
from sparsenet_jax.model.network import abstract_variables
from sparsenet_jax.training import optim
from sparsenet_jax.training.config import TrainConfig

torch = pytest.importorskip("torch")

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
TINY = "sparsenet-10-4"  # two units a block: concatenation and the sparse reads both used
TRAIN, TEST, BATCH = 48, 12, 32  # per class, two classes: 3 steps an epoch (96 // 32)


def _load() -> ModuleType:
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module("torch_train")


@pytest.fixture
def npz(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A packed .npz of generated 32×32 JPEGs in two classes (the image cache in tmp_path)."""
    monkeypatch.setenv("SPARSENET_JAX_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)

    def split(per_class: int) -> tuple[list[bytes], np.ndarray]:
        labels = np.repeat([0, 1], per_class)
        files = [
            encode(rng.integers(0, 128, (32, 32, 3), np.uint8) + np.uint8(100 * label), "jpg")
            for label in labels
        ]
        return files, labels

    return write_packed(tmp_path / "tiny.npz", ["dark", "light"], split(TRAIN), split(TEST))


def _argv(npz: pathlib.Path, out: pathlib.Path, *more: str) -> list[str]:
    return [
        *("--preset", TINY, "--recipe", "cifar10", "--dataset", "folder"),
        *("--data-dir", str(npz), "--epochs", "2", "--batch-size", str(BATCH)),
        *("--eval-batch-size", "10", "--seed", "3", "--device", "cpu", "--out", str(out)),
        *more,
    ]


def _records(out: pathlib.Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_records_and_our_learning_rate_per_step(npz, tmp_path, monkeypatch) -> None:
    tt = _load()
    used: list[float] = []
    set_lr = tt.set_lr

    def recording_set_lr(opt: Any, lr: float) -> None:
        used.append(lr)
        set_lr(opt, lr)

    monkeypatch.setattr(tt, "set_lr", recording_set_lr)
    out = tmp_path / "out.jsonl"
    cosine = ("--lr-schedule", "cosine", "--warmup-epochs", "1", "--label-smoothing", "0.1")
    assert tt.main(_argv(npz, out, *cosine)) == 0
    head, *epochs, end = _records(out)
    assert head["kind"] == "header" and [r["kind"] for r in epochs] == ["epoch", "epoch"]
    assert head["params"] == sj.count_params(abstract_variables(sj.create_model(TINY, 2)))
    assert head["config"]["label_smoothing"] == 0.1 and head["config"]["dtype"] == "float32"
    assert head["steps_per_epoch"] == 3 and head["total_steps"] == 6 and head["compile"] == "none"
    assert [(r["epoch"], r["step"]) for r in epochs] == [(1.0, 3), (2.0, 6)]
    for r in epochs:
        assert 0 <= r["train_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"]) and r["img_per_s"] > 0
        assert "stopped_early" not in r and "compile_fallback" not in r
    assert epochs[0]["first_step_s"] > 0
    assert end["kind"] == "end" and end["step"] == 6 and end["stopped_early"] is False
    schedule = optim.learning_rate("cosine", 0.1, 3, 2, warmup_epochs=1.0)
    ours = [float(schedule(i)) for i in range(6)]
    np.testing.assert_allclose(used, ours, rtol=1e-6)
    assert len(set(used)) > 3  # warm-up then cosine: the test sees a changing lr
    assert epochs[-1]["lr"] == pytest.approx(ours[-1], rel=1e-6)
    assert tt.main(_argv(npz, out, "--max-steps", "1")) == 0  # appends a second run
    records = _records(out)
    assert [r["kind"] for r in records].count("header") == 2
    assert records[-1]["step"] == 1 and records[-1]["stopped_early"] is False


def test_weight_decay_mask_and_optimizer_match_ours(npz) -> None:
    tt = _load()
    config, _ = tt.parse_args(_argv(npz, pathlib.Path("unused.jsonl")))
    info = data_lib.dataset_info("folder", str(npz))
    net = tt.build_network(config, info)
    params = abstract_variables(sj.create_model(TINY, 2))["params"]
    mask = jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))
    names = {convert.torch_name("params", tuple(k.key for k in p)): m for p, m in mask}
    assert set(names) == {n for n, _ in net.named_parameters()}  # every parameter mapped
    decayed = {n for n, m in names.items() if m}
    assert set(tt.decayed_parameter_names(net)) == decayed
    assert "classifier.linear.weight" in decayed and "classifier.linear.bias" not in decayed
    assert not any(".bn" in n or "norm_last" in n for n in decayed)
    opt = tt.make_optimizer(net, config)
    by_id = {id(p): n for n, p in net.named_parameters()}
    groups = {g["weight_decay"]: {by_id[id(p)] for p in g["params"]} for g in opt.param_groups}
    assert groups == {1e-4: decayed, 0.0: set(names) - decayed}
    assert all(g["nesterov"] and g["momentum"] == 0.9 for g in opt.param_groups)


def test_augment_is_a_padded_crop_and_mirror_normalised_as_ours() -> None:
    tt = _load()
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 8, 8, 3), np.uint8)
    info = data_lib.DatasetInfo("t", 2, 8, 3, 64, 64, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    loaded = data_lib.LoadedDataset(info, (images, np.zeros(64, np.int32)), (images[:4], [0] * 4))
    config = TrainConfig(augment_pad=2, augment_flip=True)
    data = tt.to_device(loaded, config, torch.device("cpu"), channels_last=False)
    gen = torch.Generator().manual_seed(0)
    x, _ = tt.train_batch(data, torch.arange(64), gen)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    ours = np.asarray(data_lib.normalize(padded, info))  # normalised as our step does
    got = x.permute(0, 2, 3, 1).numpy()
    mirrored = 0
    for i in range(64):
        crops = [ours[i, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        plain = any(np.allclose(got[i], c, atol=1e-6) for c in crops)
        mirror = any(np.allclose(got[i], c[:, ::-1], atol=1e-6) for c in crops)
        assert plain or mirror, i
        mirrored += mirror and not plain
    assert 10 < mirrored < 54  # about half


def test_deadline_stops_early_with_an_evaluation(npz, tmp_path) -> None:
    tt = _load()
    out = tmp_path / "out.jsonl"
    assert tt.main(_argv(npz, out, "--epochs", "3", "--deadline-s", "0.001")) == 0
    _head, epoch, end = _records(out)
    assert epoch["step"] == 1 and epoch["epoch"] == pytest.approx(1 / 3)  # always one step
    assert epoch["stopped_early"] is True and epoch["stop_reason"] == "deadline"
    assert np.isfinite(epoch["test_accuracy"])
    assert end["stopped_early"] is True and end["step"] == 1 and end["epochs_completed"] == 0


@pytest.mark.parametrize("where", ["compile", "first step"])
def test_compile_failure_falls_back_to_eager(npz, tmp_path, monkeypatch, where) -> None:
    tt = _load()

    def broken_compile(net: Any, **kwargs: Any) -> Any:
        if where == "compile":
            raise RuntimeError("no compiler here\nsecond line")

        def forward(x: Any) -> Any:
            raise RuntimeError("no compiler here\nsecond line")

        return forward

    monkeypatch.setattr(torch, "compile", broken_compile)
    out = tmp_path / "out.jsonl"
    assert tt.main(_argv(npz, out, "--compile", "reduce-overhead")) == 0
    head, *epochs, end = _records(out)
    assert head["compile"] == "reduce-overhead"
    assert [r["step"] for r in epochs] == [3, 6] and end["step"] == 6
    for r in (*epochs, end):
        assert r["compile_fallback"] == "RuntimeError: no compiler here"
    assert epochs[0]["compiled"] is False and end["stopped_early"] is False


def test_sigterm_stops_at_the_next_step_and_the_handler_is_restored(
    npz, tmp_path, monkeypatch
) -> None:
    tt = _load()
    handlers: list[Any] = []
    monkeypatch.setattr(tt.signal, "signal", lambda sig, h: handlers.append(h) or "previous")
    set_lr, calls = tt.set_lr, []

    def term_at_second_step(opt: Any, lr: float) -> None:
        calls.append(lr)
        if len(calls) == 2:
            handlers[0](15, None)  # what the installed handler does on SIGTERM
        set_lr(opt, lr)

    monkeypatch.setattr(tt, "set_lr", term_at_second_step)
    out = tmp_path / "out.jsonl"
    assert tt.main(_argv(npz, out)) == 0
    _head, epoch, end = _records(out)
    assert epoch["step"] == 2 and epoch["stop_reason"] == "SIGTERM"
    assert end["stopped_early"] is True and end["stop_reason"] == "SIGTERM"
    assert handlers[-1] == "previous"  # put back after the run
