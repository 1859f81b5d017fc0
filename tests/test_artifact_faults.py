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
import struct
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from conftest import load_reference
from sparsenet_jax.model import convert
from sparsenet_jax.tools import export

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


# ---------------------------------------------------------------------------
# .pth and .npz weights (items 6 and 7, and the odd entries)


def _reference_sd() -> dict[str, np.ndarray]:
    ref = load_reference("tiny_densenet_d13_k6_c10.npz")
    return {k[3:]: v for k, v in ref.items() if k.startswith("sd/")}


def _member_data_offsets(path: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Member name → (offset, size) of its stored bytes in the zip archive."""
    raw = path.read_bytes()
    out = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack(
                "<HH", raw[info.header_offset + 26 : info.header_offset + 30]
            )
            start = info.header_offset + 30 + name_len + extra_len
            out[info.filename] = (start, info.compress_size)
    return out


def _write_fake_pth(path: pathlib.Path) -> None:
    """A zip laid out like torch.save's, written without torch (its pickle is not loadable)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/data/0", np.arange(64, dtype=np.float32).tobytes())
        archive.writestr("archive/version", b"3\n")


def test_damaged_pth_zip_member_is_named_before_torch_is_needed(tmp_path):
    """issue 18 item 6: a bad CRC is refused naming the file and member, without torch."""
    path = tmp_path / "weights.pth"
    _write_fake_pth(path)
    start, size = _member_data_offsets(path)["archive/data/0"]
    data = bytearray(path.read_bytes())
    data[start + size // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(convert.CheckpointError) as err:
        convert.load_state_dict(path)
    message = _one_line(err.value)
    assert str(path) in message and "archive/data/0" in message


def test_pth_with_flipped_bytes_never_loads_changed_weights(tmp_path):
    """issue 18 item 6: one flipped byte in a .pth is refused (naming the member) or harmless.

    ``torch.load`` does not check the zip CRCs: 10 of 13 flips loaded with changed weights.
    """
    torch = pytest.importorskip("torch")
    sd = _reference_sd()
    original = tmp_path / "orig.pth"
    torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, original)
    offsets = _member_data_offsets(original)
    model = sj.create_model("densenet-13-6")
    expected = convert.load_pretrained(model, original)
    size = original.stat().st_size
    # A byte inside each member's data, and 13 spread over the whole file.
    members = {name: start + length // 2 for name, (start, length) in offsets.items() if length}
    spread = {f"offset {o}": o for o in np.linspace(0, size - 1, 13).astype(int).tolist()}
    for label, offset in {**members, **spread}.items():
        path = tmp_path / "flipped.pth"
        data = bytearray(original.read_bytes())
        data[offset] ^= 0x04
        path.write_bytes(bytes(data))
        try:
            got = convert.load_pretrained(model, path)
        except (convert.CheckpointError, ValueError) as err:
            message = _one_line(err)
            assert str(path) in message, (label, message)
            if label in members:
                assert label in message, (label, message)
            continue
        assert label not in members, f"{label}: a flipped data byte loaded"
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, expected)


def test_huge_stride0_entry_is_refused_by_shape_before_its_data_is_touched(monkeypatch):
    """issue 18 item 7: an entry of a size the model cannot have is refused unread.

    A stride-0 array of 93 GiB costs nothing until something reads it; the shape
    check comes first, so ``np.isfinite`` never sees it.
    """
    sd = _reference_sd()
    sd["features.conv0.weight"] = np.broadcast_to(np.float32(0), (25_000_000_000,))
    real_isfinite = np.isfinite

    def guarded_isfinite(a, *args, **kwargs):
        assert np.size(a) < 10**8, f"np.isfinite over {np.size(a)} elements"
        return real_isfinite(a, *args, **kwargs)

    monkeypatch.setattr(np, "isfinite", guarded_isfinite)
    with pytest.raises(ValueError) as err:
        convert.from_torch_state_dict(sj.create_model("densenet-13-6"), sd)
    message = _one_line(err.value)
    assert "mis-shaped: features.conv0.weight" in message and "25000000000" in message


def test_huge_stride0_pth_entry_is_refused_unread(tmp_path, monkeypatch):
    """issue 18 item 7: the 73 KB .pth asking for 93 GiB, through load_state_dict and load_pretrained."""
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v) for k, v in _reference_sd().items()}
    sd["features.conv0.weight"] = torch.zeros(1).expand(25_000_000_000)
    path = tmp_path / "huge.pth"
    torch.save(sd, path)
    assert path.stat().st_size < 200_000
    real_isfinite = np.isfinite

    def guarded_isfinite(a, *args, **kwargs):
        assert np.size(a) < 10**8, f"np.isfinite over {np.size(a)} elements"
        return real_isfinite(a, *args, **kwargs)

    monkeypatch.setattr(np, "isfinite", guarded_isfinite)
    model = sj.create_model("densenet-13-6")
    for load in (convert.load_state_dict, lambda p: convert.load_pretrained(model, p)):
        with pytest.raises(ValueError) as err:
            load(path)
        message = _one_line(err.value)
        assert str(path) in message and "features.conv0.weight" in message
        assert "93.1 GiB" in message


def test_bf16_pth_loads_as_float32(tmp_path):
    """issue 18 (noisy): a bfloat16 .pth entry is widened to float32 (exact), not a TypeError."""
    torch = pytest.importorskip("torch")
    sd = _reference_sd()
    path = tmp_path / "bf16.pth"
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}, path)
    loaded = convert.load_state_dict(path)
    weight = loaded["features.conv0.weight"]
    assert weight.dtype == np.float32
    expected = torch.from_numpy(sd["features.conv0.weight"]).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(weight, expected)
    variables = convert.load_pretrained(sj.create_model("densenet-13-6"), path)
    assert sj.count_params(variables) == 22_630


def _torch_odd_entry(torch, kind):
    if kind == "sparse":
        return torch.eye(4).to_sparse()
    if kind == "string":
        return "not a tensor"
    if kind == "complex":
        return torch.ones(16, dtype=torch.complex64)
    if kind == "list":
        return ["a", "b"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["sparse", "string", "complex", "list"])
def test_odd_pth_entry_is_one_line_naming_it(tmp_path, kind):
    """issue 18 (noisy): sparse, string-valued or complex .pth entries → one line naming the entry."""
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v) for k, v in _reference_sd().items()}
    sd["features.norm0.running_var"] = _torch_odd_entry(torch, kind)
    path = tmp_path / f"{kind}.pth"
    torch.save(sd, path)
    model = sj.create_model("densenet-13-6")
    for load in (convert.load_state_dict, lambda p: convert.load_pretrained(model, p)):
        with pytest.raises(convert.CheckpointError) as err:
            load(path)
        message = _one_line(err.value)
        assert str(path) in message and "features.norm0.running_var" in message
    with pytest.raises(convert.CheckpointError, match=r"features\.norm0\.running_var"):
        convert.from_torch_state_dict(model, sd)


@pytest.mark.parametrize(
    "value",
    [np.array(["abc", "def"]), np.ones(8, np.complex64), np.array(b"raw")],
    ids=["string", "complex", "bytes"],
)
def test_odd_npz_entry_is_one_line_naming_it(tmp_path, value):
    """issue 18 (noisy): string-valued or complex entries are refused, not loaded with a warning."""
    sd = _reference_sd()
    sd["features.conv0.weight"] = value
    path = tmp_path / "odd.npz"
    np.savez(path, **sd)
    model = sj.create_model("densenet-13-6")
    for load in (convert.load_state_dict, lambda p: convert.load_pretrained(model, p)):
        with pytest.raises(convert.CheckpointError) as err:
            load(path)
        message = _one_line(err.value)
        assert str(path) in message and "features.conv0.weight" in message
