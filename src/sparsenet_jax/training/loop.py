"""The training loop behind ``python -m sparsenet_jax.train`` (the command line: :mod:`~sparsenet_jax.training.cli`).

    python -m sparsenet_jax.train --recipe digits --workdir runs/digits   # offline quickstart
    python -m sparsenet_jax.train --recipe cifar10 --workdir runs/c10     # the paper's recipe

:func:`~sparsenet_jax.training.build.build_run` makes the model and the jitted steps;
this module only runs them: one flat ``for`` over steps, with "is it time?"
checks for logging, evaluating and saving. A run resumes from the newest
good checkpoint, draws the same batches and random numbers as an
uninterrupted run, saves and exits on SIGTERM or Ctrl-C, and stops on
non-finite values without saving them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training import health, identity, input_pipeline, memory, steps
from sparsenet_jax.training import mesh as mesh_lib
from sparsenet_jax.training.build import Run, build_run, resolve
from sparsenet_jax.training.checkpoints import Checkpoints
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.reporting import (
    CompileClock,
    MetricsWriter,
    Progress,
    Record,
    StepTimer,
    best_so_far,
    update_best,
)
from sparsenet_jax.training.signals import StopSignals
from sparsenet_jax.training.start import starting_state
from sparsenet_jax.training.workdir import WorkdirLock

log = logging.getLogger("sparsenet_jax.train")

__all__ = ["RunResult", "TrainingError", "evaluate", "itstime", "train_and_evaluate"]


@dataclasses.dataclass
class RunResult:
    final_step: int
    best_test_accuracy: float | None
    best_epoch: int | float | None  # reporting.epoch_label
    num_params: int
    wall_time_s: float
    stopped_by: str = ""  # the signal's name ("SIGTERM", "SIGINT") if one stopped the run
    compile_s: float = 0.0  # XLA compilation, or reading it from the persistent cache
    last_test: dict[str, float] = dataclasses.field(default_factory=dict)
    # --seeds N: one entry a replica (seed, best_test_accuracy, best_epoch, last_test);
    # best_test_accuracy above is then the mean of the replicas' bests, last_test their mean.
    per_seed: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def stopped_by_signal(self) -> bool:
        return bool(self.stopped_by)


def itstime(step: int, every: int, total_steps: int) -> bool:
    """Every ``every`` steps (0: never), and at the last step."""
    return step == total_steps or (every > 0 and step % every == 0)


def evaluate(run: Run, state: steps.TrainState, splits: input_pipeline.Splits) -> dict[str, float]:
    """Mean loss and accuracy (top-1, and top-5 for more than 10 classes) on the test split.

    With ``--seeds``, the mean over the replicas (each one's: :func:`evaluate_seeds`).
    """
    results = evaluate_seeds(run, state, splits)
    assert results is not None  # nothing interrupts it
    return mean_over_seeds(results)


def evaluate_seeds(
    run: Run,
    state: steps.TrainState,
    splits: input_pipeline.Splits,
    interrupted: Callable[[], bool] = lambda: False,
) -> list[dict[str, float]] | None:
    """:func:`evaluate` of each replica of a ``--seeds`` run, in seed order (one for one seed).

    Returns None, having evaluated part of the test set, once ``interrupted()``
    is true: a stop signal is not kept waiting for a long evaluation.
    """
    totals: dict[str, np.ndarray] = {}
    for batch in input_pipeline.eval_batches(run.config, splits):
        if interrupted():
            return None
        sums = run.eval_step(state, mesh_lib.global_batch(batch, run.mesh))
        for key, value in jax.device_get(sums).items():  # a leading replica axis with --seeds
            totals[key] = totals.get(key, 0.0) + np.atleast_1d(np.asarray(value, np.float64))
    count = np.maximum(totals.pop("count", np.zeros(1)), 1.0)
    per_key = {"loss": totals.pop("loss") / count, "accuracy": totals.pop("correct") / count}
    for key, value in totals.items():  # correct_top5 → accuracy_top5
        per_key[key.replace("correct", "accuracy")] = value / count
    return [{key: float(v[i]) for key, v in per_key.items()} for i in range(run.seeds)]


def mean_over_seeds(results: list[dict[str, float]]) -> dict[str, float]:
    if len(results) == 1:
        return results[0]
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}


class Loop:
    """One run's loop and the things it writes to; see :func:`train_and_evaluate`."""

    def __init__(
        self,
        run: Run,
        splits: input_pipeline.Splits,
        workdir: pathlib.Path,
        checkpoints: Checkpoints,
        on_record: Any,
        stack: contextlib.ExitStack,
    ) -> None:
        self.run, self.config, self.splits = run, run.config, splits
        self.checkpoints = checkpoints
        self.state = starting_state(run, workdir, self.checkpoints)
        self.first_step = int(self.state.step)
        self.writer = stack.enter_context(
            contextlib.closing(MetricsWriter(workdir, self.first_step, on_record))
        )
        enabled = run.config.progress and jax.process_index() == 0
        self.progress = stack.enter_context(contextlib.closing(Progress(run.total_steps, enabled)))
        self.timer = StepTimer()
        # The replicas' seeds, which records name; None for one seed (records unchanged).
        self.seeds = run.config.replica_seeds if run.seeds > 1 else None
        self.best = best_so_far(workdir / "metrics.jsonl")
        self.last_tests: list[dict[str, float]] = []
        self.tested = {r["step"] for r in health.read_records(workdir) if r.get("split") == "test"}

    def batches(self) -> Iterator[dict[str, jax.Array]]:
        """Global batches from the resume point on; time spent waiting for them is measured."""
        host = input_pipeline.train_batches(
            self.config, self.splits, self.first_step, self.run.steps_per_epoch
        )
        while True:
            start = time.time()
            batch = mesh_lib.global_batch(next(host), self.run.mesh, self.seeds is not None)
            self.timer.data_s += time.time() - start
            yield batch

    def end_of_epoch(self, step: int) -> bool:
        return step % self.run.steps_per_epoch == 0

    def maybe_log(self, step: int, metrics: dict[str, jax.Array]) -> None:
        images_a_step = self.config.batch_size * self.run.seeds
        self.timer.add(metrics, images_a_step)
        if not (
            itstime(step, self.config.log_every_steps, self.run.total_steps)
            or self.end_of_epoch(step)
        ):
            return
        records = self.timer.summary(
            step, self.run.steps_per_epoch, self.run.learning_rate, self.seeds
        )
        for record in records:  # a diverging run's own account of it first (health.py)
            self.writer.write(record)
        for record in records:
            if not math.isfinite(record["loss"]):
                whose = f"seed {record['seed']}'s loss" if "seed" in record else "the loss"
                raise TrainingError(
                    f"{whose} became {record['loss']} by step {step}; stopping without saving "
                    f"({self.checkpoints.last_saved_note()}). Lower --lr or check the data."
                )
        speed = records[0]["images_per_sec"]  # all replicas' images: the program's speed
        eta = (self.run.total_steps - step) * images_a_step / max(speed, 1e-9)
        fields = {
            "loss": float(np.mean([r["loss"] for r in records])),
            "acc": float(np.mean([r["accuracy"] for r in records])),
            "img/s": speed,
        }
        self.progress.update(step, records[0]["epoch"], fields, eta)

    def eval_due(self, step: int) -> bool:
        every_epochs = self.config.eval_every_epochs
        due = self.end_of_epoch(step) and (step // self.run.steps_per_epoch) % every_epochs == 0
        return due or step == self.run.total_steps

    def catch_up(self) -> None:
        """Evaluate the resumed state if its step was due a test record and has none.

        A stop on an epoch's last step saves without evaluating; the resumed run
        evaluates that state first, so no epoch boundary loses its test record.
        """
        step = self.first_step
        if step > 0 and step not in self.tested and self.eval_due(step):
            log.info("evaluating step %d, which the stopped run had not evaluated", step)
            self.maybe_evaluate(step)

    def maybe_evaluate(self, step: int, stop: StopSignals | None = None) -> None:
        """Evaluate if ``step`` is due; a stop signal abandons the evaluation unrecorded
        (the resumed run evaluates that step first, :meth:`catch_up`)."""
        if not self.eval_due(step):
            return
        interrupted = (lambda: stop.raised) if stop is not None else (lambda: False)
        tests = evaluate_seeds(self.run, self.state, self.splits, interrupted)
        if tests is None:
            return
        self.last_tests = tests
        epoch = step / self.run.steps_per_epoch
        for seed, result in zip(self.seeds or [None], self.last_tests, strict=True):
            named = {} if seed is None else {"seed": seed}
            record = {"split": "test", "step": step, "epoch": epoch, **named, **result}
            self.writer.write(record)
            update_best(self.best, record)

    def result(self, start: float, final_step: int, stopped_by: str, compile_s: float) -> RunResult:
        """The run's summary; with ``--seeds``, each replica's and their means."""
        per_seed: list[dict[str, Any]] = [
            {
                "seed": seed,
                "best_test_accuracy": self.best[seed][0] if seed in self.best else None,
                "best_epoch": self.best[seed][1] if seed in self.best else None,
                "last_test": last,
            }
            for seed, last in zip(
                self.seeds or [None], self.last_tests or [{}] * self.run.seeds, strict=True
            )
        ]
        bests = [self.best[seed][0] for seed in self.seeds or [None] if seed in self.best]
        first = self.best.get(None)
        return RunResult(
            final_step=final_step,
            best_test_accuracy=float(np.mean(bests)) if bests else None,
            best_epoch=first[1] if first is not None else None,
            num_params=self.run.num_params,
            wall_time_s=time.time() - start,
            stopped_by=stopped_by,
            last_test=mean_over_seeds(self.last_tests) if self.last_tests else {},
            compile_s=compile_s,
            per_seed=per_seed if self.seeds is not None else [],
        )

    def maybe_save(self, step: int, stopping: bool) -> None:
        every = self.config.checkpoint_every_steps or self.run.steps_per_epoch
        if stopping or itstime(step, every, self.run.total_steps):
            self.checkpoints.save(self.state, force=stopping)

    def train(self, stop: StopSignals) -> tuple[int, str]:
        """Run the remaining steps; return the last step and the signal that stopped it, if any."""
        step, run = self.first_step, self.run
        self.catch_up()
        stop.check()
        remaining = range(self.first_step + 1, run.total_steps + 1)
        # The range comes first: zip stops before drawing a batch past the end.
        for step, batch in zip(remaining, self.batches(), strict=False):
            self.state, metrics = run.train_step(self.state, batch)
            stop.check()  # a signal swallowed during the first compile: nothing saved yet
            stop.armed = True  # from now on a signal saves before it stops the run
            self.maybe_log(step, metrics)
            paused = time.time()
            if not stop.raised:
                self.maybe_evaluate(step, stop)
            self.maybe_save(step, stopping=stop.raised)
            self.timer.pause(time.time() - paused)
            if stop.raised:
                break
        self.checkpoints.wait()
        if stop.raised:
            self.progress.close()
            print(
                f"{stop.name}: saved checkpoint at step {step} in {self.checkpoints.folder.parent}; "
                "run the same command to resume",
                file=sys.stderr,
            )
        return step, stop.name


def train_and_evaluate(
    config: TrainConfig, on_record: Callable[[Record], None] | None = None
) -> RunResult:
    """Run (or resume) training as ``config`` says; return the summary.

    Args:
      config: the run (see :class:`~sparsenet_jax.training.config.TrainConfig`).
      on_record: called with every record written to ``metrics.jsonl`` (e.g.
        to draw live curves in a notebook).

    Raises:
      TrainingError: the run cannot start or go on (busy or mismatched workdir,
        too little memory, non-finite values, a failed save).
    """
    start, compile_clock = time.time(), CompileClock()
    memory.check_size(config)  # O(blocks): a huge network is refused before anything else
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # Until the first step has finished a signal stops at once: nothing to save.
    # The handlers go in before the lock, whose file tells a waiting supervisor
    # (or a test) that the run has started and may be signalled.
    with StopSignals() as stop, WorkdirLock(workdir), contextlib.ExitStack() as stack:
        # Cheap checks first: the workdir's identity before the data is read.
        resolved = resolve(config, jax.devices()[0].platform)
        checkpoints = stack.enter_context(
            contextlib.closing(
                Checkpoints(workdir, config.keep_checkpoints, config_lib.identity(resolved))
            )
        )
        identity.check_identity(workdir, resolved, checkpoints.newest_identity())
        splits = input_pipeline.load_splits(config, identity.recorded_data(workdir))
        run = build_run(config, info=splits.info)
        memory.check_fits(run)
        loop = Loop(run, splits, workdir, checkpoints, on_record, stack)
        identity.record(workdir, run.config, run.info)  # only now: a refused start leaves no trace
        log.info(
            "%s on %s: %s parameters, %d steps (%d a epoch), %s, %d devices, %d hosts",
            run.config.model,
            run.config.dataset,
            f"{run.num_params:,}",
            run.total_steps,
            run.steps_per_epoch,
            run.config.dtype,
            jax.device_count(),
            jax.process_count(),
        )
        final_step, stopped_by = loop.train(stop)
    log.info(
        "compilation: %.1f s (%d programs from the persistent cache)",
        compile_clock.seconds,
        compile_clock.cache_hits,
    )
    return loop.result(start, final_step, stopped_by, compile_clock.seconds)
