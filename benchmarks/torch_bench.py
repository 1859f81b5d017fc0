"""The PyTorch peer's side of the benchmarks: the same network, eager or ``torch.compile``'d.

The network is ``torch_peer.from_jax_model`` of the model our run would
build (same preset, dataset shape and overrides, checked by
``tests/test_benchmarks.py`` to have the same parameter count). The peer's
step is one SGD-Nesterov update on float32 NCHW images; it has no
augmentation, which our step does on device.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from jax_bench import bench_config, fake_arrays
from machine import log, machine_info, peak_rss_mib
from timing import Repeats, register_steps, time_train_eval


def peer_network(
    name: str, batch: int, model_kwargs: dict[str, Any] | None = None
) -> tuple[Any, Any]:
    """(The benchmark's config, the peer ``TorchNet`` of its model).

    The model comes from ``create_model`` with the arguments ``build_run``
    would pass, without building a run: that would start JAX's CPU backend
    (threads, memory) in the process that measures PyTorch.
    """
    import sparsenet_jax as sj
    import torch_peer
    from sparsenet_jax import data as data_lib

    config = bench_config(name, batch, model_kwargs)
    info = data_lib.dataset_info(config.dataset)
    model = sj.create_model(
        config.model, num_classes=info.num_classes, in_channels=info.channels, **config.model_kwargs
    )
    return config, torch_peer.from_jax_model(model)


TORCH_MODES = ("eager", "compile")


def prepare_torch(
    name: str,
    batch: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    threads: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    count_flops: bool = True,
) -> tuple[dict[str, Any], Any, Any]:
    """The peer's steps, ready to time: (fields, ``train_once``, ``eval_once``).

    ``compile_mode`` None runs the network eagerly; otherwise it is wrapped in
    ``torch.compile(net, mode=compile_mode)`` ("default", "max-autotune", …) as a
    user would, the loss and the optimiser step staying eager, and the fields
    get the seconds of the first train and eval calls (``*_first_call_s``:
    compilation plus one step). The FLOP count is taken eagerly before that.
    ``compile_backend`` is torch.compile's backend (tests use "eager": no code
    generation, only the wiring). ``count_flops`` False skips the FLOP count
    (one eager step: the side-by-side contenders save its time).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import torch_peer
    from sparsenet_jax import data as data_lib

    threads = threads or machine_info()["cores"]
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = True  # the peer's best convolution algorithms
    config, net = peer_network(name, batch, model_kwargs)
    net = net.to(device)
    opt = torch_peer.make_sgd(net)
    info = data_lib.dataset_info(config.dataset)
    shape = (info.image_size, info.image_size, info.channels)
    arrays = fake_arrays(batch, shape, info.num_classes, seed)
    pixels = (arrays["image"].astype(np.float32) - 127.5) / 64.0  # the values do not matter
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))).to(device)  # NCHW
    y = torch.from_numpy(arrays["label"].astype(np.int64)).to(device)
    low = dtype != "float32"
    autocast = lambda: torch.autocast(x.device.type, getattr(torch, dtype), enabled=low)  # noqa: E731
    wait = torch.cuda.synchronize if x.device.type == "cuda" else lambda: None
    model = net

    def train_once() -> None:
        net.train()
        torch_peer.train_step(model, opt, x, y, autocast())
        wait()

    def eval_once() -> None:
        net.eval()
        with torch.inference_mode(), autocast():
            model(x)
        wait()

    result: dict[str, Any] = {"preset": name, "threads": threads, "device": str(x.device)}
    result["dtype"] = dtype
    if x.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(x.device)
    result["params"] = torch_peer.count_params(net)
    # An independent FLOP count (convs and matmuls only, no BN or elementwise ops)
    # to sanity-check XLA's cost analysis, which counts those too.
    if count_flops:
        with FlopCounterMode(display=False) as counter:
            train_once()
        result["torch_counted_train_flops"] = counter.get_total_flops()
    result["compile_mode"] = compile_mode
    result["compile_backend"] = compile_backend if compile_mode is not None else None
    if compile_mode is not None:
        model = torch.compile(net, mode=compile_mode, backend=compile_backend)
        for kind, once in (("train", train_once), ("eval", eval_once)):
            start = time.perf_counter()
            once()
            result[f"{kind}_first_call_s"] = time.perf_counter() - start
            log(f"  torch.compile {name}: first {kind} call {result[f'{kind}_first_call_s']:.1f} s")
    return result, train_once, eval_once


def bench_torch(
    name: str,
    batch: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    how: Repeats | None = None,
    threads: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """Train and eval images/s of the PyTorch peer of one preset, eager or compiled.

    ``how`` says how to time them (default :class:`timing.Repeats`); ``threads``
    defaults to every core this process may use. ``device`` is a torch device
    ("cuda" for a GPU: each timed call waits for the GPU to finish); ``dtype``
    "bfloat16" runs the forward pass under ``torch.autocast`` with float32
    parameters, PyTorch's counterpart of our bf16 compute with fp32 parameters.
    ``compile_mode``: see :func:`prepare_torch`.
    """
    result, train_once, eval_once = prepare_torch(
        name, batch, model_kwargs, threads, seed, device, dtype, compile_mode
    )
    kind = "torch" if compile_mode is None else f"torch.compile({compile_mode})"
    label = f"{kind} {name} ({result['threads']} threads)"
    result.update(time_train_eval(label, train_once, eval_once, how or Repeats(), batch))
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def torch_contender(
    name: str,
    batch: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    mode: str = "eager",
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Set up the peer's steps in this (spawned) process for :func:`timing.interleave`.

    ``mode`` is "eager" or "compile" (``torch.compile``'s default mode). Returns
    the fields of :func:`prepare_torch` after ``warmup`` more calls of each step;
    for "compile", ``train_second_call_s`` too (a recompilation would show there).
    """
    if mode not in TORCH_MODES:
        raise ValueError(f"torch mode {mode!r}: expected one of {', '.join(TORCH_MODES)}")
    compile_mode = "default" if mode == "compile" else None
    result, train_once, eval_once = prepare_torch(
        name, batch, model_kwargs, seed=seed, compile_mode=compile_mode, count_flops=False
    )
    for i in range(warmup):
        start = time.perf_counter()
        train_once()
        if i == 0:
            result["train_second_call_s"] = time.perf_counter() - start
        eval_once()
    register_steps(train=train_once, eval=eval_once)
    result.update(framework="torch", mode=mode, peak_rss_mib=peak_rss_mib())
    return result
