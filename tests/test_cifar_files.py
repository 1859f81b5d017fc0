"""CIFAR-10/100 from the files users download (issue 16 item 1): python and binary versions.

The archives here are small fakes in the official layouts (the real ones cannot be
downloaded in CI). The python versions are pickles: the fakes name numpy's globals as the
real files do (``numpy.core.multiarray._reconstruct``), and a tampered pickle must be
refused in one line without running anything.
"""

from __future__ import annotations

import io
import os
import pathlib
import pickle
import tarfile

import numpy as np
import pytest

from sparsenet_jax import data
from sparsenet_jax.data import cifar_files

CIFAR10_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def _pickle(value: object) -> bytes:
    # As the real files (written by Python 2's cPickle, protocol 2) name numpy's module.
    raw = pickle.dumps(value, protocol=2)
    return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _tar(path: pathlib.Path, members: dict[str, bytes]) -> pathlib.Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def _records(rng: np.random.Generator, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, classes, n)


def _expected_images(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def cifar10_python(rng: np.random.Generator) -> tuple[dict[str, bytes], dict]:
    members, truth = {}, {"train": [], "test": []}
    for file, split in [
        *((f"data_batch_{i}", "train") for i in range(1, 6)),
        ("test_batch", "test"),
    ]:
        pixels, labels = _records(rng, 3, 10)
        batch = {
            b"batch_label": b"training batch",
            b"labels": [int(v) for v in labels],
            b"data": pixels,
            b"filenames": [b"x.png"] * 3,
        }
        members[f"cifar-10-batches-py/{file}"] = _pickle(batch)
        truth[split].append((pixels, labels))
    meta = {b"num_cases_per_batch": 3, b"label_names": [c.encode() for c in CIFAR10_CLASSES]}
    members["cifar-10-batches-py/batches.meta"] = _pickle(meta)
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return members, truth


def cifar100_python(rng: np.random.Generator) -> tuple[dict[str, bytes], dict]:
    members, truth = {}, {}
    for split, n in (("train", 5), ("test", 4)):
        pixels, fine = _records(rng, n, 100)
        batch = {
            b"filenames": [b"y.png"] * n,
            b"batch_label": split.encode(),
            b"fine_labels": [int(v) for v in fine],
            b"coarse_labels": [int(v) % 20 for v in fine],
            b"data": pixels,
        }
        members[f"cifar-100-python/{split}"] = _pickle(batch)
        truth[split] = [(pixels, fine)]
    names = [f"class{i:02d}".encode() for i in range(100)]
    meta = {b"fine_label_names": names, b"coarse_label_names": names[:20]}
    members["cifar-100-python/meta"] = _pickle(meta)
    return members, truth


def cifar10_binary(rng: np.random.Generator) -> tuple[dict[str, bytes], dict]:
    members, truth = {}, {"train": [], "test": []}
    for file, split in [
        *((f"data_batch_{i}.bin", "train") for i in range(1, 6)),
        ("test_batch.bin", "test"),
    ]:
        pixels, labels = _records(rng, 2, 10)
        records = np.concatenate([labels[:, None].astype(np.uint8), pixels], 1)
        members[f"cifar-10-batches-bin/{file}"] = records.tobytes()
        truth[split].append((pixels, labels))
    members["cifar-10-batches-bin/batches.meta.txt"] = (
        "\n".join(CIFAR10_CLASSES) + "\n\n"
    ).encode()
    return members, truth


def cifar100_binary(rng: np.random.Generator) -> tuple[dict[str, bytes], dict]:
    members, truth = {}, {}
    for split, n in (("train", 5), ("test", 3)):
        pixels, fine = _records(rng, n, 100)
        coarse = (fine + 7) % 20  # differs from fine: the fine byte must be the one used
        records = np.concatenate([coarse[:, None], fine[:, None], pixels], 1).astype(np.uint8)
        members[f"cifar-100-binary/{split}.bin"] = records.tobytes()
        truth[split] = [(pixels, fine)]
    names = "\n".join(f"class{i:02d}" for i in range(100))
    members["cifar-100-binary/fine_label_names.txt"] = names.encode()
    members["cifar-100-binary/coarse_label_names.txt"] = b"\n".join([b"c"] * 20)
    return members, truth


KINDS = {
    ("cifar10", "cifar-10-python.tar.gz"): cifar10_python,
    ("cifar100", "cifar-100-python.tar.gz"): cifar100_python,
    ("cifar10", "cifar-10-binary.tar.gz"): cifar10_binary,
    ("cifar100", "cifar-100-binary.tar.gz"): cifar100_binary,
}


def _unpack(folder: pathlib.Path, members: dict[str, bytes]) -> None:
    for name, payload in members.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(payload)


@pytest.mark.parametrize(("name", "archive"), list(KINDS), ids=[a for _, a in KINDS])
@pytest.mark.parametrize(
    "layout", ["archive-in-dir", "archive-itself", "unpacked", "unpacked-folder"]
)
def test_official_files_load(tmp_path, name: str, archive: str, layout: str) -> None:
    members, truth = KINDS[(name, archive)](np.random.default_rng(0))
    top = next(iter(members)).split("/")[0]
    if layout.startswith("archive"):
        _tar(tmp_path / archive, members)
        data_dir = tmp_path / archive if layout == "archive-itself" else tmp_path
    else:
        _unpack(tmp_path, members)
        data_dir = tmp_path / top if layout == "unpacked-folder" else tmp_path
    for split in ("train", "test"):
        images, labels = data.load_arrays(name, split, str(data_dir))
        pixels = np.concatenate([p for p, _ in truth[split]])
        expected = np.concatenate([y for _, y in truth[split]])
        assert images.dtype == np.uint8 and labels.dtype == np.int32
        np.testing.assert_array_equal(images, _expected_images(pixels))
        np.testing.assert_array_equal(labels, expected)
    loaded = data.load_dataset(name, str(data_dir))
    assert loaded.info.num_train == sum(len(y) for _, y in truth["train"])
    assert loaded.info.num_test == sum(len(y) for _, y in truth["test"])
    assert len(loaded.info.classes) == data.dataset_info(name).num_classes
    # The sizes read differ from the catalogue's (50,000 / 10,000): one line says so.
    (note,) = loaded.notes
    assert "\n" not in note and "50000" in note and f"{loaded.info.num_train} train" in note


def test_cifar10_python_class_names(tmp_path) -> None:
    members, _ = cifar10_python(np.random.default_rng(1))
    _tar(tmp_path / "cifar-10-python.tar.gz", members)
    assert data.load_dataset("cifar10", str(tmp_path)).info.classes == tuple(CIFAR10_CLASSES)


def test_a_folder_without_official_files_still_means_tfds(tmp_path) -> None:
    assert cifar_files.find("cifar10", str(tmp_path)) is None
    with pytest.raises(data.DatasetNotFoundError, match="prepare"):
        data.load_arrays("cifar10", "train", str(tmp_path))
    assert cifar_files.find("cifar10", None) is None


class _Evil:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('touch /tmp/never')",))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "object-array"])
def test_a_tampered_pickle_runs_nothing_and_is_refused(tmp_path, payload: str) -> None:
    members, _ = cifar10_python(np.random.default_rng(2))
    marker = tmp_path / "pwned"
    batch = {b"labels": [0, 1], b"data": np.zeros((2, 3072), np.uint8)}
    if payload == "os.system":
        batch[b"labels"] = _Evil(marker)
    elif payload == "builtins.eval":
        batch[b"data"] = _EvalEvil()
    else:
        batch[b"data"] = np.array([_Evil(marker), None], object)
    members["cifar-10-batches-py/data_batch_3"] = _pickle(batch)
    _unpack(tmp_path, members)
    with pytest.raises(data.CifarFileError) as err:
        data.load_arrays("cifar10", "train", str(tmp_path))
    message = str(err.value)
    assert "\n" not in message and "data_batch_3" in message and "nothing in it was run" in message
    assert isinstance(err.value, data.DatasetNotFoundError)
    assert not marker.exists()
    # The test split does not read the tampered file.
    assert data.load_arrays("cifar10", "test", str(tmp_path))[0].shape == (3, 32, 32, 3)


def test_the_unpickler_admits_numpy_arrays_only_through_numpys_globals() -> None:
    allowed = _pickle({b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"x": [1, 2]})
    value = cifar_files.SafeUnpickler(io.BytesIO(allowed)).load()
    np.testing.assert_array_equal(value[b"data"], [[0, 1, 2], [3, 4, 5]])
    for forbidden in (b"cos\nsystem\n", b"cbuiltins\neval\n", b"csubprocess\nPopen\n"):
        with pytest.raises(pickle.UnpicklingError, match="refused global"):
            cifar_files.SafeUnpickler(io.BytesIO(b"\x80\x02" + forbidden + b".")).load()


def test_damaged_files_give_one_line(tmp_path) -> None:
    members, _ = cifar10_binary(np.random.default_rng(3))
    members["cifar-10-batches-bin/test_batch.bin"] = members["cifar-10-batches-bin/test_batch.bin"][
        :-5
    ]
    _unpack(tmp_path / "cut", members)
    with pytest.raises(data.CifarFileError) as err:
        data.load_arrays("cifar10", "test", str(tmp_path / "cut"))
    assert "\n" not in str(err.value) and "test_batch.bin" in str(err.value)
    assert "truncated" in str(err.value)

    members, _ = cifar100_python(np.random.default_rng(4))
    del members["cifar-100-python/test"]
    _tar(tmp_path / "cifar-100-python.tar.gz", members)
    with pytest.raises(data.CifarFileError) as err:
        data.load_arrays("cifar100", "test", str(tmp_path))
    assert "\n" not in str(err.value) and "cifar-100-python/test missing" in str(err.value)

    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(data.CifarFileError) as err:
        data.load_arrays("cifar10", "train", str(tmp_path / "gz"))
    assert "\n" not in str(err.value) and "cifar-10-python.tar.gz" in str(err.value)

    members, _ = cifar10_python(np.random.default_rng(5))
    members["cifar-10-batches-py/data_batch_1"] = _pickle(
        {b"labels": [11], b"data": np.zeros((1, 3072), np.uint8)}
    )
    _unpack(tmp_path / "label", members)
    with pytest.raises(data.CifarFileError, match="label 11"):
        data.load_arrays("cifar10", "train", str(tmp_path / "label"))
