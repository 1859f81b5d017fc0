"""Training: the loop, checkpoints, metrics, and the ``python -m sparsenet_jax.train`` entry point.

    python -m sparsenet_jax.train --recipe digits --workdir runs/digits   # offline quickstart
    python -m sparsenet_jax.train --recipe cifar10 --workdir runs/c10     # the paper's recipe

The state lives replicated on a 1-D ``data`` mesh and each batch is sharded
over it (see :mod:`sparsenet_jax.steps`). A run resumes from the newest good
checkpoint in its workdir, draws the same batches and random numbers as an
uninterrupted run, saves and exits on SIGTERM, and stops on a non-finite loss
without saving the bad state.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import math
import os
import pathlib
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsenet_jax import config as config_lib
from sparsenet_jax import data as data_lib
from sparsenet_jax import steps
from sparsenet_jax.config import TrainConfig
from sparsenet_jax.presets import create_model

log = logging.getLogger("sparsenet_jax.train")


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, mismatched workdir, …)."""


# ---------------------------------------------------------------------------
# Data: host-side batches of uint8 pixels (small datasets) or float32 (ImageNet)


@dataclasses.dataclass
class Splits:
    info: data_lib.DatasetInfo
    train: tuple[np.ndarray, np.ndarray] | None  # in-memory datasets only
    test: tuple[np.ndarray, np.ndarray] | None


def load_splits(config: TrainConfig) -> Splits:
    info = data_lib.dataset_info(config.dataset)
    if config.dataset == "imagenet2012":
        return Splits(info, None, None)
    return Splits(
        info,
        data_lib.load_arrays(config.dataset, "train", config.data_dir),
        data_lib.load_arrays(config.dataset, "test", config.data_dir),
    )


def train_batches(
    config: TrainConfig, splits: Splits, epoch: int, skip: int
) -> Iterator[dict[str, np.ndarray]]:
    """This host's part of every global batch of ``epoch``, from batch ``skip`` on."""
    index, count = jax.process_index(), jax.process_count()
    if splits.train is None:
        loader = data_lib.ImageNetLoader(
            "train",
            config.batch_size,
            data_dir=config.data_dir,
            seed=config.seed,
            epoch=epoch,
            train=True,
            process_index=index,
            process_count=count,
        )
        for i, batch in enumerate(loader):
            if i >= skip:
                yield {"image": batch.images, "label": batch.labels}
        return
    images, labels = splits.train
    order = data_lib.host_batch_indices(
        len(labels), config.batch_size, config.seed, epoch, index, count
    )
    for i, idx in enumerate(order):
        if i >= skip:
            yield {"image": images[idx], "label": labels[idx]}


def eval_batches(config: TrainConfig, splits: Splits) -> Iterator[dict[str, np.ndarray]]:
    index, count = jax.process_index(), jax.process_count()
    if splits.test is None:
        loader = data_lib.ImageNetLoader(
            "validation",
            config.eval_batch_size,
            data_dir=config.data_dir,
            train=False,
            process_index=index,
            process_count=count,
        )
        for batch in loader:
            yield {"image": batch.images, "label": batch.labels, "mask": batch.mask}
        return
    images, labels = splits.test
    for idx, mask in data_lib.eval_batch_indices(len(labels), config.eval_batch_size, index, count):
        yield {"image": images[idx], "label": labels[idx], "mask": mask}


def make_preprocess(config: TrainConfig, info: data_lib.DatasetInfo) -> steps.Preprocess:
    """Augment and normalise inside the jitted step (the host only gathers uint8)."""
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    if config.dataset == "imagenet2012":  # the loader augments and normalises on the host
        return lambda rng, images, train: images.astype(dtype)

    def preprocess(rng: jax.Array, images: jax.Array, train: bool) -> jax.Array:
        if train:
            images = data_lib.augment(rng, images, pad=config.augment_pad, flip=config.augment_flip)
        return data_lib.normalize(images, info, dtype)

    return preprocess


# ---------------------------------------------------------------------------
# What a user sees


class Progress:
    """A one-line progress bar on a terminal; plain periodic lines otherwise."""

    def __init__(self, total: int, enabled: bool, stream: Any = sys.stderr) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()

    def update(self, step: int, epoch: float, fields: dict[str, float], eta_s: float) -> None:
        if not self.enabled:
            return
        done = step / max(self.total, 1)
        text = (
            f"step {step}/{self.total} ep {epoch:.2f} "
            + " ".join(f"{k} {v:.4g}" for k, v in fields.items())
            + f" ETA {_duration(eta_s)}"
        )
        if self.tty:
            width = 24
            bar = "#" * int(width * done) + "-" * (width - int(width * done))
            self.stream.write(f"\r[{bar}] {100 * done:5.1f}% {text}\x1b[K")
        else:
            self.stream.write(f"[{100 * done:5.1f}%] {text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object a line) and TensorBoard events, on process 0."""

    def __init__(
        self,
        workdir: pathlib.Path,
        resume_step: int,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.enabled = jax.process_index() == 0
        self.on_record = on_record
        self.path = workdir / "metrics.jsonl"
        self.tb: Any = None
        if not self.enabled:
            return
        if self.path.exists():
            self._truncate_after(resume_step)
        try:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tensorboard"))
        except ImportError:  # pragma: no cover - tensorboardX is a dependency
            warnings.warn("tensorboardX is missing: no TensorBoard events", stacklevel=2)

    def _truncate_after(self, step: int) -> None:
        # Records past the restored checkpoint came from a run that died; the
        # resumed run writes them again.
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except (json.JSONDecodeError, AttributeError):
                continue
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.on_record is not None:
            self.on_record(record)
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("split", "step") and isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------
# Checkpoints


class Checkpoints:
    """Orbax CheckpointManager in ``workdir/checkpoints``: keep the last K, resume the newest good one."""

    def __init__(self, workdir: pathlib.Path, keep: int) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            (workdir / "checkpoints").absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )
        self.unreadable: set[int] = set()  # skipped by restore_latest

    def save(self, state: steps.TrainState, force: bool = False) -> None:
        step = int(state.step)
        if step in self.manager.all_steps():
            if step not in self.unreadable:
                return
            # The run has recomputed the state of a broken checkpoint: replace it.
            self.manager.delete(step)
            self.unreadable.discard(step)
        try:  # also raises the error of the previous (asynchronous) save
            self.manager.save(step, args=self._ocp.args.StandardSave(state), force=force)
        except Exception as err:
            raise self._save_failed(err) from err

    def restore_latest(self, target: steps.TrainState) -> steps.TrainState | None:
        """The newest checkpoint that restores; broken ones are skipped with a warning."""
        found = sorted(self.manager.all_steps(), reverse=True)
        for step in found:
            try:
                return self.manager.restore(step, args=self._ocp.args.StandardRestore(target))
            except Exception as err:  # a truncated or corrupt checkpoint
                self.unreadable.add(step)
                warnings.warn(
                    f"checkpoint {step} in {self.manager.directory} is unreadable "
                    f"({type(err).__name__}: {str(err)[:200]}); trying an older one",
                    stacklevel=2,
                )
        if found:
            # Training from step 0 would silently overwrite them: the user decides.
            raise TrainingError(
                f"every checkpoint in {self.manager.directory} is unreadable "
                f"(steps {', '.join(map(str, sorted(found)))}); move that folder away "
                "to start again from step 0"
            )
        return None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            raise self._save_failed(err) from err

    def _save_failed(self, err: Exception) -> TrainingError:
        """One line for a failed write (full disk, lost mount, …), naming the folder."""
        folder = pathlib.Path(self.manager.directory)
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
            reason = "no space left on device"
        else:
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
        try:
            done = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
        except OSError:  # the folder itself is gone (a lost mount)
            done = []
        kept = f"the last complete checkpoint is step {done[-1]}" if done else "none was completed"
        return TrainingError(f"could not save a checkpoint in {folder}: {reason} ({kept})")

    def close(self) -> None:
        self.manager.close()


def check_workdir(workdir: pathlib.Path, config: TrainConfig) -> None:
    """Refuse to resume a workdir trained with another model or dataset; save the config."""
    path = workdir / "config.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except json.JSONDecodeError:
            saved = None
        if saved is not None:
            mine = json.loads(json.dumps(config_lib.identity(config)))
            theirs = {k: saved.get(k) for k in mine}
            if theirs != mine:
                diff = ", ".join(
                    f"{k}: workdir has {theirs[k]!r}, asked {mine[k]!r}"
                    for k in mine
                    if theirs[k] != mine[k]
                )
                raise TrainingError(
                    f"{workdir} holds a run of another configuration ({diff}); "
                    "use a new --workdir or the original settings"
                )
    if jax.process_index() == 0:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(config_lib.to_json(config) + "\n")
        os.replace(tmp, path)


# ---------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class RunResult:
    final_step: int
    best_test_accuracy: float | None
    best_epoch: int | None
    num_params: int
    wall_time_s: float
    stopped_by_signal: bool = False
    last_test: dict[str, float] = dataclasses.field(default_factory=dict)


class _SignalFlag:
    """Turns SIGTERM (preemption) into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None

    def __enter__(self) -> _SignalFlag:
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, no flag
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def evaluate(
    eval_step: Any, state: steps.TrainState, config: TrainConfig, splits: Splits, mesh: Any
) -> dict[str, float]:
    totals: dict[str, float] = {}
    for batch in eval_batches(config, splits):
        sums = eval_step(state, steps.global_batch(batch, mesh))
        for key, value in jax.device_get(sums).items():
            totals[key] = totals.get(key, 0.0) + float(value)
    count = max(totals.pop("count", 0.0), 1.0)
    result = {"loss": totals.pop("loss") / count, "accuracy": totals.pop("correct") / count}
    for key, value in totals.items():  # correct_top5 → accuracy_top5
        result[key.replace("correct", "accuracy")] = value / count
    return result


def train_and_evaluate(
    config: TrainConfig, on_record: Callable[[dict[str, Any]], None] | None = None
) -> RunResult:
    """Run (or resume) training as ``config`` says; return the summary.

    Args:
      config: the run (see :class:`~sparsenet_jax.config.TrainConfig`).
      on_record: called with every record written to ``metrics.jsonl`` (e.g.
        to draw live curves in a notebook).
    """
    start = time.time()
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    check_workdir(workdir, config)

    splits = load_splits(config)
    info = splits.info
    dtype = jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32
    model = create_model(
        config.model,
        num_classes=info.num_classes,
        **{"in_channels": info.channels, "dtype": dtype, **config.model_kwargs},
    )
    for name in ("batch_size", "eval_batch_size"):
        if getattr(config, name) % jax.device_count():
            raise TrainingError(
                f"{name} {getattr(config, name)} must be divisible by the "
                f"{jax.device_count()} devices"
            )
    if config.eval_batch_size > info.num_test:  # padding would only waste memory
        raise TrainingError(
            f"eval_batch_size {config.eval_batch_size} is larger than the "
            f"{info.num_test} test images"
        )
    steps_per_epoch = info.num_train // config.batch_size
    if steps_per_epoch < 1:
        raise TrainingError(
            f"batch_size {config.batch_size} is larger than the {info.num_train} training images"
        )
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    mesh = steps.data_mesh()
    lr = steps.piecewise_lr(config.lr, steps_per_epoch, config.lr_boundaries, config.lr_decay)
    tx = steps.make_optimizer(lr, config.momentum, config.nesterov, config.weight_decay)
    size = info.image_size
    state = steps.create_train_state(model, tx, config.seed, (1, size, size, info.channels), mesh)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))

    checkpoints = Checkpoints(workdir, config.keep_checkpoints)
    restored = checkpoints.restore_latest(state)
    if restored is not None:
        state = steps.replicate(restored, mesh)
        log.info("resumed from step %d", int(state.step))
    first_step = int(state.step)

    preprocess = make_preprocess(config, info)
    train_step = steps.jit_train_step(
        steps.make_train_step(model, tx, config.seed, preprocess), mesh
    )
    eval_step = steps.jit_eval_step(
        steps.make_eval_step(model, preprocess, top_k=5 if info.num_classes > 10 else 0), mesh
    )

    writer = MetricsWriter(workdir, first_step, on_record)
    progress = Progress(total_steps, config.progress and jax.process_index() == 0)
    checkpoint_every = config.checkpoint_every_steps or steps_per_epoch
    best: tuple[float, int] | None = _best_so_far(workdir / "metrics.jsonl")
    last_test: dict[str, float] = {}
    window: list[dict[str, jax.Array]] = []
    # Time outside train steps (eval, checkpoints) is kept out of images/s.
    window_start, window_images, data_time, paused = time.time(), 0, 0.0, 0.0
    step = first_step
    stopped = False
    log.info(
        "%s on %s: %s parameters, %d steps (%d a epoch), %d devices, %d hosts",
        config.model,
        config.dataset,
        f"{num_params:,}",
        total_steps,
        steps_per_epoch,
        jax.device_count(),
        jax.process_count(),
    )

    with _SignalFlag() as sigterm:
        while step < total_steps and not stopped:
            epoch = step // steps_per_epoch
            t_data = time.time()
            for local in train_batches(config, splits, epoch, skip=step % steps_per_epoch):
                batch = steps.global_batch(local, mesh)
                data_time += time.time() - t_data
                state, metrics = train_step(state, batch)
                step += 1
                window.append(metrics)
                window_images += config.batch_size
                end_of_epoch = step % steps_per_epoch == 0
                if step % config.log_every_steps == 0 or end_of_epoch or step == total_steps:
                    record = _summarise(window, step, steps_per_epoch, lr)
                    elapsed = time.time() - window_start - paused
                    record["images_per_sec"] = window_images / max(elapsed, 1e-9)
                    record["input_images_per_sec"] = window_images / max(data_time, 1e-9)
                    _check_finite(record, step, checkpoints)
                    writer.write(record)
                    progress.update(
                        step,
                        record["epoch"],
                        {
                            "loss": record["loss"],
                            "acc": record["accuracy"],
                            "img/s": record["images_per_sec"],
                        },
                        (total_steps - step) * elapsed / max(len(window), 1),
                    )
                    window, window_images, data_time, paused = [], 0, 0.0, 0.0
                    window_start = time.time()
                t_pause = time.time()
                save_now = step % checkpoint_every == 0 or step == total_steps
                eval_epoch = (step // steps_per_epoch) % config.eval_every_epochs == 0
                if step == total_steps or (end_of_epoch and eval_epoch):
                    last_test = evaluate(eval_step, state, config, splits, mesh)
                    test_record = {
                        "split": "test",
                        "step": step,
                        "epoch": step / steps_per_epoch,
                        **last_test,
                    }
                    writer.write(test_record)
                    if best is None or last_test["accuracy"] > best[0]:
                        best = (last_test["accuracy"], math.ceil(step / steps_per_epoch))
                if save_now or sigterm.raised:
                    if window:  # never save a state whose losses were not checked
                        _check_finite(
                            _summarise(window, step, steps_per_epoch, lr), step, checkpoints
                        )
                    checkpoints.save(state, force=sigterm.raised)
                if sigterm.raised:
                    checkpoints.wait()
                    stopped = True
                    progress.close()
                    print(
                        f"SIGTERM: saved checkpoint at step {step} in {workdir}; "
                        "run the same command to resume",
                        file=sys.stderr,
                    )
                    break
                paused += time.time() - t_pause
                if step >= total_steps:
                    break
                t_data = time.time()
    progress.close()
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    return RunResult(
        final_step=step,
        best_test_accuracy=None if best is None else best[0],
        best_epoch=None if best is None else best[1],
        num_params=num_params,
        wall_time_s=time.time() - start,
        stopped_by_signal=stopped,
        last_test=last_test,
    )


def _summarise(
    window: Sequence[dict[str, jax.Array]], step: int, steps_per_epoch: int, lr: Any
) -> dict[str, Any]:
    values = jax.device_get(window)
    record: dict[str, Any] = {"split": "train", "step": step, "epoch": step / steps_per_epoch}
    for key in values[0]:
        record[key] = float(np.mean([v[key] for v in values]))
    record["lr"] = float(lr(step - 1))
    return record


def _check_finite(record: dict[str, Any], step: int, checkpoints: Checkpoints) -> None:
    if not math.isfinite(record["loss"]):
        checkpoints.wait()
        saved = checkpoints.manager.latest_step()
        where = (
            f"the last good checkpoint is step {saved}"
            if saved is not None
            else ("no checkpoint was saved")
        )
        raise TrainingError(
            f"the loss became {record['loss']} by step {step}; stopping without saving "
            f"({where}). Lower --lr or check the data."
        )


def _best_so_far(path: pathlib.Path) -> tuple[float, int] | None:
    best = None
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("split") == "test" and (best is None or rec["accuracy"] > best[0]):
                best = (rec["accuracy"], math.ceil(rec["epoch"]))
    return best


# ---------------------------------------------------------------------------
# Entry point


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


class _HoldBackgroundErrors:
    """Hold back errors raised off the main thread while the CLI runs.

    A failed checkpoint write (a full disk) fails in many orbax/tensorstore
    threads at once, each printing a traceback, and TensorBoard's exit hook
    fails again; the same error reaches the main thread, which reports it in
    one line. So: after a good run the held errors are printed as usual; after
    a failed one they are dropped, and so are those of the interpreter's exit.
    """

    def __enter__(self) -> _HoldBackgroundErrors:
        self.held: list[Callable[[], object]] = []
        self._hooks = (sys.unraisablehook, threading.excepthook)
        sys.unraisablehook = lambda u: self.held.append(lambda: self._hooks[0](u))
        threading.excepthook = lambda a: self.held.append(lambda: self._hooks[1](a))
        for name in ("absl", "asyncio"):
            logging.getLogger(name).addFilter(self._hold)
        return self

    def _hold(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.held.append(lambda: logging.getLogger(record.name).handle(record))
        return False

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is not None:  # the error is reported; stay quiet until exit
            return
        sys.unraisablehook, threading.excepthook = self._hooks
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(self._hold)
        for emit in self.held:
            emit()


def main(argv: Sequence[str] | None = None) -> int:
    config = config_lib.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("absl").setLevel(logging.WARNING)
    # "Unable to initialize backend 'tpu'" on every machine without one is noise.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
    try:
        with _HoldBackgroundErrors():
            setup_distributed(config)
            result = train_and_evaluate(config)
    except (TrainingError, data_lib.DatasetNotFoundError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    best = (
        "no test evaluation"
        if result.best_test_accuracy is None
        else f"best test accuracy {100 * result.best_test_accuracy:.2f}% (epoch {result.best_epoch})"
    )
    if jax.process_index() == 0:
        print(
            f"done: {config.model} on {config.dataset}, step {result.final_step}, {best}, "
            f"{result.num_params:,} parameters, wall time {_duration(result.wall_time_s)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
