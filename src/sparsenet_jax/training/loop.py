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
    best_epoch: int | None
    num_params: int
    wall_time_s: float
    stopped_by: str = ""  # the signal's name ("SIGTERM", "SIGINT") if one stopped the run
    compile_s: float = 0.0  # XLA compilation, or reading it from the persistent cache
    last_test: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def stopped_by_signal(self) -> bool:
        return bool(self.stopped_by)


def itstime(step: int, every: int, total_steps: int) -> bool:
    """Every ``every`` steps (0: never), and at the last step."""
    return step == total_steps or (every > 0 and step % every == 0)


def evaluate(run: Run, state: steps.TrainState, splits: input_pipeline.Splits) -> dict[str, float]:
    """Mean loss and accuracy (top-1, and top-5 for more than 10 classes) on the test split."""
    totals: dict[str, float] = {}
    for batch in input_pipeline.eval_batches(run.config, splits):
        sums = run.eval_step(state, mesh_lib.global_batch(batch, run.mesh))
        for key, value in jax.device_get(sums).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    count = max(totals.pop("count", 0.0), 1.0)
    result = {"loss": totals.pop("loss") / count, "accuracy": totals.pop("correct") / count}
    for key, value in totals.items():  # correct_top5 → accuracy_top5
        result[key.replace("correct", "accuracy")] = value / count
    return result


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
        self.best = best_so_far(workdir / "metrics.jsonl")
        self.last_test: dict[str, float] = {}
        self.tested = {r["step"] for r in health.read_records(workdir) if r.get("split") == "test"}

    def batches(self) -> Iterator[dict[str, jax.Array]]:
        """Global batches from the resume point on; time spent waiting for them is measured."""
        host = input_pipeline.train_batches(
            self.config, self.splits, self.first_step, self.run.steps_per_epoch
        )
        while True:
            start = time.time()
            batch = mesh_lib.global_batch(next(host), self.run.mesh)
            self.timer.data_s += time.time() - start
            yield batch

    def end_of_epoch(self, step: int) -> bool:
        return step % self.run.steps_per_epoch == 0

    def maybe_log(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.timer.add(metrics, self.config.batch_size)
        if not (
            itstime(step, self.config.log_every_steps, self.run.total_steps)
            or self.end_of_epoch(step)
        ):
            return
        steps_in_window = len(self.timer.metrics)
        elapsed = self.timer.elapsed()
        record = self.timer.summary(step, self.run.steps_per_epoch, self.run.learning_rate)
        if not math.isfinite(record["loss"]):
            self.writer.write(record)  # the run's own account of its divergence (health.py)
            raise TrainingError(
                f"the loss became {record['loss']} by step {step}; stopping without saving "
                f"({self.checkpoints.last_saved_note()}). Lower --lr or check the data."
            )
        self.writer.write(record)
        eta = (self.run.total_steps - step) * elapsed / max(steps_in_window, 1)
        fields = {
            "loss": record["loss"],
            "acc": record["accuracy"],
            "img/s": record["images_per_sec"],
        }
        self.progress.update(step, record["epoch"], fields, eta)

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

    def maybe_evaluate(self, step: int) -> None:
        if not self.eval_due(step):
            return
        self.last_test = evaluate(self.run, self.state, self.splits)
        epoch = step / self.run.steps_per_epoch
        self.writer.write({"split": "test", "step": step, "epoch": epoch, **self.last_test})
        if self.best is None or self.last_test["accuracy"] > self.best[0]:
            self.best = (self.last_test["accuracy"], math.ceil(epoch))

    def maybe_save(self, step: int, stopping: bool) -> None:
        every = self.config.checkpoint_every_steps or self.run.steps_per_epoch
        if stopping or itstime(step, every, self.run.total_steps):
            self.checkpoints.save(self.state, force=stopping)

    def train(self, stop: StopSignals) -> tuple[int, str]:
        """Run the remaining steps; return the last step and the signal that stopped it, if any."""
        step, run = self.first_step, self.run
        self.catch_up()
        remaining = range(self.first_step + 1, run.total_steps + 1)
        # The range comes first: zip stops before drawing a batch past the end.
        for step, batch in zip(remaining, self.batches(), strict=False):
            self.state, metrics = run.train_step(self.state, batch)
            stop.armed = True  # from now on a signal saves before it stops the run
            self.maybe_log(step, metrics)
            paused = time.time()
            if not stop.raised:
                self.maybe_evaluate(step)
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
    with WorkdirLock(workdir), contextlib.ExitStack() as stack:
        # Until the first step has finished a signal stops at once: nothing to save.
        stop = stack.enter_context(StopSignals())
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
    return RunResult(
        final_step=final_step,
        best_test_accuracy=None if loop.best is None else loop.best[0],
        best_epoch=None if loop.best is None else loop.best[1],
        num_params=run.num_params,
        wall_time_s=time.time() - start,
        stopped_by=stopped_by,
        last_test=loop.last_test,
        compile_s=compile_clock.seconds,
    )
