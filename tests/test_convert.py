from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from conftest import LARGE_REFERENCES, all_references, load_reference, reference_path
from sparsenet_jax import convert


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
