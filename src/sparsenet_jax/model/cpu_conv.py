"""A k×k 'same' convolution computed as GEMMs: its backward pass over a shifted output
gradient, and optionally its forward pass.

XLA:CPU computes the weight gradient of a small 3×3 convolution through a
generic convolution kernel that reaches 2–16 GFLOP/s on the 2-core
development machine, against 40–70 for the forward pass
(``benchmarks/results/conv-kernels.json``). :func:`shift_conv` has the same
forward pass (``lax.conv_general_dilated``) and the same parameters, but a
:func:`jax.custom_vjp` backward pass written as matrix products:

* the output gradient ``g`` (N, H, W, O) is shifted k·k ways, with zeros
  where a shift leaves the image, and stacked on the channel axis:
  ``G`` (N·H·W, k·k·O). For the narrow outputs of a DenseNet or SparseNet
  unit (O = the growth rate) this is much smaller than shifting the input
  (im2col), which would be k·k·I wide;
* ``dw = xᵀ G``: one GEMM, (I, N·H·W) × (N·H·W, k·k·O);
* ``dx = G w'``: one GEMM, (N·H·W, k·k·O) × (k·k·O, I), reusing ``G``
  (:func:`shift_conv`); or XLA's own transposed convolution
  (:func:`shift_conv_dw`, which changes only the weight gradient).

:func:`gemm_conv` (and :func:`gemm_conv_dw`) compute the forward pass as a GEMM
too: ``x w_all``, (N·H·W, I) × (I, k·k·O), gives every kernel offset's
contribution at once, and the offsets are summed, each shifted into place
(:func:`_forward_gemm`).

Only stride 1 with padding k // 2 on both sides (odd k) is supported; that is
every 3×3 convolution of the CIFAR networks. :class:`ShiftConv` is the Flax
module (parameter ``kernel`` of shape (k, k, I, O), like ``nn.Conv`` without
bias), and :func:`make_shift_conv` a conv factory with the signature of
:func:`sparsenet_jax.model.units.make_conv` that builds it where it applies.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsenet_jax.model.units import PointwiseConv, conv_init, make_conv

__all__ = [
    "CONV_IMPLS",
    "CONV_IMPL_PARTS",
    "DX_IMPLS",
    "FORWARD_IMPLS",
    "ShiftConv",
    "gemm_conv",
    "gemm_conv_dw",
    "make_shift_conv",
    "shift_conv",
    "shift_conv_dw",
    "shifted_stack",
    "supports",
]

DX_IMPLS = ("gemm", "conv")
FORWARD_IMPLS = ("conv", "gemm")

_DIMS = ("NHWC", "HWIO", "NHWC")


def _forward(x: jax.Array, w: jax.Array) -> jax.Array:
    pad = w.shape[0] // 2
    return jax.lax.conv_general_dilated(x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=_DIMS)


def _shifted(t: jax.Array, di: int, dj: int) -> jax.Array:
    """``t`` (N, H, W, C) read at (h + di, w + dj), zero outside the image."""
    zero = jnp.zeros((), t.dtype)
    return jax.lax.pad(t, zero, ((0, 0, 0), (-di, di, 0), (-dj, dj, 0), (0, 0, 0)))


def _forward_gemm(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same convolution as :func:`_forward`, as one GEMM and a shifted sum.

    ``taps = x w_all``, (N·H·W, I) × (I, k·k·O), holds every kernel offset's
    contribution at once; the output sums each offset's slice shifted into
    place. The GEMM is k·k·O wide, where XLA:CPU's direct convolution works on
    O = the growth rate (24) at a time: 1.1–1.8× faster on the 2-core machine
    for the 3×3 shapes of sparsenet-40-24 (``benchmarks/results/cpu-gemm-conv-2026-12-06.md``).
    Products accumulate in float32 at least (bfloat16 inputs too).
    """
    n, h, wd, cin = x.shape
    k, cout = w.shape[0], w.shape[-1]
    p = k // 2
    w_all = w.transpose(2, 0, 1, 3).reshape(cin, k * k * cout)  # column (i, j, o)
    accumulate = jnp.promote_types(x.dtype, jnp.float32)
    taps = jax.lax.dot_general(
        x.reshape(-1, cin), w_all, (((1,), (0,)), ((), ())), preferred_element_type=accumulate
    ).reshape(n, h, wd, k * k, cout)
    out = sum(
        _shifted(taps[:, :, :, i * k + j, :], i - p, j - p) for i in range(k) for j in range(k)
    )
    return out.astype(x.dtype)  # type: ignore[union-attr]


def shifted_stack(g: jax.Array, kernel: int) -> jax.Array:
    """``g`` (N, H, W, O) shifted by every kernel offset: (N, H, W, k·k·O).

    Slice (i, j) holds ``g[n, h - (i - p), w - (j - p)]`` (zero outside the
    image, p = k // 2), so that ``dw[i, j] = Σ x ⊗ slice(i, j)`` and
    ``dx = Σ slice(i, j) · w[i, j]ᵀ``.
    """
    _, h, w, _ = g.shape
    p = kernel // 2
    padded = jnp.pad(g, ((0, 0), (p, p), (p, p), (0, 0)))
    slices = [
        padded[:, 2 * p - i : 2 * p - i + h, 2 * p - j : 2 * p - j + w, :]
        for i in range(kernel)
        for j in range(kernel)
    ]
    return jnp.concatenate(slices, axis=-1)


def _weight_grad(x: jax.Array, stack: jax.Array, k: int, cout: int) -> jax.Array:
    """``dw`` (k, k, I, O) = xᵀ G: one GEMM over the shifted stack ``G`` (N·H·W, k·k·O)."""
    flat_x = x.reshape(-1, x.shape[-1])
    dw = jax.lax.dot_general(flat_x, stack, (((0,), (0,)), ((), ())))  # (I, k·k·O)
    return dw.reshape(x.shape[-1], k, k, cout).transpose(1, 2, 0, 3)


def _bwd_gemm(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    k, _, cin, cout = w.shape
    stack = shifted_stack(g.astype(x.dtype), k)
    stack = stack.reshape(-1, k * k * cout)
    dw = _weight_grad(x, stack, k, cout)
    w_rows = w.transpose(0, 1, 3, 2).reshape(k * k * cout, cin)  # row (i, j, o)
    dx = jax.lax.dot_general(stack, w_rows, (((1,), (0,)), ((), ())))
    return dx.reshape(x.shape).astype(x.dtype), dw.astype(w.dtype)


def _bwd_dw(res: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, w = res
    k, _, _, cout = w.shape
    stack = shifted_stack(g.astype(x.dtype), k).reshape(-1, k * k * cout)
    (dx,) = jax.vjp(lambda x: _forward(x, w), x)[1](g)  # XLA's transposed convolution
    return dx, _weight_grad(x, stack, k, cout).astype(w.dtype)


def _with_backward(
    forward: Callable[[jax.Array, jax.Array], jax.Array],
    backward: Callable[[tuple[jax.Array, jax.Array], jax.Array], tuple[jax.Array, jax.Array]],
    doc: str,
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``forward`` (x, w) → y as a :func:`jax.custom_vjp` whose backward pass is ``backward``."""
    conv = jax.custom_vjp(forward)
    conv.defvjp(lambda x, w: (forward(x, w), (x, w)), backward)
    conv.__doc__ = doc
    return conv


shift_conv = _with_backward(
    _forward,
    _bwd_gemm,
    "``lax`` 'same' convolution (NHWC × HWIO, stride 1, padding k // 2); both gradients GEMMs.",
)
shift_conv_dw = _with_backward(
    _forward,
    _bwd_dw,
    "As :func:`shift_conv`, but only the weight gradient is a GEMM (dx: XLA's convolution).",
)
gemm_conv = _with_backward(
    _forward_gemm,
    _bwd_gemm,
    "As :func:`shift_conv`, with the forward pass a GEMM too (:func:`_forward_gemm`).",
)
gemm_conv_dw = _with_backward(
    _forward_gemm,
    _bwd_dw,
    "As :func:`shift_conv_dw`, with the forward pass a GEMM (:func:`_forward_gemm`).",
)
# (forward, dx) → the convolution: every combination of the two choices.
_CONVS = {
    ("conv", "gemm"): shift_conv,
    ("conv", "conv"): shift_conv_dw,
    ("gemm", "gemm"): gemm_conv,
    ("gemm", "conv"): gemm_conv_dw,
}


def supports(kernel_size: Sequence[int], strides: Any = 1, padding: Any = 0) -> bool:
    """Whether :func:`shift_conv` computes this ``nn.Conv``: square odd kernel, stride 1,
    symmetric padding k // 2 (an int, or "SAME")."""
    k = tuple(kernel_size)
    if len(k) != 2 or k[0] != k[1] or k[0] % 2 != 1 or k[0] == 1:
        return False
    if strides not in (1, (1, 1)):
        return False
    half = k[0] // 2
    return padding in (half, "SAME", ((half, half), (half, half)), [(half, half), (half, half)])


class ShiftConv(nn.Module):
    """``nn.Conv(features, (k, k), padding=k // 2, use_bias=False)`` with the GEMM backward pass
    (and, with ``forward="gemm"``, the GEMM forward pass).

    Same parameter (``kernel``, shape (k, k, in, out)), initialiser and result up
    to rounding; only the HLO differs (see the module docstring).
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    dx: str = "gemm"  # the input gradient: "gemm" (shift_conv) or "conv" (shift_conv_dw)
    forward: str = "conv"  # "conv": XLA's convolution; "gemm": one GEMM and a shifted sum
    kernel_init: Callable[..., Any] = conv_init
    dtype: Any = None
    param_dtype: Any = jnp.float32
    # Use the GEMM backward pass only when the input has at least this many channels per
    # output channel (0: always). The shifted stack is k·k·out wide: it pays where a unit
    # reads a concatenation wider than it writes, not in a ResNet's in = out convolutions.
    min_in_per_out: int = 0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = tuple(self.kernel_size)
        kernel = self.param(
            "kernel", self.kernel_init, (*k, x.shape[-1], self.features), self.param_dtype
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if self.dx not in DX_IMPLS:
            raise ValueError(f"ShiftConv dx {self.dx!r}: expected one of {', '.join(DX_IMPLS)}")
        if self.forward not in FORWARD_IMPLS:
            raise ValueError(
                f"ShiftConv forward {self.forward!r}: expected one of {', '.join(FORWARD_IMPLS)}"
            )
        if x.shape[-1] < self.min_in_per_out * self.features:
            return _forward(x, kernel)  # XLA's own gradients
        return _CONVS[self.forward, self.dx](x, kernel)


# The model's conv_impl choices: XLA's convolutions ("xla"); 3×3 weight gradients as one
# GEMM over the shifted output gradient ("shift-dw": 1.37× faster sparsenet-40-24 train
# steps on a quiet 2-core XLA:CPU, benchmarks/results/cpu-peers-2026-11-28-quiet.md, but
# 1.16× slower resnet-56 ones); all three products as GEMMs ("gemm": the forward pass
# too, and the input gradient reusing the weight gradient's shifted stack); or "auto",
# "gemm" only where the input has at least AUTO_MIN_IN_PER_OUT channels per output
# channel (the CPU default; benchmarks/results/cpu-gemm-conv-2026-12-06.md). Not
# measured on GPU or TPU.
CONV_IMPLS = ("xla", "shift-dw", "gemm", "auto")
# conv_impl → (forward, dx) of its ShiftConv.
CONV_IMPL_PARTS = {"shift-dw": ("conv", "conv"), "gemm": ("gemm", "gemm"), "auto": ("gemm", "gemm")}
AUTO_MIN_IN_PER_OUT = 2


def make_shift_conv(
    dtype: Any,
    param_dtype: Any,
    pointwise_as_dot: bool = True,
    dx: str = "gemm",
    min_in_per_out: int = 0,
    forward: str = "conv",
) -> Callable[..., nn.Module]:
    """``units.make_conv`` with :class:`ShiftConv` (``dx``, ``forward``, ``min_in_per_out``) for every
    convolution it supports.

    1×1 stride-1 convolutions stay :class:`~sparsenet_jax.model.units.PointwiseConv`
    (with ``pointwise_as_dot``); the rest (strided stems, 7×7 with stride 2) ``nn.Conv``.
    """
    conv = functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype
    )

    xla = make_conv(dtype, param_dtype, pointwise_as_dot)

    def build(features: int, kernel_size: Sequence[int], **kwargs: Any) -> nn.Module:
        if "parts" in kwargs:
            # per_input_conv's convolutions of parts are XLA's: ShiftConv has no
            # per-part form, so these lose the GEMM weight gradient (1.86× the
            # sparsenet-40-24 step time on XLA:CPU; tpu-compile-notes.md §10).
            return xla(features, kernel_size, **kwargs)
        extra = set(kwargs) - {"name", "strides", "padding"}
        strides, padding = kwargs.get("strides", 1), kwargs.get("padding", 0)
        name = kwargs.get("name")
        if not extra and supports(kernel_size, strides, padding):
            return ShiftConv(
                features,
                tuple(kernel_size),
                dx,
                dtype=dtype,
                param_dtype=param_dtype,
                forward=forward,
                min_in_per_out=min_in_per_out,
                name=name,
            )
        plain_1x1 = (
            tuple(kernel_size) == (1, 1)
            and not extra
            and strides in (1, (1, 1))
            and padding in (0, "VALID", "SAME")
        )
        if pointwise_as_dot and plain_1x1:
            return PointwiseConv(features, dtype=dtype, param_dtype=param_dtype, name=name)
        return conv(features, kernel_size, **kwargs)

    return build
