"""Deterministic per-host batch orders.

Every host computes the same global order from ``(seed, epoch)`` alone and takes its
own contiguous slice of each global batch, so no host has to tell another anything.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of ``range(num_examples)`` determined by ``(seed, epoch)`` alone."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def check_hosts(batch: int, process_index: int, process_count: int) -> None:
    """``ValueError`` unless ``batch`` splits evenly over the hosts and the index is one of them."""
    if batch <= 0 or process_count <= 0 or batch % process_count:
        raise ValueError(
            f"batch size {batch} must be positive and divisible by process_count {process_count}"
        )
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")


def host_batch_indices(
    num_examples: int,
    global_batch: int,
    seed: int,
    epoch: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[np.ndarray]:
    """This host's indices for each full global batch of the epoch (remainder dropped).

    Global batch ``b`` is ``epoch_order(...)[b * global_batch:(b + 1) * global_batch]``;
    host ``p`` gets its ``p``-th contiguous slice of ``global_batch // process_count``.
    """
    check_hosts(global_batch, process_index, process_count)
    if global_batch > num_examples:
        raise ValueError(f"global batch {global_batch} > {num_examples} examples")
    num_batches = num_examples // global_batch
    order = epoch_order(num_examples, seed, epoch)[: num_batches * global_batch]
    return iter(order.reshape(num_batches, process_count, -1)[:, process_index])


def eval_batch_indices(
    num_examples: int, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(indices, mask)`` per global eval batch of ``batch_size``, this host's slice.

    Together the batches cover every example once, in order; the last one is padded
    to full size with index 0 and mask 0.0 (real examples have mask 1.0), so that
    every batch has one shape and masked sums give exact metrics.
    """
    check_hosts(batch_size, process_index, process_count)
    num_batches = -(-num_examples // batch_size)
    positions = np.arange(num_batches * batch_size)
    mask = (positions < num_examples).astype(np.float32)
    indices = np.where(positions < num_examples, positions, 0)
    shape = (num_batches, process_count, batch_size // process_count)
    return zip(
        indices.reshape(shape)[:, process_index], mask.reshape(shape)[:, process_index], strict=True
    )
