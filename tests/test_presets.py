from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import sparsenet_jax as sj
from sparsenet_jax.model.arithmetic import expected_params


def _flax_params(model: sj.SparseNet) -> int:
    shape = (1, model.default_input_size, model.default_input_size, 3)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    return sj.count_params(shapes)


# Counts of the official PyTorch model with a 2k stem (which reproduces the paper's);
# M-rounded rows checked to 4 decimals.
EXACT = [
    ("sparsenet-40-24", 100, 757_252),
    ("sparsenet-40-24", 10, 748_522),
    ("densenet-40-12", 100, 1_100_428),
    ("densenet-40-12", 10, 1_059_298),
    ("densenet-121", 1000, 7_978_856),
    ("densenet-169", 1000, 14_149_480),
    ("densenet-201", 1000, 20_013_928),
    # the reference vectors' own counts
    ("sparsenet-25-6", 10, 33_718),
    ("sparsenet-bc-46-6", 10, 39_976),
    ("densenet-13-6", 10, 22_630),
]
MILLIONS = [
    ("sparsenet-100-24", 100, 2.5224),
    ("sparsenet-bc-100-24", 100, 1.4611),
    ("densenet-bc-100-12", 100, 0.8000),
    ("sparsenet-40-24", 10, 0.7485),
    # rows where the official code differs from the paper (see the README's known gaps)
    ("sparsenet-100-32-64-128", 100, 28.73),
    ("sparsenet-bc-100-32-64-128", 100, 17.34),
    ("sparsenet-bc-100-12", 100, 0.37),
    ("sparsenet-121-32", 1000, 3.25),
    ("sparsenet-169-32", 1000, 4.71),
    ("sparsenet-201-32", 1000, 5.70),
]


@pytest.mark.parametrize(("name", "classes", "count"), EXACT)
def test_exact_parameter_counts(name, classes, count):
    assert _flax_params(sj.create_model(name, num_classes=classes)) == count


@pytest.mark.parametrize(("name", "classes", "millions"), MILLIONS)
def test_rounded_parameter_counts(name, classes, millions):
    decimals = len(str(millions).split(".")[1])
    count = _flax_params(sj.create_model(name, num_classes=classes))
    assert round(count / 1e6, decimals) == pytest.approx(millions)


@pytest.mark.parametrize("name", sj.list_models())
@pytest.mark.parametrize("classes", [10, pytest.param(100, marks=pytest.mark.slow)])
def test_every_preset_matches_the_layout_arithmetic(name, classes):
    if name.startswith(("densenet-bc-250", "densenet-bc-190", "resnet-1001", "sparse-resnet-1001")):
        pytest.skip("large: covered by the slow test below")
    model = sj.create_model(name, num_classes=classes)
    assert _flax_params(model) == expected_params(model)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["densenet-bc-250-24", "densenet-bc-190-40", "resnet-1001", "sparse-resnet-1001"]
)
def test_large_presets_match_the_layout_arithmetic(name):
    model = sj.create_model(name, num_classes=100)
    assert _flax_params(model) == expected_params(model)


def test_list_models_has_the_paper_rows_and_baselines():
    names = sj.list_models()
    for name in [
        "sparsenet-40-24",
        "sparsenet-bc-400-12",
        "densenet-bc-190-40",
        "resnet-1001",
        "sparse-resnet-164",
        "sparsenet-201-48",
        "densenet-201",
    ]:
        assert name in names
    for name in names:
        sj.create_model(name)  # every listed name builds


def test_preset_layouts():
    m = sj.create_model("sparsenet-bc-100-24")
    assert m.block_sizes == (16, 16, 16) and m.unit == "bottleneck" and m.compression == 0.5
    m = sj.create_model("sparsenet-100-16-32-64")
    assert m.growth_rates == (16, 32, 64) and m.stem_width == 32
    m = sj.create_model("resnet-110")
    assert m.block_sizes == (18, 18, 18) and m.unit == "basic" and m.aggregation == "sum"
    assert m.schedule.kind == "dense"
    m = sj.create_model("sparse-resnet-164")
    assert m.block_sizes == (18, 18, 18) and m.unit == "res_bottleneck"
    assert m.growth_rates == (64, 128, 256) and m.schedule.kind == "sparse"
    m = sj.create_model("sparsenet-121-32")
    assert m.block_sizes == (6, 12, 24, 16) and m.stem == "imagenet"
    m = sj.create_model("sparsenet-40-24", base=3, dropout_rate=0.2)
    assert m.schedule.base == 3 and m.dropout_rate == 0.2


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model") as err:
        sj.create_model("sparsenet-fourty-24")
    assert "sparsenet-40-24" in str(err.value) and "densenet-121" in str(err.value)
    with pytest.raises(ValueError, match="Did you mean sparsenet-40-24"):
        sj.create_model("sparsenet-40-42x")
    # A misspelt family, in a name that is a pattern and not a preset.
    for typo, meant in [
        ("sparsnet-13-8", "sparsenet-13-8"),
        ("desnet-bc-52-6", "densenet-bc-52-6"),
    ]:
        with pytest.raises(ValueError, match=f"Did you mean {meant}[?,]"):
            sj.create_model(typo)
    # The family spelt right: the closest presets, not another family's invalid name.
    with pytest.raises(ValueError, match=r"Did you mean densenet-40-12[?,]"):
        sj.create_model("densenet-40")


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sparsenet-41-24", {}),
        ("sparsenet-bc-42-12", {}),
        ("resnet-57", {}),
        ("sparsenet-40-24", {"depth": 3}),
        ("sparsenet-122-32", {}),
    ],
)
def test_depth_that_does_not_fit_is_rejected(name, overrides):
    with pytest.raises(ValueError, match="depth"):
        sj.create_model(name, **overrides)


def test_bad_overrides():
    with pytest.raises(ValueError, match="base must be >= 2"):
        sj.create_model("sparsenet-40-24", base=1)
    with pytest.raises(TypeError, match="unknown override"):
        sj.create_model("sparsenet-40-24", growthrate=12)
    with pytest.raises(ValueError, match="growth_rate must be positive"):
        sj.create_model("sparsenet-40-24", growth_rate=0)
    with pytest.raises(ValueError, match="num_classes"):
        sj.create_model("sparsenet-40-24", num_classes=0)
    with pytest.raises(ValueError, match="compression"):
        sj.create_model("sparsenet-40-24", compression=1.5)
    with pytest.raises(ValueError, match="one growth rate or one a block"):
        sj.create_model("sparsenet-40-24", growth_rate=(12, 24))


def test_a_transition_left_without_channels_is_refused():
    # sparsenet-bc-10-1 with base 3: one layer a block, whose output is that layer's
    # single channel; the BC transition halves it to floor(0.5) = 0 channels.
    with pytest.raises(ValueError, match=r"transition after block 1 would have 0 channels"):
        sj.create_model("sparsenet-bc-10-1", base=3)
    assert sj.create_model("sparsenet-bc-10-1", base=2).block_widths()[1] == (1, 2)


def test_readme_table_is_what_the_code_prints():
    import pathlib

    from sparsenet_jax.tools.tables import preset_table, readme_table

    readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
    assert readme_table(str(readme)) == preset_table(exact=False), (
        "README presets table is stale: run python -m sparsenet_jax.tools.tables --readme README.md"
    )
