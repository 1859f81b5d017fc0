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

from sparsenet_jax.norms import Stats, channel_stats, concat_stats, make_norm
from sparsenet_jax.schedule import Schedule, segments

__all__ = ["make_norm"]  # re-exported: models build their norms from it

Aggregation = Literal["concat", "sum"]
AGGREGATIONS: tuple[str, ...] = ("concat", "sum")
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
    them (see :mod:`sparsenet_jax.norms`), for its first BatchNorm.
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


def _aggregate(parts: Sequence[jax.Array], aggregation: str) -> jax.Array:
    if len(parts) == 1:
        return parts[0]
    if aggregation == "concat":
        return jnp.concatenate(parts, axis=-1)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


BlockImpl = Literal["unrolled", "scan"]
BLOCK_IMPLS: tuple[str, ...] = ("unrolled", "scan")


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(tree: Any, count: int) -> list[Any]:
    return [jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], tree) for i in range(count)]


class AggregationBlock(nn.Module):
    """A block of ``num_layers`` units wired by a schedule and an aggregation.

    ``schedule`` decides which earlier outputs each unit reads; ``aggregation``
    decides how they are combined: ``"concat"`` along channels (DenseNet,
    SparseNet[⊕]) or ``"sum"`` (ResNet, SparseNet[+]; every output then has
    the input's width). Layers are named ``block-1 … block-n`` as in the
    official model.

    ``impl="scan"`` computes the same function with a smaller graph: runs of
    layers that read at the same relative offsets (for base 2, layers
    2^m+1 … 2^(m+1)−1) run as one ``lax.scan`` over their stacked parameters,
    carrying a ring of the last 2^m outputs (static reads, one shift a step);
    dense + sum is one scan over a running sum. Compile time then grows with the number of runs
    (O(log n) for sparse) instead of n. The parameter tree is the same as
    ``"unrolled"``'s, so checkpoints and the converter work with either.
    ``remat=True`` recomputes each unit's activations in the backward pass
    instead of storing them. ``share_stats`` (concatenation, unrolled, training):
    each output's BatchNorm batch statistics are computed once and handed to
    every unit that reads it (:mod:`sparsenet_jax.norms`); equal in float64,
    fewer reductions and bytes moved. Off by default: in float32 its rounding
    puts one leaf of the reference SGD step (sparsenet-bc-46-6) at 2.2% of the
    update, over the 2% bound that catches a wrong optimizer convention.
    """

    num_layers: int
    growth_rate: int
    schedule: Schedule
    aggregation: Aggregation
    unit: Callable[..., nn.Module]  # unit(features, name=..., parent=...)
    impl: BlockImpl = "unrolled"
    remat: bool = False
    share_stats: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.aggregation == "sum" and x.shape[-1] != self.growth_rate:
            raise ValueError(
                f"summation needs every output as wide as the block input: input has "
                f"{x.shape[-1]} channels, units emit {self.growth_rate}"
            )
        if self.impl not in BLOCK_IMPLS:
            raise ValueError(f"block impl must be one of {BLOCK_IMPLS}, got {self.impl!r}")
        # Initialisation always takes the unrolled path: it creates the
        # variables that both paths share.
        if self.impl == "scan" and not self.is_initializing():
            return self._scanned(x, train)
        if self.aggregation == "sum" and self.schedule.kind == "dense":
            return self._running_sum(x, train)
        unit_cls = nn.remat(self.unit, static_argnums=(2,)) if self.remat else self.unit
        share = (
            self.share_stats
            and train
            and self.aggregation == "concat"
            and not self.is_initializing()
        )
        outputs, stats = [x], [channel_stats(x) if share else None]
        for layer in range(1, self.num_layers + 1):
            reads = self.schedule.inputs(layer)
            layer_input = _aggregate([outputs[i] for i in reads], self.aggregation)
            layer_stats = concat_stats([stats[i] for i in reads]) if share else None  # type: ignore[misc]
            y = unit_cls(self.growth_rate, name=f"block-{layer}")(layer_input, train, layer_stats)
            outputs.append(y)
            stats.append(channel_stats(y) if share else None)
        return _aggregate(
            [outputs[i] for i in self.schedule.block_output(self.num_layers)], self.aggregation
        )

    def _running_sum(self, x: jax.Array, train: bool) -> jax.Array:
        # Summing every earlier output is ResNet's identity stream: keep one
        # running sum (one addition a layer) instead of l additions at layer l.
        unit_cls = nn.remat(self.unit, static_argnums=(2,)) if self.remat else self.unit
        stream = x
        for layer in range(1, self.num_layers + 1):
            stream = stream + unit_cls(self.growth_rate, name=f"block-{layer}")(stream, train)
        return stream

    # -- the scanned implementation -------------------------------------------------

    def _run_layers(
        self,
        first: int,
        length: int,
        body_input: Callable[[Any, jax.Array], jax.Array],
        carry: Any,
        update: Callable[[Any, jax.Array, jax.Array], Any],
        train: bool,
        emit: bool = False,
    ) -> Any:
        """Run layers ``first … first+length-1`` as one scan over their stacked variables.

        ``body_input(carry, l)`` builds layer ``l``'s input from the carry and
        ``update(carry, l, y)`` stores its output ``y``. Returns the final
        carry, and with ``emit`` also the outputs stacked, ``(carry, ys)``.
        """
        template = self.unit(self.growth_rate, parent=None)
        names = [f"block-{layer}" for layer in range(first, first + length)]
        params = _stack([self.variables["params"][n] for n in names])
        stats = _stack([self.variables["batch_stats"][n] for n in names])
        needs_rng = train and getattr(template, "dropout_rate", 0.0) > 0.0
        rngs = (
            jax.random.split(self.make_rng("dropout"), length)
            if needs_rng
            else jnp.zeros((length,), jnp.uint32)
        )

        def body(carry: Any, xs: Any) -> tuple[Any, Any]:
            layer, p, s, rng = xs
            h = body_input(carry, layer)
            variables = {"params": p, "batch_stats": s}
            rngs = {"dropout": rng} if needs_rng else None
            if train:
                y, new = template.apply(variables, h, True, mutable=["batch_stats"], rngs=rngs)
                s = new["batch_stats"]
            else:
                y = template.apply(variables, h, False)
            return update(carry, layer, y), (s, y if emit else None)

        if self.remat:
            body = jax.checkpoint(body)
        layers = jnp.arange(first, first + length)
        carry, (new_stats, ys) = jax.lax.scan(body, carry, (layers, params, stats, rngs))
        if train and not self.is_initializing():
            for name, value in zip(names, _unstack(new_stats, length), strict=True):
                self.put_variable("batch_stats", name, value)
        return (carry, ys) if emit else carry

    def _scanned(self, x: jax.Array, train: bool) -> jax.Array:
        n, k = self.num_layers, self.growth_rate
        if self.aggregation == "sum" and self.schedule.kind == "dense":
            return self._run_layers(
                1, n, lambda stream, _: stream, x, lambda stream, _, y: stream + y, train
            )
        # x_l for every layer l so far, as (array, index into its leading axis
        # or None): a scanned run leaves its outputs stacked, read by static index.
        history: list[tuple[jax.Array, int | None]] = [(x, None)]

        def get(layer: int) -> jax.Array:
            array, index = history[layer]
            return array if index is None else array[index]

        for seg in segments(self.schedule, n, x.shape[-1] == k):
            if seg.length == 1:  # a run of one (e.g. a layer reading the wider x_0)
                parts = [get(seg.first - o) for o in seg.offsets]
                unit = self.unit(k, name=f"block-{seg.first}")
                history.append((unit(_aggregate(parts, self.aggregation), train), None))
                continue
            # The carry is a ring of the last `depth` outputs, newest first: every
            # read is a static index, and each step shifts the ring by one. Unlike
            # a buffer of all n outputs read at a traced index, nothing in the
            # loop (or its transpose) is as large as the block.
            depth = max(seg.offsets)
            ring = jnp.stack([get(seg.first - 1 - j) for j in range(depth)])

            def read(ring: jax.Array, _: jax.Array, offsets: tuple[int, ...]) -> jax.Array:
                return _aggregate([ring[o - 1] for o in offsets], self.aggregation)

            def shift(ring: jax.Array, _: jax.Array, y: jax.Array) -> jax.Array:
                return jnp.concatenate([y[None], ring[:-1]], axis=0)

            _, ys = self._run_layers(
                seg.first,
                seg.length,
                functools.partial(read, offsets=seg.offsets),
                ring,
                shift,
                train,
                emit=True,
            )
            history.extend((ys, i) for i in range(seg.length))
        outs = self.schedule.block_output(n)
        return _aggregate([get(i) for i in outs], self.aggregation)
