"""Building blocks: units, the transition, and the aggregating block.

Layout is NHWC throughout. Every unit is pre-activation (BN → ReLU → conv), as
in DenseNet and the pre-activation ResNet. Parameter names follow the official
PyTorch model where one exists (``bn1``/``conv1``/``bn2``/``conv2``), which
keeps :mod:`sparsenet_jax.convert` a plain renaming.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsenet_jax.schedule import Schedule

Aggregation = Literal["concat", "sum"]
AGGREGATIONS: tuple[str, ...] = ("concat", "sum")
UnitKind = Literal["plain", "bottleneck", "basic", "res_bottleneck"]
UNIT_KINDS: tuple[str, ...] = ("plain", "bottleneck", "basic", "res_bottleneck")

# normal(0, sqrt(2 / (kh * kw * out_channels))), the official initialisation.
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

ModuleDef = Any


def make_conv(dtype: Any, param_dtype: Any) -> Callable[..., nn.Conv]:
    return functools.partial(
        nn.Conv, use_bias=False, kernel_init=conv_init, dtype=dtype, param_dtype=param_dtype
    )


def make_norm(train: bool, dtype: Any, param_dtype: Any) -> Callable[..., nn.BatchNorm]:
    # Flax momentum 0.9 == PyTorch momentum 0.1; eps as in PyTorch.
    return functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        # Two-pass variance, as PyTorch: E[x²]−E[x]² loses precision and gradients drift.
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
    )


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
    """BN → ReLU → conv 3×3 (DenseNet/SparseNet basic composite function)."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(self.norm(name="bn1")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv1")(x)
        return self._drop(x, train)


class BottleneckUnit(_UnitBase):
    """BN → ReLU → conv 1×1 (4k) → BN → ReLU → conv 3×3 (k): the "B" of DenseNet-BC."""

    bottleneck_factor: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(self.norm(name="bn1")(x))
        x = self.conv(self.bottleneck_factor * self.features, (1, 1), name="conv1")(x)
        x = self._drop(x, train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv2")(x)
        return self._drop(x, train)


class BasicUnit(_UnitBase):
    """Pre-activation ResNet basic unit: (BN → ReLU → conv 3×3) × 2."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(self.norm(name="bn1")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv1")(x)
        x = self._drop(x, train)
        x = nn.relu(self.norm(name="bn2")(x))
        x = self.conv(self.features, (3, 3), padding=1, name="conv2")(x)
        return self._drop(x, train)


class ResBottleneckUnit(_UnitBase):
    """Pre-activation ResNet bottleneck: 1×1 (w/4) → 3×3 (w/4) → 1×1 (w), each BN → ReLU first."""

    bottleneck_factor: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        inner = self.features // self.bottleneck_factor
        x = nn.relu(self.norm(name="bn1")(x))
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


def _aggregate(parts: Sequence[jax.Array], aggregation: str) -> jax.Array:
    if len(parts) == 1:
        return parts[0]
    if aggregation == "concat":
        return jnp.concatenate(parts, axis=-1)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


class AggregationBlock(nn.Module):
    """A block of ``num_layers`` units wired by a schedule and an aggregation.

    ``schedule`` decides which earlier outputs each unit reads; ``aggregation``
    decides how they are combined: ``"concat"`` along channels (DenseNet,
    SparseNet[⊕]) or ``"sum"`` (ResNet, SparseNet[+]; every output then has
    the input's width). Layers are named ``block-1 … block-n`` as in the
    official model.
    """

    num_layers: int
    growth_rate: int
    schedule: Schedule
    aggregation: Aggregation
    unit: Callable[..., nn.Module]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.aggregation == "sum" and x.shape[-1] != self.growth_rate:
            raise ValueError(
                f"summation needs every output as wide as the block input: input has "
                f"{x.shape[-1]} channels, units emit {self.growth_rate}"
            )
        if self.aggregation == "sum" and self.schedule.kind == "dense":
            return self._running_sum(x, train)
        outputs = [x]
        for layer in range(1, self.num_layers + 1):
            layer_input = _aggregate(
                [outputs[i] for i in self.schedule.inputs(layer)], self.aggregation
            )
            outputs.append(self.unit(self.growth_rate, name=f"block-{layer}")(layer_input, train))
        return _aggregate(
            [outputs[i] for i in self.schedule.block_output(self.num_layers)], self.aggregation
        )

    def _running_sum(self, x: jax.Array, train: bool) -> jax.Array:
        # Summing every earlier output is ResNet's identity stream: keep one
        # running sum (one addition a layer) instead of l additions at layer l.
        stream = x
        for layer in range(1, self.num_layers + 1):
            stream = stream + self.unit(self.growth_rate, name=f"block-{layer}")(stream, train)
        return stream
