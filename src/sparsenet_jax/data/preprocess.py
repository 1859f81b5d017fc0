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
    n, h, w, _ = images.shape
    crop_key, flip_key = jax.random.split(rng)
    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
        images = _crop(padded, offsets, h, w)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
    return images


def _crop(padded: jax.Array, offsets: jax.Array, h: int, w: int) -> jax.Array:
    """``padded[i, oy:oy+h, ox:ox+w]`` for each image ``i`` and its ``offsets[i] = (oy, ox)``.

    The same as ``vmap`` of ``dynamic_slice``, written as static shifted
    slices and selects (2·pad + 1 a spatial axis, rows then columns): exact for
    any dtype, and elementwise, where the gather that ``vmap(dynamic_slice)``
    becomes is a loop over the batch on TPU (``tpu-compile-notes.md`` §6).
    """
    span_y, span_x = padded.shape[1] - h + 1, padded.shape[2] - w + 1
    oy = offsets[:, 0].reshape(-1, 1, 1, 1)
    ox = offsets[:, 1].reshape(-1, 1, 1, 1)
    rows = padded[:, :h]
    for dy in range(1, span_y):
        rows = jnp.where(oy == dy, padded[:, dy : dy + h], rows)
    out = rows[:, :, :w]
    for dx in range(1, span_x):
        out = jnp.where(ox == dx, rows[:, :, dx : dx + w], out)
    return out
