"""A smaller packed image set: the first images of each class of a packed ``.npz``.

Usage (from the repository root)::

    python benchmarks/packed_subset.py ../shared/data/cifar10-jpeg-q75.npz /tmp/cifar-20k.npz \\
        --train-per-class 2000 --test-per-class 1000

The packed format is the CIFAR-10 q75 file's (``../shared/data/README.md``): ``classes``
and, per split, ``{split}_jpeg`` (the files end to end), ``{split}_offsets`` and
``{split}_labels``. The files are copied as they are, not re-encoded. Write the subset
outside the repository: nothing made from the shared file may be committed.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence

import numpy as np

Split = tuple[list[bytes], np.ndarray]  # the encoded files, their labels


def write_packed(path: pathlib.Path, classes: list[str], train: Split, test: Split) -> pathlib.Path:
    """Write a packed ``.npz`` of ``classes`` and the two splits' files and labels."""
    arrays: dict[str, np.ndarray] = {"classes": np.asarray(classes)}
    for split, (files, labels) in (("train", train), ("test", test)):
        arrays[f"{split}_jpeg"] = np.frombuffer(b"".join(files), np.uint8)
        arrays[f"{split}_offsets"] = np.cumsum([0, *map(len, files)]).astype(np.int64)
        arrays[f"{split}_labels"] = np.asarray(labels, np.uint8)
    np.savez(path, **arrays)
    return path


def packed_subset(
    source: pathlib.Path, out: pathlib.Path, train_per_class: int, test_per_class: int
) -> pathlib.Path:
    """Write the first ``train_per_class`` / ``test_per_class`` files of each class of
    ``source`` to ``out``; return ``out``.

    Raises:
      ValueError: a class has fewer files than asked for.
    """
    with np.load(source) as packed:
        classes = [str(c) for c in packed["classes"]]
        splits = []
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            buf, offsets, labels = (packed[f"{split}_{k}"] for k in ("jpeg", "offsets", "labels"))
            chosen = []
            for c, name in enumerate(classes):
                where = np.flatnonzero(labels == c)
                if len(where) < count:
                    raise ValueError(f"{source}: class {name} has {len(where)} {split} files")
                chosen.append(where[:count])
            picked = np.concatenate(chosen)
            files = [buf[offsets[i] : offsets[i + 1]].tobytes() for i in picked]
            splits.append((files, labels[picked]))
    return write_packed(out, classes, splits[0], splits[1])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=pathlib.Path, help="a packed .npz")
    parser.add_argument("out", type=pathlib.Path, help="the subset's .npz (outside the repo)")
    parser.add_argument("--train-per-class", type=int, required=True)
    parser.add_argument("--test-per-class", type=int, required=True)
    args = parser.parse_args(argv)
    packed_subset(args.source, args.out, args.train_per_class, args.test_per_class)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
