"""The PyTorch peer's side of the benchmarks: the same network, eager, train and eval images/s.

The network is ``torch_peer.from_jax_model`` of the model our run would
build (same preset, dataset shape and overrides, checked by
``tests/test_benchmarks.py`` to have the same parameter count). The peer's
step is one SGD-Nesterov update on float32 NCHW images; it has no
augmentation, which our step does on device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jax_bench import bench_config, fake_arrays
from machine import machine_info, peak_rss_mib
from timing import Repeats, time_train_eval


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


def bench_torch(
    name: str,
    batch: int = 64,
    model_kwargs: dict[str, Any] | None = None,
    how: Repeats | None = None,
    threads: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Train and eval images/s of the PyTorch eager peer of one preset.

    ``how`` says how to time them (default :class:`timing.Repeats`); ``threads``
    defaults to every core this process may use. ``device`` is a torch device
    ("cuda" for a GPU: each timed call waits for the GPU to finish); ``dtype``
    "bfloat16" runs the forward pass under ``torch.autocast`` with float32
    parameters, PyTorch's counterpart of our bf16 compute with fp32 parameters.
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

    def train_once() -> None:
        net.train()
        torch_peer.train_step(net, opt, x, y, autocast())
        wait()

    def eval_once() -> None:
        net.eval()
        with torch.inference_mode(), autocast():
            net(x)
        wait()

    result: dict[str, Any] = {"preset": name, "threads": threads, "device": str(x.device)}
    result["dtype"] = dtype
    if x.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(x.device)
    result["params"] = torch_peer.count_params(net)
    # An independent FLOP count (convs and matmuls only, no BN or elementwise ops)
    # to sanity-check XLA's cost analysis, which counts those too.
    with FlopCounterMode(display=False) as counter:
        train_once()
    result["torch_counted_train_flops"] = counter.get_total_flops()
    label = f"torch {name} ({threads} threads)"
    result.update(time_train_eval(label, train_once, eval_once, how or Repeats(), batch))
    result["peak_rss_mib"] = peak_rss_mib()
    return result
