"""SparseNet (sparsely aggregated convolutional networks) in JAX/Flax.

Quick use::

    import jax, jax.numpy as jnp, sparsenet_jax
    model = sparsenet_jax.create_model("sparsenet-40-24", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    logits = model.apply(variables, jnp.zeros((8, 32, 32, 3)))  # eval mode

The names below are imported on first use, so ``import sparsenet_jax.exported``
(running an exported network) loads neither Flax nor the model code.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparsenet_jax.exported import load_exported
    from sparsenet_jax.finetune import adapt_num_classes, pretrained_cfg
    from sparsenet_jax.models import SparseNet, init_variables
    from sparsenet_jax.presets import create_model, list_models, parse_name
    from sparsenet_jax.schedule import Schedule

# Public name → the submodule that defines it.
_LAZY = {
    "Schedule": "schedule",
    "SparseNet": "models",
    "adapt_num_classes": "finetune",
    "create_model": "presets",
    "init_variables": "models",
    "list_models": "presets",
    "load_exported": "exported",
    "parse_name": "presets",
    "pretrained_cfg": "finetune",
}

__all__ = [
    "Schedule",
    "SparseNet",
    "adapt_num_classes",
    "count_params",
    "create_model",
    "init_variables",
    "list_models",
    "load_exported",
    "parse_name",
    "pretrained_cfg",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def count_params(variables: Any) -> int:
    """Number of trainable parameters.

    Args:
      variables: the dict returned by ``model.init`` (its ``"params"`` are
        counted; ``batch_stats`` are not) or a params tree itself. Arrays or
        ``jax.ShapeDtypeStruct`` leaves (from ``jax.eval_shape``) both work.

    Returns:
      The total number of elements.
    """
    import jax
    import numpy as np

    if hasattr(variables, "keys") and "params" in variables:
        variables = variables["params"]
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(variables)))
