"""Datasets and augmentation, one job per module.

* ``datasets``: the registry (``DatasetInfo``, ``DATASETS``, ``dataset_info``) and
  ``load_arrays``, the small datasets (digits, CIFAR-10/100) as in-memory uint8 NHWC arrays.
* ``digits``: scikit-learn's digits upscaled to 32 x 32, with a fixed split.
* ``preprocess``: ``normalize`` and ``augment``, jittable, applied on the accelerator.
* ``sampling``: ``epoch_order``, ``host_batch_indices``, ``eval_batch_indices``:
  deterministic batch orders that every host computes identically, each taking its own slice.
* ``imagenet``: ``ImageNetLoader``, host-local ImageNet batches decoded on the host by a
  thread pool.
* ``cli``: ``main``, the ``prepare`` command.

CIFAR and ImageNet are read with ``tfds.data_source`` from data prepared in the
``array_record`` format, which needs no TensorFlow; preparing it does
(``python -m sparsenet_jax.data prepare NAME --data-dir DIR``).
"""

from sparsenet_jax.data.cli import main
from sparsenet_jax.data.datasets import (
    DATASETS,
    DatasetInfo,
    DatasetNotFoundError,
    dataset_info,
    load_arrays,
)
from sparsenet_jax.data.imagenet import Batch, ImageNetLoader
from sparsenet_jax.data.preprocess import augment, normalize
from sparsenet_jax.data.sampling import epoch_order, eval_batch_indices, host_batch_indices

__all__ = [
    "DATASETS",
    "Batch",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageNetLoader",
    "augment",
    "dataset_info",
    "epoch_order",
    "eval_batch_indices",
    "host_batch_indices",
    "load_arrays",
    "main",
    "normalize",
]
