"""Parameter counts from the layout rules alone (no Flax): a second, independent count.

Mirrors the official PyTorch CIFAR model: every conv without bias,
every BatchNorm with scale and bias, a dense head with bias.
"""

from __future__ import annotations

import math

from sparsenet_jax.model.network import SparseNet


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


def expected_params(model: SparseNet) -> int:
    """Count ``model``'s parameters from the schedule arithmetic."""
    growths = list(model.growth_rates)
    concat = model.aggregation == "concat"
    stem = model.stem_channels or (2 * growths[0] if concat else growths[0])
    if model.stem == "imagenet":
        total = _conv(7, model.in_channels, stem) + _bn(stem)
    else:
        total = _conv(3, model.in_channels, stem)
    channels = stem
    for b, (n, k) in enumerate(zip(model.block_sizes, growths, strict=True)):
        if b > 0:
            out = math.floor(model.compression * channels) if concat else k
            total += _bn(channels) + _conv(1, channels, out)
            channels = out
        widths = [channels] + [k] * n  # widths of x_0 … x_n
        for layer in range(1, n + 1):
            reads = model.schedule.inputs(layer)
            cin = sum(widths[i] for i in reads) if concat else channels
            total += _unit(model.unit, cin, k)
        if concat:
            channels = sum(widths[i] for i in model.schedule.block_output(n))
    return total + _bn(channels) + channels * model.num_classes + model.num_classes
