"""TPU chips and topologies: the published figures ``python -m sparsenet_jax.aot`` reports against.

Peak figures are Google's, per chip:

* v5e: 197 TFLOP/s bf16, 16 GB HBM2 at 819 GB/s (https://cloud.google.com/tpu/docs/v5e)
* v6e: 918 TFLOP/s bf16, 32 GB HBM at 1,638 GB/s (https://cloud.google.com/tpu/docs/v6e)
* v4: 275 TFLOP/s bf16, 32 GiB HBM2 at 1,200 GB/s (https://cloud.google.com/tpu/docs/v4)

The pages write "GB" for v5e/v6e capacity; HBM stacks come in powers of two,
so capacity is taken as GiB (a run the compiler puts near the limit should be
tried on the chip). Bandwidth is decimal (GB/s = 1e9 bytes/s).

Float32 compute is rated at the bf16 peak: on TPU, JAX's default precision
runs float32 convolutions and matmuls as one bf16 pass with float32
accumulation (https://docs.jax.dev/en/latest/201/precision.html). With
``precision="highest"`` (six passes) the compute ceiling would be about 1/6 of it.
"""

from __future__ import annotations

import dataclasses
import math
import re

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's published limits."""

    name: str
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    source: str


CHIPS: dict[str, Chip] = {
    "v5e": Chip("v5e", 16 * GiB, 197e12, 819e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1638e9, "https://cloud.google.com/tpu/docs/v6e"),
    "v4": Chip("v4", 32 * GiB, 275e12, 1200e9, "https://cloud.google.com/tpu/docs/v4"),
}

_TOPOLOGY_RE = re.compile(r"^(v\d+[a-z]*):(\d+(?:x\d+)*)$")


@dataclasses.dataclass(frozen=True)
class Topology:
    """A topology name such as ``v5e:2x2``: the chip and the grid of chips."""

    name: str
    chip: Chip
    shape: tuple[int, ...]

    @property
    def num_chips(self) -> int:
        return math.prod(self.shape)


def parse_topology(name: str) -> Topology:
    """Read ``CHIP:AxB[xC]`` (``v5e:1x1``, ``v6e:2x2``, ``v4:2x2x1``); ``ValueError`` otherwise."""
    match = _TOPOLOGY_RE.match(name.strip().lower())
    if not match:
        raise ValueError(f"topology must look like v5e:1x1 or v4:2x2x1, got {name!r}")
    chip_name, grid = match.groups()
    if chip_name not in CHIPS:
        raise ValueError(
            f"unknown TPU chip {chip_name!r} in {name!r}; known: {', '.join(sorted(CHIPS))}"
        )
    shape = tuple(int(side) for side in grid.split("x"))
    if min(shape) < 1:
        raise ValueError(f"every side of a topology must be at least 1, got {name!r}")
    return Topology(f"{chip_name}:{grid}", CHIPS[chip_name], shape)


@dataclasses.dataclass(frozen=True)
class Roofline:
    """The fastest a step can run on one chip: bound by compute or by HBM traffic."""

    compute_s: float  # FLOPs / peak FLOP/s
    memory_s: float  # bytes accessed / HBM bandwidth
    images_per_step: int

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"

    @property
    def images_per_s(self) -> float:
        return self.images_per_step / self.step_s if self.step_s > 0 else math.inf


def roofline(flops: float, bytes_accessed: float, images: int, chip: Chip) -> Roofline:
    """The roofline of a step of ``images`` images whose per-chip program does ``flops``
    and moves ``bytes_accessed``; the chips of a topology run their programs at once.

    Ignores communication between chips and the host's input pipeline.
    """
    return Roofline(flops / chip.peak_flops, bytes_accessed / chip.hbm_bandwidth, images)


def not_fit_message(need_bytes: int, capacity_bytes: int, chip: Chip) -> str:
    """The one line printed when a step needs more HBM than a chip offers.

    ``capacity_bytes`` is what the compiler says it may use when it refused the
    program (a little under the chip's HBM), else the chip's HBM.
    """
    return (
        f"needs {need_bytes / GiB:.2f} GiB of the chip's {capacity_bytes / GiB:.2f} GiB "
        f"(TPU {chip.name} HBM)"
    )
