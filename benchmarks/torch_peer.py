"""A PyTorch eager peer of the CIFAR networks, for speed comparisons.

Written from the papers' description (NCHW activations, OIHW kernels),
independently of the JAX code: one network on two axes, schedule {dense, sparse} × aggregation {concat, sum}.

* stem: 3×3 conv, no bias (2k channels for concat, the first stage width for sum);
* blocks: units wired by the schedule. Concat: dense reads x_0 … x_{l-1} oldest
  first, sparse reads x_{l-1}, x_{l-c}, x_{l-c²}, … newest first; the block
  output applies the same rule to a virtual layer n + 1. Sum: dense is the
  ResNet identity stream (a running sum), sparse sums the selected outputs;
* units: plain (BN-ReLU-conv3×3), bottleneck (BN-ReLU-conv1×1(4k)-BN-ReLU-conv3×3),
  basic (pre-activation ResNet, two 3×3 convs), res_bottleneck (1×1, 3×3, 1×1);
* transitions: BN-ReLU-conv1×1-avgpool2 to floor(θ·C) channels (concat) or to the
  next stage's width (sum);
* head: BN-ReLU-global average pool-Linear.

Module names follow the official state_dict (``features.conv0``,
``features.dense-stage-{i}.block-{j}.{bn1,conv1,bn2,conv2}``,
``features.transition-{i}.{bn1,conv1}``, ``features.norm_last``,
``classifier.linear``), so official checkpoints load with ``strict=True``.
Only the CIFAR stem is implemented (the benchmarks use 32×32 inputs).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "TorchNet",
    "block_output",
    "count_params",
    "from_jax_model",
    "from_official_call",
    "layer_inputs",
    "make_sgd",
    "train_step",
]


@functools.cache
def _sparse_reads(layer: int, base: int) -> tuple[int, ...]:
    reads, offset = [], 1
    while offset <= layer:
        reads.append(layer - offset)
        offset *= base
    return tuple(reads)


def layer_inputs(kind: str, layer: int, base: int = 2) -> tuple[int, ...]:
    """Which earlier outputs layer ``layer`` (≥ 1) reads, in concatenation order."""
    if kind == "dense":
        return tuple(range(layer))  # oldest first, as the official DenseNet
    return _sparse_reads(layer, base)  # newest first, as the official SparseNet


def block_output(kind: str, num_layers: int, base: int = 2) -> tuple[int, ...]:
    """Which outputs form a block's output: the layer rule for a virtual layer n + 1."""
    return layer_inputs(kind, num_layers + 1, base)


def _conv(cin: int, cout: int, size: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, size, padding=size // 2, bias=False)


class Unit(nn.Module):
    """One pre-activation unit; ``kind`` is plain, bottleneck, basic or res_bottleneck."""

    def __init__(self, kind: str, cin: int, cout: int) -> None:
        super().__init__()
        if kind == "plain":
            layers = [(cin, cout, 3)]
        elif kind == "bottleneck":
            layers = [(cin, 4 * cout, 1), (4 * cout, cout, 3)]
        elif kind == "basic":
            layers = [(cin, cout, 3), (cout, cout, 3)]
        elif kind == "res_bottleneck":
            inner = cout // 4
            layers = [(cin, inner, 1), (inner, inner, 3), (inner, cout, 1)]
        else:
            raise ValueError(f"unknown unit kind {kind!r}")
        self.depth = len(layers)
        for i, (a, b, size) in enumerate(layers, start=1):
            self.add_module(f"bn{i}", nn.BatchNorm2d(a))
            self.add_module(f"conv{i}", _conv(a, b, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.depth + 1):
            x = getattr(self, f"conv{i}")(F.relu(getattr(self, f"bn{i}")(x)))
        return x


class Block(nn.Module):
    """``num_layers`` units ``block-1 … block-n`` wired by a schedule and an aggregation."""

    def __init__(
        self,
        cin: int,
        growth: int,
        num_layers: int,
        schedule: str,
        base: int,
        aggregation: str,
        unit: str,
    ) -> None:
        super().__init__()
        self.schedule, self.base, self.aggregation = schedule, base, aggregation
        self.num_layers = num_layers
        width = [cin] + [growth] * num_layers  # channels of x_0 … x_n
        for layer in range(1, num_layers + 1):
            reads = layer_inputs(schedule, layer, base)
            unit_in = sum(width[i] for i in reads) if aggregation == "concat" else cin
            self.add_module(f"block-{layer}", Unit(unit, unit_in, growth))
        outs = block_output(schedule, num_layers, base)
        self.out_channels = sum(width[i] for i in outs) if aggregation == "concat" else cin

    def _combine(self, parts: list[torch.Tensor]) -> torch.Tensor:
        if len(parts) == 1:
            return parts[0]
        if self.aggregation == "concat":
            return torch.cat(parts, dim=1)
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        units = [getattr(self, f"block-{j}") for j in range(1, self.num_layers + 1)]
        if self.aggregation == "sum" and self.schedule == "dense":
            # Summing every earlier output is the ResNet identity stream: one add a layer.
            for unit in units:
                x = x + unit(x)
            return x
        outputs = [x]
        for layer, unit in enumerate(units, start=1):
            reads = layer_inputs(self.schedule, layer, self.base)
            outputs.append(unit(self._combine([outputs[i] for i in reads])))
        return self._combine(
            [outputs[i] for i in block_output(self.schedule, self.num_layers, self.base)]
        )


class Transition(nn.Module):
    """BN → ReLU → conv 1×1 → 2×2 average pool, stride 2."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = _conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv1(F.relu(self.bn1(x))), 2)


class Features(nn.Module):
    """Stem, blocks and transitions, then the final BN (ReLU and pooling are in the net)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x


class Classifier(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class TorchNet(nn.Module):
    """SparseNet / DenseNet / pre-activation ResNet for CIFAR-sized NCHW input.

    Args:
      block_sizes: units per block.
      growth_rates: per block, growth rate k (concat) or stage width (sum).
      num_classes: classifier width.
      schedule: ``"dense"`` or ``"sparse"``; base: the sparse offsets' base.
      aggregation: ``"concat"`` or ``"sum"``.
      unit: ``"plain"``, ``"bottleneck"``, ``"basic"`` or ``"res_bottleneck"``.
      compression: θ of the concat transitions.
      stem_channels: default 2·k₀ (concat) or the first stage width (sum).
    """

    def __init__(
        self,
        block_sizes: Sequence[int],
        growth_rates: Sequence[int],
        num_classes: int = 10,
        schedule: str = "sparse",
        base: int = 2,
        aggregation: str = "concat",
        unit: str = "plain",
        compression: float = 1.0,
        stem_channels: int | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem_channels is None:
            stem_channels = 2 * growth_rates[0] if aggregation == "concat" else growth_rates[0]
        self.features = Features()
        self.features.add_module("conv0", _conv(in_channels, stem_channels, 3))
        channels = stem_channels
        for i, (size, growth) in enumerate(zip(block_sizes, growth_rates, strict=True)):
            if i > 0:
                out = math.floor(compression * channels) if aggregation == "concat" else growth
                self.features.add_module(f"transition-{i - 1}", Transition(channels, out))
                channels = out
            block = Block(channels, growth, size, schedule, base, aggregation, unit)
            self.features.add_module(f"dense-stage-{i}", block)
            channels = block.out_channels
        self.features.add_module("norm_last", nn.BatchNorm2d(channels))
        self.classifier = Classifier(channels, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: conv normal(0, sqrt(2/(kh·kw·out))), BN 1/0, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.features(x))
        return self.classifier(x.mean(dim=(2, 3)))


def from_official_call(call: dict[str, Any]) -> TorchNet:
    """The network of an official constructor call (the ``meta`` of a reference vector).

    ``call`` has ``growthRate``, ``depth``, ``reduction``, ``nClasses``,
    ``bottleneck`` and ``fetch`` (``"exp"`` = sparse, ``"dense"`` = dense).
    """
    per_block = (call["depth"] - 4) // 3
    if call["bottleneck"]:
        per_block //= 2
    k = call["growthRate"]
    return TorchNet(
        block_sizes=(per_block,) * 3,
        growth_rates=(k,) * 3,
        num_classes=call["nClasses"],
        schedule="sparse" if call["fetch"] == "exp" else "dense",
        unit="bottleneck" if call["bottleneck"] else "plain",
        compression=call["reduction"],
    )


def from_jax_model(model: Any) -> TorchNet:
    """The peer of a ``sparsenet_jax.SparseNet`` (reads its layout fields only).

    Performance switches of the JAX model (dtype, implementation choices) are
    ignored: the peer always runs float32 eager.
    """
    if getattr(model, "stem", "cifar") != "cifar":
        raise NotImplementedError("the torch peer implements the CIFAR stem only")
    return TorchNet(
        block_sizes=tuple(model.block_sizes),
        growth_rates=tuple(model.growth_rates),
        num_classes=model.num_classes,
        schedule=model.schedule.kind,
        base=model.schedule.base,
        aggregation=model.aggregation,
        unit=model.unit,
        compression=model.compression,
        stem_channels=model.stem_width,
        in_channels=model.in_channels,
    )


def count_params(net: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in net.parameters())


def make_sgd(
    net: nn.Module, lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 1e-4
) -> torch.optim.SGD:
    """Nesterov SGD with weight decay on conv and linear weights only (the official recipe)."""
    decay = [
        m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]  # BN scales and biases are not decayed
    decay_ids = {id(p) for p in decay}
    rest = [p for p in net.parameters() if id(p) not in decay_ids]
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        momentum=momentum,
        nesterov=True,
    )


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> torch.Tensor:
    """One SGD step on softmax cross-entropy; returns the (detached) loss.

    ``autocast`` (e.g. ``torch.autocast("cuda", torch.bfloat16)``) wraps the
    forward pass only, as PyTorch's mixed-precision recipe does.
    """
    opt.zero_grad(set_to_none=True)
    with autocast or contextlib.nullcontext():
        loss = F.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss.detach()
