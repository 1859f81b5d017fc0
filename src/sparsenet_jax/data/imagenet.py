"""ImageNet: host-local batches decoded and augmented on the host by a thread pool.

The interface is ``ImageNetLoader(split, batch_size, ...)``, ``len(loader)`` and
iteration over ``Batch(images, labels, mask)``. The per-example work
(``open_imagenet``, ``train_example``, ``eval_example``) is shared with the grain
loader (``imagenet_grain``), so that the two differ only in how they schedule it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from sparsenet_jax.data import images as images_lib
from sparsenet_jax.data.datasets import (
    DatasetInfo,
    DatasetNotFoundError,
    dataset_info,
    open_source,
    resolve_data_dir,
)
from sparsenet_jax.data.sampling import check_hosts, eval_batch_indices, host_batch_indices

if TYPE_CHECKING:
    from PIL import Image

Example = Mapping[str, Any]  # a tfds example: {"image": JPEG bytes, "label": int, ...}
_INFO = dataset_info("imagenet2012")
_MEAN = np.asarray(_INFO.mean, np.float32)
_STD = np.asarray(_INFO.std, np.float32)


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
        hosts = (process_index, process_count)
        self.info, self._source = open_for_hosts(split, batch_size, data_dir, train, *hosts)
        self.batch_size, self.seed, self.epoch, self.train = batch_size, seed, epoch, train
        self.process_index, self.process_count = hosts
        self.num_workers = num_workers
        self.num_examples = len(self._source)

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
        example = self._source[index]
        if self.train:
            return train_example(example, np.random.default_rng([self.seed, self.epoch, index]))
        return eval_example(example)


def open_for_hosts(
    split: str,
    batch_size: int,
    data_dir: str | None,
    train: bool,
    process_index: int,
    process_count: int,
) -> tuple[DatasetInfo, Sequence[Example]]:
    """What both ImageNet loaders check and open first (this one and the grain one).

    Raises:
      ValueError: the global batch does not split over the hosts, or a training
        batch is larger than the split.
    """
    check_hosts(batch_size, process_index, process_count)
    info, source = open_imagenet(split, data_dir)
    if train and batch_size > len(source):
        raise ValueError(f"batch size {batch_size} > {len(source)} examples")
    return info, source


def open_imagenet(split: str, data_dir: str | None) -> tuple[DatasetInfo, Sequence[Example]]:
    """The ImageNet ``DatasetInfo`` and the tfds random-access source of ``split``.

    ``split`` is "train", or "test"/"validation" (both read the validation set).
    Raises ``DatasetNotFoundError`` when the data is missing or is in the tfrecord format.
    """
    splits = {"train": "train", "test": "validation", "validation": "validation"}
    if split not in splits:
        raise ValueError(f"split must be one of {sorted(splits)}, got {split!r}")
    root = resolve_data_dir(data_dir)
    source = open_source("imagenet2012", splits[split], root, encoded_images=True)
    if source is None:
        raise DatasetNotFoundError(
            f"imagenet2012 in {root} is in the tfrecord format; prepare it again as "
            f"array_record: python -m sparsenet_jax.data prepare imagenet2012 --data-dir {root}"
        )
    return dataset_info("imagenet2012"), source


def train_example(example: Example, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A random-resized crop, mirrored with probability 1/2, resized and normalised."""
    image = _rgb(example)
    box = _random_resized_crop_box(rng, image.width, image.height)
    return _resize_normalise(image, box, mirror=rng.random() < 0.5), int(example["label"])


def eval_example(example: Example) -> tuple[np.ndarray, int]:
    """The shorter side resized to 256 and the central 224 x 224, normalised."""
    image = _rgb(example)
    # One resize of the box that the 256-then-224 crop keeps.
    side = min(image.width, image.height) * _INFO.image_size / 256
    left, top = (image.width - side) / 2, (image.height - side) / 2
    box = (left, top, left + side, top + side)
    return _resize_normalise(image, box, mirror=False), int(example["label"])


def _rgb(example: Example) -> Image.Image:
    """The example's image in RGB, through the decoder that every loader shares.

    ``example["image"]`` is the encoded JPEG (``open_imagenet`` skips tfds's decoding),
    or an already decoded uint8 array.
    """
    image = example["image"]
    name = example.get("file_name", b"an imagenet2012 example")
    name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    if isinstance(image, bytes | np.bytes_):
        return images_lib.decode(bytes(image), f"imagenet2012 {name}")
    return images_lib.to_rgb(np.asarray(image), f"imagenet2012 {name}")


def _resize_normalise(
    image: Image.Image, box: tuple[float, float, float, float], mirror: bool
) -> np.ndarray:
    """``box`` of ``image`` resized to 224 x 224 (bilinear), mirrored or not, as float32."""
    from PIL import Image

    size = _INFO.image_size
    image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if mirror:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = np.asarray(image, np.float32)
    return (pixels / 255.0 - _MEAN) / _STD


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
