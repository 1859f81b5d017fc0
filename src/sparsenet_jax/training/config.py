"""The training configuration and the named recipes.

:class:`TrainConfig` holds every setting of a run; a recipe (``RECIPES``) lists
where it differs from the defaults, which are the paper's CIFAR recipe. Each
field carries its --help group and text in its metadata; ``flags.py`` turns the
fields into the command line. Validation errors name the field and the bad value.

Config is data: :func:`validate` checks each field on its own and imports no
model code; whether the named network fits the dataset is checked where the
run is built (:func:`sparsenet_jax.training.build.check_model`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any

from sparsenet_jax._text import did_you_mean
from sparsenet_jax.data import ALL_DATASETS, LOCAL_DATASETS, dataset_info

DTYPES: tuple[str, ...] = ("auto", "float32", "bfloat16")
# How batches reach the host: in memory (digits, CIFAR, folders), or ImageNet's grain or
# thread-pool loader (different shuffles and host splits: part of a run's identity).
LOADERS: tuple[str, ...] = ("auto", "memory", "grain", "threads")
# The paper's piecewise-constant lr, or a cosine to 0 (with a linear warm-up) for short budgets.
LR_SCHEDULES: tuple[str, ...] = ("piecewise", "cosine")
# create_model arguments the run sets itself (from the dataset, or --dtype).
RUN_SET_KWARGS: dict[str, str] = {
    "num_classes": "set by the dataset",
    "in_channels": "set by the dataset",
    "dtype": "use --dtype",
    "param_dtype": "parameters stay float32",
}
SEED_LIMIT = 2**32  # jax.random.key keeps only the low 32 bits of larger seeds
# A recipe lists where it differs from TrainConfig's defaults, which are the paper's CIFAR
# recipe (DenseNet's: SGD with Nesterov momentum, the lr divided by 10 at 50% and 75%).
RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": {"dataset": "cifar10"},
    "cifar100": {"dataset": "cifar100"},
    "imagenet": {
        **{"model": "sparsenet-121-32", "dataset": "imagenet2012", "epochs": 90},
        **{"batch_size": 256, "eval_batch_size": 250, "lr_boundaries": (30.0, 60.0)},
        "log_every_steps": 100,
    },
    # Sized for a 2-core CPU and 30 minutes of training: a wide, shallow SparseNet (three
    # growth rates, two units a block), batch 64, a cosine schedule after a one-epoch
    # warm-up, label smoothing. Sized by measured speed (README: "CIFAR-10 on a CPU"): 260
    # img/s on two quiet cores at batch 64 or 128, with either conv_impl, so an epoch is
    # about 3.2 minutes and 8 epochs and their tests fit 30 minutes.
    "cifar10-cpu": {
        **{"model": "sparsenet-10-16-32-64", "dataset": "cifar10", "dtype": "float32"},
        **{"batch_size": 64, "epochs": 8, "lr": 0.1, "lr_schedule": "cosine"},
        **{"warmup_epochs": 1.0, "label_smoothing": 0.1, "weight_decay": 5e-4},
    },
    # The offline quickstart: scikit-learn's handwritten digits, upscaled to 32×32.
    "digits": {
        **{"model": "sparsenet-13-8", "dataset": "digits", "epochs": 20, "eval_batch_size": 300},
        **{"lr_boundaries": (12.0, 17.0), "augment_pad": 2, "log_every_steps": 10},
        "augment_flip": False,  # a mirrored digit is another glyph
    },
}


def _field(group: str, default: Any, text: str) -> Any:
    """A field with its --help section title and text."""
    return dataclasses.field(default=default, metadata={"group": group, "help": text})


_MODEL, _RUN = "recipe and model", "run: output, logging, checkpoints, compilation, hosts"
_model, _data, _optim, _run = (
    functools.partial(_field, group) for group in (_MODEL, "data", "optimisation", _RUN)
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Defaults are the CIFAR recipe of the paper."""

    # --- recipe and model
    recipe: str = _model("cifar10", f"named defaults: {', '.join(RECIPES)}")
    model: str = _model("sparsenet-40-24", "preset name (sparsenet_jax.list_models())")
    model_kwargs: dict[str, Any] = dataclasses.field(
        default_factory=dict,
        metadata={"group": _MODEL, "help": 'create_model overrides, e.g. {"dropout_rate": 0.2}'},
    )
    dtype: str = _model("auto", "compute dtype: float32, bfloat16, or auto (bfloat16 on TPU)")
    # --- data
    dataset: str = _data("cifar10", f"one of {', '.join(ALL_DATASETS)}")
    data_dir: str | None = _data(
        None,
        "folder: ROOT with train/ and test/ class folders (or a packed .npz); cifar10/100: "
        "the official download or tfds data_dir; unset: $TFDS_DATA_DIR or ~/tensorflow_datasets",
    )
    image_size: int | None = _data(
        None, "folder: resize and centre-crop every image to this size (needed if sizes differ)"
    )
    loader: str = _data(
        "auto", "memory (small sets), grain or threads (ImageNet); auto: grain if installed"
    )
    augment_pad: int = _data(4, "zero-pad by this many pixels, crop back at random; 0: off")
    augment_flip: bool = _data(True, "random horizontal flips")
    eval_batch_size: int = _data(500, "images per evaluation batch (all devices)")
    # --- optimisation
    batch_size: int = _optim(64, "global batch size (all devices, all hosts)")
    epochs: int = _optim(300, "length of the schedule")
    max_steps: int = _optim(0, "stop after this many steps in total; 0: all epochs")
    lr: float = _optim(0.1, "learning rate (SGD)")
    lr_boundaries: tuple[float, ...] = _optim((150.0, 225.0), "epochs where lr is × lr_decay")
    lr_decay: float = _optim(0.1, "factor applied at each boundary")
    lr_schedule: str = _optim(
        "piecewise",
        "piecewise: × lr_decay at lr_boundaries; cosine: to 0 at the last epoch "
        "(lr_boundaries unused)",
    )
    warmup_epochs: float = _optim(0.0, "cosine: rise linearly to lr over these epochs first")
    label_smoothing: float = _optim(0.0, "train loss: this much of each label spread evenly")
    momentum: float = _optim(0.9, "SGD momentum")
    nesterov: bool = _optim(True, "Nesterov momentum")
    weight_decay: float = _optim(1e-4, "L2 penalty on the parameters")
    seed: int = _optim(0, "initialisation and data order, below 2**32")
    seeds: int = _optim(
        1, "train this many replicas in one program, seeds seed … seed+N-1 (each as --seed alone)"
    )
    init_from: str | None = _optim(
        None, "fine-tune: start from a workdir, a checkpoint folder or an official .pth file"
    )
    # --- run
    workdir: str = _run("runs/cifar10", "checkpoints, metrics, config.json (default: runs/RECIPE)")
    restore_step: int | None = _run(
        None, "resume from this checkpoint step instead of the newest (later ones are set aside)"
    )
    log_every_steps: int = _run(50, "log training metrics every N steps")
    eval_every_epochs: int = _run(1, "evaluate on the test split every N epochs")
    checkpoint_every_steps: int = _run(0, "save every N steps; 0: every epoch")
    keep_checkpoints: int = _run(3, "how many recent checkpoints to keep")
    progress: bool = _run(True, "a progress bar on stderr")
    compilation_cache_dir: str = _run("auto", "JAX compilation cache; auto: user cache, none: off")
    distributed: bool = _run(False, "multi-host: call jax.distributed.initialize()")
    coordinator_address: str | None = _run(None, "HOST:PORT of process 0 (multi-host)")
    num_processes: int | None = _run(None, "number of processes (multi-host)")
    process_id: int | None = _run(None, "this process's index (multi-host)")

    @property
    def replica_seeds(self) -> tuple[int, ...]:
        """The seeds of the ``seeds`` replicas: ``seed, seed + 1, …``."""
        return tuple(range(self.seed, self.seed + self.seeds))


# Fields whose change makes an existing workdir's checkpoints or step counter mean
# something else (the network, its inputs, its numerics, or the batches a step saw).
IDENTITY_FIELDS: tuple[str, ...] = (
    *("model", "model_kwargs", "dataset", "dtype"),
    *("seed", "batch_size", "augment_pad", "augment_flip", "image_size", "loader", "seeds"),
)
# (fields, test, what a value must be), in order: a NaN learning rate is "not finite".
_RANGES: list[tuple[tuple[str, ...], Callable[[Any], bool], str]] = [
    (("batch_size", "eval_batch_size", "epochs", "seeds"), lambda v: v >= 1, ">= 1"),
    (("log_every_steps", "eval_every_epochs", "keep_checkpoints"), lambda v: v >= 1, ">= 1"),
    (("max_steps", "checkpoint_every_steps", "augment_pad", "seed"), lambda v: v >= 0, ">= 0"),
    (("image_size", "restore_step"), lambda v: v is None or v >= 1, ">= 1"),
    (("seed",), lambda v: v < SEED_LIMIT, "< 2**32"),
    (("lr", "momentum", "weight_decay", "lr_decay"), math.isfinite, "a finite number"),
    (("warmup_epochs", "label_smoothing"), math.isfinite, "a finite number"),
    (("warmup_epochs",), lambda v: v >= 0, ">= 0"),
    (("label_smoothing",), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("lr",), lambda v: v > 0, "> 0"),
    (("momentum",), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("weight_decay",), lambda v: v >= 0, ">= 0"),
    (("lr_decay",), lambda v: 0 < v <= 1, "in (0, 1]"),
    (("num_processes",), lambda v: v is None or v >= 1, ">= 1"),
]


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


def validate(config: TrainConfig) -> TrainConfig:
    """Check types, names and ranges; raise :class:`ConfigError` naming the field."""
    for name, hint in FIELD_TYPES.items():
        if not _matches(value := getattr(config, name), hint):
            shown = hint.__name__ if isinstance(hint, type) else str(hint)
            raise ConfigError(f"{name}: expected {shown.replace('typing.', '')}, got {value!r}")
    for name, choices in (
        ("recipe", tuple(RECIPES)),
        ("dataset", ALL_DATASETS),
        ("loader", LOADERS),
        ("lr_schedule", LR_SCHEDULES),
    ):
        if (value := getattr(config, name)) not in choices:
            raise ConfigError(
                f"{name}: unknown {value!r}{did_you_mean(value, choices)}; "
                f"choose from {', '.join(choices)}"
            )
    if config.dtype not in DTYPES:
        raise ConfigError(
            f"dtype: must be one of float32, bfloat16, got {config.dtype!r}"
            f"{did_you_mean(config.dtype, DTYPES)}; or auto, the default: bfloat16 on TPU, else float32"
        )
    for names, ok, text in _RANGES:
        for name in names:
            if not ok(value := getattr(config, name)):
                raise ConfigError(f"{name}: must be {text}, got {value}")
    bounds = list(config.lr_boundaries)
    if not all(0 < b < math.inf for b in bounds) or bounds != sorted(bounds):
        raise ConfigError(
            f"lr_boundaries: must be increasing positive epochs, got {config.lr_boundaries}"
        )
    if config.warmup_epochs and config.lr_schedule != "cosine":
        raise ConfigError(
            f"warmup_epochs: only the cosine schedule has a warm-up, got {config.warmup_epochs} "
            f"with lr_schedule {config.lr_schedule}"
        )
    if config.warmup_epochs >= config.epochs:
        raise ConfigError(
            f"warmup_epochs: must be below epochs ({config.epochs}), got {config.warmup_epochs}"
        )
    if config.seed + config.seeds > SEED_LIMIT:
        raise ConfigError(
            f"seeds: seed + seeds must be at most 2**32, got {config.seed} + {config.seeds}"
        )
    if config.seeds > 1 and config.dataset == "imagenet2012":
        raise ConfigError(
            "seeds: replicas read the in-memory datasets (CIFAR, digits, folder); "
            "for imagenet2012 run one seed per run"
        )
    _validate_data(config)
    for name in ("workdir", "compilation_cache_dir"):
        if not getattr(config, name):
            raise ConfigError(f"{name}: must not be empty")
    if config.process_id is not None and not (
        0 <= config.process_id < (config.num_processes or math.inf)
    ):
        raise ConfigError(
            f"process_id: must be in [0, num_processes={config.num_processes}), "
            f"got {config.process_id}"
        )
    return config


def _validate_data(config: TrainConfig) -> None:
    """What the data flags need, checked before anything is read."""
    if config.dataset in LOCAL_DATASETS:
        if not config.data_dir:
            raise ConfigError(
                f"data_dir: --dataset {config.dataset} reads a folder with train/<class>/* and "
                "test/<class>/* (or val/), or a packed .npz of JPEGs: pass its path"
            )
        return
    size = dataset_info(config.dataset).image_size
    if config.image_size not in (None, size):
        raise ConfigError(
            f"image_size: {config.dataset} images are {size}x{size}; --image-size "
            f"({config.image_size}) applies to --dataset folder only"
        )
    if config.data_dir and config.data_dir.endswith(".npz"):
        raise ConfigError(
            f"data_dir: {config.data_dir} looks like a packed .npz of JPEGs; "
            f"read it with --dataset folder (not {config.dataset})"
        )


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type (an int is a fine float; a bool is neither)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if hint in (int, float):
        return isinstance(value, (int, hint)) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, tuple) and all(_matches(v, args[0]) for v in value)
    return isinstance(value, origin or hint)


# ``model_kwargs`` that change how a step is computed, not what: the same parameters and,
# up to rounding, the same values. A run may resume under another choice (a new backend
# default, another machine), so they are left out of its identity.
HOW_NOT_WHAT_KWARGS = frozenset({"conv_impl", "per_input_conv"})


def step_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``model_kwargs`` without :data:`HOW_NOT_WHAT_KWARGS`: those that fix what a step means."""
    return {k: v for k, v in model_kwargs.items() if k not in HOW_NOT_WHAT_KWARGS}


def identity(config: TrainConfig) -> dict[str, Any]:
    """The fields a checkpoint belongs to (see :data:`IDENTITY_FIELDS`)."""
    fields = {name: getattr(config, name) for name in IDENTITY_FIELDS}
    return {**fields, "model_kwargs": step_kwargs(config.model_kwargs)}


def to_json(config: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    """A validated config from plain values (a JSON list is fine for a tuple field)."""
    unknown = sorted(set(values) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}")
    values = {
        k: tuple(v) if typing.get_origin(FIELD_TYPES[k]) is tuple and isinstance(v, list) else v
        for k, v in values.items()
    }
    return validate(TrainConfig(**values))


# Each field's annotation, resolved: what validate() checks and what flags.py parses.
FIELD_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
