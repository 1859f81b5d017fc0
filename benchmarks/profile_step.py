"""Where our XLA:CPU train step spends its time: one traced step, its ops grouped by kind.

    python benchmarks/profile_step.py sparsenet-40-24 --conv-impl xla --json out.json
    python benchmarks/profile_step.py sparsenet-40-24 --conv-impl gemm

Builds the trainer's step (``build_run`` on the cifar10 recipe, as the other
benchmarks), compiles it, runs it twice, then traces one step with
``jax.profiler`` and reads the trace back (``jax.profiler.ProfileData``). Each
op event of XLA's worker threads is matched with its instruction in the
compiled HLO (``compiled.as_text()``) and grouped: a convolution by its
window (a weight gradient is the convolution whose window is the image, e.g.
32x32), a dot by its pass and by who runs it, a concatenate, a transpose/copy,
other fusions. It prints each group's milliseconds and share of op time, the
threads' busy share (op time ÷ (threads × the program's wall time, the
client's wait for it)) and the cores kept busy: the process's CPU time (user +
system) ÷ the wall time of one untraced step.

Read the groups with care. A dot that YNNPACK takes (``__ynn_fusion``: its
operands row-major, as the forward GEMMs and the input gradients) runs in its
event. A dot it refuses (the weight gradients ``xᵀ·G``, which contract the
left operand's major dimension) stays XLA's own and runs asynchronously: its
event lasts a fraction of a millisecond, its work overlaps the ops that follow
and slows them, so its group's milliseconds are not its cost. On a busy
machine, a thread that the OS takes away counts as busy inside an op and as
idle between ops.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import re
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from jax_bench import bench_config, compile_train, conv_impl_kwargs, fake_batch, setup_jax
from machine import log, machine_info, versions
from timing import load_average


def hlo_kinds(hlo: str) -> dict[str, str]:
    """Instruction name → its group, for every instruction of the entry computation that
    calls a fused computation (and every other named instruction, by its opcode)."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            bodies[current] = []
        elif current:
            bodies[current].append(line)
    kinds: dict[str, str] = {}
    for line in hlo.splitlines():
        inst = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\(", line)
        if not inst:
            continue
        name, opcode = inst.groups()
        called = re.search(r"calls=%?([\w.\-]+)", line)
        body = "\n".join(bodies.get(called.group(1), [])) if called else line
        kinds[name] = classify(name, opcode, body, backward="transpose(jvp(" in line)
    return kinds


def classify(name: str, opcode: str, body: str, backward: bool = False) -> str:
    """The group of one instruction, from its name, opcode, (fused) body and pass.

    ``backward``: the instruction comes from the transposed (backward) pass
    (its ``op_name`` has ``transpose(jvp(``).
    """
    if " convolution(" in body:
        window = re.search(r"window=\{size=(\S+)", body)
        return f"convolution, window {window.group(1) if window else '?'}"
    if " dot(" in body:
        if opcode == "dot":  # not a YNNPACK fusion: XLA's own dot, asynchronous
            return "dot, XLA's own (asynchronous: ms not its cost)"
        return f"dot, {'backward' if backward else 'forward'}"
    if name.startswith("transpose") or opcode == "transpose":
        return "transpose/copy"
    if name.startswith("concatenate") or opcode == "concatenate":
        return "concatenate"
    return "other fusion" if opcode == "fusion" else opcode


def trace_ops(step: Any, directory: str) -> tuple[dict[str, float], dict[str, int], float, int]:
    """One traced call of ``step``: (ms per op name, calls per op name, wall s, threads)."""
    import jax
    from jax.profiler import ProfileData

    jax.profiler.start_trace(directory)
    start = time.perf_counter()
    step()
    wall = time.perf_counter() - start  # the fallback: with the tracer's own overhead
    jax.profiler.stop_trace()
    (path,) = pathlib.Path(directory).rglob("*.xplane.pb")
    ms: dict[str, float] = collections.defaultdict(float)
    calls: collections.Counter[str] = collections.Counter()
    threads = set()
    executed = 0.0  # the client's wait for the whole program: the step's wall time
    for plane in ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLAPjRtCpuClient"):
                executed += sum(
                    e.duration_ns / 1e9
                    for e in line.events
                    if e.name.startswith("ThunkExecutor::Execute (wait")
                )
            if not line.name.startswith("tf_XLAEigen"):
                continue
            threads.add(line.name)
            for event in line.events:
                if event.name.startswith(("ThunkExecutor", "end: ")):
                    continue
                ms[event.name] += event.duration_ns / 1e6
                calls[event.name] += 1
    return dict(ms), dict(calls), executed or wall, len(threads)


def cpu_per_wall(step: Any) -> float:
    """The process's CPU time (user + system, every thread) ÷ the wall time of one
    untraced call of ``step``: how many cores the step kept busy (spinning counts)."""
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu / wall


def profile(preset: str, batch: int, conv_impl: str) -> dict[str, Any]:
    """One preset's train step traced; the op groups, the busy shares, the load."""
    from sparsenet_jax.training.build import build_run

    setup_jax()
    run = build_run(bench_config(preset, batch, conv_impl_kwargs(conv_impl)))
    holder = {"state": run.init_state()}
    data = fake_batch(run, train=True)
    compiled, fields = compile_train(run, holder["state"], data)
    kinds = hlo_kinds(compiled.as_text())

    def step() -> None:
        import jax

        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics)

    step()
    step()
    cores_busy = cpu_per_wall(step)
    with tempfile.TemporaryDirectory() as directory:
        ms, calls, wall, threads = trace_ops(step, directory)
    groups: dict[str, dict[str, float]] = {}
    for name, value in ms.items():
        group = groups.setdefault(kinds.get(name, "unmatched"), {"ms": 0.0, "ops": 0})
        group["ms"] += value
        group["ops"] += calls[name]
    total = sum(g["ms"] for g in groups.values())
    return {
        "preset": preset,
        "batch": batch,
        "conv_impl": conv_impl,
        "compile_s": fields["train_lower_s"] + fields["train_compile_s"],
        "traced_step_s": wall,
        "threads": threads,
        "op_ms": total,
        "busy_share": total / 1e3 / (threads * wall) if threads else None,
        "cores_busy": cores_busy,
        "loadavg": load_average(),
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms"])),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("preset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--conv-impl", default="auto", help="xla, shift-dw, gemm or auto")
    parser.add_argument("--json", type=pathlib.Path, help="also write the result here")
    args = parser.parse_args(argv)
    log(f"profiling {args.preset} ({args.conv_impl}), load average {load_average():.2f}")
    result = profile(args.preset, args.batch, args.conv_impl)
    result.update(machine=machine_info(), versions=versions())
    print(
        f"{args.preset} ({args.conv_impl}): traced step {result['traced_step_s']:.2f} s, "
        f"op time {result['op_ms']:.0f} ms on {result['threads']} threads "
        f"(busy {100 * (result['busy_share'] or 0):.0f}%), an untraced step kept "
        f"{result['cores_busy']:.2f} cores busy, load average {result['loadavg']:.2f}"
    )
    print("| group | ms | share | ops |\n| --- | ---: | ---: | ---: |")
    for group, g in result["groups"].items():
        print(f"| {group} | {g['ms']:.0f} | {100 * g['ms'] / result['op_ms']:.1f}% | {g['ops']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
