"""Tests of sparsenet_jax.data: datasets, augmentation, batch orders, ImageNet loader, CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenet_jax import data
from sparsenet_jax.data import datasets, digits, imagenet


def mock_tfds(num_examples: int):
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE
    )


# ---------------------------------------------------------------------------
# The package's public names


def test_package_exports_the_public_names() -> None:
    for name in data.__all__:
        assert not isinstance(getattr(data, name), type(data)), name  # a function, not a module
    assert data.augment.__module__ == "sparsenet_jax.data.preprocess"


# ---------------------------------------------------------------------------
# dataset_info


def test_dataset_info() -> None:
    assert data.DATASETS == ("digits", "cifar10", "cifar100", "imagenet2012")
    info = data.dataset_info("imagenet2012")
    assert (info.num_classes, info.image_size, info.num_train, info.num_test) == (
        1000,
        224,
        1_281_167,
        50_000,
    )
    assert data.dataset_info("cifar100").num_classes == 100
    for name in data.DATASETS:
        info = data.dataset_info(name)
        assert len(info.mean) == len(info.std) == info.channels


@pytest.mark.parametrize(
    ("name", "suggestion"), [("cifar", "cifar10"), ("imagenet", "imagenet2012")]
)
def test_unknown_dataset_suggests(name: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match=f"did you mean '{suggestion}'") as err:
        data.dataset_info(name)
    assert "digits" in str(err.value)  # lists the valid names


# ---------------------------------------------------------------------------
# digits


def test_digits_arrays() -> None:
    x_train, y_train = data.load_arrays("digits", "train")
    x_test, y_test = data.load_arrays("digits", "test")
    chex.assert_shape(x_train, (1497, 32, 32, 1))
    chex.assert_shape(x_test, (300, 32, 32, 1))
    assert x_train.dtype == np.uint8 and y_train.dtype == np.int32
    assert x_train.min() == 0 and x_train.max() == 255
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), 30)
    assert np.bincount(y_train, minlength=10).min() >= 140
    # No example on both sides (the 1,797 images are all distinct).
    train_rows = {row.tobytes() for row in x_train.reshape(len(x_train), -1)}
    assert not train_rows & {row.tobytes() for row in x_test.reshape(len(x_test), -1)}
    # The info's normalisation constants are the training set's.
    info = data.dataset_info("digits")
    assert abs(x_train.mean() / 255 - info.mean[0]) < 1e-3
    assert abs(x_train.std() / 255 - info.std[0]) < 1e-3


def test_digits_split_is_fixed() -> None:
    first = [*data.load_arrays("digits", "train"), *data.load_arrays("digits", "test")]
    first[0][:] = 0  # callers get copies: mutating one must not change the next load
    digits.load_splits.cache_clear()
    again = [*data.load_arrays("digits", "train"), *data.load_arrays("digits", "test")]
    assert again[0].any()
    digest = hashlib.sha256()
    for array in again:
        digest.update(array.tobytes())
    # Pinned: the upscaling is integer arithmetic and the split uses the frozen legacy RNG.
    assert digest.hexdigest()[:16] == "8556fea0c26e856a"
    for a, b in zip(first[1:], again[1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_digits_read_without_sklearn_equal_load_digits(monkeypatch) -> None:
    """The bundled file read directly gives load_digits()'s arrays, and when the file
    is not where we look, load_digits() itself is used."""
    from sklearn.datasets import load_digits

    expected = load_digits()
    assert digits._bundled_digits_file() is not None  # else the fast path is never taken
    read_directly = digits._digits()
    monkeypatch.setattr(digits, "_bundled_digits_file", lambda: None)
    for images, labels in (read_directly, digits._digits()):
        np.testing.assert_array_equal(images, expected.images)
        np.testing.assert_array_equal(labels, expected.target)
        assert images.dtype == np.int64 and labels.dtype == np.int32


# ---------------------------------------------------------------------------
# CIFAR through tfds


def test_load_arrays_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ImageNetLoader"):
        data.load_arrays("imagenet2012", "train")
    with pytest.raises(ValueError, match="split"):
        data.load_arrays("digits", "validation")


def test_missing_cifar_raises_with_instructions(tmp_path) -> None:
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_arrays("cifar10", "train", str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "prepare" in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_from_data_source_and_cache(tmp_path, name: str) -> None:
    with mock_tfds(num_examples=6):
        images, labels = data.load_arrays(name, "test", str(tmp_path))
    chex.assert_shape(images, (6, 32, 32, 3))
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert ((labels >= 0) & (labels < data.dataset_info(name).num_classes)).all()
    # Outside the mock the tfds data is gone: the second load must come from the cache.
    cached_images, cached_labels = data.load_arrays(name, "test", str(tmp_path))
    np.testing.assert_array_equal(cached_images, images)
    np.testing.assert_array_equal(cached_labels, labels)


def _write_fake_cifar10(folder, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A tiny cifar-10-batches-bin/ in the real binary format; returns its records."""
    binaries = folder / "cifar-10-batches-bin"
    binaries.mkdir(parents=True)
    records = {}
    for file, n in [*((f"data_batch_{i}.bin", 3) for i in range(1, 6)), ("test_batch.bin", 4)]:
        record = rng.integers(0, 256, (n, 1 + 3072), dtype=np.uint8)
        record[:, 0] %= 10
        record.tofile(binaries / file)
        records[file] = record
    classes = "airplane automobile bird cat deer dog frog horse ship truck".split()
    (binaries / "batches.meta.txt").write_text("\n".join(classes) + "\n")
    return records


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("tensorflow", "importlib_resources")),
    reason="preparing tfds data needs TensorFlow (pip install 'sparsenet_jax[prepare]')",
)
@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_real_cifar10_preparation_offline(tmp_path, file_format: str) -> None:
    records = _write_fake_cifar10(tmp_path / "extracted", np.random.default_rng(0))
    data_dir = str(tmp_path / "tfds")
    with mock.patch.object(
        tfds.download.DownloadManager,
        "download_and_extract",
        lambda self, url: str(tmp_path / "extracted"),
    ):
        if file_format == "array_record":  # through the CLI, which also fills the cache
            assert data.main(["prepare", "cifar10", "--data-dir", data_dir]) == 0
        else:
            tfds.builder("cifar10", data_dir=data_dir).download_and_prepare(file_format=file_format)
    images, labels = data.load_arrays("cifar10", "test", data_dir)
    # Back to the binary records (label byte, then CHW pixels); tfds shuffles, so compare sets.
    ours = np.concatenate(
        [labels[:, None].astype(np.uint8), images.transpose(0, 3, 1, 2).reshape(len(images), -1)], 1
    )
    assert sorted(map(bytes, ours)) == sorted(map(bytes, records["test_batch.bin"]))
    assert data.load_arrays("cifar10", "train", data_dir)[0].shape == (15, 32, 32, 3)


# ---------------------------------------------------------------------------
# Command line


def test_cli_without_tensorflow(tmp_path, capsys) -> None:
    find_spec = importlib.util.find_spec
    with mock.patch.object(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorflow" else find_spec(name, *a),
    ):
        assert data.main(["prepare", "cifar10", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'sparsenet_jax[prepare]'" in err


def test_cli_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "sparsenet_jax.data", "prepare", "digits"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "digits ships with scikit-learn: nothing to prepare.\n"


def test_cli_digits_and_unknown_name(capsys) -> None:
    assert data.main(["prepare", "digits"]) == 0
    with pytest.raises(SystemExit) as exit_:
        data.main(["prepare", "cifar11"])
    assert exit_.value.code == 2
    assert "cifar10" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# normalize and augment


def test_normalize() -> None:
    info = data.dataset_info("cifar10")
    images = jnp.full((2, 4, 4, 3), 128, jnp.uint8)
    out = jax.jit(data.normalize, static_argnums=1)(images, info)
    expected = (128 / 255 - np.asarray(info.mean)) / np.asarray(info.std)
    np.testing.assert_allclose(out[0, 0, 0], expected, atol=1e-6)
    assert data.normalize(images.astype(jnp.float32), info, jnp.bfloat16).dtype == jnp.bfloat16


def _batch(n: int = 16, dtype=jnp.uint8) -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).integers(1, 256, (n, 8, 10, 3)), dtype)


def test_augment_identity() -> None:
    images = _batch()
    np.testing.assert_array_equal(
        data.augment(jax.random.key(0), images, pad=0, flip=False), images
    )


def test_augment_flip_only() -> None:
    images = _batch(64)
    out = data.augment(jax.random.key(1), images, pad=0, flip=True)
    same = (out == images).all(axis=(1, 2, 3))
    mirrored = (out == images[:, :, ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all() and same.any() and mirrored.any()


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.float32])
def test_augment_crop_is_a_window_of_the_padded_input(dtype) -> None:
    pad, images = 2, _batch(dtype=dtype)
    out = jax.jit(lambda key, x: data.augment(key, x, pad=pad, flip=False))(
        jax.random.key(2), images
    )
    chex.assert_shape(out, images.shape)
    chex.assert_type(out, dtype)
    padded = np.pad(np.asarray(images), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = set()
    for i in range(len(images)):
        windows = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if (padded[i, dy : dy + 8, dx : dx + 10] == out[i]).all()
        ]
        assert len(windows) == 1  # pixels are ≥ 1, so the zero border makes windows distinct
        offsets.add(windows[0])
    assert len(offsets) > 1  # per-example offsets


def test_augment_depends_on_rng() -> None:
    images = _batch()
    step = jax.jit(data.augment)
    a, b = step(jax.random.key(0), images), step(jax.random.key(1), images)
    assert not (a == b).all()
    np.testing.assert_array_equal(a, step(jax.random.key(0), images))


# ---------------------------------------------------------------------------
# Batch orders


def test_epoch_order() -> None:
    order = data.epoch_order(100, seed=3, epoch=0)
    np.testing.assert_array_equal(np.sort(order), np.arange(100))
    np.testing.assert_array_equal(order, data.epoch_order(100, seed=3, epoch=0))
    assert not (order == data.epoch_order(100, seed=3, epoch=1)).all()
    assert not (order == data.epoch_order(100, seed=4, epoch=0)).all()


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_host_batch_indices(process_count: int) -> None:
    n, global_batch = 103, 8
    order = data.epoch_order(n, seed=1, epoch=2)
    hosts = [
        list(data.host_batch_indices(n, global_batch, 1, 2, p, process_count))
        for p in range(process_count)
    ]
    assert all(len(h) == n // global_batch for h in hosts)
    for b, slices in enumerate(zip(*hosts, strict=True)):
        assert all(len(s) == global_batch // process_count for s in slices)
        # Contiguous, disjoint, and together exactly the global batch.
        np.testing.assert_array_equal(
            np.concatenate(slices), order[b * global_batch : (b + 1) * global_batch]
        )
    again = list(data.host_batch_indices(n, global_batch, 1, 2, 0, process_count))
    np.testing.assert_array_equal(np.stack(again), np.stack(hosts[0]))
    other_epoch = list(data.host_batch_indices(n, global_batch, 1, 3, 0, process_count))
    assert not (np.stack(other_epoch) == np.stack(hosts[0])).all()


def test_host_batch_indices_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="divisible"):
        data.host_batch_indices(100, 10, 0, 0, process_count=4)
    with pytest.raises(ValueError, match="> 100"):
        data.host_batch_indices(100, 128, 0, 0)
    with pytest.raises(ValueError, match="process_index"):
        data.host_batch_indices(100, 8, 0, 0, process_index=2, process_count=2)


@pytest.mark.parametrize(("n", "batch", "hosts"), [(10, 4, 1), (10, 4, 2), (8, 4, 2), (3, 8, 4)])
def test_eval_batch_indices(n: int, batch: int, hosts: int) -> None:
    per_host = [list(data.eval_batch_indices(n, batch, p, hosts)) for p in range(hosts)]
    assert len({len(batches) for batches in per_host}) == 1  # every host runs as many steps
    seen = []
    for batches in per_host:
        for indices, mask in batches:
            assert indices.shape == mask.shape == (batch // hosts,)
            assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, 1.0}
            seen.extend(indices[mask == 1].tolist())
            assert (indices[mask == 0] == 0).all()
    assert sorted(seen) == list(range(n))


# ---------------------------------------------------------------------------
# ImageNet


def _batches(loader: data.ImageNetLoader) -> list[data.Batch]:
    return list(loader)


def test_imagenet_loader_train(tmp_path) -> None:
    with mock_tfds(num_examples=10):  # mock images have random sizes, e.g. 47x17
        loader = data.ImageNetLoader("train", 4, data_dir=str(tmp_path), seed=1, num_workers=2)
        batches = _batches(loader)
        assert len(loader) == len(batches) == 2
        for batch in batches:
            chex.assert_shape(batch.images, (4, 224, 224, 3))
            assert batch.images.dtype == np.float32 and batch.labels.dtype == np.int32
            assert ((batch.labels >= 0) & (batch.labels < 1000)).all()
            assert (batch.mask == 1).all()
            assert np.isfinite(batch.images).all() and abs(batch.images.mean()) < 3
        again = _batches(loader)
        for a, b in zip(batches, again, strict=True):
            np.testing.assert_array_equal(a.images, b.images)
        # Two hosts each read half of every batch; together they give the same batches.
        halves = [
            _batches(
                data.ImageNetLoader(
                    "train", 4, data_dir=str(tmp_path), seed=1, process_index=p, process_count=2
                )
            )
            for p in range(2)
        ]
        for whole, first, second in zip(batches, *halves, strict=True):
            np.testing.assert_array_equal(
                whole.images, np.concatenate([first.images, second.images])
            )
        next_epoch = _batches(
            data.ImageNetLoader("train", 4, data_dir=str(tmp_path), seed=1, epoch=1)
        )
        assert not np.array_equal(next_epoch[0].images, batches[0].images)


def test_imagenet_loader_eval(tmp_path) -> None:
    with mock_tfds(num_examples=5):
        loader = data.ImageNetLoader("test", 4, data_dir=str(tmp_path), train=False, num_workers=2)
        batches = _batches(loader)
    assert len(loader) == len(batches) == 2
    assert sum(float(b.mask.sum()) for b in batches) == 5
    chex.assert_shape(batches[1].images, (4, 224, 224, 3))
    np.testing.assert_array_equal(batches[1].mask, [1, 0, 0, 0])


def test_imagenet_missing_explains_manual_download(tmp_path) -> None:
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.ImageNetLoader("train", 8, data_dir=str(tmp_path))
    message = str(err.value)
    assert str(tmp_path) in message and "manual" in message and "prepare" in message


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 600), height=st.integers(1, 600), seed=st.integers(0, 2**31))
def test_random_resized_crop_box_inside_image(width: int, height: int, seed: int) -> None:
    left, top, right, bottom = imagenet._random_resized_crop_box(
        np.random.default_rng(seed), width, height
    )
    assert 0 <= left < right <= width and 0 <= top < bottom <= height


def test_prepare_hint_is_shell_ready() -> None:
    hint = datasets.prepare_hint("cifar10", os.path.join("some", "dir"))
    assert "python -m sparsenet_jax.data prepare cifar10 --data-dir some/dir" in hint


def test_tfrecord_data_without_tensorflow_explains(tmp_path) -> None:
    find_spec = importlib.util.find_spec
    with (
        mock.patch.object(datasets, "open_source", lambda *a: None),  # "prepared as tfrecord"
        mock.patch.object(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "tensorflow" else find_spec(name, *a),
        ),
        pytest.raises(data.DatasetNotFoundError, match="tfrecord"),
    ):
        data.load_arrays("cifar10", "train", str(tmp_path))
