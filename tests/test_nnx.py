"""The NNX wrapper: same forward passes and the same optimizer steps as the Linen network."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sparsenet_jax as sj
import sparsenet_jax.model.nnx as snnx
from sparsenet_jax.training import optim, steps

NAME = "sparsenet-10-4"
WEIGHT_DECAY = 5e-2  # large, so that losing the decay would show


@pytest.fixture(scope="module")
def linen():
    model = sj.create_model(NAME)
    variables = sj.init_variables(model, 0)
    images = jax.random.normal(jax.random.key(1), (6, 32, 32, 3))
    labels = jnp.arange(6) % 10
    return model, variables, images, labels


def _linen_steps(model, variables, images, labels, weight_decay, n=2):
    tx = optim.make_optimizer(0.1, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    state = steps.create_train_state(model, tx, 0, model.default_input_shape)
    chex.assert_trees_all_equal(state.params, variables["params"])  # the same start
    train_step = jax.jit(steps.make_train_step(model, tx))
    losses = []
    for _ in range(n):
        state, metrics = train_step(state, {"image": images, "label": labels})
        losses.append(float(metrics["loss"]))
    return {"params": state.params, "batch_stats": state.batch_stats}, losses


@nnx.jit
def _nnx_step(model, optimizer, images, labels):
    def loss_fn(model):
        return steps.cross_entropy(model(images), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    snnx.apply_gradients(optimizer, model, grads)
    return loss


def test_nnx_optimizer_steps_match_the_linen_train_step(linen):
    model, variables, images, labels = linen
    expected, expected_losses = _linen_steps(model, variables, images, labels, WEIGHT_DECAY)

    net = snnx.from_variables(model, variables)
    net.train()
    tx = optim.make_optimizer(0.1, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY)
    optimizer = snnx.make_optimizer(net, tx)
    losses = [float(_nnx_step(net, optimizer, images, labels)) for _ in range(2)]

    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    got = snnx.to_variables(net)
    delta = jax.tree_util.tree_map(jnp.subtract, got, variables)
    expected_delta = jax.tree_util.tree_map(jnp.subtract, expected, variables)
    chex.assert_trees_all_close(delta, expected_delta, atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(got, expected, atol=1e-6, rtol=1e-5)

    # The tolerance is far below the weight decay's share of the first update,
    # lr · wd · w: an NNX step that lost it (a mask not matching NNX's parameter
    # paths) would fail above.
    decay_share = 0.1 * WEIGHT_DECAY * jnp.abs(variables["params"]["conv0"]["kernel"]).max()
    assert float(decay_share) > 100 * 1e-6


def test_eval_and_train_mode_forward_passes(linen):
    model, variables, images, _ = linen
    net = snnx.from_variables(model, variables)
    assert net.use_running_average
    chex.assert_trees_all_close(net(images), model.apply(variables, images), atol=1e-6)
    chex.assert_trees_all_close(snnx.to_variables(net), variables)  # eval: nothing changes

    net.train()
    assert not net.use_running_average
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    chex.assert_trees_all_close(net(images), logits, atol=1e-6)
    chex.assert_trees_all_close(
        snnx.to_variables(net)["batch_stats"], updates["batch_stats"], atol=1e-6
    )
    chex.assert_trees_all_close(snnx.to_variables(net)["params"], variables["params"])

    net.eval()
    chex.assert_trees_all_close(
        net.features(images),
        model.apply(
            {"params": variables["params"], "batch_stats": updates["batch_stats"]},
            images,
            method=sj.SparseNet.features,
        ),
        atol=1e-6,
    )
    assert [m.shape for m in net.feature_maps(images)] == [
        (6, 32, 32, 8),
        (6, 16, 16, 8),
        (6, 8, 8, 8),
    ]


def test_create_model_initialises_the_linen_layout():
    net = snnx.create_model(NAME, num_classes=7, seed=3)
    variables = snnx.to_variables(net)
    model = sj.create_model(NAME, num_classes=7)
    shapes = jax.eval_shape(lambda: sj.init_variables(model, 0))
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, shapes)
    again = snnx.to_variables(snnx.create_model(NAME, num_classes=7, rngs=nnx.Rngs(params=3)))
    chex.assert_trees_all_equal_shapes(again, variables)
    assert net(jnp.zeros((2, 32, 32, 3))).shape == (2, 7)


def test_from_variables_refuses_another_network(linen):
    _, variables, _, _ = linen
    with pytest.raises(ValueError, match="another network"):
        snnx.from_variables(sj.create_model(NAME, num_classes=5), variables)


@nnx.jit
def _forward(net, x):
    return net(x)


def test_dropout_draws_from_the_dropout_stream():
    net = snnx.create_model(NAME, dropout_rate=0.5, seed=0)
    x = jnp.ones((2, 32, 32, 3))
    net.train()
    assert not np.allclose(_forward(net, x), _forward(net, x))  # a new mask each call
    net.eval()
    chex.assert_trees_all_close(_forward(net, x), _forward(net, x))
