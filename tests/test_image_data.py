"""Local image data: the shared decoder, image folders, packed .npz files, the cache.

Issue 16 item 1 (the folder dataset and its one-line errors) and issue 18 items 10
(non-finite images refused by the loaders) and 11 (CMYK and palette colours), and the
"Noisy" lines about images (a truncated or garbage image names the example; a
20000x20000 header is refused in one line).
"""

from __future__ import annotations

import logging
import os
import pathlib
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from image_folders import cifar_image_folder, cifar_npz, encode, write_folder, write_packed
from sparsenet_jax import data
from sparsenet_jax.data import folder, images
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training import input_pipeline
from sparsenet_jax.training.errors import TrainingError


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """Every test caches into its own folder and starts with nothing loaded in memory."""
    monkeypatch.setenv("SPARSENET_JAX_CACHE", str(tmp_path / "cache"))
    folder._LOADED.clear()
    yield
    folder._LOADED.clear()


def _one_line(err: pytest.ExceptionInfo, *names: object) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    for name in names:
        assert str(name) in message, message
    return message


def _rng_images(n: int, size: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def _small_folder(root: pathlib.Path, classes=("cat", "dog", "eel"), n_train=3, n_test=2):
    splits = {
        "train": {c: _rng_images(n_train, seed=i) for i, c in enumerate(classes)},
        "test": {c: _rng_images(n_test, seed=10 + i) for i, c in enumerate(classes)},
    }
    return write_folder(root, splits), splits


def _bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG header (no pixel data) claiming width x height, RGB 8-bit."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


# ---------------------------------------------------------------------------
# The decoder (issue 18 item 11 and the noisy image lines)


def test_cmyk_jpeg_red_decodes_red() -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    pixels = images.decode_array(encode(cmyk, "jpg", quality=95), "red.jpg")
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    r, g, b = pixels.reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15, (r, g, b)  # the bug gave [35, 235, 235]


def test_palette_png_red_decodes_red() -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0] + [0, 0, 255] * 255)
    pixels = images.decode_array(encode(palette, "png"), "red.png")
    np.testing.assert_array_equal(pixels, np.full((4, 4, 3), [255, 0, 0], np.uint8))  # bug: 0


def test_transparency_is_composited_over_white_and_gray_becomes_rgb() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0] = (255, 0, 0, 255)  # opaque red
    rgba[1] = (255, 0, 0, 0)  # fully transparent
    pixels = images.decode_array(encode(Image.fromarray(rgba, "RGBA"), "png"), "a.png")
    np.testing.assert_array_equal(pixels[0], [[255, 0, 0]] * 2)
    np.testing.assert_array_equal(pixels[1], [[255, 255, 255]] * 2)
    gray = images.decode_array(encode(Image.new("L", (3, 3), 77), "png"), "g.png")
    np.testing.assert_array_equal(gray, np.full((3, 3, 3), 77, np.uint8))
    deep = Image.fromarray(np.full((2, 2), 65535, np.uint16))  # 16-bit grayscale PNG
    np.testing.assert_array_equal(images.decode_array(encode(deep, "png"), "d.png"), 255)


def test_webp_decodes() -> None:
    pixels = np.full((6, 6, 3), (10, 200, 30), np.uint8)
    decoded = images.decode_array(encode(pixels, "webp", lossless=True), "x.webp")
    np.testing.assert_array_equal(decoded, pixels)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"this is not an image at all", "not a JPEG, PNG or WebP image"),
        (b"", "empty"),
        (encode(_rng_images(1, 64)[0], "jpg")[:2000], "truncated"),
        (_bomb_png(), "decompression bomb"),
        (encode(_rng_images(1, 64)[0], "png")[:3000], "truncated"),
    ],
    ids=["garbage", "empty", "truncated-jpeg", "bomb-20000x20000", "truncated-png"],
)
def test_bad_bytes_give_one_line_naming_the_example(payload: bytes, expected: str) -> None:
    with pytest.raises(images.ImageDecodeError) as err:
        images.decode(payload, "train[7] of my.npz")
    assert expected in _one_line(err, "train[7] of my.npz")
    assert "BytesIO" not in str(err.value)


def test_bomb_is_refused_from_the_header_before_decoding() -> None:
    # Under PIL's own bomb limit but over ours: refused by our check, naming the size.
    with pytest.raises(images.ImageDecodeError) as err:
        images.open_image(_bomb_png(8000, 8000), "big.png")
    _one_line(err, "big.png", "8000x8000")


def test_resize_center_crop_keeps_the_centre() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, 10:30] = (255, 0, 0)  # the central 20x20 is red; the sides are black
    out = np.asarray(images.resize_center_crop(Image.fromarray(pixels), 10))
    assert out.shape == (10, 10, 3)
    np.testing.assert_array_equal(out[:, 1:-1], np.full((10, 8, 3), [255, 0, 0], np.uint8))
    assert (out[:, [0, -1], 0] > 180).all()  # the edges blend a little of the black sides
    same = Image.fromarray(pixels[:, :20])
    assert images.resize_center_crop(same, 20) is same


def test_non_finite_float_images_are_refused_naming_the_example() -> None:
    batch = np.zeros((5, 4, 4, 3), np.float32)
    batch[3, 1, 1, 0] = np.nan
    batch[4, 0, 0, 2] = np.inf
    with pytest.raises(images.NonFiniteImageError) as err:
        images.check_finite(batch, "cache.npy")
    _one_line(err, "cache.npy[3]", "2 such image")
    images.check_finite(np.zeros((2, 3), np.uint8), "fine")  # integers: nothing to check
    images.check_finite(batch[:3], "fine")


def test_the_imagenet_loader_uses_the_shared_decoder() -> None:
    from sparsenet_jax.data import imagenet

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0] * 256)
    example = {"image": encode(palette, "png"), "label": 3, "file_name": b"n01_red.png"}
    np.testing.assert_array_equal(
        np.asarray(imagenet._rgb(example)), 255 * (np.arange(3) == 0) + np.zeros((4, 4, 3))
    )
    with pytest.raises(images.ImageDecodeError) as err:
        imagenet._rgb({"image": b"garbage", "label": 0, "file_name": b"n01_bad.JPEG"})
    _one_line(err, "n01_bad.JPEG")


# ---------------------------------------------------------------------------
# Image folders


def test_folder_loads_sorted_classes_labels_and_train_statistics(tmp_path) -> None:
    root, splits = _small_folder(tmp_path / "data", classes=("zebra", "ant", "moth"))
    image_set = folder.load(root)
    assert image_set.classes == ("ant", "moth", "zebra")
    assert image_set.train_images.shape == (9, 8, 8, 3) and image_set.train_images.dtype == np.uint8
    assert image_set.test_images.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(image_set.train_labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    assert image_set.train_labels.dtype == np.int32
    np.testing.assert_array_equal(
        image_set.train_images[0], splits["train"]["ant"][0]
    )  # PNG: exact
    np.testing.assert_array_equal(image_set.test_images[-1], splits["test"]["zebra"][-1])
    x = image_set.train_images.astype(np.float64) / 255
    np.testing.assert_allclose(image_set.mean, x.mean((0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(image_set.std, x.std((0, 1, 2)), atol=1e-6)


def test_folder_through_the_dataset_api(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    info = data.dataset_info("folder", data_dir=str(root))
    assert (info.name, info.num_classes, info.image_size, info.channels) == ("folder", 3, 8, 3)
    assert (info.num_train, info.num_test) == (9, 6)
    assert info.classes == ("cat", "dog", "eel") and len(info.mean) == len(info.std) == 3
    x, y = data.load_arrays("folder", "train", str(root))
    assert x.shape == (9, 8, 8, 3) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    loaded = data.load_dataset("folder", str(root), image_size=4)
    assert loaded.info.image_size == 4 and loaded.test[0].shape == (6, 4, 4, 3)
    assert loaded.info.num_train == 9 and loaded.notes == ()
    with pytest.raises(ValueError, match="--data-dir"):
        data.dataset_info("folder")
    assert data.dataset_info("cifar10") == data.dataset_info("cifar10", None, 32)  # unchanged
    assert "folder" in data.ALL_DATASETS and "folder" not in data.DATASETS


def test_val_is_accepted_for_test(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    (root / "test").rename(root / "val")
    assert folder.load(root).test_images.shape == (6, 8, 8, 3)


def test_mixed_sizes_need_an_image_size(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    odd = root / "train" / "dog" / "big.png"
    odd.write_bytes(encode(np.zeros((12, 20, 3), np.uint8), "png"))
    with pytest.raises(folder.ImageFolderError) as err:
        folder.load(root)
    _one_line(err, odd, "20x12", "--image-size")
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")
    resized = folder.load(root, image_size=6)
    assert resized.train_images.shape == (10, 6, 6, 3) and resized.image_size == 6


def test_conversion_note_once_per_load(tmp_path, caplog) -> None:
    root, _ = _small_folder(tmp_path / "data")
    (root / "train" / "cat" / "gray.png").write_bytes(encode(Image.new("L", (8, 8), 9), "png"))
    (root / "train" / "dog" / "gray.png").write_bytes(encode(Image.new("L", (8, 8), 9), "png"))
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0] * 256)
    (root / "test" / "eel" / "pal.png").write_bytes(encode(palette, "png"))
    with caplog.at_level(logging.INFO, logger="sparsenet_jax.data"):
        folder.load(root)
    notes = [r.getMessage() for r in caplog.records if "converted to RGB" in r.getMessage()]
    assert notes == [f"{root}: converted to RGB: 2 grayscale, 1 palette image(s)"]
    folder._LOADED.clear()
    caplog.clear()
    loaded = data.load_dataset("folder", str(root))  # from the cache: the note comes along
    assert loaded.notes == tuple(notes) and not caplog.records


def _expect_error(root: pathlib.Path, *names: object, cls=folder.ImageFolderError) -> str:
    with pytest.raises(cls) as err:
        folder.load(root)
    message = _one_line(err, *names)
    assert isinstance(err.value, data.DatasetNotFoundError)  # what the trainer catches
    cache = root.parent / "cache"
    assert not cache.exists() or not os.listdir(cache), "an error left a cache behind"
    return message


def test_empty_class_folder(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    for f in (root / "test" / "dog").iterdir():
        f.unlink()
    assert "empty class folder" in _expect_error(root, root / "test" / "dog")


def test_file_that_is_not_an_image(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    notes = root / "train" / "cat" / "notes.txt"
    notes.write_text("hello")
    assert "not an image file" in _expect_error(root, notes)
    notes.unlink()
    fake = root / "train" / "cat" / "fake.jpg"
    fake.write_text("hello, I am not a JPEG")
    assert "not a JPEG, PNG or WebP" in _expect_error(root, fake, cls=images.ImageDecodeError)


def test_truncated_jpeg(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    cut = root / "train" / "eel" / "cut.jpg"
    cut.write_bytes(encode(np.full((8, 8, 3), 99, np.uint8), "jpg")[:250])
    assert "truncated" in _expect_error(root, cut, cls=images.ImageDecodeError)


def test_class_only_in_test_or_only_in_train(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    write_folder(root, {"test": {"fox": _rng_images(1)}})
    assert "'fox'" in _expect_error(root, root / "test", "not in")
    write_folder(root, {"train": {"fox": _rng_images(1)}, "test": {}})
    for f in (root / "test" / "fox").iterdir():
        f.unlink()
    (root / "test" / "fox").rmdir()
    assert "'fox'" in _expect_error(root, root / "train", "missing from")


def test_no_classes_and_a_single_class(tmp_path) -> None:
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    assert "no class folders" in _expect_error(root, root / "train")
    write_folder(root, {"train": {"cat": _rng_images(2)}, "test": {"cat": _rng_images(1)}})
    assert "only one class" in _expect_error(root, "'cat'")


def test_missing_split_folders(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    (root / "test").rename(root / "other")
    assert "no test/ or val/" in _expect_error(root, root)
    _expect_error(tmp_path / "nowhere", tmp_path / "nowhere")


def test_symlink_loops(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    loop = root / "train" / "cat" / "again"
    loop.symlink_to(root / "train" / "cat", target_is_directory=True)
    assert "symlink loop" in _expect_error(root, loop)
    loop.unlink()
    self_link = root / "train" / "cat" / "self.png"
    self_link.symlink_to(self_link)
    assert "symlink loop" in _expect_error(root, self_link)


def test_decompression_bomb_in_a_folder(tmp_path) -> None:
    root, _ = _small_folder(tmp_path / "data")
    bomb = root / "train" / "dog" / "bomb.png"
    bomb.write_bytes(_bomb_png())
    assert "decompression bomb" in _expect_error(root, bomb, cls=images.ImageDecodeError)
    # Also with an image size (no header pass for sizes): refused while decoding.
    with pytest.raises(images.ImageDecodeError) as err:
        folder.load(root, image_size=8)
    _one_line(err, bomb)


def test_memory_is_checked_before_decoding(tmp_path, monkeypatch) -> None:
    root, _ = _small_folder(tmp_path / "data")
    monkeypatch.setattr(folder, "free_memory", lambda: 1000)
    decoded = []
    monkeypatch.setattr(images, "decode_array", lambda *a, **k: decoded.append(a))
    with pytest.raises(folder.InsufficientMemoryError) as err:
        folder.load(root, image_size=224)
    message = _one_line(err, root, "224x224", "MiB", "only 0.0 MiB is free")
    assert "15 images" in message
    assert decoded == []  # refused before anything was decoded
    monkeypatch.setattr(folder, "free_memory", lambda: None)  # unknown: no refusal


def test_cache_is_reused_and_invalidated_by_changes(tmp_path, monkeypatch) -> None:
    root, _ = _small_folder(tmp_path / "data")
    calls = []
    real = images.decode_array
    monkeypatch.setattr(images, "decode_array", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = folder.load(root)
    assert len(calls) == 15 and not first.from_cache
    cache_files = list((tmp_path / "cache").iterdir())
    assert len(cache_files) == 1 and cache_files[0].suffix == ".npz"
    folder._LOADED.clear()  # as a new process would
    again = folder.load(root)
    assert len(calls) == 15 and again.from_cache
    np.testing.assert_array_equal(again.train_images, first.train_images)
    assert again.classes == first.classes and again.mean == first.mean
    # A changed file (new size and modification time) invalidates the cache.
    changed = root / "train" / "dog" / "0001.png"
    changed.write_bytes(encode(np.full((8, 8, 3), 7, np.uint8), "png"))
    os.utime(changed, ns=(1, 1))
    folder._LOADED.clear()
    third = folder.load(root)
    assert len(calls) == 30 and not third.from_cache
    np.testing.assert_array_equal(third.train_images[4], np.full((8, 8, 3), 7, np.uint8))
    assert [p.name for p in (tmp_path / "cache").iterdir()] != [cache_files[0].name]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the stale version was removed
    # So does a different image size, and an added file.
    folder._LOADED.clear()
    assert folder.load(root, image_size=4).image_size == 4
    (root / "test" / "cat" / "new.png").write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "png"))
    assert len(folder.load(root, image_size=4).test_labels) == 7


def test_a_crash_while_writing_leaves_no_cache(tmp_path, monkeypatch) -> None:
    root, _ = _small_folder(tmp_path / "data")

    def crash(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # as if killed mid-write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        folder.load(root)
    assert os.listdir(tmp_path / "cache") == []
    monkeypatch.undo()
    monkeypatch.setenv("SPARSENET_JAX_CACHE", str(tmp_path / "cache"))
    folder._LOADED.clear()
    assert not folder.load(root).from_cache  # decoded again, then cached
    assert len(os.listdir(tmp_path / "cache")) == 1


def test_an_unwritable_cache_folder_is_not_fatal(tmp_path, monkeypatch) -> None:
    root, _ = _small_folder(tmp_path / "data")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("SPARSENET_JAX_CACHE", str(blocker / "cache"))
    assert folder.load(root).train_images.shape == (9, 8, 8, 3)


# ---------------------------------------------------------------------------
# Packed .npz files


def _packed(tmp_path: pathlib.Path, n_train=4, n_test=2, size=8) -> tuple[pathlib.Path, list]:
    pixels = _rng_images(n_train + n_test, size)
    files = [encode(p, "png") for p in pixels]
    labels = np.arange(n_train + n_test) % 2
    path = write_packed(
        tmp_path / "small.npz",
        ["left", "right"],
        (files[:n_train], labels[:n_train]),
        (files[n_train:], labels[n_train:]),
    )
    return path, pixels


def test_packed_npz(tmp_path) -> None:
    path, pixels = _packed(tmp_path)
    image_set = folder.load(path)
    assert image_set.classes == ("left", "right")
    np.testing.assert_array_equal(image_set.train_images, np.stack(pixels[:4]))
    np.testing.assert_array_equal(image_set.test_labels, [0, 1])
    info = data.dataset_info("folder", data_dir=str(path))
    assert (info.num_classes, info.num_train, info.num_test, info.image_size) == (2, 4, 2, 8)
    x, _, classes = folder.load_split(path, "test", image_size=4)
    assert x.shape == (2, 4, 4, 3) and classes == ("left", "right")


def test_packed_npz_errors(tmp_path) -> None:
    path, _ = _packed(tmp_path)
    with np.load(path) as f:
        arrays = dict(f)
    bad = dict(arrays, train_offsets=arrays["train_offsets"][::-1].copy())
    np.savez(tmp_path / "offsets.npz", **bad)
    _expect_error(tmp_path / "offsets.npz", "offsets.npz", "train_offsets")
    np.savez(tmp_path / "keys.npz", classes=arrays["classes"])
    _expect_error(tmp_path / "keys.npz", "keys.npz", "missing")
    corrupt = dict(arrays)
    buf = arrays["train_jpeg"].copy()
    buf[arrays["train_offsets"][2] : arrays["train_offsets"][3]] = 0  # image 2 zeroed
    corrupt["train_jpeg"] = buf
    np.savez(tmp_path / "zeroed.npz", **corrupt)
    _expect_error(tmp_path / "zeroed.npz", "zeroed.npz:train[2]", cls=images.ImageDecodeError)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    _expect_error(tmp_path / "junk.npz", "junk.npz: not a .npz file (an .npz is a zip archive")


def test_an_unreadable_npz_is_named_unreadable(tmp_path, monkeypatch) -> None:
    path, _ = _packed(tmp_path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(folder, "open", denied, raising=False)  # root may read anything
    _expect_error(path, "not a readable .npz file ([Errno 13] Permission denied)")


def test_real_cifar10_q75_test_split() -> None:
    """The shared file's test split: 10,000 images of 32x32, 10 classes, CIFAR's mean."""
    x, y, classes = folder.load_split(cifar_npz(), "test")
    assert x.shape == (10000, 32, 32, 3) and x.dtype == np.uint8
    assert len(classes) == 10 and classes[0] == "airplane"
    assert np.bincount(y).tolist() == [1000] * 10
    mean, _ = folder.channel_stats(x)
    np.testing.assert_allclose(mean, (0.4913, 0.4821, 0.4465), atol=0.01)


@pytest.mark.slow
def test_real_cifar10_q75_whole_file_and_cache(tmp_path) -> None:
    image_set = folder.load(cifar_npz())
    assert image_set.train_images.shape == (50000, 32, 32, 3)
    np.testing.assert_allclose(image_set.mean, (0.4913, 0.4821, 0.4465), atol=2e-4)
    np.testing.assert_allclose(image_set.std, (0.2452, 0.2428, 0.2606), atol=2e-4)
    folder._LOADED.clear()
    assert folder.load(cifar_npz()).from_cache


def test_cifar_image_folder_helper(tmp_path) -> None:
    root = cifar_image_folder(tmp_path / "cifar", per_class=2, test_per_class=1, num_classes=3)
    image_set = folder.load(root)
    assert image_set.classes == ("airplane", "automobile", "bird")
    assert image_set.train_images.shape == (6, 32, 32, 3) and len(image_set.test_labels) == 3


def test_a_loader_refuses_non_finite_float_images_once(tmp_path) -> None:
    """Issue 18 item 10, the loaders' half: a float cache holding NaN is refused, named."""
    cache = tmp_path / "tfds" / "sparsenet_jax_cache"
    cache.mkdir(parents=True)
    pixels = np.zeros((3, 32, 32, 3), np.float32)
    pixels[1, 0, 0, 0] = np.nan
    np.save(cache / "cifar10-test-images.npy", pixels)
    np.save(cache / "cifar10-test-labels.npy", np.zeros(3, np.int32))
    with pytest.raises(images.NonFiniteImageError) as err:
        data.load_arrays("cifar10", "test", str(tmp_path / "tfds"))
    _one_line(err, "cifar10-test-images.npy[1]", "NaN or Inf")


def test_a_resume_on_other_data_is_refused(tmp_path) -> None:
    """A resumed run must read the data it started on: another training set would change
    its epochs mid-schedule, another test set its accuracy. The data may move."""
    root, _ = _small_folder(tmp_path / "data")
    config = config_lib.from_dict({"dataset": "folder", "data_dir": str(root)})
    recorded = input_pipeline.load_splits(config).info
    moved = root.rename(tmp_path / "moved")
    config = config_lib.from_dict({"dataset": "folder", "data_dir": str(moved)})
    assert input_pipeline.load_splits(config, recorded).info == recorded
    next((moved / "train" / "eel").iterdir()).unlink()
    with pytest.raises(TrainingError, match=r"\(num_train 8, the run had 9\); use the same data"):
        input_pipeline.load_splits(config, recorded)
    (moved / "train" / "cat").rename(moved / "train" / "cow")
    (moved / "test" / "cat").rename(moved / "test" / "cow")
    with pytest.raises(TrainingError, match=r"class names differ: 'cow' where the run had 'cat'"):
        input_pipeline.load_splits(config, recorded)
