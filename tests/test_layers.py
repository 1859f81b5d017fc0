"""The scanned and rematerialised blocks compute what the plain unrolled block computes."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import pytest

import sparsenet_jax as sj
from sparsenet_jax.model.schedule import Schedule, segments

# The equivalence cases beyond one network each run in the slow job
# (`python -m pytest -m slow`): the default run keeps a sparse network for every
# switch, on two small blocks (and a dense one for the 1×1 matmuls); the slow job
# adds the three-block, summing, dense and deeper ones.
SLOW = pytest.mark.slow
TWO_SMALL_BLOCKS = {"block_sizes": (5, 4), "growth_rates": (6, 6)}


def _float64():
    """A context in which jax computes in float64.

    jax 0.10 has only ``jax.enable_x64``; jax 0.7 (Colab's TPU image, tested by
    .ci/colab_pins.sh) has only ``jax.experimental.enable_x64``.
    """
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64

    return enable_x64(True)


def square_loss(model, variables, x):
    """params → (sum of the train-mode logits squared, (logits, new running statistics))."""

    def loss(params):
        out, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(3)},
        )
        return jnp.sum(out**2), (out, updates["batch_stats"])

    return loss


def _eval_train_grad(model, variables, x):
    def loss(params, stats):
        out, updates = model.apply(
            {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out**2), updates["batch_stats"]

    logits = jax.jit(model.apply)(variables, x)
    (value, stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"], variables["batch_stats"]
    )
    return logits, value, stats, grads


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("sparsenet-25-6", TWO_SMALL_BLOCKS),
        pytest.param("sparsenet-25-6", {}, marks=SLOW),
        pytest.param("sparsenet-bc-46-6", {}, marks=SLOW),
        pytest.param("sparsenet-25-6", {"base": 3}, marks=SLOW),
        pytest.param("resnet-20", {}, marks=SLOW),
        pytest.param("sparse-resnet-20", {}, marks=SLOW),
        pytest.param("densenet-13-6", {}, marks=SLOW),
    ],
)
@pytest.mark.parametrize(
    "variant",
    [
        {"block_impl": "scan"},
        {"remat": True},
        {"block_impl": "scan", "remat": True},
    ],
)
def test_variants_match_the_plain_block(name, overrides, variant):
    plain = sj.create_model(name, **overrides)
    other = sj.create_model(name, **overrides, **variant)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = sj.init_variables(plain, 0)
    # One parameter layout for every variant: checkpoints and the converter carry over.
    chex.assert_trees_all_equal_structs(variables, sj.init_variables(other, 0))
    ref, got = _eval_train_grad(plain, variables, x), _eval_train_grad(other, variables, x)
    chex.assert_trees_all_close(got[0], ref[0], atol=1e-5, rtol=1e-5)  # eval logits
    chex.assert_trees_all_close(got[1], ref[1], rtol=1e-5)  # train loss
    chex.assert_trees_all_close(got[2], ref[2], atol=1e-5, rtol=1e-5)  # new batch stats
    chex.assert_trees_all_close(got[3], ref[3], atol=1e-4, rtol=1e-4)  # gradients


@SLOW  # the scanned block is an option no backend uses by default
def test_scan_with_dropout_runs_and_differs_by_rng():
    model = sj.create_model("sparsenet-25-6", block_impl="scan", dropout_rate=0.3)
    x = jnp.ones((2, 32, 32, 3))
    variables = sj.init_variables(model, 0)
    fn = jax.jit(
        lambda r: model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": r}
        )[0]
    )
    assert not jnp.allclose(fn(jax.random.key(1)), fn(jax.random.key(2)))


def test_segments_cover_layers_with_few_runs():
    for n in (1, 7, 12, 16, 66):
        segs = segments(Schedule("sparse"), n, False)
        covered = [layer for s in segs for layer in range(s.first, s.last + 1)]
        assert covered == list(range(1, n + 1))
        assert len(segs) <= 2 * n.bit_length()  # O(log n) runs
        for s in segs:
            for layer in range(s.first, s.last + 1):
                assert tuple(layer - i for i in Schedule("sparse").inputs(layer)) == s.offsets
    assert [s.length for s in segments(Schedule("sparse"), 12, True)] == [1, 2, 4, 5]


@SLOW
def test_scan_graph_is_smaller():
    """The scanned forward has O(log n) convolutions in its graph instead of one a layer."""
    x = jnp.ones((1, 32, 32, 3))

    def conv_count(model):
        variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
        jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x))(variables)
        return str(jaxpr).count("conv_general_dilated")

    # nn.Conv for the 1×1 convolutions too, so that every unit has two convolution ops.
    plain = conv_count(sj.create_model("sparsenet-bc-400-12", pointwise_as_dot=False))
    scanned = conv_count(
        sj.create_model("sparsenet-bc-400-12", block_impl="scan", pointwise_as_dot=False)
    )
    runs = len(segments(Schedule("sparse"), 66, False))
    assert runs == 13
    assert plain == 1 + 2 * 3 * 66 + 2  # stem, 2 convs a unit, transitions
    assert scanned == 1 + 2 * 3 * runs + 2  # one unit body a run


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        pytest.param("sparsenet-bc-46-6", {}, marks=SLOW),
        # bottleneck units: 2 of 3 are 1×1 (21 s)
        pytest.param("sparse-resnet-164", {"block_sizes": (2, 2, 2)}, marks=SLOW),
        ("densenet-13-6", {}),  # 1×1 only in the transitions
    ],
)
def test_pointwise_as_dot_matches_nn_conv(name, overrides):
    """1×1 convolutions as matmuls: the same numbers as nn.Conv, and really no 1×1 conv ops.

    Compared in float64: a different summation order is the only difference,
    and float32 noise through a deep train-mode BatchNorm stack reaches ~2% of
    a gradient leaf at batch 4, which would hide a real error.
    """
    with _float64():
        kwargs = {"dtype": jnp.float64, "param_dtype": jnp.float64, **overrides}
        as_dot = sj.create_model(name, **kwargs)
        as_conv = sj.create_model(name, pointwise_as_dot=False, **kwargs)
        x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3), jnp.float64)
        variables = sj.init_variables(as_conv, 0)
        chex.assert_trees_all_equal_structs(variables, sj.init_variables(as_dot, 0))
        chex.assert_trees_all_close(variables, sj.init_variables(as_dot, 0))  # same init
        ref, got = _eval_train_grad(as_conv, variables, x), _eval_train_grad(as_dot, variables, x)
        chex.assert_trees_all_close(got, ref, atol=1e-9, rtol=1e-9)

        def ops(model):
            return str(jax.make_jaxpr(lambda v: model.apply(v, x))(variables))

        one_by_one = sum(
            1
            for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
            if leaf.shape[:2] == (1, 1)
        )
        assert one_by_one > 0
        count = ops(as_conv).count("conv_general_dilated")
        assert ops(as_dot).count("conv_general_dilated") == count - one_by_one


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        # Two small blocks: the same code paths in under half the time.
        ("sparsenet-25-6", TWO_SMALL_BLOCKS),
        pytest.param("sparsenet-25-6", {}, marks=SLOW),
        pytest.param("sparsenet-bc-46-6", {}, marks=SLOW),
        pytest.param("densenet-13-6", {}, marks=SLOW),
        pytest.param("sparsenet-25-6", {**TWO_SMALL_BLOCKS, "remat": True}, marks=SLOW),
        pytest.param("sparsenet-25-6", {**TWO_SMALL_BLOCKS, "dropout_rate": 0.2}, marks=SLOW),
    ],
)
def test_shared_batch_statistics_match_per_reader_statistics(name, overrides):
    """Each output's BatchNorm statistics computed once and shared by its readers: the same
    logits, loss, running averages and gradients as every reader computing its own (float64,
    so that a wrong statistic could not hide in float32 noise)."""
    with _float64():
        model = sj.create_model(name, dtype=jnp.float64, param_dtype=jnp.float64, **overrides)
        x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3), jnp.float64)
        variables = sj.init_variables(model, 0)

        per_reader, shared = (
            jax.jit(jax.value_and_grad(square_loss(m, variables, x), has_aux=True))(
                variables["params"]
            )
            for m in (model.clone(share_stats=share) for share in (False, True))
        )
        chex.assert_trees_all_close(shared, per_reader, atol=1e-10, rtol=1e-10)


def _reduced_elements(jaxpr):
    """Elements summed by every reduce_sum in ``jaxpr`` and the jaxprs it calls."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "reduce_sum":
            total += eqn.invars[0].aval.size
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _reduced_elements(inner)
    return total


def test_shared_statistics_skip_the_readers_reductions():
    """With sharing, a unit's first BatchNorm reduces nothing: its statistics come from the
    outputs it reads, each reduced once over its own channels."""
    x = jnp.ones((2, 32, 32, 3))
    model = sj.create_model("densenet-22-6")
    variables = sj.init_variables(model, 0)

    def reduced(share):
        net = model.clone(share_stats=share)
        jaxpr = jax.make_jaxpr(lambda v: net.apply(v, x, train=True, mutable=["batch_stats"]))(
            variables
        )
        return _reduced_elements(jaxpr.jaxpr)

    # DenseNet: unit l reads l outputs, so per-reader statistics reduce O(n²) channels
    # (measured: 0.42 of the elements at 6 units a block, 0.24 at 12).
    assert reduced(True) < 0.5 * reduced(False)
