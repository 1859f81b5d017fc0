"""Devices, sharding and jit: a 1-D ``data`` mesh, the state replicated on it and
batches sharded over it, so the same steps run on one CPU, several devices,
GPU, TPU and several hosts (XLA inserts the all-reduces).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (global) devices, axis ``data``."""
    devs = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devs, ("data",))


def shardings(mesh: Mesh, replicas: bool = False) -> tuple[NamedSharding, NamedSharding]:
    """(replicated, batch-sharded) shardings on ``mesh``.

    With ``replicas`` the batch leads with the replica axis (``--seeds``), which
    is not split: the examples axis behind it is.
    """
    batch_spec = PartitionSpec(None, "data") if replicas else PartitionSpec("data")
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, batch_spec)


def jit_train_step(
    step_fn: Callable[..., Any], mesh: Mesh, replicas: bool = False
) -> Callable[..., Any]:
    """Jit with the state replicated and donated, the batch sharded over ``data``."""
    replicated, batched = shardings(mesh, replicas)
    return jax.jit(
        step_fn,
        in_shardings=(replicated, batched),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def jit_eval_step(step_fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    replicated, batched = shardings(mesh)
    return jax.jit(step_fn, in_shardings=(replicated, batched), out_shardings=replicated)


def global_batch(
    local: Mapping[str, np.ndarray], mesh: Mesh, replicas: bool = False
) -> dict[str, jax.Array]:
    """Assemble each host's slice of the batch into one global array sharded over ``data``."""
    _, batched = shardings(mesh, replicas)
    return {
        k: jax.make_array_from_process_local_data(batched, np.asarray(v)) for k, v in local.items()
    }


def replicate(tree: Any, mesh: Mesh) -> Any:
    replicated, _ = shardings(mesh)
    return jax.device_put(tree, replicated)
