"""Host-side batches for the trainer: this host's part of every global batch.

Small datasets live in memory as uint8 and are augmented inside the jitted
step; ImageNet is decoded and augmented on the host by its loader. Batch
orders depend only on (seed, epoch), so a resumed run reads what an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from sparsenet_jax import data as data_lib
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError

log = logging.getLogger("sparsenet_jax.training")

Arrays = tuple[np.ndarray, np.ndarray]
HostBatch = dict[str, np.ndarray]


@dataclasses.dataclass
class Splits:
    """The dataset: arrays for in-memory datasets, ``None`` for streamed ones (ImageNet)."""

    info: data_lib.DatasetInfo
    train: Arrays | None
    test: Arrays | None


def load_splits(config: TrainConfig, recorded: data_lib.DatasetInfo | None = None) -> Splits:
    """The data of ``config``, with its facts as read from disk (sizes, classes, statistics).

    Args:
      config: the run.
      recorded: the facts a workdir recorded when the run started: a resumed run
        normalises with the recorded mean and std, not with recomputed ones.

    Raises:
      TrainingError: the data on disk is not the recorded run's: other sizes
        (classes, channels, image size, train or test images) or class names.
    """
    if config.dataset == "imagenet2012":
        info = _imagenet_info(config)
        splits = Splits(info, None, None)
    else:
        # Its notes (sizes unlike the catalogue's, images converted to RGB) are logged
        # by the data package, once.
        loaded = data_lib.load_dataset(config.dataset, config.data_dir, config.image_size)
        splits = Splits(loaded.info, loaded.train, loaded.test)
    if recorded is None:
        return splits
    differ = _data_differences(recorded, splits.info)
    if differ:
        raise TrainingError(
            f"the data in {config.data_dir or 'the default data dir'} is not the data this "
            f"workdir's run trained on ({'; '.join(differ)}); use the same data or a new --workdir"
        )
    splits.info = dataclasses.replace(splits.info, mean=recorded.mean, std=recorded.std)
    return splits


# The facts that make other data another run: a resumed run on a different training set
# would mix two datasets in one schedule (its epochs, its steps a epoch) and report
# accuracy on another test set. The data may move (--data-dir is not compared).
_SAME_DATA_SIZES = ("num_classes", "channels", "image_size", "num_train", "num_test")


def _data_differences(recorded: data_lib.DatasetInfo, now: data_lib.DatasetInfo) -> list[str]:
    """``field now, the run had recorded`` for every fact of the data that changed."""
    differ = [
        f"{field} {getattr(now, field)}, the run had {getattr(recorded, field)}"
        for field in _SAME_DATA_SIZES
        if getattr(now, field) != getattr(recorded, field)
    ]
    # Class names: only where both name them (some datasets, and older workdirs, do not).
    if recorded.classes and now.classes and recorded.classes != now.classes:
        pairs = itertools.zip_longest(now.classes, recorded.classes, fillvalue="(none)")
        new, old = next((a, b) for a, b in pairs if a != b)
        differ.append(f"class names differ: {new!r} where the run had {old!r}")
    return differ


def _imagenet_info(config: TrainConfig) -> data_lib.DatasetInfo:
    """ImageNet's facts, with the sizes of the splits actually on disk."""
    from sparsenet_jax.data.imagenet import open_imagenet

    info, train = open_imagenet("train", config.data_dir)
    _, test = open_imagenet("validation", config.data_dir)
    read = (len(train), len(test))
    if read != (info.num_train, info.num_test):
        log.info(
            "note: imagenet2012 in %s has %d train and %d validation images, where the full "
            "set has %d and %d; epochs follow the data read",
            config.data_dir,
            *read,
            info.num_train,
            info.num_test,
        )
    return dataclasses.replace(info, num_train=read[0], num_test=read[1])


def epoch_batches(
    config: TrainConfig, splits: Splits, epoch: int, skip: int = 0
) -> Iterator[HostBatch]:
    """This host's part of every global batch of ``epoch``, from batch ``skip`` on."""
    if splits.train is None:
        for batch in imagenet_batches(config, "train", config.batch_size, epoch, skip):
            yield {"image": batch.images, "label": batch.labels}
        return
    images, labels = splits.train
    orders = [  # with --seeds, one data order a replica, stacked on a leading axis
        data_lib.host_batch_indices(
            len(labels), config.batch_size, seed, epoch, jax.process_index(), jax.process_count()
        )
        for seed in config.replica_seeds
    ]
    for per_replica in itertools.islice(zip(*orders, strict=True), skip, None):
        idx = per_replica[0] if config.seeds == 1 else np.stack(per_replica)
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

    ``config.loader`` (resolved by the build step and recorded in the workdir)
    picks the loader: grain (``pip install 'sparsenet_jax[grain]'``) jumps
    straight to batch ``skip``; the thread-pool loader has to decode the skipped
    batches to get there. The two shuffle differently, so a run keeps its loader.
    """
    kwargs: dict[str, Any] = dict(
        data_dir=config.data_dir,
        seed=config.seed,
        epoch=epoch,
        train=split == "train",
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if config.loader == "grain":
        from sparsenet_jax.data.imagenet_grain import GrainImageNetLoader

        yield from GrainImageNetLoader(split, batch_size, skip=skip, **kwargs)
        return
    yield from itertools.islice(data_lib.ImageNetLoader(split, batch_size, **kwargs), skip, None)
