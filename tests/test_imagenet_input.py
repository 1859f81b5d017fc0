"""ImageNet input: the generated tfds set, ``ImageNetLoader`` and ``GrainImageNetLoader``.

The data is a dozen small JPEGs written in tfds's own ``imagenet2012`` array_record
format by ``benchmarks/imagenet_input.py``. The grain tests skip when grain (the
optional extra ``sparsenet_jax[grain]``) is not installed.
"""

from __future__ import annotations

import importlib.util
import itertools
import pathlib
import sys

import numpy as np
import pytest

from sparsenet_jax.data import dataset_info
from sparsenet_jax.data.imagenet import Batch, ImageNetLoader

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
NUM_TRAIN, NUM_VALIDATION = 12, 5
needs_grain = pytest.mark.skipif(
    importlib.util.find_spec("grain") is None, reason="grain not installed (extra [grain])"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    import imagenet_input

    root = str(tmp_path_factory.mktemp("imagenet"))
    imagenet_input.write_dataset(root, NUM_TRAIN, NUM_VALIDATION, min_side=40, max_side=90)
    return root


def _grain(*args, **kwargs):
    from sparsenet_jax.data.imagenet_grain import GrainImageNetLoader

    return GrainImageNetLoader(*args, **kwargs)


def _equal(a: list[Batch], b: list[Batch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for field in Batch._fields:
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)


def _check_batch(batch: Batch, size: int) -> None:
    assert batch.images.shape == (size, 224, 224, 3) and batch.images.dtype == np.float32
    assert batch.labels.shape == (size,) and batch.labels.dtype == np.int32
    assert batch.mask.shape == (size,) and batch.mask.dtype == np.float32
    assert ((batch.labels >= 0) & (batch.labels < 1000)).all()
    # Normalised per channel: pixel/255 in [0, 1], minus the mean, over the std.
    info = dataset_info("imagenet2012")
    low = (0 - np.asarray(info.mean)) / np.asarray(info.std)
    high = (1 - np.asarray(info.mean)) / np.asarray(info.std)
    assert (batch.images >= low - 1e-5).all() and (batch.images <= high + 1e-5).all()
    assert batch.images.std() > 0.1  # an image, not a constant


def test_generated_set_is_tfds_imagenet(data_dir: str) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    assert builder.info.splits["train"].num_examples == NUM_TRAIN
    assert builder.info.features["image"].encoding_format == "jpeg"
    source = tfds.data_source("imagenet2012", split="validation", data_dir=data_dir)
    example = source[0]
    assert len(source) == NUM_VALIDATION and example["image"].dtype == np.uint8
    assert example["image"].ndim == 3 and 40 <= min(example["image"].shape[:2]) <= 90


def test_thread_loader_is_deterministic(data_dir: str) -> None:
    loader = ImageNetLoader("train", 4, data_dir=data_dir, seed=3, num_workers=2)
    batches = list(loader)
    assert len(batches) == len(loader) == NUM_TRAIN // 4
    for batch in batches:
        _check_batch(batch, 4)
        assert (batch.mask == 1).all()
    _equal(batches, list(ImageNetLoader("train", 4, data_dir=data_dir, seed=3, num_workers=1)))


@needs_grain
def test_grain_eval_equals_thread_loader(data_dir: str) -> None:
    """Same examples in the same order, same crop and normalisation, same padding."""
    grain_batches = list(_grain("validation", 4, data_dir=data_dir, train=False, num_workers=0))
    thread_batches = list(ImageNetLoader("validation", 4, data_dir=data_dir, train=False))
    _equal(grain_batches, thread_batches)
    assert len(grain_batches) == 2 and grain_batches[-1].mask.tolist() == [1, 0, 0, 0]
    for batch in grain_batches:
        _check_batch(batch, 4)


@needs_grain
def test_grain_train_is_deterministic_and_epoch_dependent(data_dir: str) -> None:
    def batches(seed: int, epoch: int) -> list[Batch]:
        return list(_grain("train", 4, data_dir=data_dir, seed=seed, epoch=epoch, num_workers=0))

    first = batches(3, 0)
    assert len(first) == NUM_TRAIN // 4
    for batch in first:
        _check_batch(batch, 4)
        assert (batch.mask == 1).all()
    _equal(first, batches(3, 0))
    for other in (batches(4, 0), batches(3, 1)):  # another seed, the next epoch
        assert not np.array_equal(other[0].images, first[0].images)
    labels = np.concatenate([b.labels for b in first])
    thread_labels = np.concatenate(
        [b.labels for b in ImageNetLoader("train", 4, data_dir=data_dir)]
    )
    assert sorted(labels) == sorted(thread_labels)  # the same examples, each once


@needs_grain
def test_grain_hosts_share_global_batches(data_dir: str) -> None:
    """Host p's batch b is rows p, p + hosts, ... of the single-host batch b."""
    whole = list(_grain("train", 4, data_dir=data_dir, seed=1, num_workers=0))
    for p in range(2):
        part = _grain(
            "train", 4, data_dir=data_dir, seed=1, process_index=p, process_count=2, num_workers=0
        )
        for full, half in zip(whole, part, strict=True):
            np.testing.assert_array_equal(full.images[p::2], half.images)
            np.testing.assert_array_equal(full.labels[p::2], half.labels)


@needs_grain
def test_grain_state_restores_the_exact_remaining_batches(data_dir: str) -> None:
    loader = _grain("train", 2, data_dir=data_dir, seed=5, num_workers=0)
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = iterator.get_state()
    assert isinstance(state, bytes)
    remaining = list(iterator)
    assert len(remaining) == len(loader) - 2
    resumed = iter(_grain("train", 2, data_dir=data_dir, seed=5, num_workers=0))
    resumed.set_state(state)
    _equal(list(resumed), remaining)


@needs_grain
def test_grain_worker_processes_give_the_same_batches_and_resume(data_dir: str) -> None:
    """Two worker processes: the batches of the in-process pipeline, and exact resume."""
    reference = list(_grain("train", 2, data_dir=data_dir, seed=2, num_workers=0))
    iterator = iter(_grain("train", 2, data_dir=data_dir, seed=2, num_workers=2))
    head = [next(iterator) for _ in range(3)]  # odd: the workers are mid-rotation
    state = iterator.get_state()
    tail = list(iterator)
    _equal(head + tail, reference)
    resumed = iter(_grain("train", 2, data_dir=data_dir, seed=2, num_workers=2))
    resumed.set_state(state)
    _equal(list(resumed), tail)


@needs_grain
def test_grain_iterator_saves_with_grain_checkpoint_handler(data_dir: str, tmp_path) -> None:
    """The form an Orbax checkpoint of your own loop can hold: grain.checkpoint.CheckpointSave(it).

    The trainer does not save it: it resumes by its step count, which starts
    the loader at the same batch (test_the_trainer_resumes_imagenet_mid_epoch_exactly).
    """
    import grain
    from etils import epath

    iterator = iter(_grain("validation", 2, data_dir=data_dir, train=False, num_workers=0))
    next(iterator)
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(epath.Path(tmp_path), args=grain.checkpoint.CheckpointSave(iterator))
    remaining = list(iterator)
    restored = iter(_grain("validation", 2, data_dir=data_dir, train=False, num_workers=0))
    handler.restore(epath.Path(tmp_path), args=grain.checkpoint.CheckpointRestore(restored))
    _equal(list(restored), remaining)


@pytest.mark.parametrize("loader", ["grain", "threads"])
def test_the_trainer_resumes_imagenet_mid_epoch_exactly(data_dir, monkeypatch, loader) -> None:
    """Batches for steps 2, 3, … read by a resumed run equal those of an uninterrupted one."""
    from sparsenet_jax.training import config as config_lib
    from sparsenet_jax.training import input_pipeline

    if loader == "grain" and importlib.util.find_spec("grain") is None:
        pytest.skip("grain not installed (extra [grain])")
    if loader == "threads":  # the fallback when grain is missing
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "grain" else real(name, *a),
        )
    config = config_lib.from_dict(
        {
            **config_lib.RECIPES["imagenet"],
            "workdir": "unused",
            "data_dir": data_dir,
            "batch_size": 4,
            "eval_batch_size": 5,
        }
    )
    splits = input_pipeline.load_splits(config)
    per_epoch = NUM_TRAIN // 4

    def steps(start: int, count: int) -> list[Batch]:
        it = input_pipeline.train_batches(config, splits, start, per_epoch)
        taken = itertools.islice(it, count)
        return [Batch(b["image"], b["label"], np.ones(4, np.float32)) for b in taken]

    straight = steps(0, per_epoch + 2)  # into the second epoch
    _equal(steps(2, per_epoch), straight[2:])
    assert not np.array_equal(straight[0].images, straight[per_epoch].images)  # epochs differ
