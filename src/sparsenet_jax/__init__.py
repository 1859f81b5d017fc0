"""SparseNet (sparsely aggregated convolutional networks) in JAX/Flax.

Quick use::

    import jax, jax.numpy as jnp, sparsenet_jax
    model = sparsenet_jax.create_model("sparsenet-40-24", num_classes=10)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    logits = model.apply(variables, jnp.zeros((8, 32, 32, 3)))  # eval mode

The package has three wings and the data: :mod:`sparsenet_jax.model` (the
network), :mod:`sparsenet_jax.training` (config, steps, loop, command line),
:mod:`sparsenet_jax.tools` (aot, export, figures) and :mod:`sparsenet_jax.data`.
The names below are imported on first use, so ``import sparsenet_jax.tools.artifact``
(running an exported network) loads neither Flax nor the model code.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from sparsenet_jax import _legacy

_legacy.install()  # old module paths (sparsenet_jax.steps, …) keep working, with a warning

if TYPE_CHECKING:
    from sparsenet_jax.model.finetune import adapt_num_classes, pretrained_cfg
    from sparsenet_jax.model.network import SparseNet, count_params, init_variables
    from sparsenet_jax.model.presets import create_model, list_models, parse_name
    from sparsenet_jax.model.schedule import Schedule
    from sparsenet_jax.tools.artifact import load_exported

# Public name → the submodule that defines it.
_LAZY = {
    "Schedule": "model.schedule",
    "SparseNet": "model.network",
    "adapt_num_classes": "model.finetune",
    "count_params": "model.network",
    "create_model": "model.presets",
    "init_variables": "model.network",
    "list_models": "model.presets",
    "load_exported": "tools.artifact",
    "parse_name": "model.presets",
    "pretrained_cfg": "model.finetune",
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
