"""Local image data: an image folder, or a packed ``.npz`` of JPEGs, decoded into memory.

``load(root, image_size=None)`` returns an ``ImageSet``: uint8 NHWC train and test
arrays, int32 labels, the class names, and the train split's per-channel mean and std.
``root`` is either

* a folder ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (``val/`` is accepted
  for ``test/``). Classes are the sorted folder names of ``train/``; JPEG, PNG and WebP
  files are read, in subfolders too; hidden files are ignored. Or
* a ``.npz`` file in the format of ``cifar10-jpeg-q75.npz``: ``classes`` (str),
  ``train_jpeg``/``test_jpeg`` (uint8, every image's encoded file end to end),
  ``train_offsets``/``test_offsets`` (int64, n + 1) and ``train_labels``/``test_labels``.

Images either share one size, or are resized and centre-cropped to ``image_size``.
Before anything is decoded, the memory the arrays need is compared with the free
memory, and a set that does not fit is refused in one line. The decoded arrays are
cached (``cache_dir``, default ``$SPARSENET_JAX_CACHE`` or ``~/.cache/sparsenet_jax``)
under a key made of the sorted file list with sizes and modification times and the
image size, so a changed folder is decoded again; the cache is written to a temporary
file and renamed, so an error or a crash never leaves a half-written one.

Every problem is an ``ImageFolderError`` (or ``images.ImageDecodeError`` for one bad
file), one line naming the file or folder.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import glob
import hashlib
import json
import logging
import os
import stat
import threading
import zipfile
from collections.abc import Callable, Sequence

import numpy as np

from sparsenet_jax._files import write_atomic
from sparsenet_jax.data import images as images_lib
from sparsenet_jax.data.images import ConversionNotes, ImageDataError

logger = logging.getLogger("sparsenet_jax.data")

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
IGNORED = ("Thumbs.db", "desktop.ini")  # written by file managers next to images
CACHE_VERSION = 2
_PACKED_KEYS = ("classes", "train_jpeg", "train_offsets", "train_labels")
_LOADED: dict[str, ImageSet] = {}  # the last set loaded in this process, by cache path


class ImageFolderError(ImageDataError):
    """An image folder or packed file that cannot be used as given; names the file or folder."""


class InsufficientMemoryError(ImageFolderError):
    """The decoded images would not fit in the free memory."""


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """A decoded image set: arrays, class names, the train split's statistics."""

    source: str  # the folder or .npz it was read from
    classes: tuple[str, ...]
    train_images: np.ndarray  # uint8 (n, size, size, 3)
    train_labels: np.ndarray  # int32 (n,)
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, ...]  # per channel, of the train images scaled to [0, 1]
    std: tuple[float, ...]
    from_cache: bool = False
    notes: tuple[str, ...] = ()  # one line each, e.g. how many images were converted to RGB

    @property
    def image_size(self) -> int:
        return int(self.train_images.shape[1])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of "train" or "test"."""
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise ValueError(f"split must be 'train' or 'test', got {name!r}")


# ---------------------------------------------------------------------------
# The public entry points


def load(
    root: str | os.PathLike[str],
    image_size: int | None = None,
    *,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> ImageSet:
    """The image set at ``root`` (a folder or a packed ``.npz``); see the module docstring.

    Raises ``ImageFolderError`` / ``images.ImageDecodeError`` (one line, naming the
    file or folder) for unusable data, ``InsufficientMemoryError`` for a set that does
    not fit in memory.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    plan = _plan(root, image_size)
    cache = _cache_path(plan, cache_dir)
    if cache in _LOADED:  # the same contents, already in this process
        return _LOADED[cache]
    image_set = _read_cache(cache, root) if use_cache else None
    if image_set is None:
        image_set = plan.decode()
        if use_cache:
            _write_cache(cache, image_set)
    _LOADED.clear()  # keep one set in memory, not every set ever loaded
    _LOADED[cache] = image_set
    return image_set


def load_split(
    root: str | os.PathLike[str], split: str, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images, labels, classes) of one split, decoded now, without the cache or statistics."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    plan = _plan(root, image_size, splits=(split,))
    plan.prepare()
    notes = ConversionNotes()
    x, y = plan.decode_split(split, notes)
    notes.log(f"{root} ({split})")
    return x, y, plan.classes


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC ``images``, scaled to [0, 1] (exact sums)."""
    channels = images.shape[-1]
    total = np.zeros(channels, np.float64)
    squares = np.zeros(channels, np.float64)
    per_image = max(1, int(np.prod(images.shape[1:])))
    step = max(1, 8_000_000 // per_image)
    for start in range(0, len(images), step):
        chunk = images[start : start + step].reshape(-1, channels)
        total += chunk.sum(axis=0, dtype=np.uint64)
        squares += (chunk.astype(np.uint32) ** 2).sum(axis=0, dtype=np.uint64)
    count = max(1, len(images) * per_image // channels)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return tuple(float(round(m / 255, 6)) for m in mean), tuple(
        float(round(s / 255, 6)) for s in std
    )


def free_memory() -> int | None:
    """Bytes of memory available to a new allocation: MemAvailable, else free pages, else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def default_cache_dir() -> str:
    """``$SPARSENET_JAX_CACHE``, else ``$XDG_CACHE_HOME/sparsenet_jax``, else ``~/.cache/…``."""
    if os.environ.get("SPARSENET_JAX_CACHE"):
        return os.path.expanduser(os.environ["SPARSENET_JAX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return os.path.join(os.path.expanduser(base), "sparsenet_jax")


# ---------------------------------------------------------------------------
# What to decode: a plan per source kind


@dataclasses.dataclass
class _Plan:
    root: str
    image_size: int | None
    classes: tuple[str, ...]
    key: list  # what the cache key is made of (JSON-serialisable)
    prepare: Callable[[], None]  # checks before decoding: memory, image sizes
    decode_split: Callable[[str, ConversionNotes], tuple[np.ndarray, np.ndarray]]

    def decode(self) -> ImageSet:
        self.prepare()
        notes = ConversionNotes()
        train = self.decode_split("train", notes)
        test = self.decode_split("test", notes)
        if train[0].shape[1:] != test[0].shape[1:]:
            raise ImageFolderError(
                f"{self.root}: the train images are {_hw(train[0])} but the test images "
                f"{_hw(test[0])}; give an image size to resize both"
            )
        notes.log(self.root)
        note = notes.message(self.root)
        mean, std = channel_stats(train[0])
        return ImageSet(
            self.root, self.classes, *train, *test, mean, std, notes=(note,) if note else ()
        )


def _plan(root: str, image_size: int | None, splits: Sequence[str] = ("train", "test")) -> _Plan:
    if not os.path.exists(root):
        raise ImageFolderError(f"{root}: no such file or folder")
    if os.path.isfile(root):
        if not root.endswith(".npz"):
            raise ImageFolderError(
                f"{root}: expected a folder with train/ and test/ (or val/), or a packed .npz"
            )
        return _packed_plan(root, image_size, splits)
    return _folder_plan(root, image_size, splits)


def _hw(images: np.ndarray) -> str:
    return f"{images.shape[2]}x{images.shape[1]}"


# ---------------------------------------------------------------------------
# Image folders


@dataclasses.dataclass(frozen=True)
class _File:
    path: str
    label: int
    size: int
    mtime_ns: int


def _folder_plan(root: str, image_size: int | None, splits: Sequence[str]) -> _Plan:
    split_dirs = _split_dirs(root)
    listed = {s: _list_classes(split_dirs[s]) for s in ("train", "test")}
    train_classes, test_classes = sorted(listed["train"]), sorted(listed["test"])
    if not train_classes:
        raise ImageFolderError(
            f"{split_dirs['train']}: no class folders (expected train/<class>/*)"
        )
    if len(train_classes) == 1:
        raise ImageFolderError(
            f"{split_dirs['train']}: only one class ({train_classes[0]!r}); a classifier needs "
            "at least two class folders"
        )
    only_train = sorted(set(train_classes) - set(test_classes))
    only_test = sorted(set(test_classes) - set(train_classes))
    if only_test:
        raise ImageFolderError(
            f"{split_dirs['test']}: class folder(s) {', '.join(map(repr, only_test))} are not in "
            f"{split_dirs['train']}"
        )
    if only_train:
        raise ImageFolderError(
            f"{split_dirs['train']}: class folder(s) {', '.join(map(repr, only_train))} are "
            f"missing from {split_dirs['test']}"
        )
    classes = tuple(train_classes)
    files: dict[str, list[_File]] = {}
    for split in ("train", "test"):
        files[split] = []
        for label, name in enumerate(classes):
            folder = listed[split][name]
            found = _image_files(folder, frozenset())
            if not found:
                raise ImageFolderError(f"{folder}: empty class folder (no JPEG, PNG or WebP files)")
            files[split] += [_File(p, label, st.st_size, st.st_mtime_ns) for p, st in found]

    wanted = [f for s in splits for f in files[s]]
    size: tuple[int, int] = (0, 0)  # (width, height) of the decoded images, set by prepare()

    def prepare() -> None:  # before decoding: memory, and one size unless image_size is set
        nonlocal size
        first = _header_size(wanted[0].path)
        size = (image_size, image_size) if image_size else first
        _check_memory(root, len(wanted), size, first)
        if image_size is None:
            sizes = {f.path: _header_size(f.path) for f in wanted}
            odd = next((p for p, s in sizes.items() if s != first), None)
            if odd is not None:
                raise ImageFolderError(
                    f"{odd}: is {sizes[odd][0]}x{sizes[odd][1]} but {wanted[0].path} is "
                    f"{first[0]}x{first[1]}; images of mixed sizes need an image size "
                    "(--image-size N) to be resized and centre-cropped to"
                )

    key = [
        "folder",
        CACHE_VERSION,
        root,
        image_size,
        list(classes),
        {
            s: [[os.path.relpath(f.path, root), f.label, f.size, f.mtime_ns] for f in files[s]]
            for s in ("train", "test")
        },
    ]

    def decode_split(split: str, notes: ConversionNotes) -> tuple[np.ndarray, np.ndarray]:
        items = files[split]
        labels = np.asarray([f.label for f in items], np.int32)
        paths: list[tuple[bytes | str, str]] = [(f.path, f.path) for f in items]
        return _decode_all(paths, (size[1], size[0]), image_size, notes), labels

    return _Plan(root, image_size, classes, key, prepare, decode_split)


def _split_dirs(root: str) -> dict[str, str]:
    names = {n for n in ("train", "test", "val") if os.path.isdir(os.path.join(root, n))}
    if "train" not in names:
        raise ImageFolderError(
            f"{root}: no train/ folder; expected ROOT/train/<class>/* and ROOT/test/<class>/* "
            "(or ROOT/val/<class>/*)"
        )
    if "test" in names and "val" in names:
        raise ImageFolderError(
            f"{root}: has both test/ and val/; keep the one to evaluate on (val/ is read as test/)"
        )
    if "test" not in names and "val" not in names:
        raise ImageFolderError(f"{root}: no test/ or val/ folder next to train/")
    test = "test" if "test" in names else "val"
    return {"train": os.path.join(root, "train"), "test": os.path.join(root, test)}


def _list_classes(folder: str) -> dict[str, str]:
    """{class name: its folder} of the sub-folders of ``folder`` (hidden ones skipped)."""
    classes = {}
    for entry in _scandir(folder):
        if entry.name.startswith(".") or entry.name in IGNORED:
            continue
        st = _stat(entry.path)
        if stat.S_ISDIR(st.st_mode):
            classes[entry.name] = entry.path
        else:
            raise ImageFolderError(
                f"{entry.path}: a file where class folders are expected "
                f"({os.path.basename(folder)}/<class>/<image>)"
            )
    return classes


def _image_files(
    folder: str, ancestors: frozenset[tuple[int, int]]
) -> list[tuple[str, os.stat_result]]:
    """The image files under ``folder``, recursively, sorted; refuses symlink loops."""
    st = _stat(folder)
    identity = (st.st_dev, st.st_ino)
    if identity in ancestors:
        raise ImageFolderError(f"{folder}: symlink loop (it leads back to a folder above it)")
    ancestors = ancestors | {identity}
    found: list[tuple[str, os.stat_result]] = []
    for entry in sorted(_scandir(folder), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in IGNORED:
            continue
        entry_stat = _stat(entry.path)
        if stat.S_ISDIR(entry_stat.st_mode):
            found += _image_files(entry.path, ancestors)
        elif not stat.S_ISREG(entry_stat.st_mode):
            raise ImageFolderError(f"{entry.path}: not a regular file")
        elif os.path.splitext(entry.name)[1].lower() in EXTENSIONS:
            found.append((entry.path, entry_stat))
        else:
            raise ImageFolderError(
                f"{entry.path}: not an image file (only {', '.join(EXTENSIONS)} are read); "
                "move it out of the data folder"
            )
    return found


def _scandir(folder: str) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError as err:
        raise _os_error(folder, err) from None


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)  # follows symlinks
    except OSError as err:
        raise _os_error(path, err) from None


def _os_error(path: str, err: OSError) -> ImageFolderError:
    if err.errno == errno.ELOOP:
        return ImageFolderError(f"{path}: symlink loop ({err.strerror})")
    if err.errno == errno.ENOENT and os.path.islink(path):
        return ImageFolderError(f"{path}: broken symbolic link to {os.readlink(path)!r}")
    return ImageFolderError(f"{path}: {err.strerror or err}")


def _header_size(path: str) -> tuple[int, int]:
    with images_lib.open_image(path, path) as image:
        return image.size


# ---------------------------------------------------------------------------
# Packed .npz files


def _packed_plan(path: str, image_size: int | None, splits: Sequence[str]) -> _Plan:
    try:
        with open(path, "rb") as f:
            is_zip = zipfile.is_zipfile(f)
    except OSError as err:
        raise ImageFolderError(f"{path}: not a readable .npz file ({err})") from None
    if not is_zip:  # np.load would read it as a pickle and say pickles are not allowed
        raise ImageFolderError(f"{path}: not a .npz file (an .npz is a zip archive; this is not)")
    try:
        packed = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ImageFolderError(f"{path}: not a readable .npz file ({err})") from None
    with packed:
        missing = [
            k
            for k in (*_PACKED_KEYS, "test_jpeg", "test_offsets", "test_labels")
            if k not in packed.files
        ]
        if missing:
            raise ImageFolderError(
                f"{path}: not a packed image file: missing {', '.join(missing)} (expected "
                "classes, train_jpeg/offsets/labels, test_jpeg/offsets/labels)"
            )
        try:
            raw_classes = packed["classes"]
            arrays = {
                s: (packed[f"{s}_jpeg"], packed[f"{s}_offsets"], packed[f"{s}_labels"])
                for s in ("train", "test")
            }
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise ImageFolderError(f"{path}: damaged .npz file ({err})") from None
    if raw_classes.ndim != 1 or raw_classes.dtype.kind not in "US":
        raise ImageFolderError(f"{path}: classes must be a 1-D array of names")
    classes = tuple(str(c) for c in raw_classes)
    if len(classes) < 2:
        raise ImageFolderError(f"{path}: {len(classes)} class(es); a classifier needs at least 2")
    for split, (buf, offsets, labels) in arrays.items():
        _check_packed(path, split, buf, offsets, labels, len(classes))
    size: tuple[int, int] = (0, 0)  # (width, height) of the decoded images, set by prepare()

    def prepare() -> None:
        nonlocal size
        n = sum(len(arrays[s][2]) for s in splits)
        first_buf, first_off = arrays[splits[0]][0], arrays[splits[0]][1]
        first = _packed_header(path, splits[0], first_buf, first_off, 0)
        size = (image_size, image_size) if image_size else first
        _check_memory(path, n, size, first)

    st = os.stat(path)
    key = ["packed", CACHE_VERSION, path, image_size, st.st_size, st.st_mtime_ns]

    def decode_split(split: str, notes: ConversionNotes) -> tuple[np.ndarray, np.ndarray]:
        buf, offsets, labels = arrays[split]
        names = [f"{path}:{split}[{i}]" for i in range(len(labels))]
        data = [buf[offsets[i] : offsets[i + 1]].tobytes() for i in range(len(labels))]
        items: list[tuple[bytes | str, str]] = list(zip(data, names, strict=True))
        out = _decode_all(items, (size[1], size[0]), image_size, notes)
        return out, labels.astype(np.int32)

    return _Plan(path, image_size, classes, key, prepare, decode_split)


def _check_packed(
    path: str, split: str, buf: np.ndarray, offsets: np.ndarray, labels: np.ndarray, classes: int
) -> None:
    where = f"{path}: {split}"
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise ImageFolderError(f"{where}_jpeg must be 1-D uint8, got {buf.dtype} {buf.shape}")
    if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) != len(labels) + 1:
        raise ImageFolderError(
            f"{where}_offsets must be {len(labels) + 1} integers (one more than the labels)"
        )
    if len(labels) == 0:
        raise ImageFolderError(f"{where}: no images")
    if offsets[0] != 0 or offsets[-1] != len(buf) or (np.diff(offsets) <= 0).any():
        raise ImageFolderError(
            f"{where}_offsets must rise strictly from 0 to the length of {split}_jpeg"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ImageFolderError(f"{where}_labels must be 1-D integers")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ImageFolderError(f"{path}:{split}[{i}]: label {labels[i]} outside 0..{classes - 1}")
    missing = sorted(set(range(classes)) - set(np.unique(labels).tolist()))
    if missing:
        raise ImageFolderError(f"{where}: no image of class(es) {missing}")


def _packed_header(
    path: str, split: str, buf: np.ndarray, offsets: np.ndarray, i: int
) -> tuple[int, int]:
    name = f"{path}:{split}[{i}]"
    with images_lib.open_image(buf[offsets[i] : offsets[i + 1]].tobytes(), name) as image:
        return image.size


# ---------------------------------------------------------------------------
# Decoding, memory, cache


def _decode_all(
    items: list[tuple[bytes | str, str]],
    shape: tuple[int, int],
    image_size: int | None,
    notes: ConversionNotes,
) -> np.ndarray:
    """Every item decoded into one preallocated uint8 array of (n, *shape, 3), in threads."""
    out = np.empty((len(items), *shape, 3), np.uint8)
    stop = threading.Event()

    def fill(start: int) -> None:
        for i in range(start, min(len(items), start + 256)):
            if stop.is_set():
                return
            data, name = items[i]
            pixels = images_lib.decode_array(data, name, image_size, notes)
            if pixels.shape[:2] != shape:
                raise ImageFolderError(
                    f"{name}: is {pixels.shape[1]}x{pixels.shape[0]} but the others are "
                    f"{shape[1]}x{shape[0]}; images of mixed sizes need an image size "
                    "(--image-size N) to be resized and centre-cropped to"
                )
            out[i] = pixels

    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(fill, s) for s in range(0, len(items), 256)]
        try:
            for future in futures:
                future.result()
        except BaseException:
            stop.set()
            raise
    return out


def _check_memory(where: str, count: int, size: tuple[int, int], largest: tuple[int, int]) -> None:
    """Refuse, in one line, arrays of ``count`` images of ``size`` that do not fit in memory."""
    workers = min(8, os.cpu_count() or 1)
    needed = count * (size[0] * size[1] * 3 + 4) + workers * largest[0] * largest[1] * 4 * 2
    available = free_memory()
    if available is None:
        logger.info("%s: free memory unknown; decoding %d images (%s)", where, count, _gib(needed))
        return
    if needed > available:
        raise InsufficientMemoryError(
            f"{where}: {count} images of {size[0]}x{size[1]} need about {_gib(needed)} of memory "
            f"decoded, but only {_gib(available)} is free; use a smaller --image-size or a "
            "smaller set"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def _cache_path(plan: _Plan, cache_dir: str | None) -> str:
    folder = cache_dir or default_cache_dir()
    root_hash = hashlib.sha256(plan.root.encode()).hexdigest()[:12]
    key_hash = hashlib.sha256(json.dumps(plan.key).encode()).hexdigest()[:16]
    return os.path.join(folder, f"images-{root_hash}-{key_hash}.npz")


def _read_cache(cache: str, root: str) -> ImageSet | None:
    if not os.path.exists(cache):
        return None
    try:
        with np.load(cache, allow_pickle=False) as f:
            image_set = ImageSet(
                source=root,
                classes=tuple(str(c) for c in f["classes"]),
                train_images=f["train_images"],
                train_labels=f["train_labels"],
                test_images=f["test_images"],
                test_labels=f["test_labels"],
                mean=tuple(float(v) for v in f["mean"]),
                std=tuple(float(v) for v in f["std"]),
                from_cache=True,
                notes=tuple(str(n) for n in f["notes"]),
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        logger.warning("%s: unreadable image cache, decoding again (%s)", cache, err)
        return None
    if image_set.train_images.dtype != np.uint8 or image_set.test_images.dtype != np.uint8:
        return None
    return image_set


def _write_cache(cache: str, image_set: ImageSet) -> None:
    """Write ``cache`` atomically (temporary file, then rename) and drop its stale versions."""
    folder = os.path.dirname(cache)
    try:
        os.makedirs(folder, exist_ok=True)
        write_atomic(
            cache,
            lambda f: np.savez(
                f,
                classes=np.asarray(image_set.classes, str),
                train_images=image_set.train_images,
                train_labels=image_set.train_labels,
                test_images=image_set.test_images,
                test_labels=image_set.test_labels,
                mean=np.asarray(image_set.mean, np.float64),
                std=np.asarray(image_set.std, np.float64),
                notes=np.asarray(image_set.notes, str),
            ),
        )
    except OSError as err:
        logger.warning(
            "%s: could not write the image cache (%s); continuing without it", cache, err
        )
        return
    prefix = cache.rsplit("-", 1)[0]
    for stale in glob.glob(glob.escape(prefix) + "-*.npz"):
        if stale != cache:
            try:
                os.unlink(stale)
            except OSError:
                pass
