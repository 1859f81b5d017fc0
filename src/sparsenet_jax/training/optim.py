"""The optimiser of the paper's recipe: SGD with Nesterov momentum, weight decay
on kernels only, and a piecewise-constant learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import optax


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
