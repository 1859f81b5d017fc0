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
  The TPU compiler writes no trip count on a ``lax.scan``'s loop; its
  condition, ``counter < N`` with a constant ``N``, gives it (a scan counts
  from 0 in steps of 1);
* ``est_bytes``: the bytes the program's instructions read and write,
  estimated from the optimised HLO's shapes the way XLA's cost analysis
  counts them (a fusion's operands and outputs; an operand that the fusion
  only slices counts the slices; an in-place ``dynamic-update-slice`` counts
  the update, read and written), a ``while`` body counted as often as it runs.
  XLA's own ``bytes accessed`` counts a loop body once, which makes a scanned
  block look cheap; ``est_bytes_flat`` is the estimate with every loop body
  counted once, to check the estimate against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from typing import Any

import jax

from sparsenet_jax.tools import aot
from sparsenet_jax.training import flags, replicas
from sparsenet_jax.training.build import build_run, default_replica_mode

_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
_NAME = re.compile(r"%[\w.\-]+")
_NOISE = re.compile(r", (?:metadata|frontend_attributes|sharding)=\{[^{}]*(?:\{[^{}]*\}[^{}]*)*\}")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply)=%([\w.\-]+)")
_CYCLES = re.compile(r'"estimated_cycles":"(\d+)"')
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_ITEM = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2}
_ITEM.update({"f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8})
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\](?:\{([\d,]*)(?::T\(([\d,]+)\))?)?")
_HEAD = re.compile(r"(?:ROOT )?%([\w.\-]+) = ")
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "iota"}
_FREE |= {"partition-id", "replica-id", "while", "conditional", "call"}

# One instruction: (name, shape text, opcode, operand names, text after the operands, is root).
Instr = tuple[str, str, str, list[str], str, bool]


def _shape_bytes(shape: str) -> int:
    """Bytes of the arrays in an HLO shape, as laid out: dims padded to the layout's first tile."""
    total = 0
    for kind, dims, order, tile in _ARRAY.findall(shape):
        sizes = [int(d) for d in dims.split(",") if d]
        minor = [int(d) for d in order.split(",") if d]
        if tile and len(minor) == len(sizes):
            # The tile's last dimension is the most minor one, and so on outwards.
            for dim, t in zip(minor, reversed([int(t) for t in tile.split(",")]), strict=False):
                sizes[dim] = -(-sizes[dim] // t) * t
        count = 1
        for size in sizes:
            count *= size
        total += count * _ITEM.get(kind, 4)
    return total


def _close(text: str, start: int) -> int:
    """The index after the bracket that closes the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "({[":
            depth += 1
        elif text[i] in ")}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def _parse(line: str) -> Instr | None:
    head = _HEAD.match(line)
    if not head:
        return None
    rest = line[head.end() :]
    end = _close(rest, 0) if rest.startswith("(") else rest.find(" ")
    shape, rest = rest[:end], rest[end:].lstrip()
    op = re.match(r"([\w\-]+)\(", rest)
    if not op:
        return None
    close = _close(rest, op.end() - 1)
    operands = re.findall(r"%([\w.\-]+)", rest[op.end() : close - 1])
    return head[1], shape, op[1], operands, rest[close:], line.startswith("ROOT ")


def _fusion_bytes(instr: Instr, fused: list[Instr]) -> int:
    """Bytes a fusion reads and writes, as XLA's cost analysis counts them."""
    local = {i[0]: i for i in fused}
    users: dict[str, list[Instr]] = {}
    for i in fused:
        for name in i[3]:
            users.setdefault(name, []).append(i)
    root = next((i for i in fused if i[5]), None)
    if root is None:
        return _shape_bytes(instr[1])
    roots = [local[o] for o in root[3] if o in local] if root[2] == "tuple" else [root]
    in_place, total = set(), 0
    for r in roots:
        target = local.get(r[3][0]) if r[3] else None
        if r[2] == "dynamic-update-slice" and target is not None and target[2] == "parameter":
            in_place.add(target[0])
            total += 2 * _shape_bytes(local[r[3][1]][1]) if r[3][1] in local else 0
        else:
            total += _shape_bytes(r[1])
    for i in fused:
        if i[2] != "parameter" or i[0] in in_place:
            continue
        readers = users.get(i[0], [])
        if readers and all(u[2] in ("slice", "dynamic-slice") and u[3][0] == i[0] for u in readers):
            total += sum(_shape_bytes(u[1]) for u in readers)
        else:
            total += _shape_bytes(i[1])
    return total


def _instr_bytes(instr: Instr, shapes: dict[str, str], comps: dict[str, list[Instr]]) -> int:
    _, shape, op, operands, attrs, _ = instr
    if op in _FREE:
        return 0
    if op == "fusion" and (callee := re.search(r"calls=%([\w.\-]+)", attrs)):
        return _fusion_bytes(instr, comps.get(callee[1], []))
    if op == "dynamic-update-slice":
        return 2 * _shape_bytes(shapes.get(operands[1], "")) if len(operands) > 1 else 0
    if op in ("slice", "dynamic-slice"):
        return 2 * _shape_bytes(shape)
    return _shape_bytes(shape) + sum(_shape_bytes(shapes.get(o, "")) for o in operands)


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


def _condition_trips(line: str, comps: dict[str, list[str]]) -> float | None:
    """The trip count of a ``while`` whose condition is ``counter < constant``, else None."""
    cond = re.search(r"condition=%([\w.\-]+)", line)
    body = comps.get(cond[1], []) if cond else []
    roots = [x for x in body if x.startswith("ROOT ") and "direction=LT" in x]
    constants = [re.search(r"constant\((\d+)\)", x) for x in body if " constant(" in x]
    found = [float(c[1]) for c in constants if c]
    return found[0] if roots and len(found) == 1 else None


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
    parsed = {
        name: [p for line in lines if (p := _parse(line)) is not None]
        for name, lines in comps.items()
    }
    fusions, convs = [], []
    cycles = 0.0
    uncounted = 0
    moved = {"loops": 0.0, "flat": 0.0}

    def walk(name: str, times: float) -> None:
        nonlocal cycles, uncounted
        shapes = {i[0]: i[1] for i in parsed.get(name, [])}
        for instr in parsed.get(name, []):
            size = _instr_bytes(instr, shapes, parsed)
            moved["loops"] += times * size
            moved["flat"] += size
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
                count = float(trips[1]) if trips else _condition_trips(line, comps)
                uncounted += count is None
                walk(b[1], times * (count or 1.0))
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
        "est_bytes": moved["loops"],
        "est_bytes_flat": moved["flat"],
    }


def measure(step: Any, *args: Any, hlo_to: str | None = None) -> dict[str, Any]:
    """Compile ``step`` for ``args``; with ``hlo_to``, also write its optimised HLO there."""
    start = time.perf_counter()
    lowered = step.lower(*args)
    traced, cpu = time.perf_counter(), time.process_time()
    compiled = lowered.compile()
    done, cpu = time.perf_counter(), time.process_time() - cpu
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    hlo = compiled.as_text()
    if hlo_to:
        with open(hlo_to, "w") as f:
            f.write(hlo)
    return {
        "trace_s": round(traced - start, 2),
        "compile_s": round(done - traced, 2),
        "compile_cpu_s": round(cpu, 2),
        "temp_bytes": int(memory.temp_size_in_bytes),
        "argument_bytes": int(memory.argument_size_in_bytes),
        "output_bytes": int(memory.output_size_in_bytes),
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        **hlo_counts(hlo),
    }


def add_flags(parser: argparse.ArgumentParser) -> None:
    """``python -m sparsenet_jax.aot``'s flags, and how ``--seeds`` replicas share the program."""
    aot.add_flags(parser)
    parser.add_argument(
        "--replica-mode",
        choices=replicas.REPLICA_MODES,
        default=None,
        help="with --seeds N: vmap or unroll the replicas (default: the backend's)",
    )


def main(argv: list[str] | None = None) -> int:
    config, extras = flags.parse_with_extras(
        argv, prog="benchmarks/tpu_shapes.py", add_extra=add_flags
    )
    jax.config.update("jax_enable_compilation_cache", False)
    devices = aot.topology_devices(extras.topology)
    run = build_run(config, devices=devices, replica_mode=extras.replica_mode)
    state = run.abstract_state()
    # TPU_SHAPES_HLO=prefix writes each step's optimised HLO to prefix-{train,eval}.hlo.
    prefix = os.environ.get("TPU_SHAPES_HLO")
    train = measure(
        run.train_step, state, run.abstract_batch(True), hlo_to=prefix and f"{prefix}-train.hlo"
    )
    print(json.dumps({"train": train}), file=sys.stderr, flush=True)
    eval_ = measure(
        run.eval_step, state, run.abstract_batch(False), hlo_to=prefix and f"{prefix}-eval.hlo"
    )
    batch = run.config.batch_size
    result = {
        "model": run.config.model,
        "dtype": run.config.dtype,
        "model_kwargs": run.model_kwargs,
        "num_params": run.num_params,
        "batch_size": batch,
        "seeds": run.seeds,
        "replica_mode": extras.replica_mode or default_replica_mode(devices[0].platform),
        "train": train,
        "eval": eval_,
        "train_bytes_per_image": train["bytes_accessed"] / (batch * run.seeds),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
