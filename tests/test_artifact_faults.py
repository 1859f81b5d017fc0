"""Artifacts verified before they are trusted: exported networks and ``.pth`` weights (issue 18).

Each test names the issue-18 item it covers. Tests that need PyTorch have
``pth`` or ``torch`` in their names (CI runs them in its PyTorch stage) and skip
without it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from sparsenet_jax import export

pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")


def _one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------
# Exported artifacts (items 5 and 10, and the stray temporary file)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Two small CPU-only artifacts of the same network with other weights, and their model."""
    model = sj.create_model("sparsenet-13-6")
    folder = tmp_path_factory.mktemp("artifacts")
    paths = []
    for seed in (0, 1):
        variables = sj.init_variables(model, seed)
        path = folder / f"model{seed}.jax"
        meta = {"model": "sparsenet-13-6", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
        export.export_model(model, variables, path, ("cpu",), metadata=meta)
        paths.append(path)
    return model, paths


def _copy(path: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    shutil.copy(path, folder / path.name)
    shutil.copy(f"{path}.json", folder / f"{path.name}.json")
    return folder / path.name


def test_sidecar_records_the_artifact_identity(artifacts):
    """issue 18 item 5: the sidecar names the artifact's sha256, model, input shape, mean, std."""
    _, (path, _) = artifacts
    info = json.loads(pathlib.Path(f"{path}.json").read_text())
    import hashlib

    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["model"] == "sparsenet-13-6"
    assert info["input_shape"] == [None, 32, 32, 3]
    assert info["mean"] == [0.5, 0.5, 0.5] and info["std"] == [0.25, 0.25, 0.25]
    loaded = sj.load_exported(path)
    assert loaded.metadata["model"] == "sparsenet-13-6"
    assert loaded.metadata["mean"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("where", [0, 1, 100, 1262, 0.25, 0.5, 0.75, -1])
def test_a_flipped_byte_is_refused_at_load_in_one_line(artifacts, tmp_path, where):
    """issue 18 item 5: one flipped byte anywhere → one line naming the file, at load time.

    The bytes are checked before jax sees them, so no flip can reach the
    StableHLO reader (where one offset hung the first call for over 20 minutes).
    """
    _, (original, _) = artifacts
    path = _copy(original, tmp_path)
    data = bytearray(path.read_bytes())
    offset = where if isinstance(where, int) else int(where * len(data))
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        sj.load_exported(path)
    message = _one_line(err.value)
    assert str(path) in message and "sha256" in message


def test_a_truncated_artifact_is_refused_at_load(artifacts, tmp_path):
    """issue 18 item 5: a truncated artifact is refused in one line naming it."""
    _, (original, _) = artifacts
    path = _copy(original, tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=re.escape(str(path))) as err:
        sj.load_exported(path)
    _one_line(err.value)


def test_a_swapped_sidecar_is_refused(artifacts, tmp_path):
    """issue 18 item 5: the sidecar of another artifact does not vouch for this one."""
    _, (first, second) = artifacts
    path = _copy(first, tmp_path)
    shutil.copy(f"{second}.json", f"{path}.json")
    with pytest.raises(ValueError) as err:
        sj.load_exported(path)
    message = _one_line(err.value)
    assert str(path) in message and "another artifact" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("mean", [0.1, 0.5, 0.5]), ("std", [1.0, 1.0, 1.0]), ("model", "densenet-13-6")],
)
def test_an_edited_sidecar_is_refused(artifacts, tmp_path, field, value):
    """issue 18 item 5: the sidecar's identity covers model, input shape, mean and std."""
    _, (original, _) = artifacts
    path = _copy(original, tmp_path)
    sidecar = pathlib.Path(f"{path}.json")
    info = json.loads(sidecar.read_text())
    info[field] = value
    sidecar.write_text(json.dumps(info))
    with pytest.raises(ValueError) as err:
        sj.load_exported(path)
    message = _one_line(err.value)
    assert str(sidecar) in message and "identity" in message


@pytest.mark.parametrize("damage", ["missing", "garbage", "no_sha256"])
def test_an_unusable_sidecar_is_refused(artifacts, tmp_path, damage):
    """issue 18 item 5: without a sidecar that vouches for it, the artifact is not loaded."""
    _, (original, _) = artifacts
    path = _copy(original, tmp_path)
    sidecar = pathlib.Path(f"{path}.json")
    if damage == "missing":
        sidecar.unlink()
    elif damage == "garbage":
        sidecar.write_text("{not json")
    else:
        info = json.loads(sidecar.read_text())
        del info["sha256"]
        sidecar.write_text(json.dumps(info))
    with pytest.raises(ValueError) as err:
        sj.load_exported(path)
    message = _one_line(err.value)
    assert str(path) in message


def test_deserialize_is_not_reached_for_a_corrupt_artifact(artifacts, tmp_path, monkeypatch):
    """issue 18 item 5: the checksum is verified before any byte reaches jax."""
    _, (original, _) = artifacts
    path = _copy(original, tmp_path)
    data = bytearray(path.read_bytes())
    data[1262] ^= 0x10
    path.write_bytes(bytes(data))
    seen = []
    monkeypatch.setattr(jax.export, "deserialize", lambda b: seen.append(b))
    with pytest.raises(ValueError):
        sj.load_exported(path)
    assert seen == []


@pytest.mark.parametrize(
    "bad", [np.nan, np.inf, -np.inf, "overflow"], ids=["nan", "inf", "-inf", "overflow"]
)
def test_exported_callable_refuses_nonfinite_pixels(artifacts, bad):
    """issue 18 item 10: non-finite pixels → one-line ValueError, checked on the host.

    XLA:CPU drops NaN inside a fused mean of a ReLU, so the artifact itself
    would return confident, finite logits.
    """
    _, (path, _) = artifacts
    loaded = sj.load_exported(path)
    x = np.zeros((3, 32, 32, 3), np.float64)
    x[1, 4, 5, 2] = 1e300 if bad == "overflow" else bad  # 1e300 is Inf as float32
    with np.errstate(over="ignore"):
        on_device = jnp.asarray(x, jnp.float32)
    for images in (x, on_device):
        with pytest.raises(ValueError) as err:
            loaded(images)
        message = _one_line(err.value)
        assert "non-finite" in message and "image 1" in message
    x[1, 4, 5, 2] = 0.0
    assert np.isfinite(np.asarray(loaded(x))).all()


@pytest.mark.parametrize("how", ["existing_dir", "replace_fails"])
def test_export_out_leaves_no_stray_tmp_file(artifacts, tmp_path, monkeypatch, how):
    """issue 18 (noisy): ``export --out DIR`` leaves no ``DIR.tmp-PID`` file behind."""
    model, _ = artifacts
    variables = sj.init_variables(model, 0)
    out = tmp_path / "out"
    if how == "existing_dir":
        out.mkdir()
    else:

        def failing_replace(src, dst):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises((ValueError, OSError)) as err:
        export.export_model(model, variables, out, ("cpu",))
    _one_line(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if how == "existing_dir" else [])


def test_export_cli_out_dir_is_one_line_and_leaves_nothing(tmp_path, capsys):
    """issue 18 (noisy): the CLI refuses ``--out DIR`` in one line, before any work, no trace."""
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text(
        json.dumps({"model": "sparsenet-13-6", "dataset": "digits"})
    )
    out = tmp_path / "out"
    out.mkdir()
    assert export.main(["--workdir", str(workdir), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a directory" in err and str(out) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "w"]
    assert list(out.iterdir()) == []
