"""Connection schedules: which earlier outputs each layer of a block reads.

Number a block's input ``x_0`` and its layers' outputs ``x_1 … x_n``.

* **dense** (DenseNet, ResNet): layer ``l`` reads every earlier output,
  ``x_0 … x_{l-1}``, oldest first (the official DenseNet concatenation order).
  The block output is ``x_0 … x_n``.
* **sparse** with base ``c`` (SparseNet): layer ``l`` reads ``x_{l-1}``,
  ``x_{l-c}``, ``x_{l-c^2}``, … while the offset ``c^j <= l``, newest first (the
  official SparseNet concatenation order). The block output applies the same
  rule to a virtual layer ``n + 1``.

Everything here is plain Python, hashable and cached: a Flax module evaluates
it while ``__call__`` traces, so the schedule costs nothing at run time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

ScheduleKind = Literal["dense", "sparse"]
SCHEDULE_KINDS: tuple[str, ...] = ("dense", "sparse")


@functools.cache
def _sparse_reads(layer: int, base: int) -> tuple[int, ...]:
    reads = []
    offset = 1
    while offset <= layer:
        reads.append(layer - offset)
        offset *= base
    return tuple(reads)


@dataclass(frozen=True)
class Schedule:
    """A connection schedule for the layers of one block.

    Attributes:
      kind: ``"dense"`` or ``"sparse"``.
      base: the base ``c`` of the exponential offsets (sparse only; ``>= 2``).
    """

    kind: ScheduleKind = "sparse"
    base: int = 2

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind must be one of {SCHEDULE_KINDS}, got {self.kind!r}")
        if isinstance(self.base, bool) or not isinstance(self.base, int):
            raise TypeError(f"schedule base must be an int, got {self.base!r}")
        if self.base < 2:
            raise ValueError(f"schedule base must be >= 2, got {self.base}")

    def inputs(self, layer: int) -> tuple[int, ...]:
        """Indices of the outputs layer ``layer`` (>= 1) reads, in concatenation order.

        Dense: oldest first ``(0, 1, …, l-1)``. Sparse: newest first ``(l-1, l-c, …)``.
        """
        if layer < 1:
            raise ValueError(f"layers are numbered from 1, got {layer}")
        if self.kind == "dense":
            return tuple(range(layer))
        return _sparse_reads(layer, self.base)

    def block_output(self, num_layers: int) -> tuple[int, ...]:
        """Indices of the outputs that form the block's output, in order."""
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}")
        if self.kind == "dense":
            return tuple(range(num_layers + 1))
        return _sparse_reads(num_layers + 1, self.base)

    def layer_input_widths(
        self, in_channels: int, growth_rate: int, num_layers: int
    ) -> tuple[int, ...]:
        """Channel width of the concatenated input of each layer ``1 … n``.

        ``x_0`` has ``in_channels`` channels and every layer output ``growth_rate``.
        """
        return tuple(
            _concat_width(self.inputs(layer), in_channels, growth_rate)
            for layer in range(1, num_layers + 1)
        )

    def output_width(self, in_channels: int, growth_rate: int, num_layers: int) -> int:
        """Channel width of the concatenated block output."""
        return _concat_width(self.block_output(num_layers), in_channels, growth_rate)


def _concat_width(indices: tuple[int, ...], in_channels: int, growth_rate: int) -> int:
    return sum(in_channels if i == 0 else growth_rate for i in indices)


def as_schedule(value: Schedule | str, base: int = 2) -> Schedule:
    """Accept a :class:`Schedule` or its kind's name."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        return Schedule(value, base)  # type: ignore[arg-type]
    raise TypeError(f"expected a Schedule or one of {SCHEDULE_KINDS}, got {value!r}")


@dataclass(frozen=True)
class Segment:
    """Consecutive layers ``first … last`` that read at the same relative offsets.

    Their inputs have equal widths, so their parameters stack and one
    ``lax.scan`` can run them (see :class:`sparsenet_jax.model.block.AggregationBlock`).
    """

    first: int
    last: int
    offsets: tuple[int, ...]  # layer l reads x_{l - o} for o in offsets, in order

    @property
    def length(self) -> int:
        return self.last - self.first + 1


@functools.cache
def segments(schedule: Schedule, num_layers: int, x0_like_others: bool) -> tuple[Segment, ...]:
    """Split layers ``1 … n`` into runs with identical relative offsets.

    Args:
      schedule: the block's schedule.
      num_layers: n.
      x0_like_others: whether ``x_0`` has the same width as the layer outputs
        (true for summation). If not, a layer reading ``x_0`` gets a segment of
        its own, since its input is wider.
    """
    result: list[Segment] = []
    for layer in range(1, num_layers + 1):
        reads = schedule.inputs(layer)
        offsets = tuple(layer - i for i in reads)
        alone = 0 in reads and not x0_like_others
        last = result[-1] if result else None
        if (
            last is not None
            and not alone
            and last.offsets == offsets
            and last.last == layer - 1
            and not (0 in schedule.inputs(last.first) and not x0_like_others)
        ):
            result[-1] = Segment(last.first, layer, offsets)
        else:
            result.append(Segment(layer, layer, offsets))
    return tuple(result)


# A run of a concatenated input's channels: ``(start, stop)`` rows of a layer's
# true (unpadded) parameters, or ``(None, count)`` zero channels.
Run = tuple[int | None, int]


@dataclass(frozen=True)
class SlotPlan:
    """Where a block's outputs live in one fixed-width buffer, and what each layer reads.

    The buffer is ``num_slots`` slots of ``slot_width`` channels side by side
    on the channel axis. Slot 0 is always zero; ``x_0`` fills slots
    ``1 … x0_slots`` (zero channels after its last one if its width is not a
    multiple of ``slot_width``); layer ``l``'s output is written to slot
    ``x0_slots + l``. Every layer reads ``reads`` slots (``read_slots[l-1]``, in
    concatenation order; slot 0 where it reads fewer), so that every layer's
    input has one shape. ``runs[l-1]`` says which of that input's channels are
    the layer's true input rows, in order, and which are zero padding (see :data:`Run`).
    """

    slot_width: int
    x0_width: int
    x0_slots: int
    reads: int
    num_slots: int
    read_slots: tuple[tuple[int, ...], ...]
    runs: tuple[tuple[Run, ...], ...]

    def slot(self, index: int) -> int:
        """The first slot of output ``x_index`` (``x_0`` spans ``x0_slots`` slots)."""
        return 1 if index == 0 else self.x0_slots + index


@functools.cache
def slot_plan(schedule: Schedule, num_layers: int, x0_width: int, slot_width: int) -> SlotPlan:
    """The buffer layout of a block whose input is ``x0_width`` wide and whose layers emit ``slot_width``."""
    if num_layers < 1 or x0_width < 1 or slot_width < 1:
        raise ValueError(
            f"a slot plan needs positive sizes, got {num_layers} layers, "
            f"x_0 {x0_width} wide, slots {slot_width} wide"
        )
    x0_slots = -(-x0_width // slot_width)
    plan = SlotPlan(slot_width, x0_width, x0_slots, 0, 1 + x0_slots + num_layers, (), ())
    layers_slots, layers_runs = [], []
    for layer in range(1, num_layers + 1):
        slots: list[int] = []
        runs: list[Run] = []
        row = 0
        for i in schedule.inputs(layer):
            first = plan.slot(i)
            if i == 0:
                slots.extend(range(first, first + x0_slots))
                runs.append((row, row + x0_width))
                if x0_slots * slot_width > x0_width:
                    runs.append((None, x0_slots * slot_width - x0_width))
                row += x0_width
            else:
                slots.append(first)
                runs.append((row, row + slot_width))
                row += slot_width
        layers_slots.append(slots)
        layers_runs.append(runs)
    reads = max(len(s) for s in layers_slots)
    for slots, runs in zip(layers_slots, layers_runs, strict=True):
        if len(slots) < reads:
            runs.append((None, (reads - len(slots)) * slot_width))
            slots.extend([0] * (reads - len(slots)))
    return SlotPlan(
        slot_width,
        x0_width,
        x0_slots,
        reads,
        1 + x0_slots + num_layers,
        tuple(tuple(s) for s in layers_slots),
        tuple(tuple(_merge_runs(r)) for r in layers_runs),
    )


def _merge_runs(runs: list[Run]) -> list[Run]:
    merged: list[Run] = []
    for start, stop in runs:
        if merged:
            last_start, last_stop = merged[-1]
            if start is None and last_start is None:
                merged[-1] = (None, last_stop + stop)
                continue
            if start is not None and last_start is not None and start == last_stop:
                merged[-1] = (last_start, stop)
                continue
        merged.append((start, stop))
    return merged
