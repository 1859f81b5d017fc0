"""The PyTorch peer trained with our recipe, for an equal-budget accuracy comparison.

Usage (from the repository root; every flag of ``python -m sparsenet_jax.train`` is
accepted and means the same, ``--preset`` is ``--model``)::

    python benchmarks/torch_train.py --preset sparsenet-40-24 --recipe cifar10 \\
        --dataset folder --data-dir ../shared/data/cifar10-jpeg-q75.npz --epochs 30 \\
        --seed 0 --device cuda --compile default --dtype bfloat16 --deadline-s 1800 \\
        --out torch-train.jsonl

Writes JSON lines to ``--out`` (appended, flushed line by line, so a killed run leaves
whole lines): a ``header`` (config, device, versions, parameter count, compile mode,
dtype), one ``epoch`` record per evaluation (epoch, step, train loss and accuracy,
test loss and accuracy, wall seconds, img/s, lr), and an ``end`` record (how and
why the run stopped; an ``error`` if it failed).

The same as our trainer given the same flags:

* the flags and recipes: our own parser (``flags.parse_with_extras``) and ``RECIPES``, so
  batch size, epochs, lr, schedule, momentum, Nesterov, weight decay, label smoothing,
  augmentation, eval batch size and ``--max-steps`` are ours;
* the data: our loader's decoded uint8 arrays and the mean/std it reports (an image
  folder's or .npz's own train statistics), both splits put on the device once;
* the batches: our ``epoch_order(num_train, seed, epoch)`` cut into
  ``num_train // batch_size`` batches (the remainder dropped), so every step sees the
  same examples as our step of that number;
* augmentation, on the device: zero-pad by ``augment_pad``, crop back at a uniform
  random offset per example, mirror with probability 1/2; then ``(x/255 - mean)/std``;
* the network: ``torch_peer.from_jax_model`` of the model our run builds (same layout
  and parameter count), convolutions initialised as ours (the official rule), the
  classifier's weight as Flax's ``Dense`` (truncated LeCun normal; torch's default is
  a uniform), biases 0; BatchNorm momentum 0.1 and epsilon 1e-5 as ours;
* the optimiser: SGD with momentum (Nesterov), the L2 term added to the gradients of
  the conv and linear weights only: the leaves our ``optim.decay_mask`` selects (the
  ``kernel`` leaves). The learning rate of every step is our optax schedule
  (``optim.learning_rate``), evaluated once and set on the param groups each step;
* the loss: cross-entropy with label smoothing ``s`` (target (1 - s)·one-hot + s/classes,
  as ``optax.smooth_labels``); the train loss reported is the smoothed one, the test
  loss the plain one, as ours; bfloat16 is autocast over float32 parameters.

Not the same:

* the random numbers: initial weights (torch's generator, seeded by ``--seed``) and the
  augmentation draws (a torch generator on the device, seeded by ``--seed``; same
  distribution as ours, not the same draws); the batch order is ours exactly;
* BatchNorm's running variance uses the unbiased batch variance (torch), ours the
  biased one (Flax): a factor n/(n-1) with n ≥ batch·64, in evaluation only;
* numerics: cuDNN or oneDNN kernels against XLA's, summation orders, and which ops
  autocast runs in bfloat16 against our model's dtype policy; on CUDA float32 matmuls
  may use TF32 (precision "high"; cuDNN convolutions allow TF32 by default), as XLA's
  default precision on GPU does;
* flags about our run's machinery (workdir, checkpoints, logging, loader, distributed,
  compilation cache) are ignored; ``--init-from``, ``--seeds`` above 1 and dropout are
  refused (the peer has no dropout); the test set is evaluated after every epoch.

Robustness: ``--compile`` wraps the network in ``torch.compile``; if compiling or a
compiled step raises, the run goes on eagerly and every later record carries
``compile_fallback``; the first step's time (compile included) is ``first_step_s``.
``--deadline-s`` (seconds since ``main`` started, after the imports: leave a margin
under an outside timeout) stops the run before a step that would leave no time for
the final evaluation, evaluates, and records ``stopped_early``; SIGTERM does the same
at the next step. Every run writes at least one step and one evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO, cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import sparsenet_jax as sj
import torch_peer
from sparsenet_jax import data as data_lib
from sparsenet_jax.training import optim
from sparsenet_jax.training.build import check_model, resolve_dtype
from sparsenet_jax.training.config import ConfigError, TrainConfig
from sparsenet_jax.training.flags import parse_with_extras

COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
Record = dict[str, Any]
Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


# --- command line


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The peer's own flags, next to our trainer's."""
    group = parser.add_argument_group("PyTorch peer")
    group.add_argument("--preset", dest="model", help="the same as --model")
    group.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    group.add_argument(
        "--compile", default="none", choices=COMPILE_MODES, help="torch.compile mode"
    )
    group.add_argument(
        "--deadline-s", type=float, default=0.0, help="stop by this many seconds; 0: none"
    )
    group.add_argument("--out", default=None, help="JSON-lines file, appended to")
    group.add_argument(
        "--channels-last",
        default="auto",
        choices=("auto", "true", "false"),
        help="channels_last memory format (auto: on for cuda)",
    )


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Our validated config and the peer's flags; bad input exits with status 2."""
    config, extra = parse_with_extras(argv, prog="benchmarks/torch_train.py", add_extra=add_flags)
    if config.init_from:
        raise SystemExit("benchmarks/torch_train.py: error: --init-from is not supported")
    if config.dataset == "imagenet2012":
        raise SystemExit("benchmarks/torch_train.py: error: in-memory datasets only")
    if getattr(config, "seeds", 1) != 1:  # our replicas flag: here, one run per --seed
        raise SystemExit("benchmarks/torch_train.py: error: one network per run; use --seed")
    if extra.out is None:
        extra.out = f"torch-train-{config.model}-{config.dataset}-seed{config.seed}.jsonl"
    return config, extra


def pick_device(name: str | None) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/torch_train.py: error: --device cuda, but CUDA is unavailable")
    return device


def keep_jax_on_cpu() -> None:
    """Our schedule is evaluated with JAX: on the CPU, so it takes no GPU memory."""
    if "JAX_PLATFORMS" not in os.environ:
        import jax

        jax.config.update("jax_platforms", "cpu")


# --- network and optimiser


def build_network(config: TrainConfig, info: data_lib.DatasetInfo) -> torch_peer.TorchNet:
    """The peer of the model our run builds, initialised as ours (classifier included)."""
    if config.model_kwargs.get("dropout_rate", 0.0):
        raise ConfigError("model_kwargs: the peer has no dropout (dropout_rate must be 0)")
    model = sj.create_model(
        config.model, num_classes=info.num_classes, in_channels=info.channels, **config.model_kwargs
    )
    net = torch_peer.from_jax_model(model)
    init_like_flax_dense(net.classifier.linear)
    return net


def init_like_flax_dense(linear: nn.Linear) -> None:
    """Flax's ``Dense`` kernel init: LeCun normal truncated at two stddevs; bias 0."""
    std = math.sqrt(1.0 / linear.in_features) / 0.87962566103423978
    with torch.no_grad():
        nn.init.trunc_normal_(linear.weight, 0.0, std, -2.0 * std, 2.0 * std)
        nn.init.zeros_(linear.bias)


def decayed_parameter_names(net: nn.Module) -> list[str]:
    """Conv and linear weights: the leaves our ``optim.decay_mask`` decays (``kernel``)."""
    return [
        f"{module_name}.weight"
        for module_name, module in net.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD as ``optim.make_optimizer``: L2 on the decayed weights, then (Nesterov) momentum."""
    decayed = set(decayed_parameter_names(net))
    named = list(net.named_parameters())
    groups = [
        {"params": [p for n, p in named if n in decayed], "weight_decay": config.weight_decay},
        {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
    ]
    return torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
    )


def learning_rates(config: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    """Our schedule's learning rate of every step of the run, float32 as in our step."""
    import jax
    import jax.numpy as jnp

    schedule = optim.config_learning_rate(config, steps_per_epoch)
    steps = jnp.arange(config.epochs * steps_per_epoch, dtype=jnp.int32)
    return np.asarray(jax.jit(jax.vmap(schedule))(steps), np.float32)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


# --- data on the device


@dataclasses.dataclass
class DeviceData:
    """Both splits on the device as uint8 NHWC (train zero-padded once), labels int64."""

    train_padded: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor  # (C,) float32, pixels scaled to [0, 1]
    std: torch.Tensor
    pad: int
    flip: bool
    channels_last: bool


def to_device(
    loaded: data_lib.LoadedDataset, config: TrainConfig, device: torch.device, channels_last: bool
) -> DeviceData:
    (x_train, y_train), (x_test, y_test) = loaded.train, loaded.test
    pad = config.augment_pad
    train = torch.from_numpy(np.ascontiguousarray(x_train)).to(device)
    if pad:
        train = F.pad(train, (0, 0, pad, pad, pad, pad))  # NHWC: zero rows and columns
    return DeviceData(
        train_padded=train,
        train_labels=torch.from_numpy(np.asarray(y_train, np.int64)).to(device),
        test_images=torch.from_numpy(np.ascontiguousarray(x_test)).to(device),
        test_labels=torch.from_numpy(np.asarray(y_test, np.int64)).to(device),
        mean=torch.tensor(loaded.info.mean, dtype=torch.float32, device=device),
        std=torch.tensor(loaded.info.std, dtype=torch.float32, device=device),
        pad=pad,
        flip=config.augment_flip,
        channels_last=channels_last,
    )


def normalize(images: torch.Tensor, data: DeviceData) -> torch.Tensor:
    """uint8 NHWC → float32 NCHW ``(x/255 - mean)/std`` (channels_last strides if asked)."""
    x = ((images.float() / 255.0 - data.mean) / data.std).permute(0, 3, 1, 2)
    fmt = torch.channels_last if data.channels_last else torch.contiguous_format
    return x.contiguous(memory_format=fmt)


def train_batch(
    data: DeviceData, index: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples ``index``, each cropped at a random offset of the padded image and
    mirrored with probability 1/2, in one gather; normalised."""
    n = index.shape[0]
    size = data.train_padded.shape[1] - 2 * data.pad
    device = index.device
    offsets = torch.randint(0, 2 * data.pad + 1, (n, 2), generator=gen, device=device)
    span = torch.arange(size, device=device)
    rows = offsets[:, :1] + span  # (n, size)
    cols = span.expand(n, size)
    if data.flip:
        mirror = torch.randint(0, 2, (n, 1), generator=gen, device=device).bool()
        cols = torch.where(mirror, size - 1 - span, span)
    cols = offsets[:, 1:] + cols
    images = data.train_padded[index[:, None, None], rows[:, :, None], cols[:, None, :]]
    return normalize(images, data), data.train_labels[index]


def epoch_batches(num_train: int, batch: int, seed: int, epoch: int) -> np.ndarray:
    """Our batches of ``epoch``: (steps, batch) indices of ``epoch_order``, remainder dropped."""
    steps = num_train // batch
    return data_lib.epoch_order(num_train, seed, epoch)[: steps * batch].reshape(steps, batch)


# --- steps, with the eager fallback


class Model:
    """The network and the callable that runs it: compiled, or eager after a failure."""

    def __init__(self, net: nn.Module, mode: str) -> None:
        self.net, self.mode = net, mode
        self.forward: Callable[[torch.Tensor], torch.Tensor] = net
        self.fallback: str | None = None
        if mode != "none":
            try:
                self.forward = torch.compile(
                    net, mode=None if mode == "default" else mode, dynamic=False
                )
            except Exception as err:
                self.fall_back(err)

    @property
    def compiled(self) -> bool:
        return self.forward is not self.net

    def fall_back(self, err: BaseException) -> None:
        self.fallback = first_line(err)
        self.forward = self.net
        log(f"torch.compile failed, continuing eagerly: {self.fallback}")

    def run(self, step: Callable[[Callable[[torch.Tensor], torch.Tensor]], Any]) -> Any:
        """``step(forward)``; if the compiled forward raises, ``step(net)`` instead, for good."""
        if not self.compiled:
            return step(self.net)
        try:
            return step(self.forward)
        except Exception as err:
            self.fall_back(err)
            return step(self.net)


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()[:500]


def train_step(
    model: Model,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    smoothing: float,
    autocast: Autocast,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step (the network in train mode); (smoothed loss, correct count), no sync."""

    def step(forward: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        opt.zero_grad(set_to_none=True)
        if forward is not model.net and model.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast():
            logits = forward(x).float()
        correct = (logits.argmax(1) == y).sum()
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        loss.backward()
        opt.step()
        return loss.detach(), correct

    result: tuple[torch.Tensor, torch.Tensor] = model.run(step)
    return result


def evaluate(model: Model, data: DeviceData, batch: int, autocast: Autocast) -> dict[str, float]:
    """Test loss (plain cross-entropy) and accuracy over the whole test set."""
    model.net.eval()

    def sums(forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(2, dtype=torch.float64, device=data.test_labels.device)
        with torch.no_grad():
            for start in range(0, len(data.test_labels), batch):
                x = normalize(data.test_images[start : start + batch], data)
                y = data.test_labels[start : start + batch]
                with autocast():
                    logits = forward(x).float()
                loss = F.cross_entropy(logits, y, reduction="sum")
                total += torch.stack([loss.double(), (logits.argmax(1) == y).sum().double()])
        return total

    loss, correct = model.run(sums).tolist()
    n = len(data.test_labels)
    return {"test_loss": loss / n, "test_accuracy": correct / n}


# --- records, time budget, stop signals


class Records:
    """JSON lines appended to a file, each written whole and flushed to disk."""

    def __init__(self, path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self.path = path
        self.file: TextIO = open(path, "a", encoding="utf-8")

    def write(self, record: Record) -> None:
        self.file.write(json.dumps(_finite(record), allow_nan=False, default=str) + "\n")
        self.file.flush()
        with contextlib.suppress(OSError):
            os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def _finite(value: Any) -> Any:
    """NaN and infinities as strings: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@dataclasses.dataclass
class Budget:
    """When to stop: the deadline (monotonic seconds, or None), with step and eval times."""

    deadline: float | None
    step_s: float | None = None  # moving average, compile step excluded
    first_step_s: float | None = None
    eval_s: float | None = None  # the latest evaluation's time
    signal: str | None = None  # set by the SIGTERM handler
    eval_in_steps: float = 0.0  # test images / train batch size

    def observe_step(self, seconds: float) -> None:
        if self.first_step_s is None:
            self.first_step_s = seconds
        elif self.step_s is None:
            self.step_s = seconds
        else:
            self.step_s = 0.9 * self.step_s + 0.1 * seconds

    def stop_reason(self, now: float) -> str | None:
        """Why not to take another step now (None: go on)."""
        if self.signal:
            return self.signal
        if self.deadline is None:
            return None
        if self.step_s is None:
            # Only the first step is timed, and it includes cuDNN's autotuning (or the
            # compile): 12.6 s on an H200, where a step takes about 20 ms. Judged by
            # it, an evaluation would seem to take half an hour. The next step decides.
            return "deadline" if now > self.deadline else None
        step = self.step_s
        return "deadline" if now + step + self.eval_guess(step) > self.deadline else None

    def eval_guess(self, step: float) -> float:
        """The latest evaluation's time; before the first, a generous bound: as long per
        image as a train step (about three times a forward pass)."""
        if self.eval_s is not None:
            return 1.1 * self.eval_s
        return step * self.eval_in_steps


@contextlib.contextmanager
def sigterm_stops(budget: Budget) -> Iterator[None]:
    """While inside: SIGTERM asks the run to stop at the next step (then the old handler)."""

    def handler(signum: int, frame: Any) -> None:
        budget.signal = "SIGTERM"

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: no handler
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log(message: str) -> None:
    print(f"[torch_train] {message}", file=sys.stderr, flush=True)


# --- the run


@dataclasses.dataclass
class Run:
    config: TrainConfig
    device: torch.device
    data: DeviceData
    model: Model
    opt: torch.optim.Optimizer
    lrs: np.ndarray
    steps_per_epoch: int
    total_steps: int
    autocast: Autocast
    budget: Budget
    records: Records
    started: float  # monotonic, training start
    step: int = 0
    best: float = 0.0
    last: Record = dataclasses.field(default_factory=dict)


def autocast_for(device: torch.device, dtype: str) -> Autocast:
    if dtype == "bfloat16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def setup_backend(device: torch.device) -> None:
    """cuDNN autotuning and TF32 matmuls on CUDA."""
    torch.backends.cudnn.benchmark = device.type == "cuda"
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def backend_settings() -> dict[str, Any]:
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def header(run: Run, loaded: data_lib.LoadedDataset, extra: argparse.Namespace) -> Record:
    cfg = dataclasses.asdict(run.config)
    return {
        "kind": "header",
        "config": cfg,
        "device": str(run.device),
        "device_name": device_name(run.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "params": torch_peer.count_params(run.model.net),
        "compile": extra.compile,
        "dtype": run.config.dtype,
        "channels_last": run.data.channels_last,
        "steps_per_epoch": run.steps_per_epoch,
        "total_steps": run.total_steps,
        "num_train": loaded.info.num_train,
        "num_test": loaded.info.num_test,
        "mean": loaded.info.mean,
        "std": loaded.info.std,
        "data_notes": loaded.notes,
        "deadline_s": extra.deadline_s or None,
        "decayed_parameters": len(decayed_parameter_names(run.model.net)),
        "batch_order": "sparsenet_jax epoch_order(num_train, seed, epoch)",
        **backend_settings(),
    }


def train_epoch(run: Run, epoch: int, gen: torch.Generator) -> tuple[Record, str | None]:
    """Steps of ``epoch`` until its end, the step limit or a stop; (train sums, stop reason)."""
    cfg = run.config
    order = epoch_batches(len(run.data.train_labels), cfg.batch_size, cfg.seed, epoch)
    order_t = torch.from_numpy(order).to(run.device)
    sums = torch.zeros(2, dtype=torch.float64, device=run.device)
    run.model.net.train()
    done, reason, begun = 0, None, time.monotonic()
    for b in range(order.shape[0]):
        if run.step >= run.total_steps:
            break
        if run.step > 0 and (reason := run.budget.stop_reason(time.monotonic())):
            break
        tick = time.monotonic()
        x, y = train_batch(run.data, order_t[b], gen)
        set_lr(run.opt, float(run.lrs[run.step]))
        loss, correct = train_step(run.model, run.opt, x, y, cfg.label_smoothing, run.autocast)
        sums += torch.stack([loss.double(), correct.double()])
        if run.step == 0 and run.device.type == "cuda":
            torch.cuda.synchronize(run.device)  # the first step's time is the compile time
        run.budget.observe_step(time.monotonic() - tick)
        run.step += 1
        done += 1
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.monotonic() - begun
    loss_sum, correct_sum = sums.tolist()
    return {
        "steps": done,
        "train_loss": loss_sum / max(done, 1),
        "train_accuracy": correct_sum / max(done * cfg.batch_size, 1),
        "train_s": seconds,
        "img_per_s": done * cfg.batch_size / seconds if seconds > 0 else None,
    }, reason


def epoch_record(run: Run, train: Record, reason: str | None, first: bool) -> Record:
    begun = time.monotonic()
    metrics = evaluate(run.model, run.data, run.config.eval_batch_size, run.autocast)
    run.budget.eval_s = time.monotonic() - begun
    run.best = max(run.best, metrics["test_accuracy"])
    record: Record = {
        "kind": "epoch",
        "epoch": run.step / run.steps_per_epoch,
        "step": run.step,
        **train,
        **metrics,
        "eval_s": run.budget.eval_s,
        "wall_s": time.monotonic() - run.started,
        "lr": float(run.lrs[run.step - 1]),
        "compiled": run.model.compiled,
    }
    if first:
        record["first_step_s"] = run.budget.first_step_s
        record["first_eval_s"] = run.budget.eval_s
    if run.model.fallback:
        record["compile_fallback"] = run.model.fallback
    if reason:
        record.update(stopped_early=True, stop_reason=reason)
    return record


def progress(record: Record) -> None:
    print(
        f"epoch {record['epoch']:.2f} step {record['step']}: train loss "
        f"{record['train_loss']:.4f} acc {record['train_accuracy']:.4f} | test loss "
        f"{record['test_loss']:.4f} acc {record['test_accuracy']:.4f} | "
        f"{record['img_per_s'] or 0:.0f} img/s, lr {record['lr']:.4g}, {record['wall_s']:.0f} s"
        + (" (stopped early)" if record.get("stopped_early") else ""),
        flush=True,
    )


def train(run: Run) -> Record:
    """Every epoch (or until a stop), evaluated after each; the end record."""
    gen = torch.Generator(device=run.device).manual_seed(run.config.seed)
    reason = None
    for epoch in range(run.config.epochs):
        if run.step >= run.total_steps:
            break
        train_sums, reason = train_epoch(run, epoch, gen)
        if train_sums["steps"]:
            run.last = epoch_record(run, train_sums, reason, first=epoch == 0)
            run.records.write(run.last)
            progress(run.last)
        if reason is None and not math.isfinite(train_sums["train_loss"]):
            reason = "non-finite train loss"
        if reason:
            break
    return end_record(run, reason)


def end_record(run: Run, reason: str | None, error: str | None = None) -> Record:
    record: Record = {
        "kind": "end",
        "epoch": run.step / run.steps_per_epoch,
        "step": run.step,
        "epochs_completed": run.step // run.steps_per_epoch,
        "stopped_early": reason is not None or error is not None,
        "stop_reason": reason,
        "wall_s": time.monotonic() - run.started,
        "best_test_accuracy": run.best,
        "final_test_accuracy": run.last.get("test_accuracy"),
        "first_step_s": run.budget.first_step_s,
        "compile_fallback": run.model.fallback,
    }
    if error:
        record["error"] = error
    return record


def build(
    config: TrainConfig, extra: argparse.Namespace, records: Records, process_start: float
) -> tuple[Run, data_lib.LoadedDataset]:
    device = pick_device(extra.device)
    setup_backend(device)
    loaded = data_lib.load_dataset(config.dataset, config.data_dir, config.image_size)
    check_model(config, loaded.info)
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype, device.type))
    steps_per_epoch = loaded.info.num_train // config.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size: {config.batch_size} > {loaded.info.num_train} images")
    channels_last = {"auto": device.type == "cuda", "true": True, "false": False}
    data = to_device(loaded, config, device, channels_last[extra.channels_last])
    torch.manual_seed(config.seed)
    net = build_network(config, loaded.info).to(device)
    if data.channels_last:
        net = cast(Any, net).to(memory_format=torch.channels_last)  # untyped keyword
    total = config.epochs * steps_per_epoch
    run = Run(
        config=config,
        device=device,
        data=data,
        model=Model(net, extra.compile),
        opt=make_optimizer(net, config),
        lrs=learning_rates(config, steps_per_epoch),
        steps_per_epoch=steps_per_epoch,
        total_steps=min(total, config.max_steps) if config.max_steps else total,
        autocast=autocast_for(device, config.dtype),
        budget=Budget(
            process_start + extra.deadline_s if extra.deadline_s > 0 else None,
            eval_in_steps=loaded.info.num_test / config.batch_size,
        ),
        records=records,
        started=time.monotonic(),
    )
    return run, loaded


def main(argv: Sequence[str] | None = None) -> int:
    process_start = time.monotonic()
    config, extra = parse_args(argv)
    keep_jax_on_cpu()
    records = Records(extra.out)
    run: Run | None = None
    try:
        run, loaded = build(config, extra, records, process_start)
        records.write({**header(run, loaded, extra), "setup_s": run.started - process_start})
        log(f"{run.config.model} on {device_name(run.device)}: {run.total_steps} steps")
        with sigterm_stops(run.budget):
            end = train(run)
    except BaseException as err:
        error = first_line(err)
        log(f"failed: {error}\n{traceback.format_exc()}")
        if run is None:
            records.write({"kind": "end", "stopped_early": True, "error": error})
        else:
            records.write(end_record(run, None, error))
        records.close()
        if isinstance(err, KeyboardInterrupt | SystemExit):
            raise
        return 1
    records.write(end)
    records.close()
    log(f"done: {end['step']} steps, best test accuracy {end['best_test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
