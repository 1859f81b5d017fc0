"""Features for downstream work: pre-logit features, per-block maps, new classifiers, input facts."""

from __future__ import annotations

import logging

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import sparsenet_jax as sj
from sparsenet_jax.model import finetune

NAME = "sparsenet-13-6"


@pytest.fixture(scope="module")
def tiny():
    model = sj.create_model(NAME)
    variables = sj.init_variables(model, 0)
    x = jax.random.normal(jax.random.key(1), (3, 32, 32, 3))
    return model, variables, x


def test_features_then_the_classifier_give_the_logits_exactly(tiny):
    model, variables, x = tiny

    @jax.jit
    def both(v, images):
        features = model.apply(v, images, method=sj.SparseNet.features)
        dense = nn.Dense(model.num_classes)
        return features, dense.apply({"params": v["params"]["classifier"]}, features)

    features, from_features = both(variables, x)
    chex.assert_shape(features, (3, model.block_widths()[-1][1]))
    chex.assert_trees_all_equal(from_features, jax.jit(model.apply)(variables, x))


def test_feature_maps_follow_feature_info(tiny):
    model, variables, x = tiny
    maps = jax.jit(lambda v, a: model.apply(v, a, method="feature_maps"))(variables, x)
    info = model.feature_info()
    assert len(maps) == len(info) == len(model.block_sizes)
    for fmap, block in zip(maps, info, strict=True):
        size = 32 // block["reduction"]
        chex.assert_shape(fmap, (3, size, size, block["num_chs"]))
    # The last map, through the head's BN + ReLU + pool, is the pre-logit features.
    head = {
        "params": variables["params"]["norm_last"],
        "batch_stats": variables["batch_stats"]["norm_last"],
    }
    bn = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)
    pooled = jnp.mean(nn.relu(bn.apply(head, maps[-1])), axis=(1, 2))
    features = model.apply(variables, x, method=sj.SparseNet.features)
    chex.assert_trees_all_close(pooled, features, atol=1e-5, rtol=1e-5)


def test_feature_maps_in_train_mode_update_batch_stats(tiny):
    model, variables, x = tiny
    maps, updates = model.apply(
        variables, x, train=True, mutable=["batch_stats"], method=sj.SparseNet.feature_maps
    )
    assert len(maps) == 3 and "dense-stage-0" in updates["batch_stats"]


def test_imagenet_feature_maps_shapes():
    model = sj.create_model("densenet-121", num_classes=1000)
    x = jax.ShapeDtypeStruct(model.default_input_shape, jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)
    maps = jax.eval_shape(lambda v, a: model.apply(v, a, method="feature_maps"), shapes, x)
    assert [m.shape for m in maps] == [
        (1, 224 // b["reduction"], 224 // b["reduction"], b["num_chs"])
        for b in model.feature_info()
    ]
    assert [b["reduction"] for b in model.feature_info()] == [4, 8, 16, 32]
    assert model.feature_info()[-1]["num_chs"] == 1024


def test_parameter_tree_is_that_of_the_network(tiny):
    model, variables, _ = tiny
    top = set(variables["params"])
    assert top == {"conv0", "dense-stage-0", "dense-stage-1", "dense-stage-2"} | {
        "transition-0",
        "transition-1",
        "norm_last",
        "classifier",
    }
    no_head = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), method="features")
    )
    assert set(no_head["params"]) == top - {"classifier"}


def test_adapt_num_classes_keeps_all_but_the_classifier(tiny, caplog):
    model, variables, x = tiny
    target = sj.create_model(NAME, num_classes=4)
    with caplog.at_level(logging.WARNING, logger="sparsenet_jax.model.finetune"):
        adapted = sj.adapt_num_classes(target, variables, seed=1)
    message = caplog.text
    assert "re-initialised for 4 classes" in message
    assert "classifier/kernel (48, 10) → (48, 4)" in message
    assert "classifier/bias (10,) → (4,)" in message

    kept = {k: v for k, v in adapted["params"].items() if k != "classifier"}
    chex.assert_trees_all_equal(
        kept, {k: v for k, v in variables["params"].items() if k != "classifier"}
    )
    chex.assert_trees_all_equal(adapted["batch_stats"], variables["batch_stats"])
    chex.assert_shape(adapted["params"]["classifier"]["kernel"], (48, 4))
    chex.assert_trees_all_equal(adapted["params"]["classifier"]["bias"], jnp.zeros(4))
    assert float(jnp.std(adapted["params"]["classifier"]["kernel"])) > 0.01
    chex.assert_trees_all_equal(
        target.apply(adapted, x, method="features"), model.apply(variables, x, method="features")
    )
    assert target.apply(adapted, x).shape == (3, 4)


def test_adapt_num_classes_same_width_is_silent(tiny, caplog):
    model, variables, _ = tiny
    with caplog.at_level(logging.WARNING, logger="sparsenet_jax.model.finetune"):
        same = sj.adapt_num_classes(model, variables)
    assert caplog.text == ""
    chex.assert_trees_all_equal(same, variables)


def test_adapt_num_classes_refuses_another_network(tiny):
    _, variables, _ = tiny
    with pytest.raises(ValueError, match="another network"):
        sj.adapt_num_classes(sj.create_model("sparsenet-25-6", num_classes=3), variables)


@pytest.mark.parametrize(
    ("name", "dataset", "expected"),
    [
        (
            "densenet-121",
            None,
            {
                "dataset": "imagenet2012",
                "num_classes": 1000,
                "input_size": (224, 224, 3),
                "mean": (0.485, 0.456, 0.406),
                "std": (0.229, 0.224, 0.225),
                "crop_pct": 0.875,
            },
        ),
        (
            "sparsenet-40-24",
            None,
            {"dataset": "cifar10", "num_classes": 10, "input_size": (32, 32, 3), "crop_pct": 1.0},
        ),
        ("SparseNet-BC-100-24", "cifar100", {"name": "sparsenet-bc-100-24", "num_classes": 100}),
        ("sparsenet-13-6", "digits", {"input_size": (32, 32, 1), "mean": (0.3058,)}),
    ],
)
def test_pretrained_cfg(name, dataset, expected):
    cfg = sj.pretrained_cfg(name, dataset)
    assert {k: cfg[k] for k in expected} == expected
    assert cfg["first_conv"] == "conv0" and cfg["classifier"] == finetune.CLASSIFIER


def test_pretrained_cfg_bad_names():
    with pytest.raises(ValueError, match="unknown model"):
        sj.pretrained_cfg("sparsenet-7")
    with pytest.raises(ValueError, match="unknown dataset"):
        sj.pretrained_cfg("sparsenet-40-24", "mnist")
