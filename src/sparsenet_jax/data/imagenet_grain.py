"""ImageNet on grain: the ``ImageNetLoader`` interface, worker processes, and resumable state.

``GrainImageNetLoader(split, batch_size, ...)`` takes the arguments of ``ImageNetLoader``
and yields the same ``Batch(images, labels, mask)``; the per-example work (decode,
random-resized crop, mirror, normalise) is the same code (``imagenet.train_example``
and ``imagenet.eval_example``). What grain adds:

* the order and the augmentation come from grain's index arithmetic (``shuffle`` and
  ``random_map`` seeded by ``seed`` and the example's global position), so they do not
  depend on the number of workers, threads or hosts;
* threads in this process, or ``num_workers`` worker *processes* (``mp_prefetch``),
  each with its own threads;
* ``iter(loader)`` is a ``GrainBatchIterator`` whose ``get_state()``/``set_state()``
  save and restore its exact position (a few bytes of JSON, no batches re-read), for a
  loop of your own; it also works with ``grain.checkpoint.CheckpointSave(it)`` /
  ``CheckpointRestore(it)`` in Orbax. The trainer does not use it: it resumes by its
  step count, which starts the loader at the batch an uninterrupted run would read.

Needs the optional extra ``pip install 'sparsenet_jax[grain]'``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grain
import numpy as np
from absl import flags

from sparsenet_jax.data import imagenet
from sparsenet_jax.data.imagenet import Batch, Example

Element = dict[str, Any]  # {"image": float32 HWC, "label": int32, "mask": float32}


class GrainBatchIterator(Iterator[Batch]):
    """Batches of one epoch from a grain iterator, with its state as JSON bytes."""

    def __init__(self, iterator: grain.DatasetIterator) -> None:
        self._iterator = iterator

    def __next__(self) -> Batch:
        element = next(self._iterator)
        return Batch(element["image"], element["label"], element["mask"])

    def get_state(self) -> bytes:
        """The position after the last batch returned: JSON bytes, small, host-local."""
        return json.dumps(self._iterator.get_state(), sort_keys=True).encode()

    def set_state(self, state: bytes) -> None:
        """Continue from ``state`` (from ``get_state`` of the same loader configuration)."""
        self._iterator.set_state(json.loads(state))

    def start_prefetch(self) -> None:
        """Start the workers now (``grain.checkpoint`` calls this after a restore)."""
        self._iterator.start_prefetch()

    def close(self) -> None:
        """Stop the worker processes (they also stop when the iterator is collected)."""
        self._iterator.close()


class GrainImageNetLoader:
    """Host-local ImageNet batches read by a grain pipeline; see the module docstring.

    Args:
      split: "train", or "test"/"validation" (the validation set).
      batch_size: the *global* batch; each of ``process_count`` hosts yields
        ``batch_size // process_count`` examples of every batch.
      train: random-resized crop, mirror, shuffle and dropped remainder; otherwise the
        central crop, in order, the last batch padded (``mask`` 0.0) to full size.
      data_dir: the tfds data_dir holding ``imagenet2012`` as ``array_record``.
      seed: shuffle and augmentation seed, in [0, 2**32).
      epoch: which epoch this loader reads; epochs are shuffled and augmented differently.
      skip: start at this batch of the epoch (a resumed run), without reading the others.
      process_index, process_count: this host and the number of hosts.
      num_workers: worker processes (``mp_prefetch``); 0 reads in this process, with
        threads only. The default (0 processes, 8 threads) costs as much CPU per image
        as ``ImageNetLoader``'s 8 threads; processes cost more per image here (see
        benchmarks/results/imagenet-input-*.md) but are not bound by one process's GIL.
      threads_per_worker: threads in each worker process (or in this one).
    """

    def __init__(
        self,
        split: str,
        batch_size: int,
        *,
        train: bool = True,
        data_dir: str | None = None,
        seed: int = 0,
        epoch: int = 0,
        skip: int = 0,
        process_index: int = 0,
        process_count: int = 1,
        num_workers: int = 0,
        threads_per_worker: int = 8,
    ) -> None:
        if not 0 <= seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32) for grain, got {seed}")
        hosts = (process_index, process_count)
        self.info, source = imagenet.open_for_hosts(split, batch_size, data_dir, train, *hosts)
        self.num_examples = len(source)
        self.batch_size, self.seed, self.epoch, self.train = batch_size, seed, epoch, train
        self.num_workers, self.threads_per_worker = num_workers, threads_per_worker
        build = _train_batches if train else _eval_batches
        self.dataset: grain.MapDataset = build(
            grain.MapDataset.source(source), batch_size, seed, process_index, process_count
        )
        if train:  # epoch e is positions [e * len, (e + 1) * len) of the repeated dataset
            per_epoch = len(self.dataset)
            self.dataset = self.dataset.repeat()[epoch * per_epoch : (epoch + 1) * per_epoch]
        # Resuming mid-epoch: batches are addressed by position, so the skipped
        # ones are never read or decoded, and the rest are exactly those of an
        # uninterrupted epoch.
        self.dataset = self.dataset[skip:]

    def __len__(self) -> int:
        """Batches per epoch (training drops the remainder; evaluation pads it)."""
        return len(self.dataset)

    def __iter__(self) -> GrainBatchIterator:
        # Each thread computes whole batches; two batches per thread keep it busy.
        threads = max(1, self.threads_per_worker)
        options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
        iterable = self.dataset.to_iter_dataset(options)
        if self.num_workers > 0:
            _mark_absl_flags_parsed()
            iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(self.num_workers))
        return GrainBatchIterator(iter(iterable))


def _mark_absl_flags_parsed() -> None:
    # grain (0.2.18) reads one of its absl flags when it starts worker processes, which
    # raises in programs not started by absl.app (flags never parsed): keep the defaults.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _train_batches(
    ds: grain.MapDataset, batch_size: int, seed: int, process_index: int, process_count: int
) -> grain.MapDataset:
    # Shuffle and augment by *global* position, then take this host's share: every host
    # sees the same global batches whatever the host count. Global batch b is positions
    # [b * batch_size, (b + 1) * batch_size) of the shuffled epoch; host p takes every
    # process_count-th of them, from p.
    usable = len(ds) // batch_size * batch_size  # the epoch's remainder is dropped
    ds = ds.seed(seed).shuffle()[:usable].random_map(_train_element)
    ds = ds[process_index::process_count]
    return ds.batch(batch_size // process_count, drop_remainder=True)


def _eval_batches(
    ds: grain.MapDataset, batch_size: int, seed: int, process_index: int, process_count: int
) -> grain.MapDataset:
    del seed  # evaluation is in order and not augmented
    padding = -len(ds) % batch_size  # every batch full size: pad with example 0, mask 0.0
    ds = ds.map(_eval_element)
    if padding:
        ds = grain.MapDataset.concatenate([ds, ds[:1].repeat(padding).map(_masked)])
    return ds[process_index::process_count].batch(batch_size // process_count)


def _train_element(example: Example, rng: np.random.Generator) -> Element:
    image, label = imagenet.train_example(example, rng)
    return {"image": image, "label": np.int32(label), "mask": np.float32(1.0)}


def _eval_element(example: Example) -> Element:
    image, label = imagenet.eval_example(example)
    return {"image": image, "label": np.int32(label), "mask": np.float32(1.0)}


def _masked(element: Element) -> Element:
    return {**element, "mask": np.float32(0.0)}
