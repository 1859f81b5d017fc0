"""A block's layers as one ``lax.scan`` over a fixed-width buffer (``block_impl="buffer"``).

The buffer holds the block input ``x_0`` and every layer's output side by side
on the channel axis, in slots of the growth rate's width
(:class:`~sparsenet_jax.model.schedule.SlotPlan`). One scan step is one layer:
it reads the same number of slots by dynamic slices (the always-zero slot 0
where the layer reads fewer), concatenates or sums them, runs the unit and
writes the output into its slot with ``dynamic_update_slice``. Every step has
one shape, so the compiler generates the loop body once instead of once a layer.

The unit's input-side variables (first BatchNorm, first convolution's kernel
rows) are laid out on the same padded channels (:func:`widen`), with zero
scale, bias and kernel rows on the padding: the padded channels leave the
BatchNorm and ReLU as zeros and meet zero rows, so a step computes what the
unrolled layer computes.

Backward pass (:func:`scan_layers`' custom VJP): every slot is written once
and never overwritten, so the final buffer holds every value any step read.
The backward scan reads each step's input again from it and recomputes the
unit's forward before its VJP; the cotangents of the slots a step read are
added into a cotangent buffer of the same width. Nothing is stacked per step
for the backward pass but the parameters' cotangents: a plain ``jax.grad`` of
the scan would save every step's intermediates at the padded width (for
sparsenet-40-24's first block, 700 MiB of float32 and bf16 residuals, against
278 MiB of temporaries for the whole unrolled train step on TPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsenet_jax.model.norms import channel_stats
from sparsenet_jax.model.schedule import Run, SlotPlan


def aggregate(parts: Sequence[jax.Array], aggregation: str) -> jax.Array:
    """Concatenate ``parts`` along channels, or sum them in order."""
    if len(parts) == 1:
        return parts[0]
    if aggregation == "concat":
        return jnp.concatenate(parts, axis=-1)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _spread(leaf: jax.Array, runs: Sequence[Run], axis: int, fill: float = 0.0) -> jax.Array:
    """``leaf``'s rows along ``axis`` laid out as ``runs``: its own rows, and ``fill`` rows."""
    pieces = []
    for start, stop in runs:
        if start is None:
            shape = list(leaf.shape)
            shape[axis] = stop
            pieces.append(jnp.full(shape, fill, leaf.dtype))
        else:
            pieces.append(jax.lax.slice_in_dim(leaf, start, stop, axis=axis))
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis)


def _unspread(padded: jax.Array, runs: Sequence[Run], axis: int) -> jax.Array:
    """The inverse of :func:`_spread`: the rows of ``padded`` that are a layer's own."""
    pieces, at = [], 0
    for start, stop in runs:
        count = stop if start is None else stop - start
        if start is not None:
            pieces.append(jax.lax.slice_in_dim(padded, at, at + count, axis=axis))
        at += count
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis)


# The variables of a unit that see its concatenated input's channels: the first
# BatchNorm's, and the first convolution's kernel rows (axis −2). On padded
# channels: zero scale and bias (they leave the first BatchNorm and ReLU as
# zeros), zero kernel rows, and a harmless running mean 0 and variance 1.
_INPUT_SIDE = {
    ("bn1", "scale"): 0.0,
    ("bn1", "bias"): 0.0,
    ("bn1", "mean"): 0.0,
    ("bn1", "var"): 1.0,
}


def widen(tree: Any, runs: Sequence[Run], inverse: bool = False) -> Any:
    """A unit's variables with their input-side rows laid out as ``runs`` (or back, ``inverse``)."""
    out = {name: dict(sub) if name in ("bn1", "conv1") else sub for name, sub in tree.items()}
    for (module, leaf), fill in _INPUT_SIDE.items():
        if leaf in out.get(module, {}):
            value = out[module][leaf]
            out[module][leaf] = (
                _unspread(value, runs, 0) if inverse else _spread(value, runs, 0, fill)
            )
    if "kernel" in out.get("conv1", {}):
        kernel = out["conv1"]["kernel"]
        axis = kernel.ndim - 2
        out["conv1"]["kernel"] = (
            _unspread(kernel, runs, axis) if inverse else _spread(kernel, runs, axis)
        )
    return out


# unit(variables, h, stats, rng) -> (y, new batch_stats or None)
UnitFn = Callable[[Any, jax.Array, Any, jax.Array], tuple[jax.Array, Any]]


def _read(array: jax.Array, slots: jax.Array, plan: SlotPlan) -> list[jax.Array]:
    k = plan.slot_width
    return [
        jax.lax.dynamic_slice_in_dim(array, slots[j] * k, k, axis=-1) for j in range(plan.reads)
    ]


def _add_into(array: jax.Array, slots: jax.Array, parts: Sequence[jax.Array], k: int) -> jax.Array:
    """``array`` with each of ``parts`` added into the slot it was read from (in order)."""
    for j, part in enumerate(parts):
        start = slots[j] * k
        current = jax.lax.dynamic_slice_in_dim(array, start, k, axis=-1)
        array = jax.lax.dynamic_update_slice_in_dim(array, current + part, start, -1)
    return array


def _moments(y: jax.Array) -> jax.Array:
    return jnp.stack(channel_stats(y))


def _initial(x: jax.Array, plan: SlotPlan, share: bool) -> tuple[jax.Array, jax.Array]:
    """The buffer with ``x_0`` in its slots, and its statistics (or an empty array)."""
    k, room, rest = plan.slot_width, plan.x0_slots * plan.slot_width, plan.num_slots - 1
    lead = x.shape[:-1]
    width = rest * k - room  # the layers' slots
    buffer = jnp.concatenate(
        [jnp.zeros((*lead, k), x.dtype), _pad(x, room), jnp.zeros((*lead, width), x.dtype)], -1
    )
    if not share:
        return buffer, jnp.zeros((2, 0), jnp.float32)
    moments = _moments(x)
    zeros = jnp.zeros((2, k), moments.dtype)
    tail = jnp.zeros((2, width), moments.dtype)
    return buffer, jnp.concatenate([zeros, _pad(moments, room), tail], -1)


def _pad(x: jax.Array, width: int) -> jax.Array:
    extra = width - x.shape[-1]
    return x if extra == 0 else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def scan_layers(
    unit: UnitFn,
    plan: SlotPlan,
    aggregation: str,
    share: bool,
    x: jax.Array,
    variables: Any,
    rngs: Any,
) -> tuple[jax.Array, Any]:
    """Run the block's layers over the buffer: ``(final buffer, stacked new batch_stats)``.

    ``variables`` are the layers' (widened) variables stacked on a leading
    axis, ``rngs`` one dropout key (or a dummy) per layer. ``share``: hand each
    unit its input's batch statistics, each slot's computed once when written.
    """
    buffer, _, new_stats = _forward(unit, plan, aggregation, share, x, variables, rngs)
    return buffer, new_stats


def _forward(
    unit: UnitFn,
    plan: SlotPlan,
    aggregation: str,
    share: bool,
    x: jax.Array,
    variables: Any,
    rngs: Any,
) -> tuple[jax.Array, jax.Array, Any]:
    k = plan.slot_width
    buffer, moments = _initial(x, plan, share)
    reads = jnp.asarray(plan.read_slots, jnp.int32)
    writes = jnp.asarray([plan.slot(layer) for layer in range(1, len(plan.read_slots) + 1)])

    def body(carry: Any, xs: Any) -> tuple[Any, Any]:
        buffer, moments = carry
        slots, write, layer_vars, rng = xs
        h = aggregate(_read(buffer, slots, plan), aggregation)
        stats = None
        if share:
            both = jnp.concatenate(_read(moments, slots, plan), axis=-1)
            stats = (both[0], both[1])
        y, new_stats = unit(layer_vars, h, stats, rng)
        y = y.astype(buffer.dtype)
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, y, write * k, -1)
        if share:
            moments = jax.lax.dynamic_update_slice_in_dim(moments, _moments(y), write * k, -1)
        return (buffer, moments), new_stats

    (buffer, moments), new_stats = jax.lax.scan(
        body, (buffer, moments), (reads, writes, variables, rngs)
    )
    return buffer, moments, new_stats


def _scan_fwd(
    unit: UnitFn,
    plan: SlotPlan,
    aggregation: str,
    share: bool,
    x: jax.Array,
    variables: Any,
    rngs: Any,
) -> tuple[tuple[jax.Array, Any], Any]:
    buffer, moments, new_stats = _forward(unit, plan, aggregation, share, x, variables, rngs)
    return (buffer, new_stats), (x, buffer, moments, variables, rngs)


def _scan_bwd(
    unit: UnitFn, plan: SlotPlan, aggregation: str, share: bool, residuals: Any, cts: Any
) -> tuple[Any, Any, Any]:
    x, buffer, moments, variables, rngs = residuals
    ct_buffer, ct_new_stats = cts
    k = plan.slot_width
    reads = jnp.asarray(plan.read_slots, jnp.int32)
    writes = jnp.asarray([plan.slot(layer) for layer in range(1, len(plan.read_slots) + 1)])
    ct_moments = jnp.zeros_like(moments)
    ct_buffer = ct_buffer.astype(buffer.dtype)

    def body(carry: Any, xs: Any) -> tuple[Any, Any]:
        ct_buffer, ct_moments = carry
        slots, write, layer_vars, rng, ct_stats_out = xs
        ct_y = jax.lax.dynamic_slice_in_dim(ct_buffer, write * k, k, axis=-1)
        if share:  # the slot's statistics were read by later layers
            y = jax.lax.dynamic_slice_in_dim(buffer, write * k, k, axis=-1)
            _, moments_vjp = jax.vjp(_moments, y)
            (ct_from_stats,) = moments_vjp(
                jax.lax.dynamic_slice_in_dim(ct_moments, write * k, k, axis=-1)
            )
            ct_y = ct_y + ct_from_stats.astype(ct_y.dtype)
        parts = _read(buffer, slots, plan)
        stat_parts = _read(moments, slots, plan) if share else []

        def step(layer_vars: Any, parts: list[jax.Array], stat_parts: list[jax.Array]) -> Any:
            h = aggregate(parts, aggregation)
            stats = None
            if share:
                both = jnp.concatenate(stat_parts, axis=-1)
                stats = (both[0], both[1])
            return unit(layer_vars, h, stats, rng)

        (y, _), step_vjp = jax.vjp(step, layer_vars, parts, stat_parts)
        ct_vars, ct_parts, ct_stat_parts = step_vjp((ct_y.astype(y.dtype), ct_stats_out))
        ct_buffer = _add_into(ct_buffer, slots, [c.astype(ct_buffer.dtype) for c in ct_parts], k)
        if share:
            ct_moments = _add_into(ct_moments, slots, ct_stat_parts, k)
        return (ct_buffer, ct_moments), ct_vars

    (ct_buffer, ct_moments), ct_vars = jax.lax.scan(
        body, (ct_buffer, ct_moments), (reads, writes, variables, rngs, ct_new_stats), reverse=True
    )
    c0 = x.shape[-1]
    ct_x = jax.lax.slice_in_dim(ct_buffer, k, k + c0, axis=-1).astype(x.dtype)
    if share:
        _, x_vjp = jax.vjp(_moments, x)
        (ct_from_stats,) = x_vjp(jax.lax.slice_in_dim(ct_moments, k, k + c0, axis=-1))
        ct_x = ct_x + ct_from_stats.astype(x.dtype)
    ct_rngs = jax.tree_util.tree_map(lambda r: np.zeros(r.shape, jax.dtypes.float0), rngs)
    return ct_x, ct_vars, ct_rngs


scan_layers.defvjp(_scan_fwd, _scan_bwd)
