"""Official PyTorch SparseNet/DenseNet state_dict → Flax variables.

The Flax modules carry the official module names (``features.conv0``,
``features.dense-stage-{i}.block-{j}.bn1``, ``features.transition-{i}``,
``features.norm_last``, ``classifier.linear``), so conversion is a renaming
plus a layout change: conv weights OIHW → HWIO, linear weights (out, in) →
(in, out). Loading never unpickles arbitrary objects: ``.npz`` files are read
with ``allow_pickle=False`` and ``.pth`` files with ``torch.load(weights_only=True)``.
Weights with NaN/Inf values or negative BatchNorm running variances are refused
(:class:`CheckpointError`, naming the keys): they would only produce NaN logits later.

Nothing in a file is trusted before it is checked, each in one line naming the
file and the entry: a ``.pth`` archive's CRCs (``torch.load`` does not check
them); entries that are not real numbers (strings, lists, sparse tensors,
complex values) are refused, while bfloat16 (and float8) tensors, which NumPy
cannot hold, are widened to float32, exactly; an entry whose size the model
cannot have is refused by its shape before its values are read (a stride-0
tensor of a few bytes on disk can claim 93 GiB), and one larger than its
whole ``.pth`` file even without a model.
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

from sparsenet_jax.model.network import SparseNet, abstract_variables

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


def _entry_to_numpy(key: str, value: Any, max_bytes: int | None = None) -> np.ndarray:
    """One state_dict entry as a real-valued array; :class:`_BadEntry` saying why it is not one.

    Only the entry's metadata is read here, never its values: a stride-0 tensor
    stays a view. bfloat16 and float8 torch tensors, which NumPy cannot hold,
    become ``ml_dtypes`` views of the same bytes (widened to float32 later).

    Args:
      key: the entry's name, for the message.
      value: a torch tensor, an array, or whatever else the file held.
      max_bytes: refuse an entry whose (virtual) size exceeds it: the size of
        the ``.pth`` file, which cannot hold more.
    """
    layout = getattr(value, "layout", None)
    if layout is not None and str(layout) != "torch.strided":
        raise _BadEntry(key, f"is a {str(layout).removeprefix('torch.')} tensor (save .to_dense())")
    if max_bytes is not None:
        nbytes = _virtual_nbytes(value)
        if nbytes is not None and nbytes > max_bytes:
            shape = tuple(int(d) for d in value.shape)
            raise _BadEntry(
                key,
                f"of shape {shape} claims {nbytes / 2**30:.1f} GiB, more than the whole "
                f"{max_bytes:,}-byte file holds (a stride-0, expanded tensor? save .contiguous())",
            )
    dtype = str(getattr(value, "dtype", ""))
    narrow = _NARROW_FLOATS.get(dtype.removeprefix("torch.")) if hasattr(value, "detach") else None
    try:
        if narrow is not None:  # no NumPy dtype: reinterpret the bytes, without a copy
            import torch

            bits = torch.uint8 if value.element_size() == 1 else torch.int16
            array = value.detach().cpu().view(bits).numpy().view(narrow)
        else:
            array = _to_numpy(value)
    except Exception as err:  # quantized or meta tensors, ragged lists, ...
        kind = dtype.removeprefix("torch.") or type(value).__name__
        raise _BadEntry(key, f"cannot be read as an array ({kind}: {err})") from None
    if np.iscomplexobj(array):
        raise _BadEntry(key, f"holds complex values ({array.dtype})")
    if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == np.bool_):
        kind = array.dtype.kind
        described = {"U": "text", "S": "bytes", "O": type(value).__name__}.get(kind, array.dtype)
        raise _BadEntry(key, f"holds {described} values, not numbers")
    return array


def _narrow_floats() -> dict[str, Any]:
    """torch dtype name → the ml_dtypes NumPy dtype of the same bits (those NumPy lacks)."""
    import ml_dtypes

    names = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
    return {n: np.dtype(getattr(ml_dtypes, n)) for n in names if hasattr(ml_dtypes, n)}


_NARROW_FLOATS = _narrow_floats()


def _virtual_nbytes(value: Any) -> int | None:
    """Bytes the entry claims (elements × element size), read from its metadata only."""
    if hasattr(value, "numel") and hasattr(value, "element_size"):  # a torch tensor
        return int(value.numel()) * int(value.element_size())
    if isinstance(value, np.ndarray):
        return int(value.size) * value.dtype.itemsize
    return None


def _widen(array: np.ndarray) -> np.ndarray:
    """bfloat16/float8 (``ml_dtypes``) → float32, exactly; other arrays as they are."""
    if array.dtype in _NARROW_FLOATS.values():
        return array.astype(np.float32)
    return array


class _BadEntry(Exception):
    """An entry that is not a real-valued array: its key and what is wrong."""

    def __init__(self, key: str, why: str) -> None:
        super().__init__(f"{key} {why}")
        self.key = key


def _entries_to_numpy(
    entries: Mapping[str, Any], where: str, max_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Every entry through :func:`_entry_to_numpy`; one :class:`CheckpointError` naming all bad ones."""
    arrays, bad = {}, []
    for key, value in entries.items():
        try:
            arrays[key] = _entry_to_numpy(key, value, max_bytes)
        except _BadEntry as err:
            bad.append(str(err))
    if bad:
        more = f"; and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        listed = "; ".join(" ".join(b.split()) for b in bad[:_MAX_LISTED])
        raise CheckpointError(f"refusing the weights of {where}: {listed}{more}")
    return arrays


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
      ValueError: listing every missing, unexpected or mis-shaped key. Shapes
        are checked first: an entry the model cannot hold is never read.
      CheckpointError: naming the entries that are not real numbers, or the
        keys with NaN/Inf values or negative running variances.
    """
    return _convert(model, state_dict, "the state_dict", input_shape)


def _convert(
    model: SparseNet,
    state_dict: Mapping[str, Any],
    where: str,
    input_shape: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """:func:`from_torch_state_dict`, its messages naming ``where``."""
    if input_shape is None:
        input_shape = model.default_input_shape
    shapes = abstract_variables(model, input_shape)
    source = _entries_to_numpy(
        {
            _strip_wrapper_prefix(k): v
            for k, v in state_dict.items()
            if not k.endswith(_IGNORED_SUFFIXES)
        },
        where,
    )
    fit = _FitToModel(source)
    converted = {
        collection: fit.collection(collection, tree) for collection, tree in shapes.items()
    }
    fit.raise_if_wrong(where)
    # Only now, every entry having the model's shape, are values read.
    check_weights({k: source[k] for k in fit.used}, where)
    return converted


class _FitToModel:
    """Fits a checkpoint's entries to the model's variables: maps each model variable to its checkpoint entry; collects every mismatch for one error."""

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

    def raise_if_wrong(self, where: str = "the state_dict") -> None:
        unexpected = sorted(set(self.source) - self.used)
        groups = (
            ("missing", self.missing),
            ("unexpected", unexpected),
            ("mis-shaped", self.misshaped),
        )
        parts = [f"{len(items)} {title}: " + "; ".join(items) for title, items in groups if items]
        if parts:
            raise ValueError(f"{where} does not fit the model — " + " | ".join(parts))


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
      Names → numpy arrays; bfloat16 (and float8) entries widened to float32,
      which holds their values exactly.

    Raises:
      FileNotFoundError: no such file.
      CheckpointError: an unreadable file (truncated, not a zip archive, a
        member failing its CRC check, pickled objects), an entry that is not
        real numbers (text, sparse, complex) or larger than the file, or
        weights refused by :func:`check_weights`.
    """
    arrays = _read_state_dict(path, prefix)
    check_weights(arrays, os.fspath(path))
    return {k: _widen(a) for k, a in arrays.items()}


def _read_state_dict(path: str | os.PathLike[str], prefix: str) -> dict[str, np.ndarray]:
    """:func:`load_state_dict` without reading any value (no :func:`check_weights`, no widening)."""
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
    # A .pth file stores every element of its (non-overlapping) tensors: none can be larger.
    max_bytes = os.path.getsize(path) if path.endswith((".pth", ".pt")) else None
    return _entries_to_numpy(raw, path, max_bytes)


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


def _check_zip_crcs(path: str) -> None:
    """Refuse a ``.pth`` zip archive with a member that fails its CRC (``torch.load`` reads it anyway)."""
    if not zipfile.is_zipfile(path):
        return  # the legacy (pre-1.6) format, or no archive at all: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path} is a damaged .pth archive ({type(err).__name__}: {' '.join(str(err).split())})"
        ) from None
    if damaged is not None:
        raise CheckpointError(
            f"{path} is damaged: its member {damaged} fails its CRC check (a changed or "
            "missing byte); download or copy it again"
        )


def _load_torch(path: str) -> dict[str, Any]:
    _check_zip_crcs(path)
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
            f"(torch.load with weights_only=True failed: {' '.join(str(err).split())[:500]})"
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
    where = os.fspath(path)
    state_dict = _read_state_dict(where, prefix)  # shapes are checked before any value is read
    if num_classes is None:
        return _convert(model, state_dict, where)
    from sparsenet_jax.model.finetune import adapt_num_classes

    source = {_strip_wrapper_prefix(k): v for k, v in state_dict.items()}
    bias = source.get(torch_name("params", ("classifier", "bias")))
    source_classes = model.num_classes if bias is None else int(bias.shape[0])
    variables = _convert(model.clone(num_classes=source_classes), state_dict, where)
    return adapt_num_classes(model.clone(num_classes=num_classes), variables, seed)
