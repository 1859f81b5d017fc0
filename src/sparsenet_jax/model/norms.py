"""BatchNorm whose batch statistics can be computed once per tensor and shared by its readers.

In a concatenating block every unit normalises the concatenation of the
earlier outputs it reads. A channel's batch mean and variance are the same
whichever unit reads it, so :class:`~sparsenet_jax.model.block.AggregationBlock`
computes them once, when the output is made (:func:`channel_stats`), and hands
each reader the concatenation of its inputs' statistics. That removes two
reductions over every input of every unit (the statistics passes of
``nn.BatchNorm``), and in the backward pass the statistics' gradients of all
readers of a tensor reach it through one expression instead of one a reader.

:class:`BatchNorm` is ``nn.BatchNorm`` with the same variables (``scale``,
``bias``; ``mean``, ``var``) and the same arithmetic, so checkpoints,
the PyTorch converter and the running averages are unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Stats = tuple[jax.Array, jax.Array]


def channel_stats(x: jax.Array) -> Stats:
    """Batch mean and two-pass variance of each channel of NHWC ``x``, as nn.BatchNorm makes them.

    Reductions run in float32 at least, whatever ``x``'s dtype (as Flax's
    ``force_float32_reductions``).
    """
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    return mean, jnp.square(x - mean).mean(axes)


def concat_stats(parts: Sequence[Stats]) -> Stats:
    """The statistics of the channel concatenation of tensors with statistics ``parts``."""
    if len(parts) == 1:
        return parts[0]
    return (
        jnp.concatenate([mean for mean, _ in parts]),
        jnp.concatenate([var for _, var in parts]),
    )


class BatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` that may be given its input's batch statistics as ``stats=(mean, var)``.

    With ``stats`` in training it skips computing them and otherwise does what
    ``nn.BatchNorm`` does (feature axis last, scale and bias, float32
    statistics): normalises with them and moves the running averages towards them.

    ``x`` may also be a sequence of tensors that stand for their channel
    concatenation (``per_input_conv``): the result is then the list of their
    normalised parts, each the slice of what the concatenation would give,
    and the concatenation is never built.
    """

    @nn.compact
    def __call__(
        self,
        x: Any,
        use_running_average: bool | None = None,
        *,
        mask: jax.Array | None = None,
        stats: Stats | None = None,
    ) -> Any:
        running = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        parts = isinstance(x, (list, tuple))
        if not parts and (stats is None or running or self.is_initializing() or mask is not None):
            return super().__call__(x, use_running_average, mask=mask)
        if parts and (self.is_initializing() or mask is not None):
            raise ValueError("BatchNorm of parts needs initialised variables and no mask")
        if self.axis_name is not None or self.use_fast_variance:
            # Statistics computed here are per device and two-pass: refuse what would differ.
            raise ValueError(
                "BatchNorm with precomputed statistics or parts needs axis_name=None "
                "and use_fast_variance=False"
            )
        pieces: list[jax.Array] = list(x) if parts else [x]
        if self.axis not in (-1, pieces[0].ndim - 1) or not (self.use_scale and self.use_bias):
            raise ValueError(
                "BatchNorm with precomputed statistics or parts needs axis=-1 with scale and bias"
            )
        features = (sum(p.shape[-1] for p in pieces),)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        if running:
            mean, var = ra_mean.value, ra_var.value
        else:
            mean, var = (
                stats if stats is not None else concat_stats([channel_stats(p) for p in pieces])
            )
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        scale = self.param("scale", self.scale_init, features, self.param_dtype)
        bias = self.param("bias", self.bias_init, features, self.param_dtype)
        # The order of Flax's _normalize: (x − mean) · (rsqrt(var + ε) · scale) + bias.
        mul = jax.lax.rsqrt(var + self.epsilon) * scale
        out, start = [], 0
        for piece in pieces:
            cut = slice(start, start + piece.shape[-1])
            start = cut.stop
            y = (piece - mean[cut]) * mul[cut] + bias[cut]
            dtype = self.dtype if self.dtype is not None else jnp.result_type(piece, scale, bias)
            out.append(jnp.asarray(y, dtype))
        return out if parts else out[0]


def make_norm(train: bool, dtype: Any, param_dtype: Any) -> Callable[..., BatchNorm]:
    """The units' BatchNorm: PyTorch's momentum and epsilon, two-pass variance."""
    # Flax momentum 0.9 == PyTorch momentum 0.1; eps as in PyTorch.
    return functools.partial(
        BatchNorm,
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        # Two-pass variance, as PyTorch: E[x²]−E[x]² loses precision and gradients drift.
        use_fast_variance=False,
        dtype=dtype,
        param_dtype=param_dtype,
    )
