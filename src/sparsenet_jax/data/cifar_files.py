"""CIFAR-10/100 as users download them from https://www.cs.toronto.edu/~kriz/cifar.html.

``find(name, data_dir)`` recognises, in ``data_dir`` (or as ``data_dir`` itself):

* the python versions: ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``, or the
  folders they unpack to, ``cifar-10-batches-py/`` / ``cifar-100-python/``;
* the binary versions: ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``, or
  ``cifar-10-batches-bin/`` / ``cifar-100-binary/`` (CIFAR-100 records carry a coarse and
  a fine label byte; the fine label is used).

``load(source, split)`` reads one split as uint8 NHWC images and int32 labels, from the
archive directly (nothing is extracted to disk). The python versions are pickles: they
are read by ``SafeUnpickler``, which admits only what those files contain (dicts,
lists, bytes and str, and numpy arrays through the three globals that numpy's pickles
name), so a tampered file runs no code and is refused in one line
(``CifarFileError``, naming the file).
"""

from __future__ import annotations

import codecs
import dataclasses
import io
import os
import pickle
import tarfile
from collections.abc import Callable
from typing import Any

import numpy as np

from sparsenet_jax.data.images import ImageDataError

PIXELS = 32 * 32 * 3
# name -> (python archive, python folder, binary archive, binary folder)
_LAYOUT = {
    "cifar10": (
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        "cifar-10-binary.tar.gz",
        "cifar-10-batches-bin",
    ),
    "cifar100": (
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        "cifar-100-binary.tar.gz",
        "cifar-100-binary",
    ),
}
# The member files of each version, per split, and the file with the class names.
_FILES = {
    ("cifar10", "python"): {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ["batches.meta"],
    },
    ("cifar100", "python"): {"train": ["train"], "test": ["test"], "meta": ["meta"]},
    ("cifar10", "binary"): {
        "train": [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test": ["test_batch.bin"],
        "meta": ["batches.meta.txt"],
    },
    ("cifar100", "binary"): {
        "train": ["train.bin"],
        "test": ["test.bin"],
        "meta": ["fine_label_names.txt"],
    },
}
_NUM_CLASSES = {"cifar10": 10, "cifar100": 100}


class CifarFileError(ImageDataError):
    """An official CIFAR file that is damaged, tampered with or incomplete; names the file."""


@dataclasses.dataclass(frozen=True)
class CifarSource:
    """Where the official files of one CIFAR dataset are."""

    name: str  # cifar10 or cifar100
    version: str  # python or binary
    path: str  # the .tar.gz file, or the folder holding the batch files
    archive: bool

    def member(self, file: str) -> str:
        """The path of ``file`` as messages name it."""
        folder = _LAYOUT[self.name][1 if self.version == "python" else 3]
        if self.archive:
            return f"{self.path}:{folder}/{file}"
        return os.path.join(self.path, file)


def find(name: str, data_dir: str | None) -> CifarSource | None:
    """The official files of ``name`` at or in ``data_dir``; None when there are none."""
    if data_dir is None or name not in _LAYOUT:
        return None
    root = os.path.abspath(os.path.expanduser(data_dir))
    py_tar, py_dir, bin_tar, bin_dir = _LAYOUT[name]
    candidates = [
        (py_dir, "python", False),
        (py_tar, "python", True),
        (bin_dir, "binary", False),
        (bin_tar, "binary", True),
    ]
    base = os.path.basename(root.rstrip(os.sep))
    for entry, version, archive in candidates:
        if base == entry and (os.path.isfile(root) if archive else os.path.isdir(root)):
            return CifarSource(name, version, root, archive)
    if not os.path.isdir(root):
        return None
    for entry, version, archive in candidates:
        path = os.path.join(root, entry)
        if os.path.isfile(path) if archive else os.path.isdir(path):
            return CifarSource(name, version, path, archive)
    return None


def load(source: CifarSource, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images uint8 NHWC, labels int32, class names) of ``split`` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    files = _FILES[(source.name, source.version)]
    contents = _read_members(source, [*files[split], *files["meta"]])
    if source.version == "python":
        parts = [_python_batch(source, f, contents[f]) for f in files[split]]
        classes = _python_classes(source, files["meta"][0], contents[files["meta"][0]])
    else:
        parts = [_binary_batch(source, f, contents[f]) for f in files[split]]
        classes = _text_classes(source, files["meta"][0], contents[files["meta"][0]])
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
    num_classes = _NUM_CLASSES[source.name]
    if len(classes) != num_classes:
        raise CifarFileError(
            f"{source.member(files['meta'][0])}: {len(classes)} class names, expected {num_classes}"
        )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise CifarFileError(
            f"{source.member(files[split][0])}: label {labels[i]} of image {i} is outside "
            f"0..{num_classes - 1}"
        )
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels, classes


# ---------------------------------------------------------------------------
# Reading the files


def _read_members(source: CifarSource, files: list[str]) -> dict[str, bytes]:
    """The bytes of each of ``files`` (names inside the batch folder), from folder or archive."""
    if not source.archive:
        contents = {}
        for file in files:
            path = os.path.join(source.path, file)
            try:
                with open(path, "rb") as f:
                    contents[file] = f.read()
            except OSError as err:
                raise CifarFileError(
                    f"{path}: {err.strerror or err} (incomplete download?)"
                ) from None
        return contents
    folder = _LAYOUT[source.name][1 if source.version == "python" else 3]
    wanted = {f"{folder}/{f}": f for f in files}
    contents = {}
    try:
        with tarfile.open(source.path, "r:gz") as tar:  # the official archives are .tar.gz
            for member in tar:
                name = wanted.get(member.name.removeprefix("./"))
                if name is None:
                    continue
                file = name
                if not member.isfile():
                    raise CifarFileError(
                        f"{source.member(file)}: not a regular file in the archive"
                    )
                if member.size > 400 * 2**20:
                    raise CifarFileError(
                        f"{source.member(file)}: {member.size} bytes, too large for a CIFAR file"
                    )
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file
                contents[file] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as err:
        reason = " ".join(str(err).split())  # one line, whatever the library's message
        raise CifarFileError(f"{source.path}: damaged or incomplete archive ({reason})") from None
    missing = [f for f in files if f not in contents]
    if missing:
        raise CifarFileError(
            f"{source.path}: {', '.join(folder + '/' + f for f in missing)} missing from the archive"
        )
    return contents


def _binary_batch(source: CifarSource, file: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    label_bytes = 2 if source.name == "cifar100" else 1  # cifar100: coarse, then fine
    record = label_bytes + PIXELS
    if not data or len(data) % record:
        raise CifarFileError(
            f"{source.member(file)}: {len(data)} bytes is not a whole number of "
            f"{record}-byte records (truncated?)"
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, record)
    return records[:, label_bytes:], records[:, label_bytes - 1]


def _text_classes(source: CifarSource, file: str, data: bytes) -> tuple[str, ...]:
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CifarFileError(f"{source.member(file)}: not a text file of class names") from None
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _python_batch(source: CifarSource, file: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(source, file, data)
    pixels = _field(batch, "data")
    labels = _field(batch, "fine_labels" if source.name == "cifar100" else "labels")
    if not (
        isinstance(pixels, np.ndarray)
        and pixels.dtype == np.uint8
        and pixels.ndim == 2
        and pixels.shape[1] == PIXELS
    ):
        raise CifarFileError(f"{source.member(file)}: 'data' is not a uint8 array of (n, {PIXELS})")
    if not isinstance(labels, list | np.ndarray) or len(labels) != len(pixels):
        raise CifarFileError(
            f"{source.member(file)}: the labels do not match the {len(pixels)} images"
        )
    if not all(isinstance(v, int | np.integer) for v in labels):
        raise CifarFileError(f"{source.member(file)}: the labels are not integers")
    return pixels, np.asarray(labels, np.int64)


def _python_classes(source: CifarSource, file: str, data: bytes) -> tuple[str, ...]:
    meta = _unpickle(source, file, data)
    names = _field(meta, "fine_label_names" if source.name == "cifar100" else "label_names")
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise CifarFileError(f"{source.member(file)}: the class names are not a list of strings")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def _field(mapping: Any, key: str) -> Any:
    if isinstance(mapping, dict):
        for k in (key.encode(), key):
            if k in mapping:
                return mapping[k]
    return None


# ---------------------------------------------------------------------------
# The restricted unpickler


def _encode_latin1(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 writes bytes into protocol-2 pickles as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed() -> dict[tuple[str, str], Callable[..., Any] | type]:
    reconstruct: Callable[..., Any] = np.zeros(0).__reduce__()[0]  # type: ignore[assignment]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _encode_latin1,
    }


class SafeUnpickler(pickle.Unpickler):
    """Admits only dicts, lists, tuples, bytes, str, numbers and numpy arrays of plain dtypes."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, encoding="bytes")
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _unpickle(source: CifarSource, file: str, data: bytes) -> Any:
    try:
        value = SafeUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # any failure of a refused or damaged pickle: one line
        reason = " ".join(str(err).split())
        raise CifarFileError(
            f"{source.member(file)}: not a CIFAR pickle, or tampered with ({reason}); "
            "nothing in it was run"
        ) from None
    _check_plain(source, file, value, depth=0)
    return value


def _check_plain(source: CifarSource, file: str, value: Any, depth: int) -> None:
    """Refuse anything but dicts/lists/tuples of bytes, str, numbers and non-object arrays."""
    if depth > 4:
        raise CifarFileError(f"{source.member(file)}: nested too deeply for a CIFAR file")
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise CifarFileError(f"{source.member(file)}: holds an object array")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_plain(source, file, k, depth + 1)
            _check_plain(source, file, v, depth + 1)
    elif isinstance(value, list | tuple):
        if value and not all(isinstance(v, int | bytes | str) for v in value):
            for v in value:
                _check_plain(source, file, v, depth + 1)
    elif not isinstance(value, bytes | str | int | float | bool | type(None)):
        raise CifarFileError(f"{source.member(file)}: holds a {type(value).__name__}")
