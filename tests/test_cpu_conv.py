"""The GEMM convolutions equal lax.conv: forward, input and weight gradients."""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsenet_jax.model import cpu_conv
from sparsenet_jax.model.units import PointwiseConv, make_conv


def _lax_conv(x: jax.Array, w: jax.Array) -> jax.Array:
    pad = w.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _x64(on: bool) -> Any:
    """float64 on (jax 0.10: ``jax.enable_x64``; jax 0.7: ``jax.experimental.enable_x64``)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(on)
    from jax import experimental

    return getattr(experimental, "enable_x64")(on)  # noqa: B009 (absent from jax 0.10's stubs)


def _values_and_grads(fn: Any, x: jax.Array, w: jax.Array, g: jax.Array) -> tuple[Any, ...]:
    y, vjp = jax.vjp(fn, x, w)
    return (y, *vjp(g))


def _rel(a: Any, b: Any) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


CONVS = [cpu_conv.shift_conv, cpu_conv.shift_conv_dw, cpu_conv.gemm_conv, cpu_conv.gemm_conv_dw]


@pytest.mark.parametrize("conv", CONVS, ids=lambda conv: conv.__name__)
@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize(("dtype", "tol"), [("float64", 1e-10), ("float32", 1e-5)])
def test_shift_conv_matches_lax_conv(conv: Any, kernel: int, dtype: str, tol: float) -> None:
    rng = np.random.default_rng(kernel)
    shape_x, shape_w, shape_g = (3, 7, 6, 5), (kernel, kernel, 5, 4), (3, 7, 6, 4)
    with _x64(dtype == "float64"):
        x, w, g = (jnp.asarray(rng.standard_normal(s), dtype) for s in (shape_x, shape_w, shape_g))
        ours = _values_and_grads(conv, x, w, g)
        theirs = _values_and_grads(_lax_conv, x, w, g)
        for name, a, b in zip(("y", "dx", "dw"), ours, theirs, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, name
            assert _rel(a, b) <= tol, (name, _rel(a, b))


def test_shift_conv_second_use_and_jit() -> None:
    """Under jit and inside a larger function (the gradient flows through a ReLU)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 6, 3)), jnp.float32)

    def loss(conv: Any, x: jax.Array, w: jax.Array) -> jax.Array:
        return jnp.sum(jax.nn.relu(conv(x, w)) ** 2)

    theirs = jax.grad(lambda x, w: loss(_lax_conv, x, w), (0, 1))(x, w)
    for conv in (cpu_conv.shift_conv, cpu_conv.gemm_conv):
        ours = jax.jit(jax.grad(lambda x, w, conv=conv: loss(conv, x, w), (0, 1)))(x, w)
        for a, b in zip(ours, theirs, strict=True):
            assert _rel(a, b) <= 1e-5


def test_gemm_forward_shifts_each_offset_into_place() -> None:
    """A kernel that is one at a single offset (i, j) copies the input shifted by (i−1, j−1),
    with zeros where the shift leaves the image: the direction and the border of each tap."""
    x = jnp.arange(1.0, 1.0 + 2 * 5 * 4).reshape(2, 5, 4, 1)
    for i in range(3):
        for j in range(3):
            w = jnp.zeros((3, 3, 1, 1)).at[i, j].set(1.0)
            want = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))[:, i : i + 5, j : j + 4]
            np.testing.assert_array_equal(cpu_conv.gemm_conv(x, w), want)


def test_gemm_forward_accumulates_bfloat16_in_float32() -> None:
    """bfloat16 in and out, but the nine offsets are summed in float32: as close to the
    float32 result as XLA's own bfloat16 convolution is."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 32)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 32, 8)), jnp.float32)
    exact = _lax_conv(x, w)
    ours = cpu_conv.gemm_conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    xla = _lax_conv(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert ours.dtype == jnp.bfloat16
    assert _rel(ours.astype(jnp.float32), exact) <= 1.5 * _rel(xla.astype(jnp.float32), exact)


@pytest.mark.parametrize("dx", cpu_conv.DX_IMPLS)
@pytest.mark.parametrize("forward", cpu_conv.FORWARD_IMPLS)
def test_shift_conv_module_is_nn_conv(dx: str, forward: str) -> None:
    """Same parameter tree and initial values as ``nn.Conv``, same output and gradient."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 5, 4)), jnp.float32)
    ours = cpu_conv.ShiftConv(6, (3, 3), dx, forward)
    theirs = nn.Conv(6, (3, 3), padding=1, use_bias=False, kernel_init=cpu_conv.conv_init)
    params = ours.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(
        jnp.shape, theirs.init(jax.random.key(0), x)
    )
    np.testing.assert_array_equal(
        params["params"]["kernel"], theirs.init(jax.random.key(0), x)["params"]["kernel"]
    )
    assert _rel(ours.apply(params, x), theirs.apply(params, x)) <= 1e-6
    grads = [
        jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x))))(params) for m in (ours, theirs)
    ]
    assert _rel(grads[0]["params"]["kernel"], grads[1]["params"]["kernel"]) <= 1e-5
    with pytest.raises(ValueError, match="expected one of gemm, conv"):
        cpu_conv.ShiftConv(6, (3, 3), "fft").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="forward 'fft': expected one of conv, gemm"):
        cpu_conv.ShiftConv(6, (3, 3), forward="fft").init(jax.random.key(0), x)


def test_make_shift_conv_picks_what_it_supports() -> None:
    build = cpu_conv.make_shift_conv(None, jnp.float32)
    reference = make_conv(None, jnp.float32)
    assert isinstance(build(4, (3, 3), padding=1, name="a"), cpu_conv.ShiftConv)
    assert cpu_conv.make_shift_conv(None, jnp.float32, dx="conv")(4, (3, 3), padding=1).dx == "conv"
    assert isinstance(build(4, (1, 1), name="b"), PointwiseConv)
    assert isinstance(reference(4, (1, 1), name="b"), PointwiseConv)
    strided = build(4, (7, 7), strides=(2, 2), padding=3, name="c")
    assert isinstance(strided, nn.Conv) and not isinstance(strided, cpu_conv.ShiftConv)
    assert isinstance(build(4, (3, 3), padding=0), nn.Conv)  # 'valid': not supported
    assert type(cpu_conv.make_shift_conv(None, jnp.float32, False)(4, (1, 1))) is nn.Conv
    assert cpu_conv.supports((3, 3), 1, "SAME") and not cpu_conv.supports((3, 3), 2, 1)
    assert not cpu_conv.supports((3, 5), 1, 1) and not cpu_conv.supports((1, 1), 1, 0)


def test_shifted_stack_offsets() -> None:
    g = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    stack = cpu_conv.shifted_stack(g, 3)
    assert stack.shape == (2, 4, 4, 9)
    # slice (i, j) = g[h - (i - 1), w - (j - 1)]: the centre slice is g itself
    np.testing.assert_array_equal(stack[..., 4], g[..., 0])
    np.testing.assert_array_equal(stack[:, :-1, :-1, 0], g[:, 1:, 1:, 0])  # (i, j) = (0, 0)
    np.testing.assert_array_equal(stack[:, -1, :, 0], 0.0)
    np.testing.assert_array_equal(stack[:, 1:, 1:, 8], g[:, :-1, :-1, 0])  # (i, j) = (2, 2)


# "auto" is the CPU default; "shift-dw" and "gemm" options, in the slow job.
@pytest.mark.parametrize(
    "impl",
    [pytest.param(impl, marks=pytest.mark.slow) for impl in ("shift-dw", "gemm")] + ["auto"],
)
def test_conv_impl_shift_dw_is_the_same_network(impl: str):
    """The model option: same parameters, same logits and gradients as the XLA convolutions."""
    import sparsenet_jax as sj

    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    plain = sj.create_model("sparsenet-13-6")
    shifted = sj.create_model("sparsenet-13-6", conv_impl=impl)
    variables = sj.init_variables(plain, seed=0)
    chex.assert_trees_all_equal_shapes(variables, sj.init_variables(shifted, seed=0))

    def loss(params, model):
        out, _ = model.apply(
            {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out**2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)  # one program, not op by op
    want = grad(variables["params"], plain)
    got = grad(variables["params"], shifted)
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        sj.create_model("sparsenet-13-6", conv_impl="fast")


def _dots(module: nn.Module, x: jax.Array) -> tuple[int, int]:
    """How many dot_generals the forward pass of ``module`` at ``x`` holds, and its
    gradient (the GEMM convolutions have some; XLA's convolution none)."""
    params = module.init(jax.random.key(0), x)
    grad = jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2))
    forward = str(jax.make_jaxpr(module.apply)(params, x)).count("dot_general")
    return forward, str(jax.make_jaxpr(grad)(params)).count("dot_general")


@pytest.mark.parametrize(("cin", "gemm"), [(4, False), (7, False), (8, True), (12, True)])
def test_auto_takes_the_gemm_only_for_inputs_twice_as_wide_as_the_output(cin, gemm) -> None:
    """conv_impl="auto" (the CPU default): the GEMM convolution (forward pass and both
    gradients) where the input has at least two channels per output channel (a unit
    reading a concatenation), XLA's convolution where in ≈ out (a ResNet's convolutions,
    which the GEMMs made slower). Same results either way."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 6, 6, cin)), jnp.float32)
    forward, dx = cpu_conv.CONV_IMPL_PARTS["auto"]
    auto = cpu_conv.make_shift_conv(None, jnp.float32, dx=dx, min_in_per_out=2, forward=forward)(
        4, (3, 3), padding=1
    )
    forward_dots, grad_dots = _dots(auto, x)
    assert (forward_dots > 0) is gemm and (grad_dots > 0) is gemm
    theirs = nn.Conv(4, (3, 3), padding=1, use_bias=False, kernel_init=cpu_conv.conv_init)
    params = auto.init(jax.random.key(0), x)
    grads = [
        jax.grad(lambda p, m=m: jnp.sum(jnp.sin(m.apply(p, x))))(params) for m in (auto, theirs)
    ]
    # float32 rounding: the GEMM forward pass sums the products in another order
    chex.assert_trees_all_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
