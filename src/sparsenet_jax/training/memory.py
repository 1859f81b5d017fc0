"""Will a run fit? An estimate of a train step's memory, made before anything is allocated.

The estimate traces shapes only (``jax.eval_shape``): a 50-billion-parameter
network is refused in seconds instead of growing until the machine swaps.
On TPU, ``python -m sparsenet_jax.aot`` gives the compiler's exact figure.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from sparsenet_jax.model.arithmetic import expected_params
from sparsenet_jax.training.build import Run
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
    """The memory one device needs for ``run``'s train step (shapes only, nothing allocated)."""
    state = run.abstract_state()
    per_device = run.config.batch_size // run.mesh.size
    images = jax.ShapeDtypeStruct((per_device, *run.image_shape), jnp.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
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
        activation_bytes=_nbytes(captured.get("intermediates", {})),
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


def check_fits(run: Run) -> MemoryEstimate | None:
    """Refuse a run whose train step cannot fit in a device's memory.

    First a lower bound from the parameter arithmetic alone (parameters,
    gradients and momentum in float32), which refuses a huge network at once;
    then the estimate with activations, from traced shapes.

    Returns:
      The estimate, or None when the device's capacity is unknown.

    Raises:
      TrainingError: naming the parameter count, the estimate and the capacity.
    """
    device = run.mesh.devices.flat[0]
    capacity = device_capacity(device)
    if capacity is None:
        return None
    num_params = expected_params(run.model)
    at_least = 3 * 4 * num_params
    if at_least > capacity:
        raise _too_big(run, num_params, f"at least {at_least / GiB:.1f} GiB", capacity, device)
    need = estimate(run)
    if need.total_bytes > capacity:
        detail = (
            f"an estimated {need.total_bytes / GiB:.1f} GiB (state {need.state_bytes / GiB:.1f}, "
            f"gradients {need.grad_bytes / GiB:.1f}, activations {need.activation_bytes / GiB:.1f})"
        )
        raise _too_big(run, need.num_params, detail, capacity, device)
    return need


def _too_big(
    run: Run, num_params: int, need: str, capacity: int, device: jax.Device
) -> TrainingError:
    return TrainingError(
        f"{run.config.model} has {num_params:,} parameters: a train step needs {need} per "
        f"device, more than the {capacity / GiB:.1f} GiB of {device.platform} memory; "
        "choose a smaller model or --batch-size"
    )
