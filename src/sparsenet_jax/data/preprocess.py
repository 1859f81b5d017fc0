"""Jittable preprocessing applied on the accelerator: normalisation and augmentation."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsenet_jax.data.datasets import DatasetInfo


def normalize(images: jax.Array, info: DatasetInfo, dtype: Any = jnp.float32) -> jax.Array:
    """Pixels in 0..255 (uint8 or float) -> ``(x / 255 - mean) / std`` per channel, as ``dtype``."""
    mean = jnp.asarray(info.mean, jnp.float32)
    std = jnp.asarray(info.std, jnp.float32)
    x = jnp.asarray(images).astype(jnp.float32)
    return ((x / 255.0 - mean) / std).astype(dtype)


def augment(rng: jax.Array, images: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """Per-example random crop of the zero-padded images back to their size, and random mirror.

    ``images`` is NHWC (any dtype). ``pad=0, flip=False`` is the identity. Jittable.
    """
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(rng)
    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
        # vmap of dynamic_slice lowers to one gather: no per-example Python loop.
        images = jax.vmap(
            lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), (h, w, c))
        )(padded, offsets)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
    return images
