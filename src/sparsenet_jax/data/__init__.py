"""Datasets and augmentation, one job per module.

* ``datasets``: the registry (``DatasetInfo``, ``DATASETS``, ``dataset_info``) and
  ``load_arrays``/``load_dataset``, the small datasets (digits, CIFAR-10/100, an image
  folder) as in-memory uint8 NHWC arrays.
* ``errors``: ``DatasetNotFoundError``, the one-line error every loader raises.
* ``images``: the one image decoder of every loader (bytes to RGB, one-line errors).
* ``folder``: ``--dataset folder``: ROOT/train/<class>/*, ROOT/test/<class>/*, or a
  packed ``.npz`` of JPEGs, decoded into memory and cached.
* ``cifar_files``: CIFAR-10/100 from the official python or binary downloads.
* ``digits``: scikit-learn's digits upscaled to 32 x 32, with a fixed split.
* ``preprocess``: ``normalize`` and ``augment``, jittable, applied on the accelerator.
* ``sampling``: ``epoch_order``, ``host_batch_indices``, ``eval_batch_indices``:
  deterministic batch orders that every host computes identically, each taking its own slice.
* ``imagenet``: ``ImageNetLoader``, host-local ImageNet batches decoded on the host by a
  thread pool.
* ``imagenet_grain``: ``GrainImageNetLoader``, the same batches interface on grain (the
  ``[grain]`` extra; imported only when used): worker processes and a resumable state.
* ``cli``: ``main``, the ``prepare`` command.

CIFAR (unless ``--data-dir`` holds the official files) and ImageNet are read with
``tfds.data_source`` from data prepared in the ``array_record`` format, which needs no
TensorFlow; preparing it does (``python -m sparsenet_jax.data prepare NAME --data-dir DIR``).
"""

from sparsenet_jax.data.cifar_files import CifarFileError
from sparsenet_jax.data.cli import main
from sparsenet_jax.data.datasets import (
    ALL_DATASETS,
    DATASETS,
    LOCAL_DATASETS,
    DatasetInfo,
    DatasetNotFoundError,
    LoadedDataset,
    dataset_info,
    load_arrays,
    load_dataset,
)
from sparsenet_jax.data.folder import ImageFolderError, ImageSet, InsufficientMemoryError
from sparsenet_jax.data.imagenet import Batch, ImageNetLoader
from sparsenet_jax.data.images import ImageDataError, ImageDecodeError, NonFiniteImageError
from sparsenet_jax.data.preprocess import augment, normalize
from sparsenet_jax.data.sampling import epoch_order, eval_batch_indices, host_batch_indices

__all__ = [
    "ALL_DATASETS",
    "DATASETS",
    "LOCAL_DATASETS",
    "Batch",
    "CifarFileError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageDataError",
    "ImageDecodeError",
    "ImageFolderError",
    "ImageNetLoader",
    "ImageSet",
    "InsufficientMemoryError",
    "LoadedDataset",
    "NonFiniteImageError",
    "augment",
    "dataset_info",
    "epoch_order",
    "eval_batch_indices",
    "host_batch_indices",
    "load_arrays",
    "load_dataset",
    "main",
    "normalize",
]
