"""The digits dataset: scikit-learn's 8 x 8 digits upscaled to 32 x 32, with a fixed split.

The upscaling is integer arithmetic and the split uses numpy's frozen legacy RNG, so the
arrays are bit-identical on every machine and numpy version.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import pathlib

import numpy as np

_DIGITS_TEST_PER_CLASS = 30  # 10 classes x 30 = 300 test images, 1,497 for training


@functools.cache
def load_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": ...}``: uint8 (N, 32, 32, 1) and int32 arrays.

    Computed once per process and shared: callers that may modify them must copy.
    """
    x, y = _digits()  # (1797, 8, 8) integers 0..16, and their labels
    # Bilinear 8 -> 32 upscaling with half-pixel centres. Its weights are exact multiples
    # of 1/8, so the whole computation is done in integers: bit-identical on every machine.
    w = np.rint(8 * _bilinear_matrix(8, 32)).astype(np.int64)
    acc = np.einsum("ij,njk,lk->nil", w, x, w)  # 64 x the upscaled value (0..16)
    images = ((acc * 255 + 512) // 1024).astype(np.uint8)[..., None]  # x 255/16, rounded
    # Legacy RandomState: its stream is frozen across numpy versions, so the split is too.
    rs = np.random.RandomState(0)
    test = np.sort(
        np.concatenate(
            [rs.permutation(np.flatnonzero(y == c))[:_DIGITS_TEST_PER_CLASS] for c in range(10)]
        )
    )
    train = np.setdiff1d(np.arange(len(y)), test)
    return {"train": (images[train], y[train]), "test": (images[test], y[test])}


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits: int64 (N, 8, 8) images 0..16 and int32 labels.

    Read from the file scikit-learn ships, without importing scikit-learn: the import
    alone took 1.7 s on a 2-core machine, more than the rest of a short run's start-up
    data work. ``load_digits`` reads the same file; it is the fallback if it moves.
    """
    path = _bundled_digits_file()
    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images.astype(np.int64), digits.target.astype(np.int32)
    table = np.loadtxt(path, delimiter=",")  # a row: 64 pixels, then the label
    return table[:, :-1].astype(np.int64).reshape(-1, 8, 8), table[:, -1].astype(np.int32)


def _bundled_digits_file() -> pathlib.Path | None:
    """``sklearn/datasets/data/digits.csv.gz`` if scikit-learn is installed and has it."""
    spec = importlib.util.find_spec("sklearn")
    for folder in (spec and spec.submodule_search_locations) or []:
        path = pathlib.Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights, half-pixel centres, edges clamped."""
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
        lo = math.floor(src)
        hi = min(lo + 1, n_in - 1)
        w[i, lo] += 1 - (src - lo)
        w[i, hi] += src - lo
    return w
