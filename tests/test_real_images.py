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

from image_folders import cifar_image_folder, cifar_npz, packed_subset
from train_helpers import checkpoint_steps, cli_env, load_checkpoint, read_metrics

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


def train(
    args: list[str], cache_dir: pathlib.Path, image_cache: pathlib.Path, optimised: bool = False
):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "sparsenet_jax.train", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(cache_dir, optimised, SPARSENET_JAX_CACHE=str(image_cache)),
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


@pytest.mark.slow  # three training runs: 139 s on a busy machine (load 12), about 45 s quiet
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


# One training run: 25-30 s; the slow job (CI also runs it with the PyTorch tests).
@pytest.mark.slow
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


# ---------------------------------------------------------------------------
# Real learning on CIFAR-10


def cifar_subset(path: pathlib.Path, train_per_class: int, test_per_class: int) -> pathlib.Path:
    """A packed .npz of the first images of each class of the CIFAR-10 q75 file (its own JPEGs)."""
    return packed_subset(cifar_npz(), path, train_per_class, test_per_class)


# The learning test's run: sparsenet-13-8 (24k parameters), 2 epochs of a 10,000-image
# subset (1,000 a class) in batches of 64 (312 steps), cosine from lr 0.1; tested on
# 2,000 images (200 a class).
LEARNING_ARGS = [
    *("--model", "sparsenet-13-8", "--batch-size", "64", "--epochs", "2"),
    *("--lr", "0.1", "--lr-schedule", "cosine", "--eval-batch-size", "500"),
    *("--log-every-steps", "50", "--progress", "false"),
]
LEARNING_SUBSET = (1000, 200)
LEARNING_BOUND = 0.30


@pytest.mark.slow
def test_learns_real_cifar10(cache_dir, tmp_path):
    """A small budget on real CIFAR-10 images reaches a test accuracy far above chance (10%).

    The run (``LEARNING_ARGS``): 312 steps of sparsenet-13-8 on a 10,000-image subset,
    tested on 2,000 images; decoding the subset and compiling are part of the budget.

    Measured 2026-11-27 on the 2-core development machine, busy machine (load average
    about 20: seven runs side by side with other developers' jobs; each took about 20 min
    there, which says nothing about a quiet machine), with a throwaway script that ran
    this configuration in-process and broke it by monkeypatching (no hooks in the
    package). Test accuracy after epochs 1 and 2:

    =======================================================  =============  ==========
    run                                                      epoch 1        epoch 2
    =======================================================  =============  ==========
    as is, seed 0 / 1 / 2                                    36.2/37.2/36.3 41.9/42.2/42.9
    train labels shuffled (seed 0)                           11.1           9.8
    test labels offset by one (label + 1 mod 10)             5.3            4.5
    lr stuck at 0 (BatchNorm statistics still move)          14.3           14.2
    no normalisation, train and test                         27.2           43.8
    normalised in training, not in testing                   10.6           12.3
    =======================================================  =============  ==========

    The bound, 30%, is 12 points below the worst seed and 16 above the best
    breakage that it catches. Leaving out normalisation altogether is *not*
    caught, and no accuracy bound could catch it: every input first meets the stem
    convolution and then a BatchNorm, which absorbs the pixels' scale and offset, so
    the un-normalised run learns as well (43.8%). What does matter, train and test
    normalised differently, is caught (12.3%). The last run, alone beside the other
    developers' jobs (load about 10, busy machine), took 293 s with the decoded subset
    cached and no compilation cache; the test also decodes its 12,000 JPEGs.
    """
    subset = cifar_subset(tmp_path / "subset.npz", *LEARNING_SUBSET)
    workdir = tmp_path / "run"
    args = ["--dataset", "folder", "--data-dir", str(subset), "--workdir", str(workdir)]
    # At XLA's default optimisation: 312 steps, where -O0 code runs several times slower.
    result = train([*args, *LEARNING_ARGS], cache_dir, tmp_path / "image_cache", optimised=True)
    assert result.returncode == 0, result.stderr
    tests = [r for r in read_metrics(workdir) if r.get("split") == "test"]
    assert [r["epoch"] for r in tests] == [1.0, 2.0]
    assert tests[-1]["accuracy"] >= LEARNING_BOUND, tests
