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

With ``--seeds N`` the steps compiled are those of N replicas (the HBM holds
all N; the roofline counts N batches a step), and a last line answers how many
replicas fit: ``largest --seeds that fits in HBM: K``
(:func:`~sparsenet_jax.tools.aot_report.max_seeds` says how it is reckoned).

This module finds the devices, compiles and runs the command line; reading the
compiler's answers, building the report and rendering it is
:mod:`sparsenet_jax.tools.aot_report`'s job.

Exit codes: 0 fits, 1 does not fit (one line: "needs X GiB of the chip's Y"),
libtpu missing or the run cannot be built (one ``error:`` line), 2 a bad command line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from sparsenet_jax.tools import tpu_chips
from sparsenet_jax.tools.aot_report import (
    DoesNotFit,
    StepCost,
    devices_per_chip,
    parse_out_of_memory,
    report,
    text,
)
from sparsenet_jax.tools.tpu_chips import Topology
from sparsenet_jax.training import flags, memory, signals
from sparsenet_jax.training.build import build_run
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.platforms import quiet_stderr, setup_platforms

PROG = "python -m sparsenet_jax.aot"
DEFAULT_TOPOLOGY = "v5e:1x1"
INSTALL_HINT = (
    "compiling for TPU needs libtpu: pip install 'sparsenet_jax[tpu]' "
    f"(jax[tpu] pinned to the tested jax, {jax.__version__})"
)


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
        out_of_memory = parse_out_of_memory(str(err))
        if out_of_memory is None:
            raise
        raise DoesNotFit(*out_of_memory) from None
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


DESCRIPTION = (
    "Compile a training run's steps for a TPU without one: compile time, HBM per chip, "
    "FLOPs, bytes and roofline images/s. Takes the trainer's flags."
)


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
    config, extras = flags.parse_with_extras(
        argv, prog=PROG, add_extra=add_flags, description=DESCRIPTION
    )
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
