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
    same GEMM (not measured yet: no accelerator was available).
    """

    features: int
    kernel_init: Callable[..., Any] = conv_init
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", self.kernel_init, (1, 1, x.shape[-1], self.features), self.param_dtype
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return jax.lax.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())))


def make_conv(
    dtype: Any, param_dtype: Any, pointwise_as_dot: bool = True
) -> Callable[..., nn.Module]:
    """A conv factory, ``conv(features, kernel_size, **kwargs)``, for the units.

    With ``pointwise_as_dot``, 1×1 stride-1 unpadded convolutions are built as
    :class:`PointwiseConv` (a matmul); everything else is ``nn.Conv``.
    """
    conv = functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype
    )

    def build(features: int, kernel_size: Sequence[int], **kwargs: Any) -> nn.Module:
        plain_1x1 = (
            tuple(kernel_size) == (1, 1)
            and set(kwargs) <= {"name", "strides", "padding"}
            and kwargs.get("strides", 1) in (1, (1, 1))
            and kwargs.get("padding", 0) in (0, "VALID", "SAME")
        )
        if pointwise_as_dot and plain_1x1:
            return PointwiseConv(
                features, dtype=dtype, param_dtype=param_dtype, name=kwargs.get("name")
            )
        return conv(features, kernel_size, **kwargs)

    return build


class _UnitBase(nn.Module):
    """Shared fields of the units: ``features`` is the unit's output width."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    dropout_rate: float = 0.0

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
        x = nn.relu(self.norm(name="bn1")(x, stats=stats))
        x = self.conv(self.features, (3, 3), padding=1, name="conv1")(x)
        return self._drop(x, train)


class BottleneckUnit(_UnitBase):
    """BN → ReLU → conv 1×1 (4k) → BN → ReLU → conv 3×3 (k): the "B" of DenseNet-BC."""

    bottleneck_factor: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, stats: Stats | None = None) -> jax.Array:
        x = nn.relu(self.norm(name="bn1")(x, stats=stats))
        x = self.conv(self.bottleneck_factor * self.features, (1, 1), name="conv1")(x)
        x = self._drop(x, train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv2")(x)
        return self._drop(x, train)


class BasicUnit(_UnitBase):
    """Pre-activation ResNet basic unit: (BN → ReLU → conv 3×3) × 2."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, stats: Stats | None = None) -> jax.Array:
        x = nn.relu(self.norm(name="bn1")(x, stats=stats))
        x = self.conv(self.features, (3, 3), padding=1, name="conv1")(x)
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
        x = nn.relu(self.norm(name="bn1")(x, stats=stats))
        x = self.conv(inner, (1, 1), name="conv1")(x)
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
