"""``--seeds N``: N independent replicas of a run in one program.

Replica ``i`` is the run that ``--seed seed+i`` gives alone (in float32, up to
rounding that grows over the steps): its own initial
weights, data order and random numbers (augmentation, dropout). Every leaf of
the train state but the step counter gets a leading axis of size N, each
train batch is N batches (one per replica's data order) stacked on a leading
axis, and the pure steps are ``vmap``-ed over that axis (or unrolled, see
``build.default_replica_mode``). At the paper's batch of 64 one network leaves a
GPU mostly idle, which N replicas may fill. Measured so far: two replicas train
1.29× the images/s of one network on a 2-core CPU; on a v5e-1 the compiler
estimates eight at 0.81× the throughput of eight runs in turn (no time saved
there; ``benchmarks/results/tpu-v5e.md``).

With N = 1 nothing here is used: the state and batches have no replica axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsenet_jax.training import steps


def state_axes() -> steps.TrainState:
    """``vmap`` axes of a replicated state: the step counter is shared, the rest stacked."""
    return steps.TrainState(step=None, params=0, batch_stats=0, opt_state=0)  # type: ignore[arg-type]


def stack(states: Sequence[steps.TrainState]) -> steps.TrainState:
    """One state holding ``states`` as replicas (their step counters must agree)."""
    first = states[0]
    return _stacked_leaves(list(states)).replace(step=first.step)


@jax.jit
def _stacked_leaves(trees: list[Any]) -> Any:
    # One program: stacked one by one, a state's few hundred leaves took 0.7 s on CPU.
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def select(tree: Any, index: int, count: int) -> Any:
    """Replica ``index`` of a state or variables tree whose leaves lead with ``count`` replicas.

    A train state's step counter, which has no replica axis, is kept as it is.

    Raises:
      ValueError: ``index`` is not in ``[0, count)``.
    """
    if not 0 <= index < count:
        raise ValueError(f"seed index {index} is out of range: the run has {count} seeds")

    def pick(part: Any) -> Any:
        return jax.tree.map(lambda leaf: leaf[index], part)

    if isinstance(tree, steps.TrainState):  # the step counter has no replica axis
        return tree.replace(
            params=pick(tree.params),
            batch_stats=pick(tree.batch_stats),
            opt_state=pick(tree.opt_state),
        )
    return pick(tree)


REPLICA_MODES = ("vmap", "unroll")


def train_step(
    step_for_seed: Callable[..., tuple[steps.TrainState, steps.Metrics]],
    seeds: Sequence[int],
    mode: str = "vmap",
) -> Callable[[steps.TrainState, steps.Batch], tuple[steps.TrainState, steps.Metrics]]:
    """The pure step of N replicas: each metric gets a leading axis of size N.

    Args:
      step_for_seed: ``(seed, state, batch) → (state, metrics)`` of one replica.
      seeds: the replicas' seeds, in order.
      mode: ``vmap``: one batched program, where a convolution whose kernel
        differs per replica becomes a grouped convolution; ``unroll``: the N
        replicas' steps side by side in one program, each with the solo step's
        convolutions (XLA:CPU's grouped convolutions are slow).
    """
    seed_array = np.asarray(seeds, np.uint32)
    if _checked(mode) == "unroll":
        return _unrolled(step_for_seed, [int(s) for s in seeds])
    batched = jax.vmap(step_for_seed, in_axes=(0, state_axes(), 0), out_axes=(state_axes(), 0))

    def replicated_step(
        state: steps.TrainState, batch: steps.Batch
    ) -> tuple[steps.TrainState, steps.Metrics]:
        return batched(jnp.asarray(seed_array), state, batch)

    return replicated_step


def _unrolled(
    step_for_seed: Callable[..., tuple[steps.TrainState, steps.Metrics]], seeds: list[int]
) -> Callable[[steps.TrainState, steps.Batch], tuple[steps.TrainState, steps.Metrics]]:
    def replicated_step(
        state: steps.TrainState, batch: steps.Batch
    ) -> tuple[steps.TrainState, steps.Metrics]:
        count = len(seeds)
        outs = [
            step_for_seed(
                seed,
                select(state, i, count),
                {k: v[i] for k, v in batch.items()},
            )
            for i, seed in enumerate(seeds)
        ]
        return stack([new for new, _ in outs]), _stacked([m for _, m in outs])

    return replicated_step


def eval_step(
    step_fn: Callable[[steps.TrainState, steps.Batch], steps.Metrics],
    count: int,
    mode: str = "vmap",
) -> Callable[[steps.TrainState, steps.Batch], steps.Metrics]:
    """Every replica evaluated on the same batch: each sum gets a leading axis of size N.

    Args:
      step_fn: the eval step of one network.
      count: N, the number of replicas.
      mode: as :func:`train_step`'s (``vmap`` or ``unroll``).
    """
    if _checked(mode) == "vmap":
        return jax.vmap(step_fn, in_axes=(state_axes(), None))

    def replicated_eval(state: steps.TrainState, batch: steps.Batch) -> steps.Metrics:
        return _stacked([step_fn(select(state, i, count), batch) for i in range(count)])

    return replicated_eval


def _checked(mode: str) -> str:
    if mode not in REPLICA_MODES:
        raise ValueError(f"replica mode {mode!r}: choose from {', '.join(REPLICA_MODES)}")
    return mode


def _stacked(metrics: Sequence[steps.Metrics]) -> steps.Metrics:
    """The replicas' metrics, each stacked on a leading replica axis."""
    return {k: jnp.stack([m[k] for m in metrics]) for k in metrics[0]}
