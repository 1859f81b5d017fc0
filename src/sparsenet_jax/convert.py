"""Official PyTorch SparseNet/DenseNet state_dict → Flax variables.

The Flax modules carry the official module names (``features.conv0``,
``features.dense-stage-{i}.block-{j}.bn1``, ``features.transition-{i}``,
``features.norm_last``, ``classifier.linear``), so conversion is a renaming
plus a layout change: conv weights OIHW → HWIO, linear weights (out, in) →
(in, out). Loading never unpickles arbitrary objects: ``.npz`` files are read
with ``allow_pickle=False`` and ``.pth`` files with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Flax leaf name → PyTorch parameter/buffer name, per collection.
_LEAF_NAMES = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}
# Buffers the official model has and Flax does not need.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def torch_name(collection: str, path: tuple[str, ...]) -> str:
    """The official state_dict key of the Flax leaf ``variables[collection][path]``."""
    *modules, leaf = path
    if modules == ["classifier"]:
        prefix = "classifier.linear"
    else:
        prefix = "features." + ".".join(modules)
    return f"{prefix}.{_LEAF_NAMES[(collection, leaf)]}"


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _to_flax_layout(array: np.ndarray, target_ndim: int) -> np.ndarray:
    if array.ndim == 4 and target_ndim == 4:  # conv OIHW → HWIO
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2 and target_ndim == 2:  # linear (out, in) → (in, out)
        return array.T
    return array


def from_torch_state_dict(
    model: nn.Module,
    state_dict: Mapping[str, Any],
    input_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Convert an official PyTorch state_dict for ``model``.

    Args:
      model: a module from :func:`sparsenet_jax.create_model` whose layout
        matches the checkpoint.
      state_dict: official names → arrays (numpy arrays or torch tensors).
      input_shape: NHWC shape used to trace ``model`` (default 1×32×32 for the
        CIFAR stem, 1×224×224 for the ImageNet one).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with the model's dtypes.

    Raises:
      ValueError: listing every missing, unexpected or mis-shaped key.
    """
    if input_shape is None:
        size = 224 if getattr(model, "stem", "cifar") == "imagenet" else 32
        input_shape = (1, size, size, getattr(model, "in_channels", 3))
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32))
    )
    source = {
        _strip_wrapper_prefix(k): v
        for k, v in state_dict.items()
        if not k.endswith(_IGNORED_SUFFIXES)
    }
    used: set[str] = set()
    missing: list[str] = []
    misshaped: list[str] = []
    converted: dict[str, Any] = {}
    for collection, tree in shapes.items():
        flat = _flatten(tree)
        out = {}
        for path, target in flat.items():
            key = torch_name(collection, path)
            if key not in source:
                missing.append(key)
                continue
            used.add(key)
            array = _to_flax_layout(_to_numpy(source[key]), len(target.shape))
            if tuple(array.shape) != tuple(target.shape):
                misshaped.append(
                    f"{key}: checkpoint {tuple(_to_numpy(source[key]).shape)} → "
                    f"{tuple(array.shape)}, model expects {tuple(target.shape)}"
                )
                continue
            out[path] = jnp.asarray(array, target.dtype)
        converted[collection] = _unflatten(out)
    unexpected = sorted(set(source) - used)
    if missing or unexpected or misshaped:
        parts = []
        for title, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        ):
            if items:
                parts.append(f"{len(items)} {title}: " + "; ".join(items))
        raise ValueError("state_dict does not fit the model — " + " | ".join(parts))
    return converted


def _strip_wrapper_prefix(key: str) -> str:
    # nn.DataParallel / DistributedDataParallel checkpoints prefix every key.
    return key[len("module.") :] if key.startswith("module.") else key


def _flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def load_state_dict(path: str | os.PathLike[str], prefix: str = "") -> dict[str, np.ndarray]:
    """Read a state_dict from ``.npz`` or ``.pth``/``.pt`` without running code from the file.

    Args:
      path: the file.
      prefix: keep only keys starting with it, and strip it (``"sd/"`` for
        the reference vectors).

    Returns:
      Names → numpy arrays.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            raw: dict[str, Any] = {k: data[k] for k in data.files}
    elif path.endswith((".pth", ".pt")):
        raw = _load_torch(path)
    else:
        raise ValueError(f"unknown checkpoint format {path!r}: expected .npz, .pth or .pt")
    if prefix:
        raw = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
        if not raw:
            raise ValueError(f"no keys start with {prefix!r} in {path}")
    return {k: _to_numpy(v) for k, v in raw.items()}


def _load_torch(path: str) -> dict[str, Any]:
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading .pth files needs PyTorch (pip install torch); or save the "
            "state_dict as .npz with numpy.savez"
        ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"refusing to load {path}: it is not a plain tensor checkpoint "
            f"(torch.load with weights_only=True failed: {err})"
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    return dict(obj)


def load_pretrained(
    model: nn.Module, path: str | os.PathLike[str], prefix: str = ""
) -> dict[str, Any]:
    """:func:`load_state_dict` then :func:`from_torch_state_dict`."""
    return from_torch_state_dict(model, load_state_dict(path, prefix=prefix))
