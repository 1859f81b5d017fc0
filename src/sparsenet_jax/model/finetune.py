"""Downstream use: each preset's preprocessing facts, and a new classifier for another label set.

* :func:`pretrained_cfg`: what a network trained on a dataset expects of its input
  (size, mean/std, crop fraction), after timm's ``pretrained_cfg``, NHWC.
* :func:`adapt_num_classes`: variables of a trained or converted network for the
  same network with another number of classes; every weight is kept but the
  classifier, which is freshly initialised (and logged as such).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsenet_jax.model.network import SparseNet, abstract_variables
from sparsenet_jax.model.presets import create_model

logger = logging.getLogger(__name__)

CLASSIFIER = "classifier"  # the dense layer's name in the parameter tree
IMAGENET_CROP_PCT = 0.875  # evaluation: shorter side to 256, central 224 × 224


def pretrained_cfg(name: str, dataset: str | None = None) -> dict[str, Any]:
    """Input facts of preset ``name`` trained on ``dataset``.

    Args:
      name: a preset name (:func:`sparsenet_jax.list_models`).
      dataset: ``"imagenet2012"``, ``"cifar10"``, ``"cifar100"`` or ``"digits"``;
        default ImageNet for ImageNet presets, CIFAR-10 for the others.

    Returns:
      ``name``, ``dataset``, ``num_classes``; ``input_size`` (H, W, C), the size
      the network is evaluated at; ``mean`` and ``std`` per channel of pixels
      scaled to [0, 1] (input = (pixels / 255 − mean) / std); ``crop_pct``, the
      fraction of the resized image kept by the central evaluation crop (0.875
      for ImageNet, 1.0 for the 32 × 32 datasets); ``interpolation``;
      ``first_conv`` and ``classifier``, the names of the first and last layers.
    """
    from sparsenet_jax.data import dataset_info

    model = create_model(name)
    if dataset is None:
        dataset = "imagenet2012" if model.stem == "imagenet" else "cifar10"
    info = dataset_info(dataset)
    return {
        "name": name.strip().lower(),
        "dataset": info.name,
        "num_classes": info.num_classes,
        "input_size": (info.image_size, info.image_size, info.channels),
        "mean": info.mean,
        "std": info.std,
        "crop_pct": IMAGENET_CROP_PCT if info.name == "imagenet2012" else 1.0,
        "interpolation": "bilinear",
        "first_conv": "conv0",
        "classifier": CLASSIFIER,
    }


def adapt_num_classes(
    model: SparseNet, variables: Mapping[str, Any], seed: int | jax.Array = 0
) -> dict[str, Any]:
    """Variables for ``model`` from those of the same network with another ``num_classes``.

    Args:
      model: the target network (its ``num_classes`` is the new one).
      variables: ``{"params", "batch_stats"}`` of the same network, converted
        (:func:`sparsenet_jax.model.convert.load_pretrained`) or trained.
      seed: an integer seed or a PRNG key for the new classifier.

    Returns:
      The same variables with ``params["classifier"]`` freshly initialised as
      ``model.init`` would (LeCun-normal kernel, zero bias); a warning on the
      ``sparsenet_jax.model.finetune`` logger names the re-initialised leaves. Returned
      unchanged (a shallow copy) when the classifier already fits.

    Raises:
      ValueError: the other weights do not fit ``model`` (another network).
    """
    params = dict(variables["params"])
    if CLASSIFIER not in params:
        raise ValueError(f"variables have no {CLASSIFIER!r} layer to replace")
    _check_same_network(model, variables)
    old = params[CLASSIFIER]
    width = old["kernel"].shape[0]
    if tuple(old["kernel"].shape) == (width, model.num_classes):
        return {**variables, "params": params}
    key = jax.random.key(seed) if isinstance(seed, int) else seed
    dense = nn.Dense(model.num_classes, dtype=model.dtype, param_dtype=model.param_dtype)
    params[CLASSIFIER] = dense.init(key, jnp.zeros((1, width), jnp.float32))["params"]
    changes = ", ".join(
        f"{CLASSIFIER}/{leaf} {tuple(old[leaf].shape)} → {tuple(params[CLASSIFIER][leaf].shape)}"
        for leaf in sorted(old)
    )
    logger.warning(
        "re-initialised for %d classes: %s; every other weight is kept",
        model.num_classes,
        changes,
    )
    return {**variables, "params": params}


def _check_same_network(model: SparseNet, variables: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the leaves (classifier aside) whose shapes differ from ``model``'s."""
    target = abstract_variables(model)
    check_same_shapes(target, variables, "the model's", ignore=lambda path: path[1] == CLASSIFIER)


def check_same_shapes(
    expected: Mapping[str, Any],
    given: Mapping[str, Any],
    what: str,
    ignore: Callable[[tuple[str, ...]], bool] = lambda path: False,
) -> None:
    """Raise ``ValueError`` naming the leaves of ``given`` missing, extra or shaped unlike ``expected``.

    Args:
      expected, given: nested mappings of arrays (or shape structs).
      what: names ``expected`` in the message ("the model's").
      ignore: paths (tuples of names) not compared.
    """
    want, have = leaf_shapes(expected), leaf_shapes(given)
    differ = sorted(
        path
        for path in set(want) | set(have)
        if not ignore(path) and want.get(path) != have.get(path)
    )
    if differ:
        shown = ", ".join("/".join(p) for p in differ[:5]) + (", …" if len(differ) > 5 else "")
        raise ValueError(
            f"the variables are of another network: {len(differ)} leaves differ from "
            f"{what} ({shown})"
        )


def leaf_shapes(tree: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Path (names) → shape of every leaf of a nested mapping of arrays."""
    flat = jax.tree_util.tree_flatten_with_path(dict(tree))[0]
    return {
        tuple(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in flat
    }
