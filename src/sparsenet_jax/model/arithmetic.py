"""Parameter counts from the layout rules alone (no Flax): a second, independent count.

Mirrors the official PyTorch CIFAR model: every conv without bias,
every BatchNorm with scale and bias, a dense head with bias.

Everything here is closed form, O(number of blocks) whatever the depth: a
unit's parameters are linear in its input width, and the sum of the input
widths of a block's layers has a closed form for both schedules. So a size
check of a billion-layer network answers at once (issue 18 item 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import jax.numpy as jnp

from sparsenet_jax.model.network import SparseNet
from sparsenet_jax.model.schedule import Schedule


def _conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout


def _bn(c: int) -> int:
    return 2 * c


def _unit(unit: str, cin: int, k: int) -> int:
    if unit == "plain":
        return _bn(cin) + _conv(3, cin, k)
    if unit == "bottleneck":
        return _bn(cin) + _conv(1, cin, 4 * k) + _bn(4 * k) + _conv(3, 4 * k, k)
    if unit == "basic":
        return _bn(cin) + _conv(3, cin, k) + _bn(k) + _conv(3, k, k)
    if unit == "res_bottleneck":
        inner = k // 4
        return (
            _bn(cin)
            + _conv(1, cin, inner)
            + _bn(inner)
            + _conv(3, inner, inner)
            + _bn(inner)
            + _conv(1, inner, k)
        )
    raise ValueError(unit)


def _powers(base: int, n: int) -> Iterator[int]:
    """``1, base, base², …`` up to ``n``: O(log n)."""
    power = 1
    while power <= n:
        yield power
        power *= base


def _is_power(layer: int, base: int) -> bool:
    while layer % base == 0:
        layer //= base
    return layer == 1


def sum_of_input_widths(schedule: Schedule, in_channels: int, growth: int, n: int) -> int:
    """Σ over layers ``1 … n`` of a concatenating block's layer input width, in closed form.

    Dense: layer ``l`` reads ``x_0 … x_{l-1}``, width ``c_0 + k(l-1)``. Sparse with
    base ``c``: layer ``l`` reads ``x_{l-c^j}`` for every ``c^j <= l``, which includes
    ``x_0`` exactly when ``l`` is a power of ``c``.
    """
    if schedule.kind == "dense":
        return n * in_channels + growth * n * (n - 1) // 2
    powers = list(_powers(schedule.base, n))
    reads = sum(n - p + 1 for p in powers)  # layers l >= p read x_{l-p}
    return growth * reads + (in_channels - growth) * len(powers)


def block_output_width(schedule: Schedule, in_channels: int, growth: int, n: int) -> int:
    """Width of a concatenating block's output, in O(log n) (the schedule's rule at layer n+1)."""
    if schedule.kind == "dense":
        return in_channels + growth * n
    reads = len(list(_powers(schedule.base, n + 1)))
    return growth * reads + (in_channels - growth) * _is_power(n + 1, schedule.base)


def block_layouts(model: SparseNet) -> list[tuple[int, int, int, int]]:
    """Per block: (input width, growth, layers, output width), in O(number of blocks)."""
    concat = model.aggregation == "concat"
    channels = model.stem_width
    layouts = []
    for b, (n, k) in enumerate(zip(model.block_sizes, model.growth_rates, strict=True)):
        if b > 0:
            channels = math.floor(model.compression * channels) if concat else k
        out = block_output_width(model.schedule, channels, k, n) if concat else channels
        layouts.append((channels, k, n, out))
        channels = out
    return layouts


def expected_params(model: SparseNet) -> int:
    """Count ``model``'s parameters from the schedule arithmetic, in O(number of blocks)."""
    concat = model.aggregation == "concat"
    stem = model.stem_width
    if model.stem == "imagenet":
        total = _conv(7, model.in_channels, stem) + _bn(stem)
    else:
        total = _conv(3, model.in_channels, stem)
    previous = stem
    for b, (cin, k, n, out) in enumerate(block_layouts(model)):
        if b > 0:
            total += _bn(previous) + _conv(1, previous, cin)
        # A unit's parameters are linear in its input width: slope · cin + intercept.
        intercept = _unit(model.unit, 0, k)
        slope = _unit(model.unit, 1, k) - intercept
        widths = sum_of_input_widths(model.schedule, cin, k, n) if concat else n * cin
        total += slope * widths + intercept * n
        previous = out
    return total + _bn(previous) + previous * model.num_classes + model.num_classes


@dataclasses.dataclass(frozen=True)
class SizeBound:
    """What a step needs at least, from the layout arithmetic alone (nothing traced)."""

    num_params: int
    state_bytes: int  # float32 parameters (+ gradients and momentum when training)
    activation_bytes: int  # every layer's output, kept for the backward pass (training only)

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def size_bound(model: SparseNet, batch: int, image_size: int, train: bool = True) -> SizeBound:
    """A lower bound of a step's memory on one device holding ``batch`` images, O(blocks).

    Training holds parameters, gradients and momentum in float32, and each
    layer's ``k``-channel output at its block's resolution for the backward
    pass; inference at least the parameters.
    """
    num_params = expected_params(model)
    if not train:
        return SizeBound(num_params, 4 * num_params, 0)
    side = math.ceil(image_size / 4) if model.stem == "imagenet" else image_size
    itemsize = jnp.dtype(model.dtype).itemsize
    values = 0
    for b, (_, growth, layers, _) in enumerate(block_layouts(model)):
        values += layers * growth * (side // 2**b) ** 2
    return SizeBound(num_params, 3 * 4 * num_params, batch * values * itemsize)
