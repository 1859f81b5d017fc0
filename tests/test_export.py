"""The exported network: same logits as Flax, loaded without Flax; the CLI on a trained workdir."""

from __future__ import annotations

import hashlib
import json
import pathlib
import re
import subprocess
import sys

import chex
import jax
import jax.export
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from sparsenet_jax.tools import export
from sparsenet_jax.tools.artifact import identity_digest
from train_helpers import cli_env, run_train

pytest.importorskip("flatbuffers", reason="jax.export serialization needs flatbuffers")

# Runs in a fresh interpreter: load the artifact with JAX only, run it, save the logits.
_LOADER = """
import sys
import numpy as np
{load}
for name in sys.argv[2:]:
    np.save(name + ".logits.npy", np.asarray(predict(np.load(name))))
assert "flax" not in sys.modules, sorted(m for m in sys.modules if m.startswith("flax"))
print("flax-free")
"""
_LOADS = {
    "package": "from sparsenet_jax.tools.artifact import load_exported\npredict = load_exported(sys.argv[1])",
    "jax_only": (
        "import jax\nimport jax.export\n"
        "predict = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read())).call"
    ),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = sj.create_model("sparsenet-13-6")
    variables = sj.init_variables(model, 3)
    # Non-trivial BatchNorm statistics, so eval mode is really what is exported.
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: a + 0.1 * jnp.arange(a.size, dtype=a.dtype) / a.size, variables["batch_stats"]
    )
    path = tmp_path_factory.mktemp("export") / "model.jax"
    result = export.export_model(model, variables, path)
    return model, variables, path, result


def _run_loader(path: pathlib.Path, inputs: list[pathlib.Path], how: str) -> None:
    code = _LOADER.format(load=_LOADS[how])
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), *map(str, inputs)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "flax-free" in done.stdout


@pytest.mark.parametrize("how", ["package", "jax_only"])
def test_loaded_artifact_matches_flax_without_flax(tiny, tmp_path, how):
    model, variables, path, _ = tiny
    inputs = []
    for batch in (1, 7):
        x = np.asarray(jax.random.normal(jax.random.key(batch), (batch, 32, 32, 3)))
        inputs.append(tmp_path / f"x{batch}.npy")
        np.save(inputs[-1], x)
    _run_loader(path, inputs, how)
    for name in inputs:
        expected = jax.jit(model.apply)(variables, np.load(name))
        got = np.load(f"{name}.logits.npy")
        chex.assert_shape(got, expected.shape)
        chex.assert_trees_all_close(got, expected, atol=1e-5, rtol=1e-5)


def test_artifact_platforms_and_metadata(tiny):
    _, _, path, result = tiny
    assert result.platforms == ("cpu", "cuda", "tpu"), result.notes
    info = json.loads(pathlib.Path(f"{path}.json").read_text())
    assert info["input_shape"] == [None, 32, 32, 3]
    assert info["platforms"] == ["cpu", "cuda", "tpu"]
    loaded = sj.load_exported(path)
    assert loaded.image_shape == (32, 32, 3)
    assert loaded.platforms == ("cpu", "cuda", "tpu")


def test_loaded_artifact_refuses_pixels_and_other_shapes(tiny):
    loaded = sj.load_exported(tiny[2])
    with pytest.raises(TypeError, match="255"):
        loaded(np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\(N, 32, 32, 3\)"):
        loaded(np.zeros((2, 16, 16, 3), np.float32))


def test_not_an_artifact(tmp_path):
    with pytest.raises(ValueError, match=r"x\.jax: no such file"):
        sj.load_exported(tmp_path / "x.jax")  # not "its sidecar is missing"
    (tmp_path / "x.jax").write_bytes(b"not stablehlo")
    with pytest.raises(ValueError, match=r"its sidecar .*x\.jax\.json is missing"):
        sj.load_exported(tmp_path / "x.jax")
    # A sidecar that vouches for the bytes: they reach jax, which refuses them.
    info = {"sha256": hashlib.sha256(b"not stablehlo").hexdigest()}
    info["identity"] = identity_digest(info)
    (tmp_path / "x.jax.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"is not a jax\.export artifact"):
        sj.load_exported(tmp_path / "x.jax")


def test_a_platform_that_fails_is_left_out_with_a_note(tiny, tmp_path, monkeypatch):
    model, variables, _, _ = tiny
    real_export = jax.export.export

    def export_without_tpu(fn, platforms):
        if "tpu" in platforms:
            raise RuntimeError("no TPU lowering in this build")
        return real_export(fn, platforms=platforms)

    monkeypatch.setattr(jax.export, "export", export_without_tpu)
    result = export.export_model(model, variables, tmp_path / "m.jax", ("cpu", "tpu", "cuda"))
    assert result.platforms == ("cpu", "cuda")
    assert result.notes == ("left out tpu: RuntimeError: no TPU lowering in this build",)
    assert sj.load_exported(tmp_path / "m.jax").platforms == ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown platform"):
        export.export_model(model, variables, tmp_path / "m.jax", ("cpu", "gpu"))


def test_missing_flatbuffers_is_one_clear_error(tiny, tmp_path, monkeypatch):
    model, variables, _, _ = tiny
    monkeypatch.setitem(sys.modules, "flatbuffers", None)
    with pytest.raises(ImportError, match="pip install flatbuffers"):
        export.export_model(model, variables, tmp_path / "m.jax")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("none", "no such workdir"),
        ("empty", "has no config.json"),
        ("config", "no checkpoint in"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, setup, message):
    workdir = tmp_path / "w"
    if setup != "none":
        workdir.mkdir()
    if setup == "config":
        (workdir / "config.json").write_text(
            json.dumps({"model": "sparsenet-13-6", "dataset": "digits"})
        )
    assert export.main(["--workdir", str(workdir), "--out", str(tmp_path / "m.jax")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "m.jax").exists()


@pytest.mark.slow
def test_cli_exports_a_trained_workdir(tmp_path):
    workdir, out = tmp_path / "w", tmp_path / "model.jax"
    trained = run_train(workdir, "--max-steps", "2", "--progress", "false")
    assert trained.returncode == 0, trained.stderr[-2000:]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparsenet_jax.export",
            "--workdir",
            str(workdir),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"wrote {out} from step 2" in done.stdout

    from sparsenet_jax.training.checkpoints import Checkpoints

    checkpoints = Checkpoints(workdir)
    restored = checkpoints.restore()  # the raw tree, read-only and verified
    checkpoints.close()
    assert restored is not None
    state, step = restored
    assert step == 2
    model = sj.create_model("sparsenet-13-6", in_channels=1)
    variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
    x = jax.random.normal(jax.random.key(0), (5, 32, 32, 1))
    chex.assert_trees_all_close(
        sj.load_exported(out)(x), jax.jit(model.apply)(variables, x), atol=1e-5, rtol=1e-5
    )
    info = json.loads(pathlib.Path(f"{out}.json").read_text())
    assert info["dataset"] == "digits" and info["step"] == 2 and info["mean"] == [0.3058]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """A --seeds 2 workdir, written as the trainer writes one: config.json and a checkpoint."""
    from sparsenet_jax.training import config as config_lib
    from sparsenet_jax.training import identity
    from sparsenet_jax.training.build import build_run
    from sparsenet_jax.training.checkpoints import Checkpoints

    workdir = tmp_path_factory.mktemp("seeds") / "w"
    workdir.mkdir()
    values = {"model": "sparsenet-7-4", "batch_size": 32, "seed": 4, "seeds": 2}
    cfg = config_lib.from_dict({**config_lib.RECIPES["digits"], **values, "workdir": str(workdir)})
    run = build_run(cfg, jax.devices("cpu")[:1])
    state = run.init_state()
    identity.record(workdir, cfg, run.info)
    checkpoints = Checkpoints(workdir)
    checkpoints.save(state, force=True)
    checkpoints.wait()
    checkpoints.close()
    return workdir, run.model, jax.device_get(state)


def test_seed_index_exports_that_replica_and_the_sidecar_names_its_seed(
    two_seeds, tmp_path, capsys
):
    from sparsenet_jax.training import replicas

    workdir, model, state = two_seeds
    out = tmp_path / "m.jax"
    argv = ["--workdir", str(workdir), "--out", str(out), "--platforms", "cpu"]
    assert export.main([*argv, "--seed-index", "1"]) == 0
    assert f"wrote {out} from step 0 of seed 5 (one of 2) for cpu" in capsys.readouterr().out
    info = json.loads(pathlib.Path(f"{out}.json").read_text())
    assert (info["seed"], info["seed_index"], info["seeds"]) == (5, 1, 2)
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 1))
    logits = sj.load_exported(out)(x)
    for index, same in ((1, True), (0, False)):
        mine = replicas.select(state, index, 2)
        variables = {"params": mine.params, "batch_stats": mine.batch_stats}
        expected = jax.jit(model.apply)(variables, x)
        assert np.allclose(logits, expected, atol=1e-5, rtol=1e-5) is same, index


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (None, r"w holds 2 networks \(--seeds 2\): pass --seed-index 0 … 1 to choose"),
        ("2", r"--seed-index 2: .*w holds 2 seeds, index 0 … 1"),
        ("-1", r"--seed-index -1: .*w holds 2 seeds, index 0 … 1"),
    ],
)
def test_a_seeds_workdir_needs_a_seed_index_in_range(tmp_path, capsys, index, message):
    workdir, out = tmp_path / "w", tmp_path / "m.jax"
    workdir.mkdir()
    saved = {"model": "sparsenet-13-6", "dataset": "digits", "seeds": 2}
    (workdir / "config.json").write_text(json.dumps(saved))
    argv = ["--workdir", str(workdir), "--out", str(out)]
    assert export.main(argv + ([] if index is None else ["--seed-index", index])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not out.exists()


def test_a_one_seed_workdir_takes_only_seed_index_0(tmp_path, capsys):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text(
        json.dumps({"model": "sparsenet-13-6", "dataset": "digits"})
    )
    argv = ["--workdir", str(workdir), "--out", str(tmp_path / "m.jax")]
    assert export.main([*argv, "--seed-index", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a run of one seed; only --seed-index 0 applies" in err
    assert export.main([*argv, "--seed-index", "0"]) == 1  # accepted: on to the checkpoints
    assert "no checkpoint in" in capsys.readouterr().err
