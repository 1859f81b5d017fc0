"""The dataset registry and the in-memory datasets.

* ``DatasetInfo``, ``DATASETS``, ``dataset_info``: static facts about each dataset.
* ``load_arrays``: the small datasets (digits, CIFAR-10/100, an image folder) as uint8
  NHWC arrays; ``load_dataset``: both splits and the facts as read (``LoadedDataset``).
* ``resolve_data_dir``, ``open_source``, ``prepare_hint``: the tfds reading that the
  ImageNet loader and the ``prepare`` command share: where the data lives, its
  ``array_record`` source, and the message that says how to prepare missing data.

CIFAR is read from the official files when data_dir holds them (``cifar_files``), else
decoded once from tfds and then cached as ``.npy`` files in the data_dir. The folder
dataset (``folder``) takes its facts from the data it reads.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sparsenet_jax._files import write_atomic
from sparsenet_jax._text import did_you_mean
from sparsenet_jax.data import digits
from sparsenet_jax.data.errors import DatasetNotFoundError

logger = logging.getLogger("sparsenet_jax.data")


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
    classes: tuple[str, ...] = ()  # label names where the data names them (folder, CIFAR files)


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
DATASETS: tuple[str, ...] = tuple(_INFOS)  # the catalogued datasets, facts known in advance
# Datasets whose facts come from the data found in data_dir (classes, size, counts, mean/std).
LOCAL_DATASETS: tuple[str, ...] = ("folder",)
ALL_DATASETS: tuple[str, ...] = (*DATASETS, *LOCAL_DATASETS)  # what --dataset accepts
IN_MEMORY: tuple[str, ...] = ("digits", "cifar10", "cifar100", "folder")  # what load_arrays serves


@dataclasses.dataclass(frozen=True)
class LoadedDataset:
    """An in-memory dataset as actually read: its facts, both splits, and what differed."""

    info: DatasetInfo  # num_train/num_test: the sizes read; mean/std: computed for "folder"
    train: tuple[np.ndarray, np.ndarray]  # images uint8 NHWC, labels int32
    test: tuple[np.ndarray, np.ndarray]
    # One line each, for the trainer to print: sizes that differ from the catalogue's
    # (also logged), images converted to RGB (folder; also logged at INFO when decoded).
    notes: tuple[str, ...] = ()


def dataset_info(
    name: str, data_dir: str | None = None, image_size: int | None = None
) -> DatasetInfo:
    """The ``DatasetInfo`` of ``name``; ``ValueError`` (with a suggestion) if unknown.

    For the catalogued datasets (``DATASETS``) the facts are static and ``data_dir`` is
    not read. For ``"folder"``, ``data_dir`` (an image folder or a packed ``.npz``) is
    read, decoded and cached (see ``folder.load``), and the facts are those of the data:
    classes, image size (``image_size`` when given), counts, and the train split's mean
    and std.
    """
    if name in LOCAL_DATASETS:
        return _folder_info(_load_folder(data_dir, image_size))
    if name not in _INFOS:
        raise ValueError(
            f"unknown dataset {name!r}{did_you_mean(name, ALL_DATASETS)}. "
            f"Valid names: {', '.join(ALL_DATASETS)}."
        )
    info = _INFOS[name]
    if image_size is not None and image_size != info.image_size:
        raise ValueError(
            f"{name} images are {info.image_size}x{info.image_size}; an image size "
            f"({image_size}) applies to the folder dataset only"
        )
    return info


def load_dataset(
    name: str, data_dir: str | None = None, image_size: int | None = None
) -> LoadedDataset:
    """Both splits of an in-memory dataset, with its facts as read (see ``LoadedDataset``).

    ``info.num_train``/``num_test`` are the sizes actually read; when they differ from
    the catalogue's, ``notes`` says so in one line (also logged).
    """
    if name in LOCAL_DATASETS:
        image_set = _load_folder(data_dir, image_size)
        return LoadedDataset(
            _folder_info(image_set),
            image_set.split("train"),
            image_set.split("test"),
            image_set.notes,
        )
    info = dataset_info(name, image_size=image_size)
    source = _cifar_source(name, data_dir)
    if source is not None:
        from sparsenet_jax.data import cifar_files

        x_train, y_train, classes = cifar_files.load(source, "train")
        x_test, y_test, _ = cifar_files.load(source, "test")
        info = dataclasses.replace(info, classes=classes)
        train, test = (x_train, y_train), (x_test, y_test)
    else:
        train = load_arrays(name, "train", data_dir)
        test = load_arrays(name, "test", data_dir)
    notes = []
    read = (len(train[1]), len(test[1]))
    if read != (info.num_train, info.num_test):
        notes.append(
            f"{name}: read {read[0]} train and {read[1]} test images from "
            f"{data_dir or resolve_data_dir(None)}, where the full set has "
            f"{info.num_train} and {info.num_test}; epochs follow the data read"
        )
        logger.warning(notes[-1])
    info = dataclasses.replace(info, num_train=read[0], num_test=read[1])
    return LoadedDataset(info, train, test, tuple(notes))


def load_arrays(
    name: str, split: str, data_dir: str | None = None, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 NHWC) and labels (int32) of a small dataset; ``split`` is "train" or "test".

    digits comes with scikit-learn. ``folder`` is read from ``data_dir`` (see
    ``folder.load``). CIFAR is read from the official files when ``data_dir`` holds
    them or is one of them (``cifar-10-python.tar.gz``, ``cifar-10-binary.tar.gz``,
    the CIFAR-100 ones, or the folders they unpack to; see ``cifar_files``), else from
    tfds data in ``data_dir`` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``),
    whose decoded arrays are cached there as ``.npy`` files.
    Raises ``DatasetNotFoundError`` (or its subclass ``ImageDataError``, for data that
    cannot be read as given) with a one-line message.
    """
    if name in LOCAL_DATASETS:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return _load_folder(data_dir, image_size).split(split)
    info = dataset_info(name, image_size=image_size)
    if name not in IN_MEMORY:
        raise ValueError(f"{name} does not fit in memory; use ImageNetLoader")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        images, labels = digits.load_splits()[split]
        return images.copy(), labels.copy()
    source = _cifar_source(name, data_dir)
    if source is not None:
        from sparsenet_jax.data import cifar_files

        images, labels, _ = cifar_files.load(source, split)
        return images, labels
    root = resolve_data_dir(data_dir)
    cache = os.path.join(root, "sparsenet_jax_cache", f"{name}-{split}")
    try:
        images, labels = np.load(cache + "-images.npy"), np.load(cache + "-labels.npy")
    except FileNotFoundError:
        pass
    else:
        from sparsenet_jax.data.images import check_finite

        check_finite(images, cache + "-images.npy")
        return images, labels
    images, labels = _read_tfds(info, split, root)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    write_atomic(cache + "-images.npy", lambda f: np.save(f, images))
    write_atomic(
        cache + "-labels.npy", lambda f: np.save(f, labels)
    )  # written last: its presence marks a full cache
    return images, labels


def _load_folder(data_dir: str | None, image_size: int | None) -> Any:
    from sparsenet_jax.data import folder

    if not data_dir:
        raise ValueError(
            "the folder dataset needs --data-dir: a folder with train/<class>/* and "
            "test/<class>/* (or val/), or a packed .npz of JPEGs"
        )
    return folder.load(data_dir, image_size)


def _folder_info(image_set: Any) -> DatasetInfo:
    return DatasetInfo(
        "folder",
        len(image_set.classes),
        image_set.image_size,
        3,
        len(image_set.train_labels),
        len(image_set.test_labels),
        image_set.mean,
        image_set.std,
        image_set.classes,
    )


def _cifar_source(name: str, data_dir: str | None) -> Any:
    from sparsenet_jax.data import cifar_files

    return cifar_files.find(name, data_dir)


def resolve_data_dir(data_dir: str | None) -> str:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``, user-expanded.

    The same default as tfds, resolved here so that error messages can name it.
    """
    return os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
    )


def prepare_hint(name: str, data_dir: str) -> str:
    """The message for ``name`` missing from ``data_dir``: the shell command that prepares it."""
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


def open_source(
    name: str, split: str, data_dir: str, *, encoded_images: bool = False
) -> Sequence[dict[str, Any]] | None:
    """The tfds random-access source; None if the data is there but in a TensorFlow-only format.

    With ``encoded_images`` the examples' ``"image"`` is the encoded file (bytes), for
    ``images.decode`` to decode: tfds's own NumPy decoding skips ``convert("RGB")``, so
    CMYK JPEGs come out with four inverted channels and palette images as indices.
    """
    import tensorflow_datasets as tfds

    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as err:  # tfds signals missing data with several exception types
        prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
        if prepared and isinstance(err, NotImplementedError):
            return None  # prepared as tfrecord: only tfds.load (TensorFlow) reads it
        if prepared:
            raise
        raise DatasetNotFoundError(prepare_hint(name, data_dir)) from err
    if encoded_images and hasattr(source, "decoders"):
        # Set on the source rather than passed to tfds.data_source, whose decoders
        # argument also changes how tfds.testing.mock_data fakes examples (it then needs
        # TensorFlow). Sources without the field keep tfds's decoding: arrays, which
        # images.to_rgb accepts too.
        source.decoders = {"image": tfds.decode.SkipDecoding()}
    return source


def _read_tfds(info: DatasetInfo, split: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """All of ``split`` decoded into arrays (TensorFlow only for data prepared as tfrecord)."""
    source = open_source(info.name, split, data_dir)
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
