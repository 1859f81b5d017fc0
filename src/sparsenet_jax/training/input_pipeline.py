"""Host-side batches for the trainer: this host's part of every global batch.

Small datasets live in memory as uint8 and are augmented inside the jitted
step; ImageNet is decoded and augmented on the host by its loader. Batch
orders depend only on (seed, epoch), so a resumed run reads what an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from sparsenet_jax import data as data_lib
from sparsenet_jax.training.config import TrainConfig

Arrays = tuple[np.ndarray, np.ndarray]
HostBatch = dict[str, np.ndarray]


@dataclasses.dataclass
class Splits:
    """The dataset: arrays for in-memory datasets, ``None`` for streamed ones (ImageNet)."""

    info: data_lib.DatasetInfo
    train: Arrays | None
    test: Arrays | None


def load_splits(config: TrainConfig) -> Splits:
    info = data_lib.dataset_info(config.dataset)
    if config.dataset == "imagenet2012":
        return Splits(info, None, None)
    return Splits(
        info,
        data_lib.load_arrays(config.dataset, "train", config.data_dir),
        data_lib.load_arrays(config.dataset, "test", config.data_dir),
    )


def epoch_batches(
    config: TrainConfig, splits: Splits, epoch: int, skip: int = 0
) -> Iterator[HostBatch]:
    """This host's part of every global batch of ``epoch``, from batch ``skip`` on."""
    if splits.train is None:
        for batch in imagenet_batches(config, "train", config.batch_size, epoch, skip):
            yield {"image": batch.images, "label": batch.labels}
        return
    images, labels = splits.train
    order = data_lib.host_batch_indices(
        len(labels), config.batch_size, config.seed, epoch, jax.process_index(), jax.process_count()
    )
    for idx in itertools.islice(order, skip, None):
        yield {"image": images[idx], "label": labels[idx]}


def train_batches(
    config: TrainConfig, splits: Splits, start_step: int, steps_per_epoch: int
) -> Iterator[HostBatch]:
    """Batches for steps ``start_step + 1, start_step + 2, …``, across epochs, without end."""
    epoch, skip = divmod(start_step, steps_per_epoch)
    while True:
        yield from itertools.islice(epoch_batches(config, splits, epoch, skip), steps_per_epoch)
        epoch, skip = epoch + 1, 0


def eval_batches(config: TrainConfig, splits: Splits) -> Iterator[HostBatch]:
    """This host's part of every test batch; ``mask`` marks real examples (not padding)."""
    if splits.test is None:
        for batch in imagenet_batches(config, "validation", config.eval_batch_size):
            yield {"image": batch.images, "label": batch.labels, "mask": batch.mask}
        return
    images, labels = splits.test
    order = data_lib.eval_batch_indices(
        len(labels), config.eval_batch_size, jax.process_index(), jax.process_count()
    )
    for idx, mask in order:
        yield {"image": images[idx], "label": labels[idx], "mask": mask}


def imagenet_batches(
    config: TrainConfig, split: str, batch_size: int, epoch: int = 0, skip: int = 0
) -> Iterator[data_lib.Batch]:
    """This host's ImageNet batches of ``epoch`` from batch ``skip`` on, decoded on the host.

    With grain installed (``pip install 'sparsenet_jax[grain]'``) the grain loader
    jumps straight to batch ``skip``; the thread-pool loader has to decode the
    skipped batches to get there (same batches either way).
    """
    kwargs: dict[str, Any] = dict(
        data_dir=config.data_dir,
        seed=config.seed,
        epoch=epoch,
        train=split == "train",
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if importlib.util.find_spec("grain") is not None:
        from sparsenet_jax.data.imagenet_grain import GrainImageNetLoader

        yield from GrainImageNetLoader(split, batch_size, skip=skip, **kwargs)
        return
    yield from itertools.islice(data_lib.ImageNetLoader(split, batch_size, **kwargs), skip, None)
