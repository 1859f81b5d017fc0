"""``channel_bucket``: units read inputs padded to a few widths; the same parameters and function.

Issue 19: the TPU compiler generates code once per distinct fusion, and in an
unrolled concatenating block every unit reads a different width. With
``channel_bucket`` a unit's input gets zero channels (after its first
BatchNorm and ReLU) up to a multiple of the bucket, and its first kernel zero
rows in the forward pass; nothing else changes.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import sparsenet_jax as sj
from sparsenet_jax.model.units import PaddedConv, PointwiseConv, pad_channels
from test_layers import TWO_SMALL_BLOCKS, _float64, square_loss

SLOW = pytest.mark.slow


def _everything(model, variables, x):
    """Eval logits, train logits, new running statistics and the gradients of a loss."""

    loss = square_loss(model, variables, x)
    eval_logits = jax.jit(model.apply)(variables, x)
    (value, (train_logits, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"]
    )
    return {
        "eval": eval_logits,
        "loss": value,
        "train": train_logits,
        "stats": stats,
        "grads": grads,
    }


# Two short blocks (a transition between them) on 8×8 images keep the default
# run's compiles small; the presets' full depth runs in the slow job.
SMALL = TWO_SMALL_BLOCKS
CASES = [
    ("sparsenet-25-6", SMALL, 16),  # sparse, plain units: widths 12, 18, 24 → 16, 32
    # An option no backend uses by default: the fast job keeps the case above.
    pytest.param("sparsenet-bc-22-6", SMALL, 16, marks=SLOW),  # the padded conv is the 1×1
    pytest.param("densenet-13-6", SMALL, 16, marks=SLOW),  # dense
    # summation: every input has one width already
    pytest.param(
        "sparse-resnet-20", {"block_sizes": (2, 2), "growth_rates": (8, 16)}, 16, marks=SLOW
    ),
    pytest.param("sparsenet-25-6", {**SMALL, "share_stats": True}, 16, marks=SLOW),
    # Full size (three blocks, 32×32 images) for plain and BC units; the switches
    # below ride on the small network: the same code paths in a fraction of the time.
    pytest.param("sparsenet-25-6", {}, 16, marks=SLOW),
    pytest.param("sparsenet-bc-46-6", {"share_stats": True}, 16, marks=SLOW),
    pytest.param("sparsenet-25-6", SMALL, 128, marks=SLOW),
    pytest.param("densenet-13-6", {**SMALL, "share_stats": True}, 128, marks=SLOW),
    pytest.param("sparsenet-25-6", {**SMALL, "remat": True, "share_stats": True}, 16, marks=SLOW),
    pytest.param("sparsenet-25-6", {**SMALL, "dropout_rate": 0.2}, 16, marks=SLOW),
    pytest.param("sparsenet-bc-22-6", {"pointwise_as_dot": False}, 16, marks=SLOW),
    pytest.param("resnet-20", {}, 16, marks=SLOW),
]


def _images(overrides, dtype=jnp.float32):
    size = 8 if "block_sizes" in overrides else 32
    return jax.random.normal(jax.random.key(1), (4, size, size, 3), dtype)


@pytest.mark.parametrize(("name", "overrides", "bucket"), CASES)
def test_bucketed_inputs_match_the_plain_block_in_float64(name, overrides, bucket):
    """Logits, loss, running statistics and gradients equal the unpadded block's to 1e-10."""
    with _float64():
        kwargs = {"dtype": jnp.float64, "param_dtype": jnp.float64, **overrides}
        plain = sj.create_model(name, **kwargs)
        assert_same_network(
            plain, sj.create_model(name, channel_bucket=bucket, **kwargs), overrides
        )


def assert_same_network(plain, variant, overrides):
    """One parameter tree and the same initial values (checkpoints carry over); logits,
    loss, running statistics and gradients equal to 1e-10 (call inside ``_float64``)."""
    variables = sj.init_variables(plain, 0)
    same = sj.init_variables(variant, 0)
    chex.assert_trees_all_equal_structs(variables, same)
    chex.assert_trees_all_equal_shapes(variables, same)
    chex.assert_trees_all_close(variables, same)
    x = _images(overrides, jnp.float64)
    ref, got = _everything(plain, variables, x), _everything(variant, variables, x)
    chex.assert_trees_all_close(got, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sparsenet-25-6", SMALL),
        pytest.param("sparsenet-bc-22-6", {**SMALL, "share_stats": True}, marks=SLOW),
        pytest.param("sparsenet-25-6", {}, marks=SLOW),
        pytest.param("densenet-13-6", {}, marks=SLOW),
    ],
)
def test_bucketed_inputs_match_the_plain_block_in_float32(name, overrides):
    """The float32 tolerances of tests/test_layers.py's block variants."""
    plain = sj.create_model(name, **overrides)
    assert_close_in_float32(plain, sj.create_model(name, channel_bucket=16, **overrides), overrides)


def assert_close_in_float32(plain, variant, overrides):
    """Eval logits, loss, running statistics and gradients within the float32 tolerances
    of tests/test_layers.py's block variants, from the plain network's variables."""
    variables = sj.init_variables(plain, 0)
    x = _images(overrides)
    ref, got = _everything(plain, variables, x), _everything(variant, variables, x)
    chex.assert_trees_all_close(got["eval"], ref["eval"], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(got["train"], ref["train"], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(got["loss"], ref["loss"], rtol=1e-5)
    chex.assert_trees_all_close(got["stats"], ref["stats"], atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(got["grads"], ref["grads"], atol=1e-4, rtol=1e-4)


def _conv_input_shapes(model, train):
    """The distinct (input shape, kernel shape) pairs of the forward's convolutions and matmuls."""
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: sj.init_variables(model, 0))

    def forward(v):
        return model.apply(v, x, train=train, mutable=["batch_stats"] if train else False)

    jaxpr = jax.make_jaxpr(forward)(variables)
    shapes = set()

    def walk(jx):
        for eqn in jx.eqns:
            if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
                shapes.add(tuple(v.aval.shape for v in eqn.invars))
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jaxpr.jaxpr)
    return shapes


@pytest.mark.parametrize("train", [False, True])
def test_buckets_leave_few_convolution_shapes(train):
    """sparsenet-40-24: 12 units a block read 5–6 widths each; padded to 128 they read 1–2."""
    plain = sj.create_model("sparsenet-40-24", share_stats=train)
    bucketed = plain.clone(channel_bucket=128)
    before, after = _conv_input_shapes(plain, train), _conv_input_shapes(bucketed, train)
    assert len(after) < 0.6 * len(before)
    # The unit convolutions' inputs are all a multiple of 128 wide.
    widths = {lhs[-1] for lhs, rhs in after if len(lhs) == 4 and rhs[:2] == (3, 3)}
    assert widths - {3} <= {128, 256}


def test_padded_convolutions_equal_the_unpadded_ones():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
    wide = pad_channels(x, 8)
    assert wide.shape == (2, 8, 8, 8) and not jnp.any(wide[..., 5:])
    for plain, padded in (
        (sj.layers.make_conv(jnp.float32, jnp.float32)(4, (3, 3), padding=1), None),
        (PointwiseConv(4), PointwiseConv(4, in_features=5)),
    ):
        if padded is None:
            padded = PaddedConv(4, (3, 3), in_features=5, padding=1)
        variables = plain.init(jax.random.key(1), x)
        chex.assert_trees_all_equal_shapes(variables, padded.init(jax.random.key(1), x))
        chex.assert_trees_all_close(
            padded.apply(variables, wide), plain.apply(variables, x), atol=1e-6, rtol=1e-6
        )


def test_channel_bucket_is_checked():
    with pytest.raises(ValueError, match="channel_bucket"):
        sj.create_model("sparsenet-25-6", channel_bucket=-1)
    with pytest.raises(ValueError, match="channel_bucket"):
        sj.create_model("sparsenet-25-6", channel_bucket=1.5)
    with pytest.raises(ValueError, match="pad"):
        pad_channels(jnp.ones((1, 2, 2, 8)), 4)


def test_random_crop_is_the_per_example_dynamic_slice():
    """data.augment's crop (static slices and selects) equals vmap(dynamic_slice), same numbers."""
    from sparsenet_jax.data import augment

    images = jax.random.randint(jax.random.key(0), (16, 32, 32, 3), 0, 256).astype(jnp.uint8)

    def reference(rng, images, pad, flip):  # the crop as it was: vmap of dynamic_slice
        n, h, w, c = images.shape
        crop_key, flip_key = jax.random.split(rng)
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
        out = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(
            padded, offsets
        )
        if not flip:
            return out
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        return jnp.where(mirror[:, None, None, None], out[:, :, ::-1], out)

    for seed, pad, flip in ((0, 4, True), (1, 4, True), (2, 4, False), (3, 2, False), (4, 1, True)):
        rng = jax.random.key(seed)
        got = jax.jit(augment, static_argnames=("pad", "flip"))(rng, images, pad=pad, flip=flip)
        assert got.dtype == jnp.uint8
        chex.assert_trees_all_equal(got, reference(rng, images, pad, flip))
