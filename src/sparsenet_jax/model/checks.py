"""Checks of a network's fields, run when a :class:`~sparsenet_jax.model.network.SparseNet` is built.

Each raises ``ValueError`` or ``TypeError`` naming the first bad field, so a
typo in a preset override fails at construction, not deep inside tracing.
"""

from __future__ import annotations

from typing import Any, Literal

import jax.numpy as jnp

from sparsenet_jax.model.block import AGGREGATIONS, BLOCK_IMPLS, UNIT_KINDS
from sparsenet_jax.model.cpu_conv import CONV_IMPLS
from sparsenet_jax.model.schedule import Schedule

# The network is passed in as `Any`: importing its class here, even for typing only,
# would tie this module and network.py in a circle.
SparseNet = Any

StemKind = Literal["cifar", "imagenet"]
STEM_KINDS: tuple[str, ...] = ("cifar", "imagenet")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_module(model: SparseNet) -> None:
    """Raise ``ValueError``/``TypeError`` naming the first bad field of the module ``model``."""
    if not isinstance(model.schedule, Schedule):
        raise TypeError(f"schedule must be a Schedule, got {model.schedule!r}")
    if model.aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {model.aggregation!r}")
    if model.unit not in UNIT_KINDS:
        raise ValueError(f"unit must be one of {UNIT_KINDS}, got {model.unit!r}")
    if model.block_impl not in BLOCK_IMPLS:
        raise ValueError(f"block_impl must be one of {BLOCK_IMPLS}, got {model.block_impl!r}")
    if model.stem not in STEM_KINDS:
        raise ValueError(f"stem must be one of {STEM_KINDS}, got {model.stem!r}")
    _check_layout(model)
    _check_types(model)
    _check_ranges(model)


def _check_layout(model: SparseNet) -> None:
    sizes, growths = tuple(model.block_sizes), tuple(model.growth_rates)
    if not sizes:
        raise ValueError("block_sizes must name at least one block")
    if len(sizes) != len(growths):
        raise ValueError(
            f"block_sizes {sizes} and growth_rates {growths} must have one entry per block"
        )
    for name, values in (("block_sizes", sizes), ("growth_rates", growths)):
        if not all(_is_int(v) and v >= 1 for v in values):
            raise ValueError(f"{name} must be positive integers, got {values}")
    for name, value in (("num_classes", model.num_classes), ("in_channels", model.in_channels)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if model.stem_channels is not None and (
        not _is_int(model.stem_channels) or model.stem_channels < 1
    ):
        raise ValueError(f"stem_channels must be a positive integer, got {model.stem_channels!r}")


def _check_types(model: SparseNet) -> None:
    for name in ("compression", "dropout_rate"):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
    for name in ("remat", "pointwise_as_dot", "share_stats", "per_input_conv"):
        if not isinstance(value := getattr(model, name), bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    for name in ("dtype", "param_dtype"):
        try:
            dtype = jnp.dtype(getattr(model, name))
        except TypeError:
            raise TypeError(
                f"{name} must be a floating dtype, got {getattr(model, name)!r}"
            ) from None
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{name} must be a floating dtype, got {getattr(model, name)!r}")


def _check_ranges(model: SparseNet) -> None:
    growths = tuple(model.growth_rates)
    if not 0.0 < model.compression <= 1.0:
        raise ValueError(f"compression must be in (0, 1], got {model.compression}")
    if not 0.0 <= model.dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {model.dropout_rate}")
    if model.aggregation == "sum":
        if model.compression != 1.0:
            raise ValueError("compression applies to concatenation only; use 1.0 with sum")
        stem = model.stem_channels if model.stem_channels is not None else growths[0]
        if stem != growths[0]:
            raise ValueError(
                f"with summation the stem must be as wide as the first block "
                f"({growths[0]}), got stem_channels={stem}"
            )
    if not _is_int(model.channel_bucket) or model.channel_bucket < 0:
        raise ValueError(
            f"channel_bucket must be 0 (off) or a positive width, got {model.channel_bucket!r}"
        )
    if model.conv_impl not in CONV_IMPLS:
        raise ValueError(
            f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {model.conv_impl!r}"
        )
    if model.conv_impl != "xla" and model.channel_bucket:
        raise ValueError("channel_bucket needs conv_impl 'xla'")
    if model.block_impl != "unrolled" and model.channel_bucket:
        raise ValueError(
            f"channel_bucket pads the unrolled block's inputs; block_impl "
            f"{model.block_impl!r} has its own layout: use channel_bucket=0"
        )
    if model.per_input_conv and (model.block_impl != "unrolled" or model.channel_bucket):
        raise ValueError(
            "per_input_conv splits the unrolled block's inputs: it needs block_impl "
            f"'unrolled' and channel_bucket 0, got {model.block_impl!r} and {model.channel_bucket}"
        )
    if model.unit == "res_bottleneck" and any(g % 4 for g in growths):
        raise ValueError(f"res_bottleneck widths must be multiples of 4, got {growths}")
    _check_transition_widths(model)


def _check_transition_widths(model: SparseNet) -> None:
    """A compressing transition must keep at least one channel (a narrow block's output,
    halved and rounded down, can be 0: a layer with no channels cannot be initialised)."""
    # Closed form (a billion layers count at once); imported here: arithmetic imports
    # the network module, which imports this one.
    from sparsenet_jax.model.arithmetic import block_layouts

    layouts = block_layouts(model)
    for block in range(1, len(layouts)):
        width, previous = layouts[block][0], layouts[block - 1][3]
        if width < 1:
            raise ValueError(
                f"the transition after block {block} would have 0 channels "
                f"(floor({model.compression} x {previous})): use a larger growth rate "
                f"or compression, got growth_rates {tuple(model.growth_rates)}"
            )


# The old name, kept while model/network.py still imports it (issue 17: it validates a module).
