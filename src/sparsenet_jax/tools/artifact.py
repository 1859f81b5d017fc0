"""Run a network exported by :mod:`sparsenet_jax.tools.export`, with JAX alone.

Importing this module loads neither Flax nor the model code: a serving process
needs only ``jax``. The artifact is ``jax.export``'s serialized StableHLO (the
eval-mode network with its weights as constants), so it also loads without this
package: ``jax.export.deserialize(open(path, "rb").read()).call(images)``.

:func:`load_exported` trusts nothing it has not verified: the ``.json`` sidecar
written beside the artifact records its sha256 and the facts that identify it
(model, input shape, mean and std, themselves covered by an ``identity``
digest). The artifact's bytes are checked against that sha256 before any of
them reaches ``jax.export.deserialize``, so a corrupt file, or a sidecar that
belongs to another artifact, is refused in one line at load time, never at the
first call (a flipped byte can make the StableHLO reader hang). The raw
``jax.export`` route above checks nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.export  # jax < 0.8 does not load this submodule with `import jax`
import jax.numpy as jnp
import numpy as np

# The sidecar fields its identity digest covers: what ties it to one artifact.
IDENTITY_FIELDS: tuple[str, ...] = ("sha256", "model", "input_shape", "mean", "std")


def identity_digest(info: Mapping[str, Any]) -> str:
    """The sha256 of the sidecar's :data:`IDENTITY_FIELDS`, as canonical JSON."""
    fields = {k: info.get(k) for k in IDENTITY_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


class ExportedModel:
    """Images (float, NHWC, any batch size) → logits (float32), from an exported network."""

    def __init__(
        self, exported: jax.export.Exported, metadata: Mapping[str, Any] | None = None
    ) -> None:
        self.exported = exported
        (aval,) = exported.in_avals
        self.image_shape: tuple[int, ...] = tuple(int(d) for d in aval.shape[1:])
        self.platforms: tuple[str, ...] = tuple(exported.platforms)
        # The sidecar's facts: model, input_shape, mean, std, sha256, ...
        self.metadata: dict[str, Any] = dict(metadata or {})

    def __call__(self, images: Any) -> jax.Array:
        """Logits for ``images`` of shape ``(N, *image_shape)``, normalised floats.

        The images are checked on the host first: XLA on CPU can turn NaN
        pixels into confident, finite logits (it drops NaN inside a fused mean).

        Raises:
          TypeError: integer images (raw pixels): normalise them first.
          ValueError: images of another shape than the exported one, or with
            NaN or Inf values (also values too large for float32).
        """
        host = np.asarray(images)
        if not jnp.issubdtype(host.dtype, jnp.floating):
            raise TypeError(
                f"expected float images, got {host.dtype}: normalise raw pixels first, "
                "x = (images / 255 - mean) / std with the training data's mean and std "
                "(the .json file written next to the export names them)"
            )
        if host.ndim != 4 or tuple(host.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (N, {', '.join(map(str, self.image_shape))}), "
                f"got {tuple(host.shape)}"
            )
        with np.errstate(over="ignore"):  # values too large for float32 become Inf, refused
            host = host.astype(np.float32, copy=False)
        finite = np.isfinite(host)
        if not finite.all():
            bad = ~finite
            first = np.unravel_index(int(np.argmax(bad)), host.shape)
            raise ValueError(
                f"images hold {int(bad.sum())} non-finite values (NaN or Inf, or too large "
                f"for float32), the first in image {first[0]} at (h, w, c) = "
                f"{tuple(int(i) for i in first[1:])}: refusing them, as the compiled "
                "network can return finite logits for them"
            )
        return self.exported.call(jnp.asarray(host))

    def __repr__(self) -> str:
        return f"ExportedModel(image_shape={self.image_shape}, platforms={self.platforms})"


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``.json`` sidecar of the artifact at ``path``, its identity verified.

    Raises:
      ValueError: one line naming the file: it does not exist, the sidecar is missing, unreadable,
        records no sha256 (an older export), or its identity does not match
        its fields (edited or damaged).
    """
    path = os.fspath(path)
    sidecar = f"{path}.json"
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file (an artifact of python -m sparsenet_jax.export)")
    try:
        with open(sidecar, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ValueError(
            f"cannot verify {path}: its sidecar {sidecar} is missing "
            "(export writes the two together; keep them together)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot verify {path}: its sidecar {sidecar} is unreadable "
            f"({type(err).__name__}: {' '.join(str(err).split())})"
        ) from None
    if not isinstance(info, dict):
        raise ValueError(
            f"cannot verify {path}: its sidecar {sidecar} holds a {type(info).__name__}, "
            "not the export's facts"
        )
    if not isinstance(info.get("sha256"), str) or not isinstance(info.get("identity"), str):
        raise ValueError(
            f"cannot verify {path}: its sidecar {sidecar} records no sha256 (written by an "
            "older export?): export it again"
        )
    if info["identity"] != identity_digest(info):
        raise ValueError(
            f"{sidecar} was edited or is damaged: its identity does not match its fields "
            f"({', '.join(IDENTITY_FIELDS)}); export {path} again"
        )
    return info


def read_exported(path: str | os.PathLike[str]) -> jax.export.Exported:
    """Deserialize the artifact at ``path`` once verified; ``ValueError`` naming it if it is not one.

    The bytes must match the sha256 of the sidecar (:func:`read_sidecar`)
    before ``jax.export.deserialize`` sees them.
    """
    return _read_verified(path)[0]


def _read_verified(path: str | os.PathLike[str]) -> tuple[jax.export.Exported, dict[str, Any]]:
    path = os.fspath(path)
    info = read_sidecar(path)
    with open(path, "rb") as f:
        data = f.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != info["sha256"]:
        raise ValueError(
            f"{path} does not match its sidecar {path}.json: its sha256 is {digest[:16]}…, "
            f"the sidecar records {info['sha256'][:16]}… (the file is corrupt or truncated, "
            "or the sidecar belongs to another artifact)"
        )
    try:
        exported = jax.export.deserialize(bytearray(data))
    except Exception as err:
        raise ValueError(
            f"{path} is not a jax.export artifact "
            f"({type(err).__name__}: {' '.join(str(err).split())[:300]})"
        ) from None
    shape = info.get("input_shape")
    (aval,) = exported.in_avals
    if shape is not None and list(shape[1:]) != [int(d) for d in aval.shape[1:]]:
        raise ValueError(
            f"{path} takes images of shape {tuple(aval.shape[1:])}, but its sidecar "
            f"records {tuple(shape[1:])}"
        )
    return exported, info


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """The exported network at ``path`` as a callable: images → logits.

    Args:
      path: a file written by :func:`sparsenet_jax.tools.export.export_model` or
        ``python -m sparsenet_jax.export``, with its ``.json`` sidecar beside it.

    Returns:
      An :class:`ExportedModel`; call it on a float32 NHWC batch of any size.
      Its ``metadata`` holds the sidecar's facts (model, mean, std, ...).

    Raises:
      ValueError: one line naming the file: the artifact does not match its
        sidecar's sha256 (corrupt, truncated, or another artifact's sidecar),
        the sidecar is missing, unreadable or edited, or the file is not a
        ``jax.export`` artifact. Nothing unverified reaches jax.
    """
    return ExportedModel(*_read_verified(path))
