"""Where the train step's time goes: one convolution's three products, XLA vs PyTorch.

    python benchmarks/conv_kernels.py            # the shapes of sparsenet-40-24's first block
    python benchmarks/conv_kernels.py --json out.json

A train step runs every convolution three times: forward (y = x * w), the
input gradient (dx) and the weight gradient (dw). This script times each of
the three alone, in GFLOP/s, for 3×3 and 1×1 convolutions of the shapes our
CIFAR networks use (batch 64, 32×32, NHWC), with XLA (``lax.conv``; and for
1×1 also the matmul that ``pointwise_as_dot`` uses) and with PyTorch eager
(oneDNN on CPU). Both frameworks get the same inputs; the figure is the best
of ``--repeats`` calls after a warm-up.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from machine import machine_info
from timing import best_seconds

# (kernel, input channels, output channels): 3×3 layers of a growth-24 plain
# block at several input widths, and the 1×1 bottleneck of a BC unit.
DEFAULT_SHAPES = ((3, 48, 24), (3, 96, 24), (3, 144, 24), (3, 96, 48), (1, 96, 48), (1, 288, 48))


def conv_flops(kernel: int, cin: int, cout: int, batch: int, size: int) -> int:
    """Multiply-adds × 2 of one stride-1 'same' convolution (each of fwd, dx, dw costs this)."""
    return 2 * batch * size * size * kernel * kernel * cin * cout


def operands(
    kernel: int, cin: int, cout: int, batch: int, size: int, layout: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input, kernel, output gradient), the same random values for both frameworks.

    ``layout`` "NHWC" gives XLA's (x NHWC, w HWIO, g NHWC); "NCHW" PyTorch's
    (x NCHW, w OIHW, g NCHW), the same tensors transposed.
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, size, size, cin), np.float32)
    w = rng.standard_normal((kernel, kernel, cin, cout), np.float32)
    g = rng.standard_normal((batch, size, size, cout), np.float32)
    if layout == "NCHW":
        x, w, g = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), g.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.ascontiguousarray(w), np.ascontiguousarray(g)


def _block(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, waiting until JAX has computed it."""
    import jax

    return jax.block_until_ready(fn(*args))


def jax_rates(
    kernel: int, cin: int, cout: int, batch: int, size: int, repeats: int
) -> dict[str, float]:
    import jax
    import jax.numpy as jnp

    x, w, g = (jnp.asarray(a) for a in operands(kernel, cin, cout, batch, size, "NHWC"))
    pad = kernel // 2

    def conv(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.dot_general(x, w[0, 0], (((3,), (0,)), ((), ())))

    flops = conv_flops(kernel, cin, cout, batch, size)
    rates = {}
    impls = [("xla conv", conv)] + ([("xla matmul", matmul)] if kernel == 1 else [])
    for label, fn in impls:
        products = {
            "fwd": jax.jit(fn),
            "dx": jax.jit(lambda x, w, g, fn=fn: jax.vjp(lambda x: fn(x, w), x)[1](g)[0]),
            "dw": jax.jit(lambda x, w, g, fn=fn: jax.vjp(lambda w: fn(x, w), w)[1](g)[0]),
        }
        for product, compiled in products.items():
            args = (x, w) if product == "fwd" else (x, w, g)
            seconds = best_seconds(functools.partial(_block, compiled, *args), repeats)
            rates[f"{label} {product}"] = flops / seconds / 1e9
    return rates


def torch_rates(
    kernel: int, cin: int, cout: int, batch: int, size: int, repeats: int
) -> dict[str, float]:
    import torch

    x, w, g = (torch.from_numpy(a) for a in operands(kernel, cin, cout, batch, size, "NCHW"))
    pad = kernel // 2
    flops = conv_flops(kernel, cin, cout, batch, size)
    from torch.nn import grad as conv_grad

    def fwd() -> None:
        with torch.no_grad():
            torch.nn.functional.conv2d(x, w, padding=pad)

    def dx() -> None:
        conv_grad.conv2d_input(x.shape, w, g, padding=pad)

    def dw() -> None:
        conv_grad.conv2d_weight(x, w.shape, g, padding=pad)

    return {
        f"torch {name}": flops / best_seconds(fn, repeats) / 1e9
        for name, fn in (("fwd", fwd), ("dx", dx), ("dw", dw))
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=32, help="height = width")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", type=pathlib.Path, help="also write the rows here")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(machine_info()["cores"])
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    rows = []
    for kernel, cin, cout in DEFAULT_SHAPES:
        row: dict[str, Any] = {"kernel": kernel, "cin": cin, "cout": cout}
        row.update(jax_rates(kernel, cin, cout, args.batch, args.size, args.repeats))
        if have_torch:
            row.update(torch_rates(kernel, cin, cout, args.batch, args.size, args.repeats))
        rows.append(row)
    columns = [c for c in rows[0] if c not in ("kernel", "cin", "cout")]
    for row in rows[1:]:
        columns += [c for c in row if c not in columns and c not in ("kernel", "cin", "cout")]
    info = machine_info()
    print(
        f"GFLOP/s, batch {args.batch}, {args.size}×{args.size}, float32, {info['cpu']}, "
        f"{info['cores']} cores"
    )
    print("| conv | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.0f}" if c in row else "" for c in columns]
        print(
            f"| {row['kernel']}×{row['kernel']} {row['cin']}→{row['cout']} | "
            + " | ".join(cells)
            + " |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
