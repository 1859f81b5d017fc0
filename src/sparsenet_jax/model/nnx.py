"""SparseNet for Flax NNX: the Linen network behind ``flax.nnx.bridge.ToNNX``.

Use::

    from flax import nnx
    import sparsenet_jax.model.nnx as snnx

    model = snnx.create_model("sparsenet-40-24", num_classes=10, seed=0)
    logits = model(images)  # eval mode: BatchNorm uses its running averages
    model.train()  # batch statistics; running averages updated in place
    optimizer = snnx.make_optimizer(model, tx)  # nnx.Optimizer(model, tx, wrt=nnx.Param)
    snnx.apply_gradients(optimizer, model, grads)  # optimizer.update(model, grads)

The parameters are the Linen ones (same names and layout), so
:func:`from_variables` / :func:`to_variables` move weights between the two APIs:
converted checkpoints, :func:`sparsenet_jax.tools.export.export_model`, Orbax.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.nnx import bridge

from sparsenet_jax.model import presets
from sparsenet_jax.model.finetune import check_same_shapes
from sparsenet_jax.model.network import SparseNet


class NNXSparseNet(nnx.Module):
    """A :class:`~sparsenet_jax.SparseNet` as an NNX module, in eval mode until ``train()``.

    ``model.train()`` / ``model.eval()`` set ``use_running_average`` (as on
    ``nnx.BatchNorm``): in train mode BatchNorm normalises with batch statistics
    and updates its running averages in place, and dropout (if any) draws from
    the ``dropout`` stream of ``rngs``.

    The variables are created by ``flax.nnx.bridge.ToNNX`` (``net``). The forward
    pass applies the Linen network to them and writes the new BatchNorm
    statistics back itself: ToNNX's own write-back of ``mutable=["batch_stats"]``
    drops the parameters of modules nested two deep in Flax 0.11.2.

    Attributes:
      net: the ``bridge.ToNNX`` wrapper holding the variables.
      linen_model: the Linen network.
      use_running_average: eval mode when True.
    """

    def __init__(
        self,
        linen_model: SparseNet,
        *,
        rngs: nnx.Rngs,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        self.linen_model = linen_model
        self.rngs = rngs
        self.net = bridge.ToNNX(linen_model, rngs=rngs)
        shape = tuple(input_shape or linen_model.default_input_shape)
        bridge.lazy_init(self.net, jnp.zeros(shape, jnp.float32))
        self.use_running_average = True

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (float32) for a batch of NHWC float images."""
        return self._run(x, "__call__")

    def features(self, x: jax.Array) -> jax.Array:
        """Pre-logit features (N, C); see :meth:`sparsenet_jax.SparseNet.features`."""
        return self._run(x, "features")

    def feature_maps(self, x: jax.Array) -> list[jax.Array]:
        """Each block's output map (NHWC); see :meth:`sparsenet_jax.SparseNet.feature_maps`."""
        return self._run(x, "feature_maps")

    def _run(self, x: jax.Array, method: str) -> Any:
        variables = to_variables(self)
        if self.use_running_average:
            return self.linen_model.apply(variables, x, method=method)
        rngs = {"dropout": self.rngs.dropout()} if self.linen_model.dropout_rate > 0 else {}
        out, updates = self.linen_model.apply(
            variables, x, train=True, method=method, mutable=["batch_stats"], rngs=rngs
        )
        stats = nnx.state(self.net, nnx.BatchStat)
        stats.replace_by_pure_dict(updates["batch_stats"])
        nnx.update(self.net, stats)
        return out


def create_model(
    name: str,
    num_classes: int = 10,
    *,
    rngs: nnx.Rngs | None = None,
    seed: int = 0,
    input_shape: Sequence[int] | None = None,
    **overrides: Any,
) -> NNXSparseNet:
    """A named network (:func:`sparsenet_jax.create_model`) as an initialised NNX module.

    Args:
      name: a preset name.
      num_classes: width of the classifier.
      rngs: ``nnx.Rngs`` with a ``params`` stream (and ``dropout`` for
        ``dropout_rate > 0``); default ``nnx.Rngs(params=seed, dropout=seed + 1)``.
      seed: used when ``rngs`` is not given.
      input_shape: NHWC sample shape for the lazy initialisation (default
        ``default_input_shape``: one 32×32 or 224×224 image).
      **overrides: as for :func:`sparsenet_jax.create_model`.

    Returns:
      An :class:`NNXSparseNet` in eval mode.
    """
    linen_model = presets.create_model(name, num_classes, **overrides)
    if rngs is None:
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    return NNXSparseNet(linen_model, rngs=rngs, input_shape=input_shape)


def from_variables(
    linen_model: SparseNet, variables: Mapping[str, Any], *, rngs: nnx.Rngs | None = None
) -> NNXSparseNet:
    """An NNX module holding Linen ``variables`` (converted, trained or initialised).

    Args:
      linen_model: the network ``variables`` belong to.
      variables: ``{"params": ..., "batch_stats": ...}``.
      rngs: for dropout (default ``nnx.Rngs(params=0, dropout=1)``).
    """
    model = NNXSparseNet(linen_model, rngs=rngs or nnx.Rngs(params=0, dropout=1))
    state = nnx.state(model.net, (nnx.Param, nnx.BatchStat))
    merged = _merge(variables.get("params", {}), variables.get("batch_stats", {}))
    check_same_shapes(state.to_pure_dict(), merged, "the model's")
    state.replace_by_pure_dict(merged)
    nnx.update(model.net, state)
    return model


def to_variables(model: NNXSparseNet) -> dict[str, Any]:
    """The Linen ``{"params", "batch_stats"}`` of ``model`` (for ``SparseNet.apply``, export, Orbax)."""
    params = nnx.state(model.net, nnx.Param).to_pure_dict()
    batch_stats = nnx.state(model.net, nnx.BatchStat).to_pure_dict()
    return {"params": params, "batch_stats": batch_stats}


def _merge(params: Mapping[str, Any], batch_stats: Mapping[str, Any]) -> dict[str, Any]:
    """Linen collections → one tree: NNX keeps a module's parameters and statistics together."""
    merged: dict[str, Any] = {k: v for k, v in params.items()}
    for key, value in batch_stats.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def make_optimizer(model: nnx.Module, tx: optax.GradientTransformation) -> nnx.Optimizer:
    """``nnx.Optimizer`` over the parameters (``wrt=nnx.Param``), e.g. with :func:`sparsenet_jax.training.optim.make_optimizer`."""
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def apply_gradients(optimizer: nnx.Optimizer, model: nnx.Module, grads: Any) -> None:
    """One optimizer step on ``model`` (Flax >= 0.11: ``Optimizer.update(model, grads)``)."""
    optimizer.update(model, grads)
