"""Datasets and augmentation.

* ``load_arrays``: the small datasets (digits, CIFAR-10/100) as in-memory uint8 NHWC arrays.
* ``ImageNetLoader``: host-local ImageNet batches decoded on the host by a thread pool.
* ``normalize`` and ``augment``: jittable, applied on the accelerator.
* ``epoch_order``, ``host_batch_indices``, ``eval_batch_indices``: deterministic batch
  orders that every host computes identically, each taking its own slice.

CIFAR and ImageNet are read with ``tfds.data_source`` from data prepared in the
``array_record`` format, which needs no TensorFlow; preparing it does
(``python -m sparsenet_jax.data prepare NAME --data-dir DIR``).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import difflib
import functools
import importlib.util
import math
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset."""

    name: str
    num_classes: int
    image_size: int  # height = width of the images the network sees
    channels: int
    num_train: int
    num_test: int  # ImageNet: the validation split
    mean: tuple[float, ...]  # per channel, pixel values scaled to [0, 1]
    std: tuple[float, ...]


_INFOS = {
    # digits: mean/std of the 1,497 upscaled training images (checked by the tests).
    "digits": DatasetInfo("digits", 10, 32, 1, 1497, 300, (0.3058,), (0.3240,)),
    "cifar10": DatasetInfo(
        "cifar10", 10, 32, 3, 50_000, 10_000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 32, 3, 50_000, 10_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "imagenet2012": DatasetInfo(
        "imagenet2012",
        1000,
        224,
        3,
        1_281_167,
        50_000,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    ),
}
DATASETS: tuple[str, ...] = tuple(_INFOS)
_IN_MEMORY = ("digits", "cifar10", "cifar100")


class DatasetNotFoundError(RuntimeError):
    """The dataset has not been prepared in ``data_dir``; the message says how to prepare it."""


def dataset_info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` of ``name``; ``ValueError`` (with a suggestion) if unknown."""
    if name not in _INFOS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown dataset {name!r}.{hint} Valid names: {', '.join(DATASETS)}.")
    return _INFOS[name]


# ---------------------------------------------------------------------------
# In-memory datasets


def load_arrays(
    name: str, split: str, data_dir: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and labels (int32) of a small dataset; ``split`` is "train" or "test".

    digits comes with scikit-learn. CIFAR is read from tfds data in ``data_dir``
    (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``) and the decoded arrays
    are cached there as ``.npy`` files, so later loads take a fraction of a second.
    Raises ``DatasetNotFoundError`` when the data has not been prepared.
    """
    info = dataset_info(name)
    if name not in _IN_MEMORY:
        raise ValueError(f"{name} does not fit in memory; use ImageNetLoader")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        images, labels = _digits()[split]
        return images.copy(), labels.copy()
    root = _resolve_data_dir(data_dir)
    cache = os.path.join(root, "sparsenet_jax_cache", f"{name}-{split}")
    try:
        return np.load(cache + "-images.npy"), np.load(cache + "-labels.npy")
    except FileNotFoundError:
        pass
    images, labels = _read_tfds(info, split, root)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    _save_atomic(cache + "-images.npy", images)
    _save_atomic(cache + "-labels.npy", labels)  # written last: its presence marks a full cache
    return images, labels


_DIGITS_TEST_PER_CLASS = 30  # 10 classes x 30 = 300 test images, 1,497 for training


@functools.cache
def _digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.int64)  # (1797, 8, 8), integers 0..16
    y = digits.target.astype(np.int32)
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


def _resolve_data_dir(data_dir: str | None) -> str:
    # The same default as tfds, resolved here so that error messages can name it.
    return os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    )


def _save_atomic(path: str, array: np.ndarray) -> None:
    # Several processes may share data_dir: write elsewhere, then rename in one step.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _prepare_hint(name: str, data_dir: str) -> str:
    command = (
        "pip install 'sparsenet_jax[prepare]' && "
        f"python -m sparsenet_jax.data prepare {name} --data-dir {data_dir}"
    )
    if name == "imagenet2012":
        return (
            f"ImageNet (imagenet2012) is not prepared in {data_dir}. It cannot be downloaded "
            "automatically: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from "
            f"https://image-net.org/, put them in {os.path.join(data_dir, 'downloads', 'manual')} "
            f"(the tfds manual_dir), then prepare it once (needs TensorFlow): {command}"
        )
    return (
        f"{name} is not prepared in {data_dir}. Download and prepare it once "
        f"(needs TensorFlow and internet): {command}"
    )


def _open_source(name: str, split: str, data_dir: str) -> Sequence[dict[str, Any]] | None:
    """The tfds random-access source; None if the data is there but in a TensorFlow-only format."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # tfds signals missing data with several exception types
        prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
        if prepared and isinstance(err, NotImplementedError):
            return None  # prepared as tfrecord: only tfds.load (TensorFlow) reads it
        if prepared:
            raise
        raise DatasetNotFoundError(_prepare_hint(name, data_dir)) from err


def _read_tfds(info: DatasetInfo, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    source = _open_source(info.name, split, data_dir)
    if source is None:
        if importlib.util.find_spec("tensorflow") is None:
            raise DatasetNotFoundError(
                f"{info.name} in {data_dir} is in the tfrecord format, which needs TensorFlow "
                "(pip install 'sparsenet_jax[prepare]'); or delete it and prepare it again "
                f"with: python -m sparsenet_jax.data prepare {info.name} --data-dir {data_dir}"
            )
        import tensorflow_datasets as tfds

        arrays = tfds.as_numpy(
            tfds.load(info.name, split=split, data_dir=data_dir, batch_size=-1, download=False)
        )
        return np.asarray(arrays["image"], np.uint8), np.asarray(arrays["label"], np.int32)

    n = len(source)
    images = np.empty((n, info.image_size, info.image_size, info.channels), np.uint8)
    labels = np.empty((n,), np.int32)

    def fill(start: int) -> None:  # decodes one chunk of PNGs; PIL releases the GIL
        for i in range(start, min(n, start + 1000)):
            example = source[i]
            images[i] = example["image"]
            labels[i] = example["label"]

    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(0, n, 1000)))
    return images, labels


# ---------------------------------------------------------------------------
# On-device preprocessing


def normalize(images: jax.Array, info: DatasetInfo, dtype: Any = jnp.float32) -> jax.Array:
    """Pixels in 0..255 (uint8 or float) -> ``(x / 255 - mean) / std`` per channel, as ``dtype``."""
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)
    x = jnp.asarray(images).astype(jnp.float32)
    return ((x / 255.0 - mean) / std).astype(dtype)


def augment(rng: jax.Array, images: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """Per-example random crop of the zero-padded images back to their size, and random mirror.

    ``images`` is NHWC (any dtype). ``pad=0, flip=False`` is the identity. Jittable.
    """
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(rng)
    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
        # vmap of dynamic_slice lowers to one gather: no per-example Python loop.
        images = jax.vmap(
            lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
        )(padded, offsets)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
    return images


# ---------------------------------------------------------------------------
# Batch orders (identical on every host; each host takes its own slice)


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(num_examples)`` determined by ``(seed, epoch)`` alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _check_hosts(batch: int, process_index: int, process_count: int) -> None:
    if batch <= 0 or process_count <= 0 or batch % process_count:
        raise ValueError(
            f"batch size {batch} must be positive and divisible by process_count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")


def host_batch_indices(
    num_examples: int,
    global_batch: int,
    seed: int,
    epoch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[np.ndarray]:
    """This host's indices for each full global batch of the epoch (remainder dropped).

    Global batch ``b`` is ``epoch_order(...)[b * global_batch:(b + 1) * global_batch]``;
    host ``p`` gets its ``p``-th contiguous slice of ``global_batch // process_count``.
    """
    _check_hosts(global_batch, process_index, process_count)
    if global_batch > num_examples:
        raise ValueError(f"global batch {global_batch} > {num_examples} examples")
    num_batches = num_examples // global_batch
    order = epoch_order(num_examples, seed, epoch)[: num_batches * global_batch]
    return iter(order.reshape(num_batches, process_count, -1)[:, process_index])


def eval_batch_indices(
    num_examples: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indices, mask)`` per global eval batch of ``batch_size``, this host's slice.

    Together the batches cover every example once, in order; the last one is padded
    to full size with index 0 and mask 0.0 (real examples have mask 1.0), so that
    every batch has one shape and masked sums give exact metrics.
    """
    _check_hosts(batch_size, process_index, process_count)
    num_batches = -(-num_examples // batch_size)
    positions = np.arange(num_batches * batch_size)
    mask = (positions < num_examples).astype(np.float32)
    indices = np.where(positions < num_examples, positions, 0)
    shape = (num_batches, process_count, batch_size // process_count)
    return zip(
        indices.reshape(shape)[:, process_index], mask.reshape(shape)[:, process_index], strict=True
    )


# ---------------------------------------------------------------------------
# ImageNet


class Batch(NamedTuple):
    """A host-local batch from ``ImageNetLoader``."""

    images: np.ndarray  # float32 NHWC, normalised
    labels: np.ndarray  # int32
    mask: np.ndarray  # float32: 1.0 real example, 0.0 eval padding


class ImageNetLoader:
    """Host-local ImageNet batches (``Batch(images, labels, mask)``) from tfds ``array_record`` data.

    ``batch_size`` is the *global* batch: each of the ``process_count`` hosts reads and
    yields its own ``batch_size // process_count`` examples of every batch (see
    ``host_batch_indices``; ``eval_batch_indices`` when ``train=False``). Training
    batches use a random-resized crop (scale 0.08-1, ratio 3/4-4/3) and a random
    mirror, seeded per example by ``(seed, epoch, index)``, so batches do not depend on
    thread timing or host count; evaluation resizes the shorter side to 256 and takes
    the central 224 x 224. ``num_workers`` threads decode and augment, one batch ahead.
    """

    def __init__(
        self,
        split: str,
        batch_size: int,
        *,
        data_dir: str | None = None,
        seed: int = 0,
        epoch: int = 0,
        train: bool = True,
        process_index: int = 0,
        process_count: int = 1,
        num_workers: int = 8,
    ) -> None:
        splits = {"train": "train", "test": "validation", "validation": "validation"}
        if split not in splits:
            raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
        _check_hosts(batch_size, process_index, process_count)
        self.info = dataset_info("imagenet2012")
        self.batch_size, self.seed, self.epoch, self.train = batch_size, seed, epoch, train
        self.process_index, self.process_count = process_index, process_count
        self.num_workers = num_workers
        root = _resolve_data_dir(data_dir)
        source = _open_source("imagenet2012", splits[split], root)
        if source is None:
            raise DatasetNotFoundError(
                f"imagenet2012 in {root} is in the tfrecord format; prepare it again as "
                f"array_record: python -m sparsenet_jax.data prepare imagenet2012 --data-dir {root}"
            )
        self._source = source
        self.num_examples = len(source)
        if train and batch_size > self.num_examples:
            raise ValueError(f"batch size {batch_size} > {self.num_examples} examples")
        self._mean = np.asarray(self.info.mean, np.float32)
        self._std = np.asarray(self.info.std, np.float32)

    def __len__(self) -> int:
        """Batches per epoch (training drops the remainder; evaluation pads it)."""
        if self.train:
            return self.num_examples // self.batch_size
        return -(-self.num_examples // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        batches: Iterator[tuple[np.ndarray, np.ndarray]]
        if self.train:
            batches = (
                (idx, np.ones(len(idx), np.float32))
                for idx in host_batch_indices(
                    self.num_examples,
                    self.batch_size,
                    self.seed,
                    self.epoch,
                    self.process_index,
                    self.process_count,
                )
            )
        else:
            batches = eval_batch_indices(
                self.num_examples, self.batch_size, self.process_index, self.process_count
            )
        pool = concurrent.futures.ThreadPoolExecutor(self.num_workers)
        pending: collections.deque[tuple[list[concurrent.futures.Future], np.ndarray]]
        pending = collections.deque()
        try:
            for indices, mask in batches:
                pending.append(([pool.submit(self._example, int(i)) for i in indices], mask))
                if len(pending) > 1:  # keep one batch decoding while this one is consumed
                    yield self._collect(*pending.popleft())
            while pending:
                yield self._collect(*pending.popleft())
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self, futures: list[concurrent.futures.Future], mask: np.ndarray) -> Batch:
        examples = [f.result() for f in futures]
        images = np.stack([image for image, _ in examples])
        labels = np.asarray([label for _, label in examples], np.int32)
        return Batch(images, labels, mask)

    def _example(self, index: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        example = self._source[index]
        image = Image.fromarray(np.asarray(example["image"], np.uint8)).convert("RGB")
        size = self.info.image_size
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            box = _random_resized_crop_box(rng, image.width, image.height)
            mirror = rng.random() < 0.5
        else:  # shorter side to 256, central 224: one resize of the matching box
            side = min(image.width, image.height) * size / 256
            left, top = (image.width - side) / 2, (image.height - side) / 2
            box, mirror = (left, top, left + side, top + side), False
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
        if mirror:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = np.asarray(image, np.float32)
        return (pixels / 255.0 - self._mean) / self._std, int(example["label"])


def _random_resized_crop_box(
    rng: np.random.Generator,
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of an Inception-style crop, as torchvision samples it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    # Fallback: the central crop with the aspect ratio clamped to the allowed range.
    if width / height < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif width / height > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


# ---------------------------------------------------------------------------
# Command line: python -m sparsenet_jax.data prepare NAME --data-dir DIR


def main(argv: Sequence[str] | None = None) -> int:
    """``prepare NAME``: download (ImageNet: from manual_dir) and prepare a dataset once."""
    parser = argparse.ArgumentParser(prog="python -m sparsenet_jax.data")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="download and prepare a dataset (array_record)")
    prepare.add_argument("name", help=", ".join(DATASETS))
    prepare.add_argument(
        "--data-dir", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    prepare.add_argument(
        "--manual-dir", help="ImageNet tar files (default: DATA_DIR/downloads/manual)"
    )
    args = parser.parse_args(argv)
    try:
        dataset_info(args.name)
    except ValueError as err:
        parser.error(str(err))
    if args.name == "digits":
        print("digits ships with scikit-learn: nothing to prepare.")
        return 0
    # tfds builds datasets with TensorFlow, and its builder code also imports importlib_resources.
    missing = [
        m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(
            f"error: preparing {args.name} needs TensorFlow (missing: {', '.join(missing)}); "
            "install it with: pip install 'sparsenet_jax[prepare]'",
            file=sys.stderr,
        )
        return 2
    root = _resolve_data_dir(args.data_dir)
    manual_dir = args.manual_dir or os.path.join(root, "downloads", "manual")
    if args.name == "imagenet2012" and not all(
        os.path.exists(os.path.join(manual_dir, f))
        for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
    ):
        print(f"error: {_prepare_hint(args.name, root)} (looked in {manual_dir})", file=sys.stderr)
        return 2
    import tensorflow_datasets as tfds

    builder = tfds.builder(args.name, data_dir=root)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    if args.name in _IN_MEMORY:  # decode once now, so that training starts from the .npy cache
        for split in ("train", "test"):
            load_arrays(args.name, split, root)
    print(f"{args.name} prepared in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
