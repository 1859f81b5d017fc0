"""The train state and the pure train and eval steps.

One pure function per step; :mod:`~sparsenet_jax.training.mesh` jits them
over the devices and :mod:`~sparsenet_jax.training.optim` is the optimiser.
BatchNorm statistics are over the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh

from sparsenet_jax.model.network import init_variables
from sparsenet_jax.training import mesh as mesh_lib

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
Preprocess = Callable[[jax.Array, jax.Array, bool], jax.Array]
"""(rng, images, train) → model input. Augmentation and normalisation live here,
inside the jitted step, so the host only gathers uint8 batches."""


class TrainState(struct.PyTreeNode):
    """Everything that changes during training; a plain pytree (checkpointable)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int | jax.Array,
    input_shape: Sequence[int],
    mesh: Mesh | None = None,
) -> TrainState:
    """Initialise parameters, BatchNorm statistics and optimizer state.

    With ``mesh``, the state is placed replicated on it, as the jitted steps
    expect (another placement would cost a retrace on the first step).
    """
    variables = init_variables(model, seed, input_shape)  # type: ignore[arg-type]
    params = variables["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )
    return state if mesh is None else mesh_lib.replicate(state, mesh)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example cross-entropy; with ``label_smoothing`` s the target is (1 - s) · one-hot + s / classes."""
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def identity_preprocess(rng: jax.Array, images: jax.Array, train: bool) -> jax.Array:
    del rng, train
    return images


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    seed: int = 0,
    preprocess: Preprocess = identity_preprocess,
    label_smoothing: float = 0.0,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The pure train step: (state, batch) → (new state, metrics).

    The loss it minimises and reports is smoothed by ``label_smoothing``; the
    eval step's loss is the plain cross-entropy.

    Random numbers (augmentation, dropout) derive from ``(seed, state.step)``,
    so a resumed run draws exactly what an uninterrupted one would.
    """
    seeded = make_seeded_train_step(model, tx, preprocess, label_smoothing)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        return seeded(seed, state, batch)

    return train_step


def make_seeded_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    preprocess: Preprocess = identity_preprocess,
    label_smoothing: float = 0.0,
) -> Callable[[int | jax.Array, TrainState, Batch], tuple[TrainState, Metrics]]:
    """:func:`make_train_step` with the seed an argument, (seed, state, batch) → (state, metrics).

    The seed may be traced (``vmap`` over replicas' seeds, :mod:`replicas`): it
    draws the same numbers as the same seed given as a Python int.
    """

    def train_step(
        seed: int | jax.Array, state: TrainState, batch: Batch
    ) -> tuple[TrainState, Metrics]:
        # threefry, not rbg: under vmap (--seeds) rbg draws other bits for every replica
        # but the first, so replica i would not be the run of its seed alone. rbg only
        # compiled faster for large dropout masks (model/network.py still inits with it).
        rng = jax.random.fold_in(jax.random.key(seed, impl="threefry2x32"), state.step)
        aug_rng, dropout_rng = jax.random.split(rng)
        images = preprocess(aug_rng, batch["image"], True)
        labels = batch["label"]

        def loss_fn(params: Any) -> tuple[jax.Array, tuple[jax.Array, Any]]:
            logits, updates = model.apply(
                {"params": params, "batch_stats": state.batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_rng},
            )
            loss = cross_entropy(logits, labels, label_smoothing).mean()
            return loss, (logits, updates["batch_stats"])

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        metrics = {
            "loss": loss,
            "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
            "grad_norm": optax.global_norm(grads),
        }
        return new_state, metrics

    return train_step


def make_eval_step(
    model: nn.Module, preprocess: Preprocess = identity_preprocess, top_k: int = 5
) -> Callable[[TrainState, Batch], Metrics]:
    """Sums over a batch (``mask`` marks real examples): loss, top-1 and top-k correct, count.

    ``top_k`` <= 1 reports top-1 only.
    """

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        images = preprocess(jax.random.key(0), batch["image"], False)
        logits: jax.Array = model.apply(  # type: ignore[assignment]
            {"params": state.params, "batch_stats": state.batch_stats}, images
        )
        labels = batch["label"]
        mask = batch.get("mask", jnp.ones(labels.shape, jnp.float32))
        sums = {
            "loss": jnp.sum(cross_entropy(logits, labels) * mask),
            "correct": jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            "count": jnp.sum(mask),
        }
        k = min(top_k, logits.shape[-1])
        if k > 1:
            top = jax.lax.top_k(logits, k)[1]
            sums[f"correct_top{k}"] = jnp.sum(jnp.any(top == labels[:, None], -1) * mask)
        return sums

    return eval_step
