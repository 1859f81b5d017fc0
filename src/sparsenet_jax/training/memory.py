"""Will a run fit? A bound and an estimate of a step's memory, made before anything is allocated.

Two stages. :func:`check_size` is arithmetic on the layout alone, O(number of
blocks) whatever the depth: the parameters, gradients and momentum, and every
layer's output kept for the backward pass. Train, ``aot`` and ``export`` call it
before anything is traced or written, so a billion-layer network is refused in
a second instead of exhausting the machine. :func:`check_fits` then traces
shapes only (``jax.eval_shape``) for the estimate with every activation.
On TPU, ``python -m sparsenet_jax.aot`` gives the compiler's exact figure.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from sparsenet_jax import data as data_lib
from sparsenet_jax.model.arithmetic import SizeBound, size_bound
from sparsenet_jax.model.presets import create_model
from sparsenet_jax.training.build import Run
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a train step needs on one device."""

    num_params: int
    state_bytes: int  # parameters, optimizer state, BatchNorm statistics
    grad_bytes: int
    activation_bytes: int  # every layer output of the forward pass, kept for the backward pass

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.grad_bytes + self.activation_bytes


def _nbytes(tree: Any) -> int:
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def estimate(run: Run) -> MemoryEstimate:
    """The memory one device needs for ``run``'s train step (shapes only, nothing allocated).

    With ``--seeds N``, all N replicas' (the state already holds them).
    """
    state = run.abstract_state()
    per_device = run.config.batch_size // run.mesh.size
    images = jax.ShapeDtypeStruct((per_device, *run.image_shape), jnp.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if run.seeds > 1:  # one replica's shapes; its activations count N times below
        variables = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), variables)
    _, captured = jax.eval_shape(
        lambda v, x: run.model.apply(
            v, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True
        ),
        variables,
        images,
    )
    return MemoryEstimate(
        num_params=run.num_params,
        state_bytes=_nbytes(state),
        grad_bytes=_nbytes(state.params),
        activation_bytes=_nbytes(captured.get("intermediates", {})) * run.seeds,
    )


def device_capacity(device: jax.Device) -> int | None:
    """Bytes of memory ``device`` offers (physical RAM for a CPU), or None if unknown."""
    try:
        stats = device.memory_stats() or {}
    except Exception:  # not every backend implements it
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    if device.platform == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return None


def check_size(
    config: TrainConfig,
    *,
    devices: int | None = None,
    capacity: int | None = None,
    where: str | None = None,
    train: bool = True,
    info: data_lib.DatasetInfo | None = None,
) -> SizeBound | None:
    """Refuse, in one line and O(number of blocks), a run whose step cannot fit a device.

    Call it first: it builds the (uninitialised) module only, traces and
    writes nothing, so a billion-layer network is refused at once
    (issue 18 item 1).

    Args:
      config: the run; its model, ``model_kwargs``, dataset, dtype and batch size count.
      devices: how many devices share the batch (default: ``jax.device_count()``).
      capacity: bytes of one device (default: this machine's first device).
      where: the device's name in the message (default: its platform).
      train: a train step (gradients, momentum, activations) or inference only.
      info: the dataset's facts; default: the catalogue's. An image folder not
        read yet counts as 3-channel images of ``--image-size`` (or 32) in 2
        classes: a lower bound, which the traced estimate refines.

    Returns:
      The bound, or None when the capacity is unknown.

    Raises:
      TrainingError: naming the parameter count, the bound and the capacity.
    """
    if capacity is None:
        device = jax.devices()[0]
        capacity, where = device_capacity(device), where or f"{device.platform} memory"
    if capacity is None:
        return None
    devices = devices or jax.device_count()
    if info is None:
        info = _catalogued_or_least(config)
    try:
        kwargs = {"in_channels": info.channels, **config.model_kwargs}
        # "auto" may mean bfloat16: the bound takes the smaller of the two.
        kwargs["dtype"] = jnp.float32 if config.dtype == "float32" else jnp.bfloat16
        model = create_model(config.model, num_classes=info.num_classes, **kwargs)
    except (ValueError, TypeError) as err:
        raise TrainingError(f"model: {err}") from None
    one = size_bound(model, max(1, config.batch_size // devices), info.image_size, train)
    bound = dataclasses.replace(  # --seeds N: N replicas' state and layer outputs
        one,
        state_bytes=one.state_bytes * config.seeds,
        activation_bytes=one.activation_bytes * config.seeds,
    )
    if bound.total_bytes > capacity:
        need = f"at least {bound.total_bytes / GiB:,.1f} GiB"
        if train:
            need += (
                f" (state {bound.state_bytes / GiB:,.1f}, "
                f"layer outputs {bound.activation_bytes / GiB:,.1f})"
            )
        step = "a train step" if train else "its weights"
        if config.seeds > 1:
            step += f" of {config.seeds} seeds"
        raise TrainingError(
            f"{config.model} has {bound.num_params:,} parameters: {step} needs {need} per "
            f"device, more than the {capacity / GiB:,.1f} GiB of {where or 'the device'}; "
            + _advice(config.seeds, capacity // max(one.total_bytes, 1), train)
        )
    return bound


def _catalogued_or_least(config: TrainConfig) -> data_lib.DatasetInfo:
    if config.dataset not in data_lib.LOCAL_DATASETS:
        return data_lib.dataset_info(config.dataset)
    size = config.image_size or 32
    return data_lib.DatasetInfo(config.dataset, 2, size, 3, 1, 1, (0.5,) * 3, (0.25,) * 3)


def check_fits(run: Run) -> MemoryEstimate | None:
    """Refuse a run whose train step cannot fit in a device's memory.

    The estimate with activations, from traced shapes: the second stage, after
    :func:`check_size` (which the trainer calls first) has refused a network
    too big even to trace.

    Returns:
      The estimate, or None when the device's capacity is unknown.

    Raises:
      TrainingError: naming the parameter count, the estimate and the capacity.
    """
    device = run.mesh.devices.flat[0]
    capacity = device_capacity(device)
    if capacity is None:
        return None
    need = estimate(run)
    if need.total_bytes > capacity:
        detail = (
            f"an estimated {need.total_bytes / GiB:.1f} GiB (state {need.state_bytes / GiB:.1f}, "
            f"gradients {need.grad_bytes / GiB:.1f}, activations {need.activation_bytes / GiB:.1f})"
        )
        raise _too_big(run, need, detail, capacity, device)
    return need


def _too_big(
    run: Run, need: MemoryEstimate, detail: str, capacity: int, device: jax.Device
) -> TrainingError:
    step = "a train step" + (f" of {run.seeds} seeds" if run.seeds > 1 else "")
    per_replica = need.total_bytes // run.seeds
    return TrainingError(
        f"{run.config.model} has {need.num_params:,} parameters: {step} needs {detail} per "
        f"device, more than the {capacity / GiB:.1f} GiB of {device.platform} memory; "
        + _advice(run.seeds, capacity // max(per_replica, 1), train=True)
    )


def _advice(seeds: int, seeds_that_fit: int, train: bool) -> str:
    """What to change; with ``--seeds``, how many replicas fit (the one-line answer)."""
    if seeds > 1 and seeds_that_fit >= 1:
        return f"at most --seeds {seeds_that_fit} fits"
    return "choose a smaller model" + (" or --batch-size" if train else "")
