"""``python -m sparsenet_jax.train``: parse the flags, set up JAX, run, and say what happened.

Exit codes: 0 finished, 1 the run could not start or go on (one ``error:`` line),
2 a bad command line, 130 / 143 stopped by Ctrl-C / SIGTERM after saving.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from sparsenet_jax import data as data_lib
from sparsenet_jax.training import flags
from sparsenet_jax.training.config import ConfigError, TrainConfig
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.loop import RunResult, train_and_evaluate
from sparsenet_jax.training.platforms import setup_platforms
from sparsenet_jax.training.reporting import duration
from sparsenet_jax.training.signals import HoldBackgroundErrors, StopRequested


def default_cache_dir() -> pathlib.Path:
    """The user cache folder for compiled programs ($XDG_CACHE_HOME or ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "sparsenet_jax" / "jax_compilation_cache"


def setup_compilation_cache(choice: str) -> str | None:
    """Turn on JAX's persistent compilation cache so a repeated or resumed run skips compiling.

    ``auto`` uses $JAX_COMPILATION_CACHE_DIR if set, else :func:`default_cache_dir`;
    ``none`` turns it off. Returns the folder in use.
    """
    if choice == "none":
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = choice
    if choice == "auto":
        folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(default_cache_dir())
    jax.config.update("jax_compilation_cache_dir", folder)
    # Cache every program that took a noticeable time to compile, however small.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


def setup_distributed(config: TrainConfig) -> None:
    """Join a multi-host run (``--distributed``); on CPU use gloo collectives."""
    if not config.distributed:
        return
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or config.coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
        )
    except (ValueError, RuntimeError) as err:
        # Outside a TPU pod slice or a SLURM / Open MPI job nothing says where
        # the coordinator is: say what to pass instead of a traceback.
        raise TrainingError(
            f"--distributed: could not join the multi-host run ({err}). On a TPU pod "
            "slice or under SLURM / Open MPI the coordinator is found automatically; "
            "elsewhere pass --coordinator-address HOST:PORT --num-processes N "
            "--process-id I on every host"
        ) from err


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    absl = logging.getLogger("absl")
    absl.setLevel(logging.WARNING)
    # "Unable to initialize backend 'tpu'" on every machine without one is noise.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    # Library lines that our own one-line errors say better: tfds searching an unprepared
    # data dir ("Variant folder … has no dataset_info.json", twice), and tensorboardX's
    # "NaN or Inf found in input tensor." once a step before the non-finite loss stops us.
    if _not_tfds_search not in absl.filters:  # once, however often this is called
        absl.addFilter(_not_tfds_search)
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)


def _not_tfds_search(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Variant folder ")


def summary_line(config: TrainConfig, result: RunResult) -> str:
    if result.per_seed:
        best = seeds_summary(result.per_seed)
    elif result.best_test_accuracy is None:
        best = "no test evaluation"
    else:
        best = (
            f"best test accuracy {100 * result.best_test_accuracy:.2f}% (epoch {result.best_epoch})"
        )
    return (
        f"done: {config.model} on {config.dataset}, step {result.final_step}, {best}, "
        f"{result.num_params:,} parameters, wall time {duration(result.wall_time_s)}"
    )


def seeds_summary(per_seed: list[dict[str, Any]]) -> str:
    """``test accuracy over 3 seeds 91.20 ± 0.15% (last evaluation; best: seed 0 91.31% ep 12, …)``."""
    last = [100 * s["last_test"]["accuracy"] for s in per_seed if s["last_test"]]
    if not last:
        return f"{len(per_seed)} seeds, no test evaluation"
    bests = ", ".join(
        f"seed {s['seed']} {100 * s['best_test_accuracy']:.2f}% ep {s['best_epoch']}"
        for s in per_seed
        if s["best_test_accuracy"] is not None
    )
    spread = float(np.std(last, ddof=1)) if len(last) > 1 else 0.0
    return (
        f"test accuracy over {len(last)} seeds {np.mean(last):.2f} ± {spread:.2f}% "
        f"(mean ± std of the last evaluation; best: {bests})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = flags.parse_args(argv)
    setup_logging()
    try:
        with HoldBackgroundErrors():
            setup_compilation_cache(config.compilation_cache_dir)
            setup_distributed(config)
            setup_platforms()  # one line for a JAX_PLATFORMS this machine lacks
            result = train_and_evaluate(config)
    except (TrainingError, data_lib.DatasetNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ConfigError as err:  # found once the data was read (an image folder's size)
        field, _, rest = str(err).partition(":")
        print(f"error: --{field.replace('_', '-')}:{rest}", file=sys.stderr)
        return 2
    except (StopRequested, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, StopRequested) else int(signal.SIGINT)
        name = signal.Signals(signum).name
        print(f"{name} before the first step finished: nothing to save", file=sys.stderr)
        return 128 + signum
    if result.stopped_by:  # a scheduler must not read a stopped run as finished
        return 128 + int(signal.Signals[result.stopped_by])
    if jax.process_index() == 0:
        print(summary_line(config, result))
    return 0
