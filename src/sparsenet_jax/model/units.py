"""Units and the transition: the convolutional pieces a block is made of.

Layout is NHWC throughout. Every unit is pre-activation (BN → ReLU → conv), as
in DenseNet and the pre-activation ResNet. Parameter names follow the official
PyTorch model where one exists (``bn1``/``conv1``/``bn2``/``conv2``), which
keeps :mod:`sparsenet_jax.model.convert` a plain renaming.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsenet_jax.model.norms import Stats

UnitKind = Literal["plain", "bottleneck", "basic", "res_bottleneck"]
UNIT_KINDS: tuple[str, ...] = ("plain", "bottleneck", "basic", "res_bottleneck")

# normal(0, sqrt(2 / (kh * kw * out_channels))), the official initialisation.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ModuleDef = Any


class PointwiseConv(nn.Module):
    """A 1×1, stride-1 convolution written as one matmul over the channel axis.

    Same parameter (``kernel``, shape ``(1, 1, in, out)``), initialiser and
    result as ``nn.Conv(features, (1, 1), use_bias=False)``; only the HLO
    differs: a ``dot_general`` instead of a ``convolution``. XLA:CPU runs
    the gradient of a 1×1 convolution through its generic convolution
    kernels, several times slower than the matmul it is (see
    ``benchmarks/RESULTS.md``). On GPU and TPU both are expected to become the
    same GEMM (not measured: the GPU table times whole steps, not this choice).
    """

    features: int
    kernel_init: Callable[..., Any] = conv_init
    dtype: Any = None
    param_dtype: Any = jnp.float32
    in_features: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        rows = x.shape[-1] if self.in_features is None else self.in_features
        kernel = self.param(
            "kernel", self.kernel_init, (1, 1, rows, self.features), self.param_dtype
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        kernel = _pad_rows(kernel, x.shape[-1])
        return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


def pad_channels(x: jax.Array, width: int) -> jax.Array:
    """``x`` with zero channels appended up to ``width`` (unchanged if it is as wide)."""
    extra = width - x.shape[-1]
    if extra < 0:
        raise ValueError(f"cannot pad {x.shape[-1]} channels down to {width}")
    return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def _pad_rows(kernel: jax.Array, rows: int) -> jax.Array:
    """An HWIO ``kernel`` with zero input rows appended up to ``rows``."""
    extra = rows - kernel.shape[-2]
    if extra < 0:
        raise ValueError(f"the input has {rows} channels, the kernel {kernel.shape[-2]} rows")
    if extra == 0:
        return kernel
    return jnp.pad(kernel, [(0, 0)] * (kernel.ndim - 2) + [(0, extra), (0, 0)])


class PaddedConv(nn.Module):
    """``nn.Conv(features, kernel_size, padding=..., use_bias=False)`` for an input padded with zero channels.

    The kernel parameter has ``in_features`` input rows (the shape, name and
    initial values ``nn.Conv`` gives it on an ``in_features``-wide input); the
    forward pass appends zero rows up to the input's width. The padded input
    channels are zero and meet zero rows, so the result is the unpadded
    convolution's, and the kernel's gradient is the padded one's first rows.
    Lets units whose inputs differ in width run convolutions of one shape
    (``AggregationBlock.channel_bucket``).
    """

    features: int
    kernel_size: Sequence[int]
    in_features: int
    padding: int = 0
    kernel_init: Callable[..., Any] = conv_init
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (*self.kernel_size, self.in_features, self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        kernel = _pad_rows(kernel, x.shape[-1])
        pads = [(self.padding, self.padding)] * len(self.kernel_size)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (1,) * len(self.kernel_size),
            pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


def make_conv(
    dtype: Any, param_dtype: Any, pointwise_as_dot: bool = True
) -> Callable[..., nn.Module]:
    """A conv factory, ``conv(features, kernel_size, **kwargs)``, for the units.

    With ``pointwise_as_dot``, 1×1 stride-1 unpadded convolutions are built as
    :class:`PointwiseConv` (a matmul); everything else is ``nn.Conv``.
    ``in_features=n`` (stride 1, integer padding) builds a convolution whose
    kernel has ``n`` input rows for an input that may be wider with zero
    channels: :class:`PointwiseConv` or :class:`PaddedConv`.
    """
    conv = functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype
    )

    def build(
        features: int, kernel_size: Sequence[int], in_features: int | None = None, **kwargs: Any
    ) -> nn.Module:
        plain_1x1 = (
            tuple(kernel_size) == (1, 1)
            and set(kwargs) <= {"name", "strides", "padding"}
            and kwargs.get("strides", 1) in (1, (1, 1))
            and kwargs.get("padding", 0) in (0, "VALID", "SAME")
        )
        if pointwise_as_dot and plain_1x1:
            return PointwiseConv(
                features,
                dtype=dtype,
                param_dtype=param_dtype,
                in_features=in_features,
                name=kwargs.get("name"),
            )
        if in_features is not None:
            if set(kwargs) - {"name", "padding"} or not isinstance(kwargs.get("padding", 0), int):
                raise ValueError(f"in_features needs stride 1 and integer padding, got {kwargs}")
            return PaddedConv(
                features,
                tuple(kernel_size),
                in_features,
                dtype=dtype,
                param_dtype=param_dtype,
                **kwargs,
            )
        return conv(features, kernel_size, **kwargs)

    return build


class _UnitBase(nn.Module):
    """Shared fields of the units: ``features`` is the unit's output width.

    ``pad_to`` (0: off): after the first BatchNorm and ReLU, the input gets zero
    channels up to that width, and the first convolution's kernel zero rows
    (in the forward pass; the parameters keep their shapes). The result is the
    same; units with inputs of different widths then run a first convolution of
    one shape, which the TPU compiler generates once (``channel_bucket``).
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    dropout_rate: float = 0.0
    pad_to: int = 0

    def _padded(self, x: jax.Array) -> tuple[jax.Array, dict[str, int]]:
        """``x`` padded to ``pad_to`` channels, and the first conv's ``in_features`` if it was."""
        if not self.pad_to or self.pad_to == x.shape[-1]:
            return x, {}
        return pad_channels(x, self.pad_to), {"in_features": x.shape[-1]}

    def _drop(self, x: jax.Array, train: bool) -> jax.Array:
        if self.dropout_rate > 0.0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return x


class PlainUnit(_UnitBase):
    """BN → ReLU → conv 3×3 (DenseNet/SparseNet basic composite function).

    Every unit takes ``stats``, its input's batch statistics if the block has
    them (see :mod:`sparsenet_jax.model.norms`), for its first BatchNorm.
    """

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, stats: Stats | None = None) -> jax.Array:
        x, padded = self._padded(nn.relu(self.norm(name="bn1")(x, stats=stats)))
        x = self.conv(self.features, (3, 3), padding=1, name="conv1", **padded)(x)
        return self._drop(x, train)


class BottleneckUnit(_UnitBase):
    """BN → ReLU → conv 1×1 (4k) → BN → ReLU → conv 3×3 (k): the "B" of DenseNet-BC."""

    bottleneck_factor: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, stats: Stats | None = None) -> jax.Array:
        x, padded = self._padded(nn.relu(self.norm(name="bn1")(x, stats=stats)))
        x = self.conv(self.bottleneck_factor * self.features, (1, 1), name="conv1", **padded)(x)
        x = self._drop(x, train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv2")(x)
        return self._drop(x, train)


class BasicUnit(_UnitBase):
    """Pre-activation ResNet basic unit: (BN → ReLU → conv 3×3) × 2."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, stats: Stats | None = None) -> jax.Array:
        x, padded = self._padded(nn.relu(self.norm(name="bn1")(x, stats=stats)))
        x = self.conv(self.features, (3, 3), padding=1, name="conv1", **padded)(x)
        x = self._drop(x, train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv2")(x)
        return self._drop(x, train)


class ResBottleneckUnit(_UnitBase):
    """Pre-activation ResNet bottleneck: 1×1 (w/4) → 3×3 (w/4) → 1×1 (w), each BN → ReLU first."""

    bottleneck_factor: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, stats: Stats | None = None) -> jax.Array:
        inner = self.features // self.bottleneck_factor
        x, padded = self._padded(nn.relu(self.norm(name="bn1")(x, stats=stats)))
        x = self.conv(inner, (1, 1), name="conv1", **padded)(x)
        x = self._drop(x, train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(inner, (3, 3), padding=1, name="conv2")(x)
        x = self._drop(x, train)
        x = nn.relu(self.norm(name="bn3")(x))
        x = self.conv(self.features, (1, 1), name="conv3")(x)
        return self._drop(x, train)


UNIT_CLASSES: dict[str, type[_UnitBase]] = {
    "plain": PlainUnit,
    "bottleneck": BottleneckUnit,
    "basic": BasicUnit,
    "res_bottleneck": ResBottleneckUnit,
}


class Transition(nn.Module):
    """BN → ReLU → conv 1×1 → 2×2 average pool, stride 2."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(self.norm(name="bn1")(x))
        x = self.conv(self.features, (1, 1), name="conv1")(x)
        if self.dropout_rate > 0.0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))
