"""Test helpers: small image folders and packed .npz files, written into a temporary folder.

* ``cifar_npz()``: the path of ``../shared/data/cifar10-jpeg-q75.npz``; skips the test
  (naming the file) when it is absent. Never copy the file, or anything made from it,
  into the repository: the helpers below write into the folder they are given
  (``tmp_path``).
* ``cifar_image_folder(root, per_class=20, ...)``: ROOT/train/<class>/*.png|jpg and
  ROOT/test/<class>/* built from the first images of each class of that file.
* ``write_folder(root, {split: {class: [uint8 HxWx3, ...]}}, ext)``: any arrays as files.
* ``write_packed(path, classes, train, test)``: a packed .npz in the file's format, and
  ``packed_subset`` (both from ``benchmarks/packed_subset.py``).
"""

from __future__ import annotations

import io
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH_DIR) not in sys.path:  # the packed format's writer lives with the benchmarks
    sys.path.insert(0, str(BENCH_DIR))

from packed_subset import packed_subset, write_packed  # noqa: E402, F401  (re-exported)

CIFAR_NPZ = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg-q75.npz"


def cifar_npz() -> pathlib.Path:
    """The shared CIFAR-10 q75 file, or a skip naming it."""
    if not CIFAR_NPZ.exists():
        pytest.skip(f"{CIFAR_NPZ} not found (the CIFAR-10 q75 JPEG test file; see its README)")
    return CIFAR_NPZ


def encode(pixels: np.ndarray, ext: str, **options) -> bytes:
    """``pixels`` (uint8 HxWx3, or an existing PIL image) encoded as ``ext`` (png/jpg/webp)."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext.lower()]
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write_folder(
    root: pathlib.Path, splits: dict[str, dict[str, list[np.ndarray]]], ext: str = "png"
) -> pathlib.Path:
    """Write ``splits`` ({split: {class: [images]}}) as ROOT/split/class/NNNN.ext."""
    for split, classes in splits.items():
        for name, images in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(images):
                (folder / f"{i:04d}.{ext}").write_bytes(encode(pixels, ext))
    return root


def cifar_image_folder(
    root: pathlib.Path,
    per_class: int = 20,
    test_per_class: int = 10,
    num_classes: int = 10,
    ext: str = "png",
) -> pathlib.Path:
    """An image folder of ``per_class`` train and ``test_per_class`` test images per class.

    The images are the first of each class in the shared CIFAR-10 q75 file, decoded and
    written as ``ext`` (png keeps the decoded pixels exactly; jpg re-encodes them).
    Skips when the file is absent.
    """
    with np.load(cifar_npz()) as packed:
        classes = [str(c) for c in packed["classes"]][:num_classes]
        for split, count in (("train", per_class), ("test", test_per_class)):
            buf, offsets, labels = (packed[f"{split}_{k}"] for k in ("jpeg", "offsets", "labels"))
            for label, name in enumerate(classes):
                folder = root / split / name
                folder.mkdir(parents=True, exist_ok=True)
                for n, i in enumerate(np.flatnonzero(labels == label)[:count]):
                    data = buf[offsets[i] : offsets[i + 1]].tobytes()
                    if ext.lower() in ("jpg", "jpeg"):
                        (folder / f"{n:04d}.jpg").write_bytes(data)  # the file's own JPEG
                    else:
                        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                        (folder / f"{n:04d}.{ext}").write_bytes(encode(pixels, ext))
    return root
