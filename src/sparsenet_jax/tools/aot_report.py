"""The report of ``python -m sparsenet_jax.aot``: what the compiler said, as figures and as text.

:mod:`sparsenet_jax.tools.aot` finds the devices and compiles; this module reads
the compiler's answers (its out-of-memory message, its memory and cost
analyses, gathered in :class:`StepCost`), builds the JSON report and renders it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from sparsenet_jax.tools import tpu_chips
from sparsenet_jax.tools.tpu_chips import GiB, Topology
from sparsenet_jax.training.build import Run

# The TPU compiler refuses a program larger than HBM, in one of two wordings (libtpu
# 0.0.42): "... HLO temporaries (28.98G) exceeds available HBM (15.75G)" or
# "Used 20.31G of 15.75G hbm". G is GiB.
_OOM_RES = (
    re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"),
    re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"),
)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GiB, "T": 1024**4}


def parse_out_of_memory(message: str) -> tuple[int, int] | None:
    """(bytes needed, bytes available) from the compiler's out-of-HBM message, or None."""
    match = next((m for r in _OOM_RES if (m := r.search(message))), None)
    if match is None:
        return None
    need, capacity = (float(match[i]) * _UNITS[match[i + 1]] for i in (1, 3))
    return int(need), int(capacity)


class DoesNotFit(Exception):
    """The compiler could not place the step in the chip's HBM."""

    def __init__(self, need_bytes: int, capacity_bytes: int) -> None:
        super().__init__(f"needs {need_bytes} of {capacity_bytes} bytes")
        self.need_bytes, self.capacity_bytes = need_bytes, capacity_bytes


@dataclasses.dataclass(frozen=True)
class StepCost:
    """What compiling one step took and what the compiler says it needs, per chip."""

    trace_s: float  # tracing and lowering to StableHLO
    compile_s: float  # the TPU compiler, wall clock
    compile_cpu_s: float  # its CPU time, all threads: less swayed by other jobs on the machine
    argument_bytes: int
    output_bytes: int
    alias_bytes: int  # outputs written over donated arguments
    temp_bytes: int
    code_bytes: int
    flops: float
    bytes_accessed: float

    @property
    def hbm_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes


def report(run: Run, topology: Topology, train: StepCost, eval_: StepCost) -> dict[str, Any]:
    """The JSON report of one check (``--json`` prints it)."""
    chip = topology.chip
    batch = run.config.batch_size
    images = batch * run.seeds  # a train step of --seeds N trains N batches
    cores = devices_per_chip(run, topology)
    hbm = cores * max(train.hbm_bytes, eval_.hbm_bytes)
    flops, bytes_accessed = cores * train.flops, cores * train.bytes_accessed
    line = tpu_chips.roofline(flops, bytes_accessed, images, chip)
    return {
        "model": run.config.model,
        "dataset": run.config.dataset,
        "num_classes": run.info.num_classes,
        "num_params": run.num_params,
        "model_kwargs": run.model_kwargs,
        "dtype": run.config.dtype,
        "batch_size": batch,
        "eval_batch_size": run.config.eval_batch_size,
        "seeds": run.seeds,
        "images_per_step": images,
        "topology": topology.name,
        "chip": chip.name,
        "num_chips": topology.num_chips,
        "devices_per_chip": cores,
        "train_trace_s": round(train.trace_s, 2),
        "train_compile_s": round(train.compile_s, 2),
        "train_compile_cpu_s": round(train.compile_cpu_s, 2),
        "eval_trace_s": round(eval_.trace_s, 2),
        "eval_compile_s": round(eval_.compile_s, 2),
        "eval_compile_cpu_s": round(eval_.compile_cpu_s, 2),
        "hbm_bytes": hbm,
        "hbm_capacity_bytes": chip.hbm_bytes,
        "fits": hbm <= chip.hbm_bytes,
        "hbm_bytes_per_seed": hbm // run.seeds,
        "max_seeds": max_seeds(hbm, run.seeds, chip.hbm_bytes),
        "train_memory": _memory(train),
        "eval_memory": _memory(eval_),
        "flops_per_step": flops,
        "bytes_accessed_per_step": bytes_accessed,
        "bytes_accessed_per_image": bytes_accessed * topology.num_chips / images,
        "peak_flops": chip.peak_flops,
        "hbm_bandwidth": chip.hbm_bandwidth,
        "peaks_source": chip.source,
        "peak_assumption": "float32 rated at the bf16 peak (JAX's default TPU precision: "
        "one bf16 pass, float32 accumulation)",
        "roofline_images_per_s": round(line.images_per_s, 1),
        "roofline_bound": line.bound,
        "roofline_compute_ms": 1e3 * line.compute_s,
        "roofline_memory_ms": 1e3 * line.memory_s,
    }


def max_seeds(hbm_bytes: int, seeds: int, capacity_bytes: int) -> int:
    """The largest ``--seeds`` whose step fits ``capacity_bytes``, from one compile of ``seeds``.

    Method: the compile's HBM (arguments + temporaries + outputs − donated, the
    larger step's) divided by its ``seeds`` is a replica's share, and K replicas
    are taken to need K shares. Everything a replica holds (weights, optimizer
    state, its batch, its activations) grows with K; what the replicas share
    (the step counter, the eval batch) is counted in every share. It is an
    estimate: the compiler lays out N replicas as it sees fit, and their bytes
    need not grow in proportion. Measured (2026-11-27, sparsenet-13-6 on
    digits, batch 32): on XLA:CPU the train step's bytes grew 2.006× from 1 to
    2 replicas and 8.03× from 1 to 8; for a TPU v5e (libtpu) the HBM was
    11.5 MB, 12.1 MB and 295 MB for 1, 2 and 8 replicas, so this answer was
    1,489 from the compile of 1 and 465 from the compile of 8. Compile
    ``--seeds K`` to confirm an answer far from the ``seeds`` compiled.
    """
    return int(capacity_bytes * seeds // max(hbm_bytes, 1))


def devices_per_chip(run: Run, topology: Topology) -> int:
    """Compile-only devices a chip has: 2 on v4 (one a TensorCore), else 1."""
    return max(1, run.mesh.size // topology.num_chips)


def _memory(cost: StepCost) -> dict[str, int]:
    return {
        "argument_bytes": cost.argument_bytes,
        "output_bytes": cost.output_bytes,
        "alias_bytes": cost.alias_bytes,
        "temp_bytes": cost.temp_bytes,
        "code_bytes": cost.code_bytes,
    }


def _size(num_bytes: float) -> str:
    return f"{num_bytes / GiB:.2f} GiB" if num_bytes >= GiB / 2 else f"{num_bytes / 2**20:.0f} MiB"


def text(result: dict[str, Any]) -> str:
    """The human-readable report."""
    train, eval_ = result["train_memory"], result["eval_memory"]
    chips = result["num_chips"]
    per_chip = " per chip" if chips > 1 else ""
    assumption = f"; {result['peak_assumption']}" if result["dtype"] == "float32" else ""
    seeds = result["seeds"]
    replicas = f" × {seeds} seeds" if seeds > 1 else ""
    return "\n".join(
        [
            f"{result['model']} on {result['dataset']}, {result['dtype']}, batch "
            f"{result['batch_size']}{replicas} (eval {result['eval_batch_size']}), "
            f"TPU {result['topology']} "
            f"({chips} chip{'s' if chips > 1 else ''}), {result['num_params']:,} parameters",
            f"compile on this machine: train step {result['train_compile_s']:.1f} s "
            f"(+{result['train_trace_s']:.1f} s tracing), eval step "
            f"{result['eval_compile_s']:.1f} s (+{result['eval_trace_s']:.1f} s tracing)",
            f"HBM{per_chip}: {_size(result['hbm_bytes'])} of the chip's "
            f"{_size(result['hbm_capacity_bytes'])} (train step: arguments "
            f"{_size(train['argument_bytes'])}, temporaries {_size(train['temp_bytes'])}, "
            f"outputs {_size(train['output_bytes'])}, donated {_size(train['alias_bytes'])}; "
            f"eval step temporaries {_size(eval_['temp_bytes'])})",
            f"train step{per_chip}: {result['flops_per_step'] / 1e9:.1f} GFLOP, "
            f"{result['bytes_accessed_per_step'] / 1e9:.2f} GB accessed "
            f"({result['bytes_accessed_per_image'] / 1e6:.0f} MB an image)",
            f"roofline: {result['roofline_images_per_s']:,.0f} images/s, "
            f"{result['roofline_bound']}-bound (a step: compute "
            f"{result['roofline_compute_ms']:.3g} ms, HBM {result['roofline_memory_ms']:.3g} ms) "
            f"at {result['peak_flops'] / 1e12:.0f} TFLOP/s bf16 and "
            f"{result['hbm_bandwidth'] / 1e9:.0f} GB/s a chip ({result['peaks_source']}"
            f"{assumption})",
            _max_seeds_line(result),
        ]
    )


def _max_seeds_line(result: dict[str, Any]) -> str:
    """``largest --seeds that fits in HBM: 21 (…)``: the one-line answer, and how it was had."""
    seeds, most = result["seeds"], result["max_seeds"]
    how = f"{_size(result['hbm_bytes_per_seed'])} a replica, this compile of {seeds} scaled"
    if most not in (0, seeds):
        how += f"; compile --seeds {most} to confirm"
    return f"largest --seeds that fits in HBM: {most} ({how})"
