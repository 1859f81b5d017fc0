"""The aggregating block: units wired by a schedule, their outputs concatenated or summed.

The units and the transition live in :mod:`sparsenet_jax.model.units` and are
re-exported here, so ``layers`` stays the one import for a block's parts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsenet_jax.model.buffer_scan import aggregate as _aggregate
from sparsenet_jax.model.buffer_scan import scan_layers, widen
from sparsenet_jax.model.norms import channel_stats, concat_stats, make_norm
from sparsenet_jax.model.schedule import Schedule, segments, slot_plan
from sparsenet_jax.model.units import (
    UNIT_CLASSES,
    UNIT_KINDS,
    BasicUnit,
    BottleneckUnit,
    PlainUnit,
    PointwiseConv,
    ResBottleneckUnit,
    Transition,
    UnitKind,
    make_conv,
)

# Re-exported: models and tests build a block's parts from this module.
__all__ = [
    "UNIT_CLASSES",
    "UNIT_KINDS",
    "AggregationBlock",
    "BasicUnit",
    "BottleneckUnit",
    "PlainUnit",
    "PointwiseConv",
    "ResBottleneckUnit",
    "Transition",
    "UnitKind",
    "make_conv",
    "make_norm",
]

Aggregation = Literal["concat", "sum"]
AGGREGATIONS: tuple[str, ...] = ("concat", "sum")


BlockImpl = Literal["unrolled", "scan", "buffer"]
BLOCK_IMPLS: tuple[str, ...] = ("unrolled", "scan", "buffer")


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
    ``impl="buffer"`` runs every layer of the block as one ``lax.scan`` step
    over a fixed-width buffer of all its outputs: each step reads a fixed
    number of slots by dynamic slices and writes its output into its slot,
    inputs padded to one width with zero channels and zero kernel rows, so one
    loop body serves every layer; its backward pass recomputes each unit from
    the buffer instead of saving per-step activations
    (:mod:`sparsenet_jax.model.buffer_scan`). Dense + sum is the running-sum scan.
    ``remat=True`` recomputes each unit's activations in the backward pass
    instead of storing them. ``share_stats`` (concatenation, unrolled, training):
    each output's BatchNorm batch statistics are computed once and handed to
    every unit that reads it (:mod:`sparsenet_jax.model.norms`); equal in float64,
    fewer reductions and bytes moved. Off by default (``build_run`` turns it on
    for TPU): in float32 its rounding puts one leaf of the reference SGD step
    (sparsenet-bc-46-6) at 2.2% of the update, over the 2% bound that catches a
    wrong optimizer convention.

    ``channel_bucket`` (concatenation, unrolled; 0 = off): each unit's input is
    padded, after its first BatchNorm and ReLU, with zero channels up to the
    next multiple of ``channel_bucket``, and its first convolution's kernel with
    zero rows in the forward pass (:class:`~sparsenet_jax.model.units.PaddedConv`).
    Same parameters, same function; units whose inputs differ in width then
    run first convolutions of a few shapes, and the TPU compiler, whose time
    grows with the number of distinct fusions, generates each one once. On a
    TPU a channel axis occupies 128 lanes anyway, so 128 costs little there
    (``benchmarks/results/tpu-compile-notes.md``).

    ``per_input_conv`` (concatenation, unrolled, training): each unit gets the
    outputs it reads as separate tensors and never concatenates them: its
    first BatchNorm and ReLU act on each, and its first convolution is one
    convolution per input, on that input's rows of the kernel, summed
    (:class:`~sparsenet_jax.model.units.PerInputConv`). Same parameters, same
    function in another summation order; every layer's convolutions then have
    the shapes of one or two kinds of input (a growth-rate-wide output, the
    block input), whatever the number it reads, and the TPU compiler generates
    far fewer distinct ones. The eval step keeps the concatenation: there the
    partial sums moved 1.8–2× the bytes (``tpu-compile-notes.md`` §10).
    """

    num_layers: int
    growth_rate: int
    schedule: Schedule
    aggregation: Aggregation
    unit: Callable[..., nn.Module]  # unit(features, name=..., parent=...)
    impl: BlockImpl = "unrolled"
    remat: bool = False
    share_stats: bool = False
    channel_bucket: int = 0
    per_input_conv: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if self.aggregation == "sum" and x.shape[-1] != self.growth_rate:
            raise ValueError(
                f"summation needs every output as wide as the block input: input has "
                f"{x.shape[-1]} channels, units emit {self.growth_rate}"
            )
        if self.impl not in BLOCK_IMPLS:
            raise ValueError(f"block impl must be one of {BLOCK_IMPLS}, got {self.impl!r}")
        if self.per_input_conv and (self.impl != "unrolled" or self.channel_bucket):
            raise ValueError("per_input_conv needs impl 'unrolled' and channel_bucket 0")
        # Initialisation always takes the unrolled path: it creates the
        # variables that both paths share.
        if self.impl == "scan" and not self.is_initializing():
            return self._scanned(x, train)
        if self.impl == "buffer" and not self.is_initializing():
            if self.aggregation == "sum" and self.schedule.kind == "dense":
                return self._scanned(x, train)  # a running sum: one shape already
            return self._buffered(x, train)
        if self.aggregation == "sum" and self.schedule.kind == "dense":
            return self._running_sum(x, train)
        unit_cls = nn.remat(self.unit, static_argnums=(2,)) if self.remat else self.unit
        share = (
            self.share_stats
            and train
            and self.aggregation == "concat"
            and not self.is_initializing()
        )
        bucket = (
            self.channel_bucket
            if self.aggregation == "concat" and not self.is_initializing()
            else 0
        )
        # Training only: in the eval step nothing is kept for a backward pass, and the
        # partial sums cost more bytes than the concatenation they replace.
        split = (
            self.per_input_conv
            and train
            and self.aggregation == "concat"
            and not self.is_initializing()
        )
        outputs, stats = [x], [channel_stats(x) if share else None]
        for layer in range(1, self.num_layers + 1):
            reads = self.schedule.inputs(layer)
            layer_input = (
                tuple(outputs[i] for i in reads)
                if split
                else _aggregate([outputs[i] for i in reads], self.aggregation)
            )
            layer_stats = concat_stats([stats[i] for i in reads]) if share else None  # type: ignore[misc]
            pad = {}
            if bucket:  # concatenation only
                width = sum(outputs[i].shape[-1] for i in reads)
                pad = {"pad_to": -(-width // bucket) * bucket}
            y = unit_cls(self.growth_rate, name=f"block-{layer}", **pad)(
                layer_input, train, layer_stats
            )
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

    # -- the fixed-width buffer ------------------------------------------------------

    def _buffered(self, x: jax.Array, train: bool) -> jax.Array:
        """Every layer of the block as one ``lax.scan`` step over one fixed-width buffer.

        See :mod:`sparsenet_jax.model.buffer_scan`. The backward pass always
        recomputes each unit from the buffer, so ``remat`` changes nothing here.
        """
        n, k = self.num_layers, self.growth_rate
        concat = self.aggregation == "concat"
        plan = slot_plan(self.schedule, n, x.shape[-1], k)
        names = [f"block-{layer}" for layer in range(1, n + 1)]
        layers = []
        for name, runs in zip(names, plan.runs, strict=True):
            layer = {col: self.variables[col][name] for col in ("params", "batch_stats")}
            layers.append({c: widen(t, runs) for c, t in layer.items()} if concat else layer)
        stacked = _stack(layers)

        template = self.unit(k, parent=None)
        needs_rng = train and getattr(template, "dropout_rate", 0.0) > 0.0
        rngs = (
            jax.random.split(self.make_rng("dropout"), n)
            if needs_rng
            else jnp.zeros((n,), jnp.uint32)
        )

        def run_unit(variables: Any, h: jax.Array, stats: Any, rng: jax.Array) -> Any:
            if not train:
                return template.apply(variables, h, False), None
            y, new = template.apply(
                variables,
                h,
                True,
                stats,
                mutable=["batch_stats"],
                rngs={"dropout": rng} if needs_rng else None,
            )
            return y, new["batch_stats"]

        share = self.share_stats and train and concat
        buffer, new_stats = scan_layers(run_unit, plan, self.aggregation, share, x, stacked, rngs)
        if train:
            for name, value, runs in zip(names, _unstack(new_stats, n), plan.runs, strict=True):
                value = widen(value, runs, inverse=True) if concat else value
                self.put_variable("batch_stats", name, value)

        def output(index: int) -> jax.Array:
            if index == 0:
                return x
            first = plan.slot(index) * k
            return jax.lax.slice_in_dim(buffer, first, first + k, axis=-1)

        return _aggregate([output(i) for i in self.schedule.block_output(n)], self.aggregation)
