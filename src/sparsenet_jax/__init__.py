"""SparseNet (sparsely aggregated convolutional networks) in JAX/Flax.

Quick use::

    import jax, jax.numpy as jnp, sparsenet_jax
    model = sparsenet_jax.create_model("sparsenet-40-24", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    logits = model.apply(variables, jnp.zeros((8, 32, 32, 3)))  # eval mode
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from sparsenet_jax.models import SparseNet, init_variables
from sparsenet_jax.presets import create_model, list_models, parse_name
from sparsenet_jax.schedule import Schedule

__all__ = [
    "Schedule",
    "SparseNet",
    "count_params",
    "create_model",
    "init_variables",
    "list_models",
    "parse_name",
]

__version__ = "0.1.0"


def count_params(variables: Any) -> int:
    """Number of trainable parameters.

    Args:
      variables: the dict returned by ``model.init`` (its ``"params"`` are
        counted; ``batch_stats`` are not) or a params tree itself. Arrays or
        ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``) both work.

    Returns:
      The total number of elements.
    """
    if hasattr(variables, "keys") and "params" in variables:
        variables = variables["params"]
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables)))
