"""``python -m sparsenet_jax.aot``: will a run fit on a TPU, and how long will it compile? No TPU needed.

    python -m sparsenet_jax.aot --recipe cifar10 --model sparsenet-bc-100-24
    python -m sparsenet_jax.aot --recipe cifar10 --topology v6e:1x1 --dtype float32 --json

It takes the flags of ``python -m sparsenet_jax.train``, builds the run with
the same :func:`~sparsenet_jax.training.build.build_run`, and compiles its train and
eval steps for a TPU topology with libtpu's compile-only devices. It reports
each step's compile time on this machine, the HBM the compiler allocates per
chip (arguments + temporaries + outputs − donated), the FLOPs and bytes the
train step's per-chip program does, and the roofline images/s on that chip
(peaks in :mod:`sparsenet_jax.tools.tpu_chips`). Figures are per chip: libtpu makes
a compile-only device of each of a v4 chip's two TensorCores, and their
programs are added up.

Exit codes: 0 fits, 1 does not fit (one line: "needs X GiB of the chip's Y"),
libtpu missing or the run cannot be built (one ``error:`` line), 2 a bad command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from sparsenet_jax.tools import tpu_chips
from sparsenet_jax.tools.tpu_chips import GiB, Topology
from sparsenet_jax.training import flags, memory, signals
from sparsenet_jax.training.build import Run, build_run
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.platforms import quiet_stderr, setup_platforms

PROG = "python -m sparsenet_jax.aot"
DEFAULT_TOPOLOGY = "v5e:1x1"
INSTALL_HINT = (
    "compiling for TPU needs libtpu: pip install 'sparsenet_jax[tpu]' "
    f"(jax[tpu] pinned to the tested jax, {jax.__version__})"
)
# The TPU compiler refuses a program larger than HBM, in one of two wordings (libtpu
# 0.0.42): "... HLO temporaries (28.98G) exceeds available HBM (15.75G)" or
# "Used 20.31G of 15.75G hbm". G is GiB.
_OOM_RES = (
    re.compile(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)"),
    re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"),
)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": GiB, "T": 1024**4}


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


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: Topology) -> list[jax.Device]:
    """libtpu's compile-only devices for ``topology`` (nothing runs on them).

    Raises:
      TrainingError: libtpu is not installed or refuses the topology.
    """
    if not libtpu_available():
        raise TrainingError(INSTALL_HINT)
    # A compile-only client touches no chip, so several may run at once (libtpu
    # otherwise takes /tmp/libtpu_lockfile and refuses a second process).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    # One chip needs its host bounds spelled out; a larger slice's name says them.
    single = {"chips_per_host_bounds": (1, 1, 1), "wrap": (False, False, False)}
    try:
        with quiet_stderr():
            desc = topologies.get_topology_desc(
                topology_name=topology.name,
                platform="tpu",
                **({"chip_config_name": "default", **single} if topology.num_chips == 1 else {}),
            )
    except Exception as err:  # libtpu raises its own runtime error types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrainingError(f"libtpu cannot describe topology {topology.name}: {first}") from None
    return list(desc.devices)


def compile_step(step: Callable[..., Any], *args: Any) -> StepCost:
    """Lower and compile ``step`` for the devices its arguments' shardings name.

    Raises:
      DoesNotFit: the compiler ran out of HBM placing the program.
    """
    start = time.perf_counter()
    lowered = step.lower(*args)  # type: ignore[attr-defined]
    traced, cpu = time.perf_counter(), time.process_time()
    try:
        compiled = lowered.compile()
    except Exception as err:  # XlaRuntimeError: RESOURCE_EXHAUSTED
        match = next((m for r in _OOM_RES if (m := r.search(str(err)))), None)
        if match is None:
            raise
        need, capacity = (float(match[i]) * _UNITS[match[i + 1]] for i in (1, 3))
        raise DoesNotFit(int(need), int(capacity)) from None
    done, cpu = time.perf_counter(), time.process_time() - cpu
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # older jax: one dict per program
    return StepCost(
        trace_s=traced - start,
        compile_s=done - traced,
        compile_cpu_s=cpu,
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes),
        flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
    )


def report(run: Run, topology: Topology, train: StepCost, eval_: StepCost) -> dict[str, Any]:
    """The JSON report of one check (``--json`` prints it)."""
    chip = topology.chip
    batch = run.config.batch_size
    cores = devices_per_chip(run, topology)
    hbm = cores * max(train.hbm_bytes, eval_.hbm_bytes)
    flops, bytes_accessed = cores * train.flops, cores * train.bytes_accessed
    line = tpu_chips.roofline(flops, bytes_accessed, batch, chip)
    return {
        "model": run.config.model,
        "dataset": run.config.dataset,
        "num_classes": run.info.num_classes,
        "num_params": run.num_params,
        "model_kwargs": run.model_kwargs,
        "dtype": run.config.dtype,
        "batch_size": batch,
        "eval_batch_size": run.config.eval_batch_size,
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
        "train_memory": _memory(train),
        "eval_memory": _memory(eval_),
        "flops_per_step": flops,
        "bytes_accessed_per_step": bytes_accessed,
        "bytes_accessed_per_image": bytes_accessed * topology.num_chips / batch,
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
    return "\n".join(
        [
            f"{result['model']} on {result['dataset']}, {result['dtype']}, batch "
            f"{result['batch_size']} (eval {result['eval_batch_size']}), TPU {result['topology']} "
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
        ]
    )


def check(config: TrainConfig, topology: Topology) -> dict[str, Any]:
    """Compile ``config``'s train and eval steps for ``topology`` and report.

    Raises:
      TrainingError: libtpu missing, or the run cannot be built for the topology.
      DoesNotFit: the compiler could not fit a step in HBM.
    """
    # First the O(blocks) arithmetic: a huge network is refused before libtpu starts.
    memory.check_size(
        config,
        devices=topology.num_chips,
        capacity=topology.chip.hbm_bytes,
        where=f"a TPU {topology.chip.name} chip's HBM",
    )
    devices = topology_devices(topology)
    signals.reclaim()  # libtpu's crash handler would print a stack for SIGTERM
    run = build_run(config, devices=devices)

    def compile_both() -> tuple[StepCost, StepCost]:
        state = run.abstract_state()
        train = compile_step(run.train_step, state, run.abstract_batch(True))
        return train, compile_step(run.eval_step, state, run.abstract_batch(False))

    try:
        train, eval_ = signals.interruptible(compile_both)
    except DoesNotFit as err:  # the compiler speaks of one device: say it of the chip
        cores = devices_per_chip(run, topology)
        raise DoesNotFit(cores * err.need_bytes, cores * err.capacity_bytes) from None
    return report(run, topology, train, eval_)


def _topology_arg(text: str) -> Topology:
    try:
        return tpu_chips.parse_topology(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TPU check (python -m sparsenet_jax.aot)")
    group.add_argument(
        "--topology",
        type=_topology_arg,
        default=tpu_chips.parse_topology(DEFAULT_TOPOLOGY),
        help=f"TPU chip and slice, e.g. v5e:1x1, v5e:2x2, v6e:1x1, v4:2x2x1 (default "
        f"{DEFAULT_TOPOLOGY}: Colab's TPU); chips: {', '.join(sorted(tpu_chips.CHIPS))}",
    )
    group.add_argument("--json", action="store_true", help="print one JSON object")


def main(argv: Sequence[str] | None = None) -> int:
    config, extras = flags.parse_with_extras(argv, prog=PROG, add_extra=add_flags)
    topology: Topology = extras.topology
    # Compile times are the point: a cached program would report none.
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        with signals.ExitOnSignal("the TPU check: nothing was written"):
            setup_platforms()
            result = check(config, topology)
    except DoesNotFit as err:
        message = tpu_chips.not_fit_message(err.need_bytes, err.capacity_bytes, topology.chip)
        print(message, file=sys.stderr)
        return 1
    except (TrainingError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result) if extras.json else text(result))
    if not result["fits"]:
        message = tpu_chips.not_fit_message(
            result["hbm_bytes"], result["hbm_capacity_bytes"], topology.chip
        )
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
