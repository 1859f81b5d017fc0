"""``per_input_conv``: each unit convolves the outputs it reads one by one and sums.

Issue 19: the TPU compiler generates code once per distinct fusion, and in an
unrolled concatenating block every unit's first convolution reads a
concatenation of its own width. With ``per_input_conv`` a unit never builds
that concatenation: its first BatchNorm and ReLU act on each input, and its
first convolution is one convolution per input, on that input's kernel rows,
summed. Same parameters; the same function in another summation order.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import sparsenet_jax as sj
from sparsenet_jax.model.norms import BatchNorm
from sparsenet_jax.model.units import PerInputConv, make_conv
from test_layers import _float64
from test_shape_buckets import (
    SMALL,
    _conv_input_shapes,
    _images,
    assert_close_in_float32,
    assert_same_network,
)

SLOW = pytest.mark.slow

CASES = [
    ("sparsenet-25-6", SMALL),  # sparse, plain units: the 3×3 convolution is split
    ("sparsenet-bc-22-6", {**SMALL, "share_stats": True}),  # BC: the 1×1 is split
    # The fast job keeps two cases; these run in the slow one.
    pytest.param("densenet-13-6", SMALL, marks=SLOW),  # dense
    pytest.param(  # summation: unchanged
        "sparse-resnet-20", {"block_sizes": (2, 2), "growth_rates": (8, 16)}, marks=SLOW
    ),
    # One full-size network (three blocks, 32×32 images); the switches below ride on
    # the small one: the same code paths in under half the time.
    pytest.param("sparsenet-bc-46-6", {"share_stats": True}, marks=SLOW),
    pytest.param("densenet-13-6", {**SMALL, "share_stats": True}, marks=SLOW),
    pytest.param("sparsenet-25-6", {**SMALL, "remat": True, "share_stats": True}, marks=SLOW),
    pytest.param("sparsenet-25-6", {**SMALL, "dropout_rate": 0.2}, marks=SLOW),
    pytest.param("sparsenet-bc-22-6", {"pointwise_as_dot": False}, marks=SLOW),  # 1×1 as convs
    pytest.param("sparsenet-bc-22-6", {"conv_impl": "auto"}, marks=SLOW),
]


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_per_input_convolutions_match_the_plain_block_in_float64(name, overrides):
    """Logits, loss, running statistics and gradients equal the plain block's to 1e-10."""
    with _float64():
        kwargs = {"dtype": jnp.float64, "param_dtype": jnp.float64, **overrides}
        plain = sj.create_model(name, **kwargs)
        assert_same_network(plain, sj.create_model(name, per_input_conv=True, **kwargs), overrides)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sparsenet-25-6", SMALL),
        pytest.param("sparsenet-bc-22-6", {**SMALL, "share_stats": True}, marks=SLOW),
        pytest.param("densenet-13-6", {}, marks=SLOW),
    ],
)
def test_per_input_convolutions_match_the_plain_block_in_float32(name, overrides):
    """The float32 tolerances of tests/test_layers.py's block variants."""
    plain = sj.create_model(name, **overrides)
    split = sj.create_model(name, per_input_conv=True, **overrides)
    assert_close_in_float32(plain, split, overrides)


def test_per_input_convolutions_leave_few_shapes_in_training_only():
    """sparsenet-40-24: units read 5–6 concatenation widths a block; split, each block's
    3×3 convolutions read 24 channels or the block input's width, nothing else.
    The eval step keeps the concatenation."""
    plain = sj.create_model("sparsenet-40-24", share_stats=True)
    split = plain.clone(per_input_conv=True)
    before, after = _conv_input_shapes(plain, True), _conv_input_shapes(split, True)
    assert len(after) <= len(before) // 2
    widths = {lhs[-1] for lhs, rhs in after if len(lhs) == 4 and rhs[:2] == (3, 3)}
    # The image (3), one output (24) and the block inputs (48, then 96 after each transition).
    assert widths == {3, 24, 48, 96}
    assert _conv_input_shapes(split, False) == _conv_input_shapes(plain, False)


def test_the_kernel_rows_sit_behind_a_barrier():
    """Without it XLA fuses each row slice (its offset differs from layer to layer) into
    the convolution, and the TPU compiler sees as many distinct fusions as before."""
    model = sj.create_model("sparsenet-25-6", per_input_conv=True, **SMALL)
    variables = sj.init_variables(model, 0)
    x = _images(SMALL)
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables
    )
    barriers = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "optimization_barrier"]
    layers = sum(SMALL["block_sizes"])
    assert len(barriers) == layers  # one a unit, holding its kernel's row slices
    # The plain network has none.
    plain = jax.make_jaxpr(
        lambda v: model.clone(per_input_conv=False).apply(v, x, train=True, mutable=["batch_stats"])
    )(variables)
    assert not any(e.primitive.name == "optimization_barrier" for e in plain.jaxpr.eqns)


@SLOW
def test_bfloat16_partial_sums_are_about_as_accurate_as_one_convolution():
    """In bfloat16 the per-input sums round more often; the train logits stay within
    twice the plain bfloat16 network's distance from the float32 one."""
    overrides = {**SMALL, "share_stats": True}
    truth_model = sj.create_model("sparsenet-25-6", **overrides)
    variables = sj.init_variables(truth_model, 0)
    x = _images(SMALL)

    def train_logits(model):
        logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return logits

    truth = train_logits(truth_model)
    plain = train_logits(truth_model.clone(dtype=jnp.bfloat16))
    split = train_logits(truth_model.clone(dtype=jnp.bfloat16, per_input_conv=True))
    plain_error = float(jnp.max(jnp.abs(plain - truth)))
    split_error = float(jnp.max(jnp.abs(split - truth)))
    assert 0.0 < split_error <= 2.0 * plain_error + 1e-3, (split_error, plain_error)


def test_batchnorm_of_parts_is_the_slices_of_the_concatenation():
    parts = [jax.random.normal(jax.random.key(i), (4, 3, 3, w)) for i, w in enumerate((2, 5))]
    whole = jnp.concatenate(parts, axis=-1)
    for train in (True, False):
        norm = BatchNorm(use_running_average=not train, use_fast_variance=False)
        variables = norm.init(jax.random.key(0), whole)
        variables = jax.tree_util.tree_map(lambda v: v + 0.3, variables)  # not the identity
        ref, ref_new = norm.apply(variables, whole, mutable=["batch_stats"])
        got, got_new = norm.apply(variables, parts, mutable=["batch_stats"])
        chex.assert_trees_all_close(jnp.concatenate(got, axis=-1), ref, atol=1e-6)
        chex.assert_trees_all_close(got_new, ref_new, atol=1e-6)


def test_per_input_conv_equals_one_convolution_of_the_concatenation():
    parts = [jax.random.normal(jax.random.key(i), (2, 6, 6, w)) for i, w in enumerate((3, 4))]
    whole = jnp.concatenate(parts, axis=-1)
    for size, padding in (((3, 3), 1), ((1, 1), 0)):
        conv = make_conv(jnp.float32, jnp.float32)(5, size, padding=padding)
        variables = conv.init(jax.random.key(1), whole)
        split = PerInputConv(5, size, in_features=7, padding=padding)
        chex.assert_trees_all_equal_shapes(variables, split.init(jax.random.key(1), parts))
        chex.assert_trees_all_close(
            split.apply(variables, parts), conv.apply(variables, whole), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(ValueError, match="add up"):
        PerInputConv(5, (3, 3), in_features=8, padding=1).init(jax.random.key(1), parts)


def test_per_input_conv_is_checked():
    with pytest.raises(TypeError, match="per_input_conv"):
        sj.create_model("sparsenet-25-6", per_input_conv=1)
    for other in ({"block_impl": "scan"}, {"block_impl": "buffer"}, {"channel_bucket": 16}):
        with pytest.raises(ValueError, match="per_input_conv"):
            sj.create_model("sparsenet-25-6", per_input_conv=True, **other)
