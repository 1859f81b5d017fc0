"""The optimiser of the paper's recipe: SGD with Nesterov momentum, weight decay
on kernels only, and a piecewise-constant learning rate; or, for short budgets,
a cosine schedule with a linear warm-up (:func:`learning_rate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax

from sparsenet_jax.training.config import TrainConfig


def decay_mask(params: Any) -> Any:
    """True for conv and dense kernels: weight decay applies to them only (not BN, not biases)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def piecewise_lr(
    base_lr: float, steps_per_epoch: int, boundaries_epochs: Sequence[float], factor: float = 0.1
) -> optax.Schedule:
    """``base_lr`` multiplied by ``factor`` at each boundary (in epochs)."""
    return optax.piecewise_constant_schedule(
        base_lr, {round(e * steps_per_epoch): factor for e in boundaries_epochs}
    )


def cosine_lr(base_lr: float, total_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """A linear warm-up from ``base_lr / warmup_steps`` to ``base_lr``, then a cosine to 0.

    The cosine ends at ``total_steps``, the schedule's length (the run's
    epochs, not an earlier ``--max-steps`` stop). No warm-up: the cosine starts at step 0.
    """
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    decay = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1))
    if not warmup_steps:
        return decay
    # Step 0 already takes a non-zero step (base_lr / warmup_steps): no step is wasted at lr 0.
    warmup = optax.linear_schedule(base_lr / warmup_steps, base_lr, warmup_steps - 1)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def learning_rate(
    kind: str,
    base_lr: float,
    steps_per_epoch: int,
    epochs: int,
    boundaries_epochs: Sequence[float] = (),
    factor: float = 0.1,
    warmup_epochs: float = 0.0,
) -> optax.Schedule:
    """The run's schedule: ``piecewise`` (the paper's; warm-up not allowed) or ``cosine``."""
    if kind == "piecewise":
        if warmup_epochs:
            raise ValueError("warmup_epochs: only the cosine schedule has a warm-up")
        return piecewise_lr(base_lr, steps_per_epoch, boundaries_epochs, factor)
    if kind == "cosine":
        warmup = round(warmup_epochs * steps_per_epoch)
        return cosine_lr(base_lr, epochs * steps_per_epoch, warmup)
    raise ValueError(f"unknown learning-rate schedule {kind!r}")


def config_learning_rate(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """:func:`learning_rate` of a run's configuration (the trainer's and the PyTorch peer's)."""
    return learning_rate(
        config.lr_schedule,
        config.lr,
        steps_per_epoch,
        config.epochs,
        config.lr_boundaries,
        config.lr_decay,
        config.warmup_epochs,
    )


def make_optimizer(
    learning_rate: float | optax.Schedule,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
    """SGD as in the official recipe: L2 on kernels folded into the gradient, then momentum.

    Matches ``torch.optim.SGD(weight_decay=wd)`` restricted to conv/linear weights.
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=decay_mask),
        optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov and momentum > 0),
    )
