from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from sparsenet_jax.model.block import AggregationBlock, BasicUnit, make_conv, make_norm
from sparsenet_jax.model.schedule import Schedule


@pytest.fixture(scope="module")
def tiny():
    model = sj.create_model("sparsenet-25-6")
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = sj.init_variables(model, 0, x.shape)
    return model, variables, x


def _train_apply(model, variables, x, **kwargs):
    fn = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=["batch_stats"], **kwargs))
    return fn(variables, x)


def test_output_shape_and_dtype(tiny):
    model, variables, x = tiny
    logits = jax.jit(model.apply)(variables, x)
    chex.assert_shape(logits, (4, 10))
    assert logits.dtype == jnp.float32
    logits_train, state = _train_apply(model, variables, x)
    chex.assert_shape(logits_train, (4, 10))
    assert jax.tree_util.tree_structure(state["batch_stats"]) == jax.tree_util.tree_structure(
        variables["batch_stats"]
    )


def test_jit_matches_eager_and_does_not_retrace():
    # Eager (op-by-op) Flax compiles every primitive on its own: keep the net small.
    model = sj.create_model("sparsenet-10-4")
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = sj.init_variables(model, 0)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def forward(v, images):
        return model.apply(v, images)

    eager = model.apply(variables, x)
    first = forward(variables, x)
    second = forward(variables, x + 1.0)  # same shapes: no retrace
    chex.assert_trees_all_close(first, eager, atol=1e-5, rtol=1e-5)
    assert not np.allclose(first, second)


def test_equal_networks_share_one_init_program():
    """The trainer initialises its network for the shapes and again per seed: an equal
    module (a new object) reuses the first one's traced and compiled init."""
    from sparsenet_jax.model import network

    before = network._jitted_init._cache_size()
    # 7 classes: a network no other test initialises, so this test makes its program.
    first = sj.init_variables(sj.create_model("sparsenet-10-4", num_classes=7), 0)
    second = sj.init_variables(sj.create_model("sparsenet-10-4", num_classes=7), 1)
    assert network._jitted_init._cache_size() - before == 1
    assert not np.array_equal(
        first["params"]["conv0"]["kernel"], second["params"]["conv0"]["kernel"]
    )
    # A module that cannot be hashed (a list where a tuple belongs) still initialises, alike.
    listed = sj.create_model("sparsenet-10-4", num_classes=7, block_sizes=[2, 2, 2])
    chex.assert_trees_all_equal(sj.init_variables(listed, 0), first)


def test_bf16_compute_keeps_fp32_params(tiny):
    _, variables, x = tiny
    model16 = sj.create_model("sparsenet-25-6", dtype=jnp.bfloat16)
    variables16 = jax.eval_shape(lambda: model16.init(jax.random.key(0), x))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(variables16))
    ref = jax.jit(sj.create_model("sparsenet-25-6").apply)(variables, x)
    out = jax.jit(model16.apply)(variables, x)
    assert out.dtype == jnp.float32
    scale = float(jnp.abs(ref).max())
    assert float(jnp.abs(out - ref).max()) <= 0.05 * scale
    assert float(jnp.abs(out - ref).max()) > 0.0  # really computed in bf16


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((32, 32, 3), "rank 4"),
        ((2, 32, 32, 1), "3 input channels"),
        ((2, 3, 32, 32), "3 input channels"),
        ((2, 2, 2, 3), "too small"),
    ],
)
def test_bad_input_shapes(tiny, shape, match):
    model, variables, _ = tiny
    with pytest.raises(ValueError, match=match):
        model.apply(variables, jnp.zeros(shape))


def test_dropout_needs_rng_and_changes_train_output():
    model = sj.create_model("sparsenet-13-6", dropout_rate=0.5)
    x = jnp.ones((2, 32, 32, 3))
    variables = sj.init_variables(model, 0, x.shape)
    fn = jax.jit(
        lambda v, a, r: model.apply(v, a, train=True, mutable=["batch_stats"], rngs={"dropout": r})[
            0
        ]
    )
    a, b = fn(variables, x, jax.random.key(1)), fn(variables, x, jax.random.key(2))
    assert not np.allclose(a, b)
    evaluate = jax.jit(model.apply)
    chex.assert_trees_all_close(evaluate(variables, x), evaluate(variables, x))


def test_dense_sum_is_a_running_sum_and_equals_the_generic_sum():
    """ResNet (dense + sum) uses one addition a layer, and computes Σ of all earlier outputs."""
    conv, norm = make_conv(jnp.float32, jnp.float32), make_norm(False, jnp.float32, jnp.float32)

    def unit(features, name):
        return BasicUnit(features, conv=conv, norm=norm, name=name)

    block = AggregationBlock(5, 8, Schedule("dense"), "sum", unit)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
    variables = jax.jit(block.init)(jax.random.key(1, impl="rbg"), x)
    out = jax.jit(block.apply)(variables, x)

    # The same block evaluated by the definition: layer l reads x_0 + … + x_{l-1}.
    outputs = [x]
    for layer in range(1, 6):
        sub = {
            "params": variables["params"][f"block-{layer}"],
            "batch_stats": variables["batch_stats"][f"block-{layer}"],
        }
        outputs.append(jax.jit(BasicUnit(8, conv=conv, norm=norm).apply)(sub, sum(outputs)))
    chex.assert_trees_all_close(out, sum(outputs), atol=1e-5, rtol=1e-5)

    # One add per layer in the traced graph, not l of them.
    jaxpr = jax.make_jaxpr(lambda v, a: block.apply(v, a))(variables, x)
    adds_of_block_shape = [
        e
        for e in jaxpr.jaxpr.eqns
        if e.primitive.name == "add" and e.outvars[0].aval.shape == x.shape
    ]
    convs = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    assert len(convs) == 10
    assert len(adds_of_block_shape) <= 5 + 5 * 4  # BN adds included; a naive Σ adds 10 more


def test_sum_block_needs_equal_widths():
    conv, norm = make_conv(jnp.float32, jnp.float32), make_norm(False, jnp.float32, jnp.float32)
    block = AggregationBlock(
        2,
        8,
        Schedule("sparse"),
        "sum",
        lambda f, name: BasicUnit(f, conv=conv, norm=norm, name=name),
    )
    with pytest.raises(ValueError, match="as wide as the block input"):
        block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))


@pytest.mark.parametrize("name", ["resnet-56", "sparse-resnet-56", "densenet-bc-100-12"])
def test_other_families_run(name):
    model = sj.create_model(name, num_classes=7)
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    out = jax.eval_shape(lambda v: model.apply(v, x), variables)
    assert out.shape == (2, 7)


def test_imagenet_stem_shapes():
    model = sj.create_model("sparsenet-121-32", num_classes=1000)
    x = jnp.ones((1, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert jax.eval_shape(lambda v: model.apply(v, x), variables).shape == (1, 1000)
    with pytest.raises(ValueError, match="too small"):
        model.apply(variables, jnp.ones((1, 4, 4, 3)))


def test_bad_module_config():
    with pytest.raises(ValueError, match="one entry per block"):
        sj.SparseNet(block_sizes=(2, 2), growth_rates=(4,))
    with pytest.raises(ValueError, match="aggregation"):
        sj.SparseNet(block_sizes=(2,), growth_rates=(4,), aggregation="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stem must be as wide"):
        sj.SparseNet(block_sizes=(2,), growth_rates=(4,), aggregation="sum", stem_channels=8)


@pytest.mark.parametrize(
    ("name", "overrides", "shape"),
    [
        ("sparsenet-40-24", {}, (1, 32, 32, 3)),
        ("resnet-56", {"in_channels": 1}, (1, 32, 32, 1)),
        ("densenet-121", {}, (1, 224, 224, 3)),
        ("sparsenet-40-24", {"stem": "imagenet"}, (1, 224, 224, 3)),
    ],
)
def test_default_input_shape(name, overrides, shape):
    model = sj.create_model(name, **overrides)
    assert model.default_input_shape == shape
    assert model.default_input_size == shape[1] >= model.min_input_size


@pytest.mark.parametrize(
    ("name", "dtype", "numbers"),
    [
        ("sparsenet-13-6", jnp.uint8, ["0.4914", "0.5071"]),  # CIFAR-10 and CIFAR-100 means
        ("sparsenet-13-6", jnp.int32, ["0.247", "0.2673"]),  # their stds
        ("densenet-121", jnp.uint8, ["(0.485, 0.456, 0.406)", "(0.229, 0.224, 0.225)"]),
    ],
)
def test_integer_images_are_refused_with_the_normalisation(name, dtype, numbers):
    model = sj.create_model(name)
    shape = model.default_input_shape
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
    pixels = jax.ShapeDtypeStruct(shape, dtype)
    with pytest.raises(TypeError, match="expected float images") as err:
        jax.eval_shape(model.apply, variables, pixels)  # refused at trace time
    assert "/ 255" in str(err.value)
    for number in numbers:
        assert number in str(err.value)


def test_digits_model_names_the_digits_statistics():
    model = sj.create_model("sparsenet-13-6", in_channels=1)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1))))
    with pytest.raises(TypeError, match=r"digits: mean \(0\.3058,\)"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 32, 32, 1), jnp.uint8))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_float_images_of_any_precision_still_work(tiny, dtype):
    model, variables, x = tiny
    out = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(x.shape, dtype))
    assert out.shape == (4, 10) and out.dtype == jnp.float32
