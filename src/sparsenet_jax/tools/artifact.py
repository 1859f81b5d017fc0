"""Run a network exported by :mod:`sparsenet_jax.export`, with JAX alone.

Importing this module loads neither Flax nor the model code: a serving process
needs only ``jax``. The artifact is ``jax.export``'s serialized StableHLO (the
eval-mode network with its weights as constants), so it also loads without this
package: ``jax.export.deserialize(open(path, "rb").read()).call(images)``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.export  # jax < 0.8 does not load this submodule with `import jax`
import jax.numpy as jnp


class ExportedModel:
    """Images (float, NHWC, any batch size) → logits (float32), from an exported network."""

    def __init__(self, exported: jax.export.Exported) -> None:
        self.exported = exported
        (aval,) = exported.in_avals
        self.image_shape: tuple[int, ...] = tuple(int(d) for d in aval.shape[1:])
        self.platforms: tuple[str, ...] = tuple(exported.platforms)

    def __call__(self, images: Any) -> jax.Array:
        """Logits for ``images`` of shape ``(N, *image_shape)``, normalised floats.

        Raises:
          TypeError: integer images (raw pixels): normalise them first.
          ValueError: images of another shape than the exported one.
        """
        images = jnp.asarray(images)
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(
                f"expected float images, got {images.dtype}: normalise raw pixels first, "
                "x = (images / 255 - mean) / std with the training data's mean and std "
                "(the .json file written next to the export names them)"
            )
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(images.shape)}"
            )
        return self.exported.call(jnp.asarray(images, jnp.float32))

    def __repr__(self) -> str:
        return f"ExportedModel(image_shape={self.image_shape}, platforms={self.platforms})"


def read_exported(path: str | os.PathLike[str]) -> jax.export.Exported:
    """Deserialize the artifact at ``path``; ``ValueError`` naming it if it is not one."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception as err:
        raise ValueError(
            f"{path} is not a jax.export artifact ({type(err).__name__}: {err})"
        ) from None


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """The exported network at ``path`` as a callable: images → logits.

    Args:
      path: a file written by :func:`sparsenet_jax.export.export_model` or
        ``python -m sparsenet_jax.export``.

    Returns:
      An :class:`ExportedModel`; call it on a float32 NHWC batch of any size.
    """
    return ExportedModel(read_exported(path))
