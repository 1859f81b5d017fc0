"""The command line: ``python -m sparsenet_jax.data prepare NAME --data-dir DIR``.

Preparing needs TensorFlow (``pip install 'sparsenet_jax[prepare]'``); reading the
prepared ``array_record`` data afterwards does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from sparsenet_jax.data.datasets import (
    DATASETS,
    IN_MEMORY,
    dataset_info,
    load_arrays,
    prepare_hint,
    resolve_data_dir,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sparsenet_jax.data")
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="download and prepare a dataset (array_record)")
    prepare.add_argument("name", help=", ".join(DATASETS))
    prepare.add_argument(
        "--data-dir", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
    )
    prepare.add_argument(
        "--manual-dir", help="ImageNet tar files (default: DATA_DIR/downloads/manual)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``prepare NAME``: download (ImageNet: from manual_dir) and prepare a dataset once."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        dataset_info(args.name)
    except ValueError as err:
        parser.error(str(err))
    if args.name == "digits":
        print("digits ships with scikit-learn: nothing to prepare.")
        return 0
    # tfds builds datasets with TensorFlow, and its builder code also imports importlib_resources.
    missing = [
        m for m in ("tensorflow", "importlib_resources") if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(
            f"error: preparing {args.name} needs TensorFlow (missing: {', '.join(missing)}); "
            "install it with: pip install 'sparsenet_jax[prepare]'",
            file=sys.stderr,
        )
        return 2
    root = resolve_data_dir(args.data_dir)
    manual_dir = args.manual_dir or os.path.join(root, "downloads", "manual")
    if args.name == "imagenet2012" and not all(
        os.path.exists(os.path.join(manual_dir, f))
        for f in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
    ):
        print(f"error: {prepare_hint(args.name, root)} (looked in {manual_dir})", file=sys.stderr)
        return 2
    _prepare(args.name, root, manual_dir)
    return 0


def _prepare(name: str, root: str, manual_dir: str) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=root)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    if name in IN_MEMORY:  # decode once now, so that training starts from the .npy cache
        for split in ("train", "test"):
            load_arrays(name, split, root)
    print(f"{name} prepared in {builder.data_dir}")
