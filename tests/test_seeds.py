"""``--seeds N``: N replicas in one program, each the run its seed gives alone."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenet_jax import data as data_lib
from sparsenet_jax.model.presets import create_model
from sparsenet_jax.training import (
    build,
    config,
    health,
    input_pipeline,
    loop,
    memory,
    optim,
    replicas,
    steps,
)
from sparsenet_jax.training import mesh as mesh_lib
from sparsenet_jax.training.config import ConfigError, TrainConfig
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.reporting import best_so_far
from test_layers import _float64
from train_helpers import run_train

STEPS = 2


def _config(**kwargs) -> TrainConfig:
    values = dict(model="sparsenet-13-6", batch_size=16, log_every_steps=1)
    return config.from_dict({**config.RECIPES["digits"], "recipe": "digits", **values, **kwargs})


def _train(cfg: TrainConfig) -> tuple[list, object]:
    """``STEPS`` train steps of the run ``cfg`` describes, fed as the trainer feeds them."""
    splits = input_pipeline.load_splits(cfg)
    run = build.build_run(cfg, info=splits.info)
    state = run.init_state()
    batches = input_pipeline.train_batches(cfg, splits, 0, run.steps_per_epoch)
    losses = []
    for _ in range(STEPS):
        batch = mesh_lib.global_batch(next(batches), run.mesh, run.seeds > 1)
        state, metrics = run.train_step(state, batch)
        losses.append(np.asarray(metrics["loss"]))
    return losses, jax.device_get(state)


@pytest.mark.slow  # 4 trainer builds; the float64 test below checks the arithmetic by default
def test_each_replica_is_the_run_of_its_seed_alone():
    """Replica i of --seed 5 --seeds 3 trains as --seed 5+i: loss, weights, statistics."""
    losses, state = _train(_config(seed=5, seeds=3))
    assert losses[0].shape == (3,)
    initial = jax.device_get(build.build_run(_config(seed=5, seeds=3)).init_state())
    for i in range(3):
        solo_losses, solo = _train(_config(seed=5 + i))
        mine = replicas.select(state, i, 3)
        np.testing.assert_allclose([loss[i] for loss in losses], solo_losses, rtol=1e-4)
        start = replicas.select(initial, i, 3)
        for part in ("params", "opt_state"):
            _assert_within_rounding(getattr(mine, part), getattr(solo, part), getattr(start, part))
        chex.assert_trees_all_close(mine.batch_stats, solo.batch_stats, rtol=1e-4, atol=1e-5)
    assert int(state.step) == STEPS
    assert not np.allclose(losses[-1][0], losses[-1][1])  # the replicas are not copies


def _assert_within_rounding(mine, solo, start):
    """Each leaf within 2% of how far training moved it.

    float32: the replicas' grouped convolutions round otherwise, and BatchNorm
    over 16 digits amplifies it (measured: at most 0.4% after 2 steps; the
    float64 test shows the arithmetic is the same). Another seed's random bits
    or batch moves a leaf by about its whole update.
    """
    for path, a, b, c in zip(
        jax.tree_util.tree_leaves_with_path(mine),
        jax.tree.leaves(mine),
        jax.tree.leaves(solo),
        jax.tree.leaves(start),
        strict=True,
    ):
        moved = np.abs(np.asarray(b, np.float64) - c).max()
        assert np.abs(np.asarray(a, np.float64) - b).max() <= 0.02 * moved + 1e-7, path[0]


@pytest.mark.parametrize(
    "mode", ["vmap", pytest.param("unroll", marks=pytest.mark.slow)]
)  # unrolled, the solo steps side by side: the end-to-end test above runs it (CPU default)
def test_replicas_compute_the_solo_steps_exactly_in_float64(mode):
    """The vmapped step is the solo step's arithmetic: equal to 1e-10 in float64.

    (In float32 the grouped convolutions round differently, and BatchNorm over
    16 digits amplifies it; the end-to-end test above allows for that.)
    """
    with _float64():
        model = create_model("sparsenet-13-6", num_classes=10, in_channels=1)
        model = model.clone(dtype=jnp.float64, param_dtype=jnp.float64)
        tx = optim.make_optimizer(0.1, weight_decay=1e-4)

        def preprocess(rng, images, train):
            return data_lib.augment(rng, images, pad=2, flip=True).astype(jnp.float64) / 16.0

        seeds = (7, 8)
        solo = [steps.create_train_state(model, tx, s, (1, 16, 16, 1)) for s in seeds]
        together = replicas.stack(solo)
        seeded = steps.make_seeded_train_step(model, tx, preprocess, label_smoothing=0.1)
        step_n = jax.jit(replicas.train_step(seeded, seeds, mode))
        # One compile for both solo runs: the seed traced, as make_train_step's is not
        # (the end-to-end test above compares with the trainer's own solo runs).
        step_1 = jax.jit(seeded)
        rng = np.random.default_rng(0)
        for _ in range(2):
            images = rng.integers(0, 17, (2, 8, 16, 16, 1)).astype(np.uint8)
            labels = rng.integers(0, 10, (2, 8)).astype(np.int32)
            together, metrics = step_n(together, {"image": images, "label": labels})
            for i, seed in enumerate(seeds):
                batch = {"image": images[i], "label": labels[i]}
                solo[i], solo_metrics = step_1(seed, solo[i], batch)
                np.testing.assert_allclose(metrics["loss"][i], solo_metrics["loss"], rtol=1e-12)
        for i in range(2):
            chex.assert_trees_all_close(
                replicas.select(together, i, 2), solo[i], rtol=1e-10, atol=1e-12
            )


@pytest.mark.parametrize("mode", replicas.REPLICA_MODES)
def test_replica_eval_is_each_seeds_own_eval(mode):
    """Each replica's sums equal its solo eval; unrolled, with no grouped convolution
    (XLA:CPU ran the vmapped eval of two sparsenet-28-12 several times slower)."""
    model = create_model("sparsenet-13-6", num_classes=10, in_channels=1)
    tx = optim.make_optimizer(0.1)
    solo = [steps.create_train_state(model, tx, s, (1, 16, 16, 1)) for s in (3, 4)]

    def preprocess(rng, images, train):
        return images.astype(jnp.float32) / 16.0

    eval_1 = steps.make_eval_step(model, preprocess)
    eval_n = jax.jit(replicas.eval_step(eval_1, 2, mode))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 17, (8, 16, 16, 1)).astype(np.uint8),
        "label": rng.integers(0, 10, (8,)).astype(np.int32),
    }
    together = replicas.stack(solo)
    sums = eval_n(together, batch)
    for i in range(2):
        chex.assert_trees_all_close(
            {k: v[i] for k, v in sums.items()}, jax.jit(eval_1)(solo[i], batch), rtol=1e-5
        )
    groups = re.findall(r"feature_group_count = (\d+)", eval_n.lower(together, batch).as_text())
    assert groups and (max(map(int, groups)) > 1) == (mode == "vmap")


def test_a_stop_signal_abandons_an_evaluation_between_batches():
    """SIGTERM during a long test pass (minutes on a CPU) must not wait for its end:
    the pass is dropped unrecorded and the resumed run evaluates that step first."""
    cfg = _config(seeds=2, eval_batch_size=50)
    splits = input_pipeline.load_splits(cfg)
    run = build.build_run(cfg, info=splits.info)
    state = run.init_state()
    asked: list[int] = []

    def stop_at(n):
        return lambda: asked.append(1) or len(asked) >= n

    results = loop.evaluate_seeds(run, state, splits, stop_at(10**9))
    assert results is not None and len(results) == 2
    batches, asked[:] = len(asked), []
    assert batches > 2
    assert loop.evaluate_seeds(run, state, splits, stop_at(2)) is None
    assert len(asked) == 2  # one batch evaluated, then stopped


def test_replica_batches_follow_each_seeds_order():
    cfg = _config(seed=2, seeds=2)
    splits = input_pipeline.load_splits(cfg)
    stacked = next(input_pipeline.epoch_batches(cfg, splits, epoch=1))
    assert stacked["image"].shape[:2] == (2, 16)
    for i in range(2):
        solo = next(input_pipeline.epoch_batches(_config(seed=2 + i), splits, epoch=1))
        np.testing.assert_array_equal(stacked["label"][i], solo["label"])
        np.testing.assert_array_equal(stacked["image"][i], solo["image"])


def test_cpu_and_gpu_unroll_the_replicas_and_an_unknown_mode_is_refused():
    assert build.default_replica_mode("cpu") == build.default_replica_mode("gpu") == "unroll"
    assert build.default_replica_mode("tpu") == "vmap"
    with pytest.raises(ValueError, match="replica mode 'loop': choose from vmap, unroll"):
        replicas.train_step(lambda *a: a, (0, 1), "loop")


def test_select_refuses_an_index_out_of_range():
    with pytest.raises(ValueError, match="seed index 3 is out of range: the run has 3 seeds"):
        replicas.select({"w": np.zeros((3, 2))}, 3, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seeds": 0}, "seeds: must be >= 1, got 0"),
        ({"seed": 2**32 - 2, "seeds": 3}, r"seed \+ seeds must be at most 2\*\*32"),
        ({"seeds": 2, "dataset": "imagenet2012"}, "for imagenet2012 run one seed per run"),
    ],
)
def test_bad_seeds_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        config.validate(dataclasses.replace(TrainConfig(), **kwargs))


def test_memory_check_scales_with_seeds_and_says_how_many_fit():
    cfg = _config()
    one = memory.check_size(cfg, devices=1, capacity=2**40)
    assert one is not None
    eight = memory.check_size(dataclasses.replace(cfg, seeds=8), devices=1, capacity=2**40)
    assert eight is not None and eight.total_bytes == 8 * one.total_bytes
    capacity = int(3.5 * one.total_bytes)
    with pytest.raises(TrainingError, match=r"of 8 seeds needs .* at most --seeds 3 fits"):
        memory.check_size(dataclasses.replace(cfg, seeds=8), devices=1, capacity=capacity)


def test_traced_estimate_counts_every_replica():
    runs = [build.build_run(_config(seeds=n)) for n in (1, 4)]
    one, four = (memory.estimate(run) for run in runs)
    assert four.state_bytes == 4 * one.state_bytes - 3 * 4  # one shared int32 step counter
    assert four.activation_bytes == 4 * one.activation_bytes
    assert runs[1].num_params == runs[0].num_params  # a replica's count, not N times it


def test_health_judges_the_worst_replica():
    records = [
        {"split": "train", "step": 10, "seed": 0, "loss": 1.0},
        {"split": "train", "step": 10, "seed": 1, "loss": math.nan},
    ]
    assert not health.judge(records, 9, 10).healthy
    records[1]["loss"] = 50.0
    verdict = health.judge(records, 9, 10)
    assert not verdict.healthy and verdict.loss == 50.0


def test_trainer_writes_per_seed_records_and_resumes_only_with_the_same_seeds(tmp_path):
    workdir = tmp_path / "run"
    args = ("--seeds", "2", "--max-steps", "4", "--checkpoint-every-steps", "2")
    first = run_train(workdir, *args)
    assert first.returncode == 0, first.stderr
    assert "test accuracy over 2 seeds" in first.stdout
    assert "(mean ± std of the last evaluation; best: seed 0 " in first.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert {(r["step"], r["seed"]) for r in train} >= {(2, 0), (2, 1), (4, 0), (4, 1)}
    tests = [r for r in records if r["split"] == "test"]
    assert sorted(r["seed"] for r in tests) == [0, 1]
    assert set(best_so_far(workdir / "metrics.jsonl")) == {0, 1}
    # the progress line's speed counts both replicas' images
    assert train[0]["images_per_sec"] == train[1]["images_per_sec"]

    refused = run_train(workdir, "--seeds", "3", "--max-steps", "6")
    assert refused.returncode == 1
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "seeds: workdir has 2, asked 3" in lines[0], refused.stderr

    resumed = run_train(workdir, *args[:2], "--max-steps", "6")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step 4" in resumed.stderr


def test_one_seed_keeps_records_without_a_seed_field(tmp_path: pathlib.Path):
    result = run_train(tmp_path / "run", "--max-steps", "2")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert records and all("seed" not in r for r in records)
    assert "best test accuracy" in result.stdout
