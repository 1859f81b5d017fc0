from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sparsenet_jax as sj
from conftest import LARGE_REFERENCES, TINY_REFERENCES, load_reference
from sparsenet_jax.model import convert
from sparsenet_jax.training import mesh as mesh_lib
from sparsenet_jax.training import optim, steps


def _reference_states(filename: str, name: str, classes: int):
    """The reference file, our model, and the reference's variables (converted to ours)
    before and after its one SGD step."""
    ref = load_reference(filename)
    model = sj.create_model(name, num_classes=classes)
    before = convert.from_torch_state_dict(
        model, {k[3:]: v for k, v in ref.items() if k.startswith("sd/")}
    )
    after = convert.from_torch_state_dict(
        model, {k[5:]: v for k, v in ref.items() if k.startswith("step/")}
    )
    return ref, model, before, after


def _reference_batch(ref) -> dict[str, jax.Array]:
    return {"image": jnp.asarray(ref["x"].transpose(0, 2, 3, 1)), "label": jnp.asarray(ref["y"])}


def _one_reference_step(filename: str, name: str, classes: int):
    ref, model, variables, after = _reference_states(filename, name, classes)
    tx = optim.make_optimizer(0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    state = steps.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
    )
    train_step = jax.jit(steps.make_train_step(model, tx))
    new_state, metrics = train_step(state, _reference_batch(ref))
    return ref, variables, new_state, after, metrics


def _assert_updates_match(before, ours, reference, bound=0.02):
    """Per leaf: max|Δours − Δref| ≤ 2% of max|Δref|.

    float32 gradient noise through train-mode BatchNorm on a batch of 8 stays under
    1%; a wrong convention (decay on BN, another Nesterov form) misses by far.
    """
    flat_before = jax.tree_util.tree_leaves_with_path(before)
    flat_ours = jax.tree_util.tree_leaves(ours)
    flat_ref = jax.tree_util.tree_leaves(reference)
    for (path, b), o, r in zip(flat_before, flat_ours, flat_ref, strict=True):
        d_ours, d_ref = np.asarray(o) - np.asarray(b), np.asarray(r) - np.asarray(b)
        scale = np.abs(d_ref).max()
        assert scale > 0, path
        err = np.abs(d_ours - d_ref).max()
        assert err <= bound * scale, f"{jax.tree_util.keystr(path)}: {err} > {bound:.0%} of {scale}"


@pytest.mark.parametrize(("filename", "spec"), list(TINY_REFERENCES.items()))
def test_one_sgd_step_matches_reference(filename, spec):
    ref, before, state, after, metrics = _one_reference_step(filename, *spec)
    assert float(metrics["loss"]) == pytest.approx(float(ref["loss_train"]), rel=1e-4)
    _assert_updates_match(before["params"], state.params, after["params"])
    assert int(state.step) == 1
    # Running means follow PyTorch's momentum 0.1 (variances differ only by the n/(n-1) convention).
    chex.assert_trees_all_close(
        jax.tree_util.tree_map(lambda s: s, state.batch_stats)["norm_last"]["mean"],
        after["batch_stats"]["norm_last"]["mean"],
        atol=1e-4,
        rtol=1e-3,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("filename", "spec"), list(LARGE_REFERENCES.items()))
def test_one_sgd_step_matches_reference_large(filename, spec):
    # Measured on sparsenet40_k24_c100: our update computed in float64 is within
    # 0.7% of the reference on every leaf, but our float32 update differs from
    # our float64 one by 2.07% on one leaf (dense-stage-1/block-8/conv1): float32
    # noise through train-mode BatchNorm on a batch of 8 that is larger in our
    # XLA:CPU program than in PyTorch's. Open question, tracked in the issue notes;
    # 3% still catches a wrong convention (those miss by far, see below).
    _, before, state, after, _ = _one_reference_step(filename, *spec)
    _assert_updates_match(before["params"], state.params, after["params"], bound=0.03)


def test_a_wrong_convention_is_caught():
    """Weight decay on BatchNorm too would move BN parameters off the reference."""
    filename, spec = next(iter(TINY_REFERENCES.items()))
    ref, model, before, after = _reference_states(filename, *spec)
    import optax

    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    tx = optax.chain(optax.add_decayed_weights(0.5), tx)  # decays everything, strongly
    state = steps.TrainState(
        jnp.zeros((), jnp.int32), before["params"], before["batch_stats"], tx.init(before["params"])
    )
    new_state, _ = jax.jit(steps.make_train_step(model, tx))(state, _reference_batch(ref))
    with pytest.raises(AssertionError):
        _assert_updates_match(before["params"], new_state.params, after["params"])


def test_decay_mask_selects_kernels_only():
    model = sj.create_model("densenet-13-6")
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    mask = optim.decay_mask(params["params"])
    assert mask["conv0"]["kernel"] and mask["classifier"]["kernel"]
    assert not mask["classifier"]["bias"] and not mask["norm_last"]["scale"]


def test_piecewise_lr():
    schedule = optim.piecewise_lr(0.1, steps_per_epoch=10, boundaries_epochs=(150, 225))
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(1499)) == pytest.approx(0.1)
    assert float(schedule(1500)) == pytest.approx(0.01)
    assert float(schedule(2250)) == pytest.approx(0.001)


def test_train_step_does_not_retrace_and_eval_counts():
    model = sj.create_model("sparsenet-13-6")
    tx = optim.make_optimizer(0.05)
    mesh = mesh_lib.data_mesh()
    state = steps.create_train_state(model, tx, 0, (1, 32, 32, 3), mesh)
    train_step = mesh_lib.jit_train_step(
        chex.assert_max_traces(steps.make_train_step(model, tx), n=1), mesh
    )
    eval_step = mesh_lib.jit_eval_step(steps.make_eval_step(model), mesh)
    rng = np.random.default_rng(0)
    for _ in range(3):
        batch = mesh_lib.global_batch(
            {
                "image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, 10, 8).astype(np.int32),
            },
            mesh,
        )
        state, metrics = train_step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    assert int(state.step) == 3
    mask = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
    out = eval_step(
        state,
        mesh_lib.global_batch({**{k: np.asarray(v) for k, v in batch.items()}, "mask": mask}, mesh),
    )
    assert float(out["count"]) == 3.0
    assert 0 <= float(out["correct"]) <= float(out["correct_top5"]) <= 3


class _LogitsAreTheImages(nn.Module):
    """A stand-in network whose logits are its input: eval counts can be worked out by hand."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return x


def test_eval_step_counts_on_a_hand_computed_batch():
    """Issue 17 bug 5: top-1, top-5, loss and count of a padded batch, worked out by hand."""
    logits = np.array(
        [
            [0.0, 1.0, 5.0, 2.0, 0.5, 0.1],  # label 2 is the top logit: top-1 and top-5
            [3.0, 0.2, 0.1, 4.0, 5.0, 0.3],  # label 0 is third: top-5 only
            [2.0, 1.0, 3.0, 4.0, 5.0, -1.0],  # label 5 is last of six: neither
            [9.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # padding (mask 0): right, but must not count
        ],
        np.float32,
    )
    labels = np.array([2, 0, 5, 0], np.int32)
    mask = np.array([1, 1, 1, 0], np.float32)
    state = steps.TrainState(step=jnp.zeros((), jnp.int32), params={}, batch_stats={}, opt_state=())
    eval_step = steps.make_eval_step(_LogitsAreTheImages(), top_k=5)
    sums = jax.device_get(eval_step(state, {"image": logits, "label": labels, "mask": mask}))
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want_loss = -sum(log_softmax[i, labels[i]] for i in range(3))
    assert float(sums["count"]) == 3.0
    assert float(sums["correct"]) == 1.0
    assert float(sums["correct_top5"]) == 2.0
    np.testing.assert_allclose(float(sums["loss"]), want_loss, rtol=1e-6)
    # Without a mask every example counts, the padding's right answer included.
    unmasked = jax.device_get(eval_step(state, {"image": logits, "label": labels}))
    assert (float(unmasked["count"]), float(unmasked["correct"])) == (4.0, 2.0)


def test_cosine_lr_with_warmup():
    schedule = optim.learning_rate("cosine", 0.2, steps_per_epoch=10, epochs=5, warmup_epochs=1)
    assert float(schedule(0)) == pytest.approx(0.02)  # the first step already moves
    assert float(schedule(9)) == pytest.approx(0.2)
    assert float(schedule(10)) == pytest.approx(0.2)
    assert float(schedule(30)) == pytest.approx(0.1)  # half way down the cosine
    assert float(schedule(50)) == pytest.approx(0.0, abs=1e-9)
    values = [float(schedule(s)) for s in range(10, 51)]
    assert values == sorted(values, reverse=True)
    plain = optim.learning_rate("cosine", 0.2, steps_per_epoch=10, epochs=5)
    assert float(plain(0)) == pytest.approx(0.2) and float(plain(25)) == pytest.approx(0.1)


def test_piecewise_is_the_default_and_has_no_warmup():
    schedule = optim.learning_rate("piecewise", 0.1, 10, 300, (150, 225))
    assert [float(schedule(s)) for s in (0, 1500, 2250)] == pytest.approx([0.1, 0.01, 0.001])
    with pytest.raises(ValueError, match="warm-up"):
        optim.learning_rate("piecewise", 0.1, 10, 300, (150, 225), warmup_epochs=1)
    with pytest.raises(ValueError, match="unknown"):
        optim.learning_rate("step", 0.1, 10, 300)


def test_label_smoothing_loss():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = jnp.array([0, 2])
    plain = steps.cross_entropy(logits, labels)
    assert np.allclose(steps.cross_entropy(logits, labels, 0.0), plain)
    logp = jax.nn.log_softmax(logits)
    s = 0.3
    targets = (1 - s) * jax.nn.one_hot(labels, 3) + s / 3
    expected = -(targets * logp).sum(-1)
    assert np.allclose(steps.cross_entropy(logits, labels, s), expected, atol=1e-6)
    assert np.all(steps.cross_entropy(logits, labels, s) != plain)


def test_train_step_minimises_the_smoothed_loss():
    model = sj.create_model("sparsenet-13-6")
    tx = optim.make_optimizer(0.0)
    state = steps.create_train_state(model, tx, 0, (1, 32, 32, 3))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 4), jnp.int32),
    }
    _, plain = jax.jit(steps.make_train_step(model, tx))(state, batch)
    _, smooth = jax.jit(steps.make_train_step(model, tx, label_smoothing=0.2))(state, batch)
    assert float(smooth["loss"]) != pytest.approx(float(plain["loss"]))
    assert float(smooth["accuracy"]) == float(plain["accuracy"])
