"""Units and the transition: the convolutional pieces a block is made of.

Layout is NHWC throughout. Every unit is pre-activation (BN → ReLU → conv), as
in DenseNet and the pre-activation ResNet. Parameter names follow the official
PyTorch model where one exists (``bn1``/``conv1``/``bn2``/``conv2``), which
keeps :mod:`sparsenet_jax.model.convert` a plain renaming.
"""

from __future__ import annotations

import functools
import itertools
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


class _StrideOneConv(nn.Module):
    """Fields shared by the stride-1 convolutions whose kernel has ``in_features`` rows."""

    features: int
    kernel_size: Sequence[int]
    in_features: int
    padding: int = 0
    kernel_init: Callable[..., Any] = conv_init
    dtype: Any = None
    param_dtype: Any = jnp.float32

    def _kernel(self) -> jax.Array:
        shape = (*self.kernel_size, self.in_features, self.features)
        return self.param("kernel", self.kernel_init, shape, self.param_dtype)

    def _conv(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        pads = [(self.padding, self.padding)] * len(self.kernel_size)
        return jax.lax.conv_general_dilated(
            x,
            kernel,
            (1,) * len(self.kernel_size),
            pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class PaddedConv(_StrideOneConv):
    """``nn.Conv(features, kernel_size, padding=..., use_bias=False)`` for an input padded with zero channels.

    The kernel parameter has ``in_features`` input rows (the shape, name and
    initial values ``nn.Conv`` gives it on an ``in_features``-wide input); the
    forward pass appends zero rows up to the input's width. The padded input
    channels are zero and meet zero rows, so the result is the unpadded
    convolution's, and the kernel's gradient is the padded one's first rows.
    Lets units whose inputs differ in width run convolutions of one shape
    (``AggregationBlock.channel_bucket``).
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self._kernel()
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return self._conv(x, _pad_rows(kernel, x.shape[-1]))


class PerInputConv(_StrideOneConv):
    """A stride-1 convolution of a channel concatenation, run as one convolution per part.

    Called on the parts (a sequence of NHWC tensors) instead of their
    concatenation: ``Σ_i conv(x_i, kernel[..., rows_i, :])``, the same sum as
    one convolution of the concatenation, in another order. The kernel
    parameter is the one ``nn.Conv`` would make for the concatenation (name,
    shape, initial values). Units whose inputs differ only in how many parts
    they read then run convolutions of the parts' few shapes
    (``AggregationBlock.per_input_conv``). With ``pointwise_as_dot`` a 1×1
    convolution is a matmul a part, as :class:`PointwiseConv`.

    Each part's convolution returns the compute dtype, and the sum is taken in
    it: in bfloat16 a unit that reads ``n`` parts rounds its running sum up to
    ``n − 1`` more times than one convolution would (a float32 sum would move
    twice the bytes of each partial result on a TPU, which is what the option
    exists to save).
    """

    pointwise_as_dot: bool = True

    @nn.compact
    def __call__(self, parts: Sequence[jax.Array]) -> jax.Array:
        widths = [p.shape[-1] for p in parts]
        if sum(widths) != self.in_features:
            raise ValueError(f"parts of widths {widths} do not add up to {self.in_features}")
        kernel = self._kernel()
        bounds = [0, *itertools.accumulate(widths)]
        # Each part's rows become arrays of their own. Without the barrier XLA fuses
        # each row slice into its convolution, and since the slice's offset and the
        # kernel's width differ from layer to layer, so would every fusion.
        rows_of = jax.lax.optimization_barrier(
            [kernel[..., a:b, :] for a, b in itertools.pairwise(bounds)]
        )
        total = None
        for part, part_rows in zip(parts, rows_of, strict=True):
            x, rows = nn.dtypes.promote_dtype(part, part_rows, dtype=self.dtype)
            pointwise = all(size == 1 for size in self.kernel_size) and not self.padding
            if self.pointwise_as_dot and pointwise:
                # As PointwiseConv: a matmul, the faster gradient on XLA:CPU.
                y = jax.lax.dot_general(
                    x, rows.reshape(rows.shape[-2:]), (((x.ndim - 1,), (0,)), ((), ()))
                )
            else:
                y = self._conv(x, rows)
            total = y if total is None else total + y
        assert total is not None
        return total


def make_conv(
    dtype: Any, param_dtype: Any, pointwise_as_dot: bool = True
) -> Callable[..., nn.Module]:
    """A conv factory, ``conv(features, kernel_size, **kwargs)``, for the units.

    With ``pointwise_as_dot``, 1×1 stride-1 unpadded convolutions are built as
    :class:`PointwiseConv` (a matmul); everything else is ``nn.Conv``.
    ``in_features=n`` (stride 1, integer padding) builds a convolution whose
    kernel has ``n`` input rows for an input that may be wider with zero
    channels: :class:`PointwiseConv` or :class:`PaddedConv`. ``parts=True``
    (with ``in_features``) builds a :class:`PerInputConv`, called on the parts
    of the input instead of their concatenation.
    """
    conv = functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype
    )

    def build(
        features: int,
        kernel_size: Sequence[int],
        in_features: int | None = None,
        parts: bool = False,
        **kwargs: Any,
    ) -> nn.Module:
        if parts:
            if (
                in_features is None
                or set(kwargs) - {"name", "padding"}
                or not isinstance(kwargs.get("padding", 0), int)
            ):
                raise ValueError(f"parts needs in_features, stride 1 and integer padding: {kwargs}")
            return PerInputConv(
                features,
                tuple(kernel_size),
                in_features,
                dtype=dtype,
                param_dtype=param_dtype,
                pointwise_as_dot=pointwise_as_dot,
                **kwargs,
            )
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

    A unit may be called on a sequence of tensors instead of one: the parts
    of its input, which it never concatenates. The first BatchNorm and ReLU
    then act on each part and the first convolution is one convolution per part,
    summed (:class:`PerInputConv`; ``per_input_conv``).
    """

    features: int
    conv: ModuleDef
    norm: ModuleDef
    dropout_rate: float = 0.0
    pad_to: int = 0

    def _first(
        self,
        x: jax.Array | Sequence[jax.Array],
        stats: Stats | None,
        features: int,
        kernel_size: tuple[int, int],
    ) -> jax.Array:
        """BN ``bn1`` → ReLU → conv ``conv1`` (``features``, ``kernel_size``, same padding)."""
        padding = {"padding": kernel_size[0] // 2} if kernel_size != (1, 1) else {}
        h = self.norm(name="bn1")(x, stats=stats)
        if isinstance(h, list):
            width = sum(part.shape[-1] for part in h)
            conv = self.conv(
                features, kernel_size, in_features=width, parts=True, name="conv1", **padding
            )
            return conv([nn.relu(part) for part in h])
        h = nn.relu(h)
        if self.pad_to and self.pad_to != h.shape[-1]:
            padding["in_features"] = h.shape[-1]
            h = pad_channels(h, self.pad_to)
        return self.conv(features, kernel_size, name="conv1", **padding)(h)

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
    def __call__(self, x: Any, train: bool = False, stats: Stats | None = None) -> jax.Array:
        return self._drop(self._first(x, stats, self.features, (3, 3)), train)


class BottleneckUnit(_UnitBase):
    """BN → ReLU → conv 1×1 (4k) → BN → ReLU → conv 3×3 (k): the "B" of DenseNet-BC."""

    bottleneck_factor: int = 4

    @nn.compact
    def __call__(self, x: Any, train: bool = False, stats: Stats | None = None) -> jax.Array:
        x = self._drop(self._first(x, stats, self.bottleneck_factor * self.features, (1, 1)), train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv2")(x)
        return self._drop(x, train)


class BasicUnit(_UnitBase):
    """Pre-activation ResNet basic unit: (BN → ReLU → conv 3×3) × 2."""

    @nn.compact
    def __call__(self, x: Any, train: bool = False, stats: Stats | None = None) -> jax.Array:
        x = self._drop(self._first(x, stats, self.features, (3, 3)), train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv2")(x)
        return self._drop(x, train)


class ResBottleneckUnit(_UnitBase):
    """Pre-activation ResNet bottleneck: 1×1 (w/4) → 3×3 (w/4) → 1×1 (w), each BN → ReLU first."""

    bottleneck_factor: int = 4

    @nn.compact
    def __call__(self, x: Any, train: bool = False, stats: Stats | None = None) -> jax.Array:
        inner = self.features // self.bottleneck_factor
        x = self._drop(self._first(x, stats, inner, (1, 1)), train)
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
