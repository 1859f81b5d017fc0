"""The network: stem, aggregating blocks with transitions between them, head.

One module covers the whole family on two axes, schedule {dense, sparse} ×
aggregation {concat, sum}:

=============  ===========  ==================
schedule       aggregation  network
=============  ===========  ==================
sparse         concat       SparseNet[⊕]
dense          concat       DenseNet
sparse         sum          SparseNet[+] (our construction; the paper has no code for it)
dense          sum          pre-activation ResNet
=============  ===========  ==================
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sparsenet_jax.model.block import (
    UNIT_CLASSES,
    Aggregation,
    AggregationBlock,
    BlockImpl,
    Transition,
    UnitKind,
    make_conv,
    make_norm,
)
from sparsenet_jax.model.checks import STEM_KINDS, StemKind, validate_module
from sparsenet_jax.model.cpu_conv import AUTO_MIN_IN_PER_OUT, CONV_IMPL_PARTS, make_shift_conv
from sparsenet_jax.model.schedule import Schedule

__all__ = ["STEM_KINDS", "SparseNet", "StemKind", "init_variables", "validate_module"]


class SparseNet(nn.Module):
    """SparseNet, DenseNet or pre-activation ResNet, by ``schedule`` × ``aggregation``.

    Attributes:
      block_sizes: number of units in each block.
      growth_rates: per block, the width every unit emits (growth rate ``k``
        for concat; the stage width for sum).
      num_classes: width of the final dense layer.
      schedule: which earlier outputs each unit reads.
      aggregation: ``"concat"`` or ``"sum"``.
      unit: ``"plain"``, ``"bottleneck"``, ``"basic"`` or ``"res_bottleneck"``.
      compression: θ, transition width = floor(θ · channels) (concat only).
      stem: ``"cifar"`` (3×3 conv) or ``"imagenet"`` (7×7/2 conv, BN, ReLU, 3×3/2 max pool).
      stem_channels: stem width; default ``2 * growth_rates[0]`` for concat,
        ``growth_rates[0]`` for sum.
      in_channels: channels of the input images.
      dropout_rate: dropout after every conv of the units and transitions.
      dtype: compute dtype. param_dtype: parameter dtype.
      block_impl: ``"unrolled"`` (one graph node group a layer), ``"scan"``
        (runs of alike layers as one ``lax.scan`` carrying a ring of outputs)
        or ``"buffer"`` (every layer of a block as one ``lax.scan`` step over a
        fixed-width buffer of all its outputs, inputs padded to the block's
        widest with zero channels and zero kernel rows, so the loop body has
        one shape; see :mod:`sparsenet_jax.model.buffer_scan`). The same
        function and one parameter layout for all three. ``"buffer"``
        compiles a v5e train step ~4× faster but runs ~3.5–3.9× the
        compiler's estimated cycles (unfused slot moves), and XLA:CPU runs
        it far slower (``benchmarks/results/tpu-compile-notes.md`` §8), so
        no backend uses it by default.
      remat: recompute unit activations in the backward pass (less memory).
      pointwise_as_dot: build 1×1 convolutions as matmuls (same parameters
        and outputs; a faster gradient on XLA:CPU). ``False`` = ``nn.Conv``.
      share_stats: in training, compute each output's BatchNorm batch
        statistics once and hand them to every unit that reads it (concatenating
        blocks, unrolled); the same function, fewer reductions and bytes moved.
        ``build_run`` turns it on for TPU unless ``model_kwargs`` says otherwise.
      channel_bucket: 0 (off) or a width, e.g. 128: in concatenating blocks
        (unrolled), each unit's input is padded after its first BatchNorm and
        ReLU with zero channels to a multiple of it, and its first kernel with
        zero rows in the forward pass; the same parameters and function, and
        convolutions of a few shapes instead of one a layer (TPU compile time).
      per_input_conv: in training, in concatenating blocks (unrolled), each
        unit's first BatchNorm, ReLU and convolution act on the outputs it reads
        one by one, the convolutions summed, instead of on their concatenation:
        the same parameters and function (another summation order), and
        convolutions of a few shapes instead of one a layer. A v5e train step
        compiles in 0.61–0.72× the time for the SparseNets, at +3–18% estimated
        cycles (+51% for densenet-121), and an XLA:CPU step takes 1.7–1.9× as
        long, so no backend uses it by default (``benchmarks/results/tpu-compile-notes.md`` §10).
      conv_impl: ``"xla"``; ``"shift-dw"``: 3×3 weight gradients as one GEMM
        over the shifted output gradient; ``"gemm"``: the forward pass and the
        input gradient as GEMMs too (same function and parameters; on XLA:CPU a
        sparsenet-40-24 train step 1.37× faster with ``"shift-dw"`` than with
        XLA's convolutions, and 1.30× faster again with ``"gemm"``, but resnet-56's
        slower); or ``"auto"``: ``"gemm"`` only for convolutions whose input is at
        least twice as wide as their output (the trainer's CPU default). Not
        measured on GPU or TPU.
    """

    block_sizes: Sequence[int]
    growth_rates: Sequence[int]
    num_classes: int = 10
    schedule: Schedule = Schedule("sparse", 2)
    aggregation: Aggregation = "concat"
    unit: UnitKind = "plain"
    compression: float = 1.0
    stem: StemKind = "cifar"
    stem_channels: int | None = None
    in_channels: int = 3
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    block_impl: BlockImpl = "unrolled"
    remat: bool = False
    pointwise_as_dot: bool = True
    conv_impl: str = "xla"
    share_stats: bool = False
    channel_bucket: int = 0
    per_input_conv: bool = False

    def __post_init__(self) -> None:
        validate_module(self)
        super().__post_init__()

    @property
    def stem_width(self) -> int:
        if self.stem_channels is not None:
            return self.stem_channels
        return 2 * self.growth_rates[0] if self.aggregation == "concat" else self.growth_rates[0]

    def block_widths(self) -> list[tuple[int, int]]:
        """(input width, output width) of every block, from the schedule arithmetic."""
        widths = []
        channels = self.stem_width
        for i, (size, growth) in enumerate(zip(self.block_sizes, self.growth_rates, strict=True)):
            if i > 0:
                channels = self._transition_width(channels, growth)
            if self.aggregation == "concat":
                out = self.schedule.output_width(channels, growth, size)
            else:
                out = channels
            widths.append((channels, out))
            channels = out
        return widths

    def _transition_width(self, channels: int, next_growth: int) -> int:
        if self.aggregation == "sum":
            return next_growth
        return math.floor(self.compression * channels)

    @property
    def min_input_size(self) -> int:
        """Smallest height/width the downsampling layers accept."""
        return 2 ** (len(self.block_sizes) - 1) * (4 if self.stem == "imagenet" else 1)

    @property
    def default_input_size(self) -> int:
        """Height = width of the images the stem is built for: 224 (ImageNet stem) or 32."""
        return 224 if self.stem == "imagenet" else 32

    @property
    def default_input_shape(self) -> tuple[int, int, int, int]:
        """One image of :attr:`default_input_size`, NHWC: a sample input for ``init``."""
        size = self.default_input_size
        return (1, size, size, self.in_channels)

    def feature_info(self) -> list[dict[str, Any]]:
        """Per block: ``num_chs`` (channels), ``reduction`` (input size / map size), ``module``.

        Describes the maps :meth:`feature_maps` returns, in the same order.
        """
        first = 4 if self.stem == "imagenet" else 1
        return [
            {"num_chs": out, "reduction": first * 2**i, "module": f"dense-stage-{i}"}
            for i, (_, out) in enumerate(self.block_widths())
        ]

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Logits (float32) for a batch of NHWC float images."""
        return self._forward(x, train, "logits")  # type: ignore[return-value]

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Pre-logit features (N, C): after the head's BN, ReLU and global pool, before the dense layer.

        ``model.apply(variables, x, method=SparseNet.features)``; the classifier
        applied to them gives the logits.
        """
        return self._forward(x, train, "features")  # type: ignore[return-value]

    def feature_maps(self, x: jax.Array, train: bool = False) -> list[jax.Array]:
        """Each block's output map (NHWC), for detection or segmentation heads.

        ``model.apply(variables, x, method=SparseNet.feature_maps)``. Map ``i`` is
        block ``i``'s output before the next transition (the last one before the
        head's BN and ReLU); :meth:`feature_info` gives their channels and strides.
        """
        return self._forward(x, train, "maps")  # type: ignore[return-value]

    @nn.compact
    def _forward(
        self, x: jax.Array, train: bool, output: Literal["logits", "features", "maps"]
    ) -> jax.Array | list[jax.Array]:
        self._check_input(x)
        if self.conv_impl in CONV_IMPL_PARTS:
            forward, dx = CONV_IMPL_PARTS[self.conv_impl]
            ratio = AUTO_MIN_IN_PER_OUT if self.conv_impl == "auto" else 0
            conv = make_shift_conv(
                self.dtype, self.param_dtype, self.pointwise_as_dot, dx, ratio, forward
            )
        else:
            conv = make_conv(self.dtype, self.param_dtype, self.pointwise_as_dot)
        norm = make_norm(train, self.dtype, self.param_dtype)
        unit_cls = UNIT_CLASSES[self.unit]

        x = jnp.asarray(x, self.dtype)
        if self.stem == "imagenet":
            x = conv(self.stem_width, (7, 7), strides=(2, 2), padding=3, name="conv0")(x)
            x = nn.relu(norm(name="norm0")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(self.stem_width, (3, 3), padding=1, name="conv0")(x)

        maps = []
        for i, (size, growth) in enumerate(zip(self.block_sizes, self.growth_rates, strict=True)):
            if i > 0:
                x = Transition(
                    self._transition_width(x.shape[-1], growth),
                    conv=conv,
                    norm=norm,
                    dropout_rate=self.dropout_rate,
                    name=f"transition-{i - 1}",
                )(x, train)
            unit = functools.partial(unit_cls, conv=conv, norm=norm, dropout_rate=self.dropout_rate)
            x = AggregationBlock(
                num_layers=size,
                growth_rate=growth,
                schedule=self.schedule,
                aggregation=self.aggregation,
                unit=unit,
                impl=self.block_impl,
                remat=self.remat,
                share_stats=self.share_stats,
                channel_bucket=self.channel_bucket,
                per_input_conv=self.per_input_conv,
                name=f"dense-stage-{i}",
            )(x, train)
            maps.append(x)
        if output == "maps":
            return maps

        x = nn.relu(norm(name="norm_last")(x))
        x = jnp.mean(x, axis=(1, 2))
        if output == "features":
            return x
        x = nn.Dense(
            self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name="classifier"
        )(x)
        return jnp.asarray(x, jnp.float32)

    def _check_input(self, x: jax.Array) -> None:
        if x.ndim != 4:
            raise ValueError(
                f"expected a batch of NHWC images (rank 4), got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels (NHWC, channels last), "
                f"got shape {tuple(x.shape)}"
            )
        if min(x.shape[1], x.shape[2]) < self.min_input_size:
            raise ValueError(
                f"images of {x.shape[1]}×{x.shape[2]} are too small for this network: "
                f"it needs at least {self.min_input_size}×{self.min_input_size}"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"expected float images, got {x.dtype}: normalise raw pixels first, "
                f"x = (images / 255 - mean) / std per channel, with the training data's "
                f"statistics ({self._normalisation_stats()}; "
                f"sparsenet_jax.pretrained_cfg(name) has them per preset)"
            )

    def _normalisation_stats(self) -> str:
        from sparsenet_jax.data import dataset_info  # only on this error path

        names = ("imagenet2012",) if self.stem == "imagenet" else ("cifar10", "cifar100", "digits")
        infos = [dataset_info(n) for n in names]
        stats = [
            f"{i.name}: mean {i.mean}, std {i.std}" for i in infos if i.channels == self.in_channels
        ]
        return "; ".join(stats) or "compute them on your training images"


def init_variables(
    model: SparseNet, seed: int | jax.Array = 0, input_shape: Sequence[int] | None = None
) -> Any:
    """Initialise ``model``'s variables under ``jax.jit``.

    Draws with the ``rbg`` PRNG: XLA compiles its generator far faster than
    threefry's (on a 2-core CPU, 5 s instead of 20 s for a 25-layer network),
    and initial values need no bit-exact cross-platform reproducibility.

    Args:
      model: the network.
      seed: an integer seed or a PRNG key.
      input_shape: NHWC shape to trace with (default
        ``model.default_input_shape``: one 32×32 or 224×224 image).

    Returns:
      ``{"params": ..., "batch_stats": ...}``.
    """
    if input_shape is None:
        input_shape = model.default_input_shape
    key = jax.random.key(seed, impl="rbg") if isinstance(seed, int) else seed
    x = jnp.zeros(tuple(input_shape), jnp.float32)
    if not _hashable(model):  # e.g. block_sizes given as a list: no shared program
        return jax.jit(model.init)(key, x)
    return _jitted_init(model, key, x)


# One jitted init for every call with an equal module: a fresh ``jax.jit(model.init)``
# traces and compiles again each time, and the trainer initialises the same network
# once for its shapes and again per seed.
@functools.partial(jax.jit, static_argnums=0)
def _jitted_init(model: SparseNet, key: jax.Array, x: jax.Array) -> Any:
    return model.init(key, x)


def _hashable(model: SparseNet) -> bool:
    try:
        hash(model)
    except TypeError:
        return False
    return True


def abstract_variables(model: SparseNet, input_shape: Sequence[int] | None = None) -> Any:
    """``model``'s variables as ``jax.ShapeDtypeStruct`` leaves: shapes only, nothing allocated.

    The one place that traces a network's variables without making them (the
    parameter count, checkpoint and weight-file checks all use it).
    """
    if input_shape is None:
        input_shape = model.default_input_shape
    zeros = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), zeros)


def count_params(variables: Any) -> int:
    """Number of trainable parameters.

    Args:
      variables: the dict returned by ``model.init`` (its ``"params"`` are
        counted; ``batch_stats`` are not) or a params tree itself. Arrays or
        ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``) both work.

    Returns:
      The total number of elements.
    """
    if hasattr(variables, "keys") and "params" in variables:
        variables = variables["params"]
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables)))
