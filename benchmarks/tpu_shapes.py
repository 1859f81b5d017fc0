"""Compile one run's train and eval steps for a TPU topology and count what the compiler made.

Usage (flags as ``python -m sparsenet_jax.aot``; no TPU needed)::

    python benchmarks/tpu_shapes.py --recipe cifar10 --model sparsenet-40-24 --dtype bfloat16 \
        --model-kwargs '{"channel_bucket": 128}'

Prints one JSON object: what ``python -m sparsenet_jax.aot --json`` reports
(compile wall / CPU seconds, HBM, FLOPs and bytes accessed) plus, per step,
read from the optimised HLO (``compiled.as_text()``):

* ``fusions`` / ``distinct_fusions``: fusion instructions outside fused
  computations, and how many differ once instruction names and metadata are
  removed (the compiler generates code for each distinct one; issue 19);
  ``conv_fusions`` / ``distinct_conv_fusions``: those that contain a convolution;
* ``estimated_cycles``: the sum of the compiler's ``estimated_cycles`` over
  the fusions, a ``while`` body's counted ``known_trip_count`` times, once
  where the HLO gives no trip count (``uncounted_loops`` says how many such
  loops there are: the gather of ``vmap(dynamic_slice)`` is one, 64 trips).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from typing import Any

import jax

from sparsenet_jax.tools import aot
from sparsenet_jax.training import flags
from sparsenet_jax.training.build import build_run

_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_NAME = re.compile(r"%[\w.\-]+")
_NOISE = re.compile(r", (?:metadata|frontend_attributes|sharding)=\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply)=%([\w.\-]+)")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in hlo.splitlines():
        if current is None:
            if m := _COMP.match(line):
                current = comps.setdefault(m[1], [])
        elif line == "}":
            current = None
        else:
            current.append(line.strip())
    return comps


def hlo_counts(hlo: str) -> dict[str, Any]:
    """Fusion counts and summed estimated cycles of an optimised HLO module's text."""
    comps = _computations(hlo)
    canon: dict[str, str] = {}

    def canonical(name: str) -> str:
        if name not in canon:
            body = []
            for line in comps.get(name, []):
                line = _NOISE.sub("", line)
                line = _CALLS.sub(lambda m: "calls=" + canonical(m[1]), line)
                body.append(line)
            text = "\n".join(body)
            names: dict[str, str] = {}
            text = _NAME.sub(lambda m: names.setdefault(m[0], f"%{len(names)}"), text)
            canon[name] = hashlib.sha1(text.encode()).hexdigest()[:16]
        return canon[name]

    fused = set()
    for lines in comps.values():
        for line in lines:
            if " fusion(" in line and (m := re.search(r"calls=%([\w.\-]+)", line)):
                fused.add(m[1])
    fusions, convs = [], []
    cycles = 0.0
    uncounted = 0

    def walk(name: str, times: float) -> None:
        nonlocal cycles, uncounted
        for line in comps.get(name, []):
            if " fusion(" in line and (m := re.search(r"calls=%([\w.\-]+)", line)):
                kind = re.search(r"kind=(\w+)", line)
                key = (kind[1] if kind else "") + canonical(m[1])
                fusions.append(key)
                if any(" convolution(" in x for x in comps.get(m[1], [])):
                    convs.append(key)
                if c := _CYCLES.search(line):
                    cycles += times * float(c[1])
            elif " while(" in line and (b := re.search(r"body=%([\w.\-]+)", line)):
                trips = _TRIPS.search(line)
                uncounted += trips is None
                walk(b[1], times * (float(trips[1]) if trips else 1.0))
            elif " conditional(" in line or " call(" in line:
                for callee in re.findall(r"%([\w.\-]+)", line.split("(", 1)[1]):
                    if callee in comps and callee not in fused:
                        walk(callee, times)

    entry = next(
        (m[1] for line in hlo.splitlines() if (m := re.match(r"^ENTRY %([\w.\-]+)", line))), None
    )
    if entry:
        walk(entry, 1.0)
    return {
        "fusions": len(fusions),
        "distinct_fusions": len(set(fusions)),
        "conv_fusions": len(convs),
        "distinct_conv_fusions": len(set(convs)),
        "estimated_cycles": cycles,
        "uncounted_loops": uncounted,
    }


def measure(step: Any, *args: Any) -> dict[str, Any]:
    start = time.perf_counter()
    lowered = step.lower(*args)
    traced, cpu = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    done, cpu = time.perf_counter(), time.process_time() - cpu
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "trace_s": round(traced - start, 2),
        "compile_s": round(done - traced, 2),
        "compile_cpu_s": round(cpu, 2),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        **hlo_counts(compiled.as_text()),
    }


def main(argv: list[str] | None = None) -> int:
    config, extras = flags.parse_with_extras(
        argv, prog="benchmarks/tpu_shapes.py", add_extra=aot.add_flags
    )
    jax.config.update("jax_enable_compilation_cache", False)
    run = build_run(config, devices=aot.topology_devices(extras.topology))
    state = run.abstract_state()
    train = measure(run.train_step, state, run.abstract_batch(True))
    print(json.dumps({"train": train}), file=sys.stderr, flush=True)
    eval_ = measure(run.eval_step, state, run.abstract_batch(False))
    batch = run.config.batch_size
    result = {
        "model": run.config.model,
        "dtype": run.config.dtype,
        "model_kwargs": run.model_kwargs,
        "num_params": run.num_params,
        "batch_size": batch,
        "train": train,
        "eval": eval_,
        "train_bytes_per_image": train["bytes_accessed"] / batch,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
