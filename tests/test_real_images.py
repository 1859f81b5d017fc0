"""Real images: fine-tuning from the command line, end to end, on folders built from CIFAR-10.

The folders are written at run time into temporary folders from the shared
``cifar10-jpeg-q75.npz`` (see ``image_folders.py``); every test here skips,
naming that file, when it is absent. Nothing made from it is kept.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

import numpy as np
import pytest

from image_folders import cifar_image_folder
from train_helpers import checkpoint_steps, cli_env, load_checkpoint

MODEL = "sparsenet-13-6"
CONV0 = "['params']['conv0']['kernel']"
CLASSIFIER = "['params']['classifier']['kernel']"


def folder_args(root: pathlib.Path, workdir: pathlib.Path, *extra: str) -> list[str]:
    """A tiny network on an image folder: seconds a run."""
    return [
        *("--dataset", "folder", "--data-dir", str(root), "--model", MODEL),
        *("--batch-size", "16", "--eval-batch-size", "20", "--epochs", "1"),
        *("--log-every-steps", "1", "--progress", "false", "--workdir", str(workdir)),
        *extra,
    ]


def train(args: list[str], cache_dir: pathlib.Path, image_cache: pathlib.Path):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(cache_dir, SPARSENET_JAX_CACHE=str(image_cache)),
    )


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A 10-class and a 5-class folder (PNG, 16 train and 4 test images a class)."""
    root = tmp_path_factory.mktemp("folders")
    ten = cifar_image_folder(root / "ten", per_class=16, test_per_class=4, num_classes=10)
    five = cifar_image_folder(root / "five", per_class=16, test_per_class=4, num_classes=5)
    return ten, five, tmp_path_factory.mktemp("image_cache")


@pytest.fixture(scope="module")
def pretrained(folders, cache_dir, tmp_path_factory):
    """Workdir A: a few steps on the 10-class folder."""
    ten, _, image_cache = folders
    workdir = tmp_path_factory.mktemp("a") / "run"
    result = train(folder_args(ten, workdir, "--max-steps", "4"), cache_dir, image_cache)
    assert result.returncode == 0, result.stderr
    assert checkpoint_steps(workdir) == [4]
    return workdir


def _check_fine_tuned(result, workdir: pathlib.Path, source: dict[str, np.ndarray], width: int):
    """One step at a negligible lr: every kept parameter is the source's, the head is new.

    (BatchNorm's running statistics move whatever the lr: their shapes are checked.)
    """
    assert result.returncode == 0, result.stderr
    replaced = [line for line in result.stderr.splitlines() if "re-initialised" in line]
    assert len(replaced) == 1, result.stderr
    assert replaced[0].startswith("re-initialised for 5 classes: ")
    assert (
        f"classifier/bias (10,) → (5,), classifier/kernel ({width}, 10) → ({width}, 5)"
        in (replaced[0])
    )
    assert replaced[0].endswith("every other weight is kept")
    tuned = load_checkpoint(workdir, 1)
    assert tuned[CLASSIFIER].shape == (width, 5)
    kept = [k for k in source if k.startswith("['params']") and "classifier" not in k]
    assert CONV0 in kept and len(kept) > 10
    for key in kept:
        np.testing.assert_allclose(tuned[key], source[key], atol=1e-6, err_msg=key)
    for key in source:
        if key.startswith("['batch_stats']"):
            assert tuned[key].shape == source[key].shape, key


def test_fine_tune_from_a_workdir_on_another_folder(folders, pretrained, cache_dir, tmp_path):
    """``--init-from A`` on a 5-class folder: the head is replaced, everything else is A's."""
    import sparsenet_jax as sj
    from sparsenet_jax.model.network import init_variables

    _, five, image_cache = folders
    source = load_checkpoint(pretrained, 4)
    width = source[CLASSIFIER].shape[0]
    workdir = tmp_path / "b"
    args = folder_args(five, workdir, "--init-from", str(pretrained), "--max-steps", "1")
    result = train([*args, "--lr", "1e-9"], cache_dir, image_cache)
    _check_fine_tuned(result, workdir, source, width)
    assert "initialised from step 4 of " in result.stderr
    # A's weights are not those a fresh run starts from: the check above has teeth.
    fresh = init_variables(sj.create_model(MODEL, num_classes=5), 0, (1, 32, 32, 3))
    assert not np.allclose(fresh["params"]["conv0"]["kernel"], source[CONV0], atol=1e-3)

    # A checkpoint folder works too, and an ordinary lr then trains from there.
    chosen = tmp_path / "c"
    args = folder_args(five, chosen, "--init-from", str(pretrained / "checkpoints" / "4"))
    result = train([*args, "--max-steps", "3"], cache_dir, image_cache)
    assert result.returncode == 0, result.stderr
    assert checkpoint_steps(chosen) == [3]


def test_fine_tune_from_an_official_pth_file(folders, cache_dir, tmp_path):
    """``--init-from weights.pth`` written in the official PyTorch format (10 classes)."""
    torch = pytest.importorskip("torch")
    import sparsenet_jax as sj
    from sparsenet_jax.model.convert import to_torch_state_dict
    from sparsenet_jax.model.network import init_variables

    _, five, image_cache = folders
    variables = init_variables(sj.create_model(MODEL, num_classes=10), 7, (1, 32, 32, 3))
    state_dict = to_torch_state_dict(variables)
    path = tmp_path / "official.pth"
    torch.save({k: torch.from_numpy(v.copy()) for k, v in state_dict.items()}, path)
    source = {
        f"['{collection}']" + "".join(f"['{p}']" for p in keys): np.asarray(leaf)
        for collection in ("params", "batch_stats")
        for keys, leaf in _flatten(variables[collection]).items()
    }
    width = source[CLASSIFIER].shape[0]
    workdir = tmp_path / "b"
    args = folder_args(five, workdir, "--init-from", str(path), "--max-steps", "1")
    result = train([*args, "--lr", "1e-9"], cache_dir, image_cache)
    _check_fine_tuned(result, workdir, source, width)


def _flatten(tree, prefix=()):
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, (*prefix, key)))
        else:
            out[(*prefix, key)] = value
    return out
