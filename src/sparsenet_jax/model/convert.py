"""Official PyTorch SparseNet/DenseNet state_dict → Flax variables.

The Flax modules carry the official module names (``features.conv0``,
``features.dense-stage-{i}.block-{j}.bn1``, ``features.transition-{i}``,
``features.norm_last``, ``classifier.linear``), so conversion is a renaming
plus a layout change: conv weights OIHW → HWIO, linear weights (out, in) →
(in, out). Loading never unpickles arbitrary objects: ``.npz`` files are read
with ``allow_pickle=False`` and ``.pth`` files with ``torch.load(weights_only=True)``.
Weights with NaN/Inf values or negative BatchNorm running variances are refused
(:class:`CheckpointError`, naming the keys): they would only produce NaN logits later.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsenet_jax.model.network import SparseNet

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
_MAX_LISTED = 10  # keys named in an error message


class CheckpointError(ValueError):
    """A weights file or state_dict that cannot be used; the message names the file or keys."""


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
    model: SparseNet,
    state_dict: Mapping[str, Any],
    input_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Convert an official PyTorch state_dict for ``model``.

    Args:
      model: a module from :func:`sparsenet_jax.create_model` whose layout
        matches the checkpoint.
      state_dict: official names → arrays (numpy arrays or torch tensors).
      input_shape: NHWC shape used to trace ``model`` (default
        ``model.default_input_shape``).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` with the model's dtypes.

    Raises:
      ValueError: listing every missing, unexpected or mis-shaped key.
      CheckpointError: naming the keys with NaN/Inf values or negative running variances.
    """
    if input_shape is None:
        input_shape = model.default_input_shape
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(input_shape, jnp.float32))
    )
    source = {
        _strip_wrapper_prefix(k): _to_numpy(v)
        for k, v in state_dict.items()
        if not k.endswith(_IGNORED_SUFFIXES)
    }
    check_weights(source, "the state_dict")
    fit = _Fit(source)
    converted = {
        collection: fit.collection(collection, tree) for collection, tree in shapes.items()
    }
    fit.raise_if_wrong()
    return converted


class _Fit:
    """Maps each model variable to its checkpoint entry; collects every mismatch for one error."""

    def __init__(self, source: dict[str, np.ndarray]) -> None:
        self.source = source
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.misshaped: list[str] = []

    def collection(self, collection: str, tree: Any) -> dict[str, Any]:
        out = {}
        for path, target in _flatten(tree).items():
            key = torch_name(collection, path)
            if key not in self.source:
                self.missing.append(key)
                continue
            self.used.add(key)
            array = _to_flax_layout(self.source[key], len(target.shape))
            if tuple(array.shape) != tuple(target.shape):
                self.misshaped.append(
                    f"{key}: checkpoint {tuple(self.source[key].shape)} → "
                    f"{tuple(array.shape)}, model expects {tuple(target.shape)}"
                )
                continue
            out[path] = jnp.asarray(array, target.dtype)
        return _unflatten(out)

    def raise_if_wrong(self) -> None:
        unexpected = sorted(set(self.source) - self.used)
        groups = (
            ("missing", self.missing),
            ("unexpected", unexpected),
            ("mis-shaped", self.misshaped),
        )
        parts = [f"{len(items)} {title}: " + "; ".join(items) for title, items in groups if items]
        if parts:
            raise ValueError("state_dict does not fit the model — " + " | ".join(parts))


def to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Flax variables → the official PyTorch state_dict (the inverse of :func:`from_torch_state_dict`).

    For the PyTorch route to ONNX or TorchScript: load the result into the official
    model (``strict=True``; ``num_batches_tracked`` buffers aside) and export from there.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` of a :class:`SparseNet`.

    Returns:
      Official names → numpy arrays (conv kernels OIHW, linear weights (out, in)).
    """
    out: dict[str, np.ndarray] = {}
    for collection in ("params", "batch_stats"):
        for path, value in _flatten(variables.get(collection, {})).items():
            array = np.asarray(value)
            if array.ndim == 4:  # conv HWIO → OIHW
                array = array.transpose(3, 2, 0, 1)
            elif array.ndim == 2:  # linear (in, out) → (out, in)
                array = array.T
            out[torch_name(collection, path)] = np.ascontiguousarray(array)
    return out


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


def check_weights(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse NaN/Inf values and negative BatchNorm running variances.

    Args:
      arrays: state_dict names → numpy arrays.
      where: what they came from, for the message (a file name).

    Raises:
      CheckpointError: naming the offending keys.
    """
    nonfinite = [
        k
        for k, a in sorted(arrays.items())
        if jnp.issubdtype(a.dtype, jnp.inexact) and not np.isfinite(a).all()
    ]
    negative = [
        k
        for k, a in sorted(arrays.items())
        if k.endswith("running_var") and k not in nonfinite and (np.asarray(a) < 0).any()
    ]
    problems = []
    for title, keys in (
        ("NaN or Inf values", nonfinite),
        ("negative BatchNorm running variances", negative),
    ):
        if keys:
            more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
            problems.append(f"{title} in {', '.join(keys[:_MAX_LISTED])}{more}")
    if problems:
        raise CheckpointError(
            f"refusing the weights of {where}: {'; '.join(problems)} "
            "(a diverged or corrupted training run?)"
        )


def load_state_dict(path: str | os.PathLike[str], prefix: str = "") -> dict[str, np.ndarray]:
    """Read a state_dict from ``.npz`` or ``.pth``/``.pt`` without running code from the file.

    Args:
      path: the file.
      prefix: keep only keys starting with it, and strip it (``"sd/"`` for
        the reference vectors).

    Returns:
      Names → numpy arrays.

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: an unreadable file (truncated, not a zip archive, pickled
        objects), or weights refused by :func:`check_weights`.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.endswith(".npz"):
        raw: dict[str, Any] = _load_npz(path)
    elif path.endswith((".pth", ".pt")):
        raw = _load_torch(path)
    else:
        raise ValueError(f"unknown checkpoint format {path!r}: expected .npz, .pth or .pt")
    if prefix:
        raw = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
        if not raw:
            raise ValueError(f"no keys start with {prefix!r} in {path}")
    arrays = {k: _to_numpy(v) for k, v in raw.items()}
    check_weights(arrays, path)
    return arrays


def _load_npz(path: str) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a readable .npz file: not a zip archive, or truncated "
            "(its end, the archive's directory, is missing)"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as err:
        if "pickle" in str(err):
            raise CheckpointError(
                f"refusing to load {path}: it holds pickled Python objects ({err})"
            ) from None
        raise CheckpointError(f"{path} is not a readable .npz file: {err}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable .npz file (corrupt or truncated): "
            f"{type(err).__name__}: {err}"
        ) from None


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
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain tensor checkpoint "
            f"(torch.load with weights_only=True failed: {err})"
        ) from err
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    return dict(obj)


def load_pretrained(
    model: SparseNet,
    path: str | os.PathLike[str],
    prefix: str = "",
    *,
    num_classes: int | None = None,
    seed: int | jax.Array = 0,
) -> dict[str, Any]:
    """:func:`load_state_dict` then :func:`from_torch_state_dict`; optionally a new classifier.

    Args:
      model: the checkpoint's network.
      path: the ``.npz`` or ``.pth`` file.
      prefix: see :func:`load_state_dict`.
      num_classes: for fine-tuning: return variables for
        ``model.clone(num_classes=num_classes)``: every weight of the file but the
        classifier, which is freshly initialised from ``seed`` (logged; see
        :func:`sparsenet_jax.model.finetune.adapt_num_classes`). The checkpoint's own
        number of classes is read from the file.

    Returns:
      ``{"params": ..., "batch_stats": ...}``.
    """
    state_dict = load_state_dict(path, prefix=prefix)
    if num_classes is None:
        return from_torch_state_dict(model, state_dict)
    from sparsenet_jax.model.finetune import adapt_num_classes

    source = {_strip_wrapper_prefix(k): v for k, v in state_dict.items()}
    bias = source.get(torch_name("params", ("classifier", "bias")))
    source_classes = model.num_classes if bias is None else int(bias.shape[0])
    variables = from_torch_state_dict(model.clone(num_classes=source_classes), state_dict)
    return adapt_num_classes(model.clone(num_classes=num_classes), variables, seed)
