from __future__ import annotations

import logging
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from conftest import LARGE_REFERENCES, all_references, load_reference, reference_path
from sparsenet_jax.model import convert


def _state_dict(ref: dict[str, np.ndarray], prefix: str = "sd/") -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in ref.items() if k.startswith(prefix)}


@pytest.mark.parametrize(
    ("filename", "name", "classes"),
    [
        pytest.param(*ref, marks=pytest.mark.slow) if ref[0] in LARGE_REFERENCES else ref
        for ref in all_references()
    ],
)
def test_reference_logits(filename, name, classes):
    ref = load_reference(filename)
    model = sj.create_model(name, num_classes=classes)
    variables = convert.from_torch_state_dict(model, _state_dict(ref))
    x = jnp.asarray(ref["x"].transpose(0, 2, 3, 1))  # NCHW → NHWC
    logits_eval = jax.jit(model.apply)(variables, x)
    logits_train, _ = jax.jit(lambda v, a: model.apply(v, a, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    for ours, key in ((logits_eval, "logits_eval"), (logits_train, "logits_train")):
        scale = np.abs(ref[key]).max()
        assert np.abs(np.asarray(ours) - ref[key]).max() <= 1e-4 * scale, key


def test_load_pretrained_npz_with_prefix():
    path = reference_path("tiny_densenet_d13_k6_c10.npz")
    model = sj.create_model("densenet-13-6")
    variables = convert.load_pretrained(model, path, prefix="sd/")
    assert sj.count_params(variables) == 22_630
    assert set(variables) == {"params", "batch_stats"}


def test_layout_is_transposed():
    ref = load_reference("tiny_densenet_d13_k6_c10.npz")
    model = sj.create_model("densenet-13-6")
    variables = convert.from_torch_state_dict(model, _state_dict(ref))
    np.testing.assert_array_equal(
        variables["params"]["conv0"]["kernel"],
        ref["sd/features.conv0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["params"]["classifier"]["kernel"], ref["sd/classifier.linear.weight"].T
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["norm_last"]["var"], ref["sd/features.norm_last.running_var"]
    )


def test_bad_state_dict_lists_every_problem():
    ref = load_reference("tiny_densenet_d13_k6_c10.npz")
    sd = _state_dict(ref)
    del sd["features.norm_last.bias"]
    sd["features.extra.weight"] = np.zeros(3)
    sd["classifier.linear.weight"] = np.zeros((11, 66), np.float32)
    model = sj.create_model("densenet-13-6")
    with pytest.raises(ValueError) as err:
        convert.from_torch_state_dict(model, sd)
    message = str(err.value)
    assert "1 missing: features.norm_last.bias" in message
    assert "1 unexpected: features.extra.weight" in message
    assert "1 mis-shaped: classifier.linear.weight" in message


def test_wrong_model_for_checkpoint():
    ref = load_reference("tiny_sparsenet_d25_k6_c10.npz")
    with pytest.raises(ValueError, match=r"unexpected: features\.dense-stage-0\.block-4"):
        convert.from_torch_state_dict(sj.create_model("densenet-13-6"), _state_dict(ref))


def test_data_parallel_prefix_and_torch_like_tensors():
    ref = load_reference("tiny_densenet_d13_k6_c10.npz")

    class FakeTensor:  # what the converter needs of a torch tensor
        def __init__(self, a):
            self.a = a

        def detach(self):
            return self

        def cpu(self):
            return self

        def numpy(self):
            return self.a

    sd = {"module." + k: FakeTensor(v) for k, v in _state_dict(ref).items()}
    variables = convert.from_torch_state_dict(sj.create_model("densenet-13-6"), sd)
    assert sj.count_params(variables) == 22_630


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        convert.load_state_dict(tmp_path / "nope.npz")
    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        convert.load_state_dict(tmp_path / "w.bin")
    np.savez(tmp_path / "w.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="no keys start with"):
        convert.load_state_dict(tmp_path / "w.npz", prefix="sd/")


def test_npz_with_pickled_object_is_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", payload=np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        convert.load_state_dict(tmp_path / "evil.npz")


# ---------------------------------------------------------------------------
# Weights that cannot work are refused, naming the keys or the file


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("features.conv0.weight", np.nan, "NaN or Inf values in features.conv0.weight"),
        ("classifier.linear.bias", np.inf, "NaN or Inf values in classifier.linear.bias"),
        (
            "features.norm_last.running_var",
            -1.0,
            "negative BatchNorm running variances in features.norm_last.running_var",
        ),
    ],
)
def test_nonfinite_or_negative_variance_weights_are_refused(tmp_path, key, value, message):
    sd = _state_dict(load_reference("tiny_densenet_d13_k6_c10.npz"))
    sd[key] = sd[key].copy()
    sd[key].flat[1] = value
    model = sj.create_model("densenet-13-6")
    with pytest.raises(convert.CheckpointError, match=re.escape(message)):
        convert.from_torch_state_dict(model, sd)
    np.savez(tmp_path / "bad.npz", **sd)
    for load in (convert.load_state_dict, lambda p: convert.load_pretrained(model, p)):
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            load(tmp_path / "bad.npz")
        assert str(tmp_path / "bad.npz") in str(err.value)


def test_every_bad_key_is_named():
    sd = _state_dict(load_reference("tiny_densenet_d13_k6_c10.npz"))
    bad = sorted(k for k in sd if k.endswith("running_var"))
    for key in bad:
        sd[key] = -sd[key]
    with pytest.raises(convert.CheckpointError) as err:
        convert.check_weights(sd, "x")
    assert f"and {len(bad) - convert._MAX_LISTED} more" in str(err.value)
    assert all(k in str(err.value) for k in bad[: convert._MAX_LISTED])


@pytest.mark.parametrize("damage", ["truncated", "not_zip", "empty", "corrupt_member"])
def test_unreadable_npz_is_one_error_naming_the_file(tmp_path, damage):
    path = tmp_path / "weights.npz"
    np.savez_compressed(path, **{"a": np.arange(4096, dtype=np.float32)})
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_zip":
        path.write_text("<html>404 Not Found</html>")
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # flip bytes inside the compressed member, keep the zip directory
        middle = len(data) // 3
        path.write_bytes(
            data[:middle]
            + bytes(b ^ 0xFF for b in data[middle : middle + 64])
            + data[middle + 64 :]
        )
    with pytest.raises(convert.CheckpointError, match=re.escape(str(path))):
        convert.load_state_dict(path)


def test_load_pretrained_with_another_num_classes(caplog):
    path = reference_path("tiny_densenet_d13_k6_c10.npz")
    model = sj.create_model("densenet-13-6", num_classes=5)  # the file has 10 classes
    with pytest.raises(ValueError, match=r"mis-shaped: classifier\.linear"):
        convert.load_pretrained(model, path, prefix="sd/")
    with caplog.at_level(logging.WARNING, logger="sparsenet_jax.model.finetune"):
        variables = convert.load_pretrained(model, path, prefix="sd/", num_classes=5)
    assert "classifier/kernel (66, 10) → (66, 5)" in caplog.text
    full = convert.load_pretrained(sj.create_model("densenet-13-6"), path, prefix="sd/")
    chex.assert_trees_all_equal(variables["params"]["conv0"], full["params"]["conv0"])
    chex.assert_trees_all_equal(variables["batch_stats"], full["batch_stats"])
    chex.assert_shape(variables["params"]["classifier"]["kernel"], (66, 5))


def test_to_torch_state_dict_inverts_the_conversion():
    sd = _state_dict(load_reference("tiny_sparsenet_bc_d46_k6_c10.npz"))
    variables = convert.from_torch_state_dict(sj.create_model("sparsenet-bc-46-6"), sd)
    back = convert.to_torch_state_dict(variables)
    expected = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert sorted(back) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)
