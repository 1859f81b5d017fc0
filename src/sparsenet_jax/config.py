"""The training configuration, the named recipes, and the command line that fills them.

Every field of :class:`TrainConfig` is a flag of ``python -m sparsenet_jax.train``
(``--batch-size 128``); a recipe (``--recipe cifar10``) sets the defaults and
flags override them. Validation errors name the field and the bad value.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
from collections.abc import Sequence
from typing import Any

from sparsenet_jax.data import DATASETS
from sparsenet_jax.models import SparseNet
from sparsenet_jax.presets import LAYOUT_OVERRIDES, create_model

DTYPES: tuple[str, ...] = ("float32", "bfloat16")
# create_model arguments the run sets itself (from the dataset, or --dtype).
RUN_SET_KWARGS: dict[str, str] = {
    "num_classes": "set by the dataset",
    "in_channels": "set by the dataset",
    "dtype": "use --dtype",
    "param_dtype": "parameters stay float32",
}
SEED_LIMIT = 2**32  # jax.random.key keeps only the low 32 bits of larger seeds


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. Defaults are the CIFAR recipe of the paper."""

    recipe: str = "cifar10"
    model: str = "sparsenet-40-24"
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "cifar10"
    data_dir: str | None = None
    workdir: str = "runs/default"
    batch_size: int = 64
    eval_batch_size: int = 500
    epochs: int = 300
    max_steps: int = 0  # stop after this many steps in total (0: run all epochs)
    lr: float = 0.1
    lr_boundaries: tuple[float, ...] = (150.0, 225.0)  # epochs where the lr is multiplied
    lr_decay: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    augment_pad: int = 4  # zero-pad then random crop back; 0 disables
    augment_flip: bool = True
    seed: int = 0
    dtype: str = "float32"  # compute dtype; parameters stay float32
    log_every_steps: int = 50
    eval_every_epochs: int = 1
    checkpoint_every_steps: int = 0  # 0: at the end of every epoch
    keep_checkpoints: int = 3
    progress: bool = True
    distributed: bool = False  # call jax.distributed.initialize()
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


_CIFAR = dict(
    model="sparsenet-40-24",
    batch_size=64,
    epochs=300,
    lr=0.1,
    lr_boundaries=(150.0, 225.0),
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-4,
    augment_pad=4,
    augment_flip=True,
)
RECIPES: dict[str, dict[str, Any]] = {
    # DESIGN.md §2: the official recipe (= DenseNet's).
    "cifar10": {**_CIFAR, "dataset": "cifar10"},
    "cifar100": {**_CIFAR, "dataset": "cifar100"},
    "imagenet": dict(
        model="sparsenet-121-32",
        dataset="imagenet2012",
        batch_size=256,
        eval_batch_size=250,
        epochs=90,
        lr=0.1,
        lr_boundaries=(30.0, 60.0),
        weight_decay=1e-4,
        nesterov=True,
        log_every_steps=100,
    ),
    # The offline quickstart: scikit-learn's handwritten digits, upscaled to 32×32.
    "digits": dict(
        model="sparsenet-13-8",
        dataset="digits",
        batch_size=64,
        eval_batch_size=300,
        epochs=20,
        lr=0.1,
        lr_boundaries=(12.0, 17.0),
        weight_decay=1e-4,
        augment_pad=2,
        augment_flip=False,  # a mirrored digit is another glyph
        log_every_steps=10,
    ),
}

# Fields whose change makes an existing workdir's checkpoints meaningless.
IDENTITY_FIELDS: tuple[str, ...] = ("model", "model_kwargs", "dataset", "dtype")

_HELP = {
    "recipe": f"named defaults: {', '.join(RECIPES)}",
    "model": "preset name, e.g. sparsenet-40-24 (see sparsenet_jax.list_models())",
    "model_kwargs": "JSON overrides for create_model, e.g. '{\"dropout_rate\": 0.2}'",
    "dataset": f"one of {', '.join(DATASETS)}",
    "data_dir": "tensorflow-datasets data_dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    "workdir": "checkpoints, metrics.jsonl, config.json and TensorBoard events go here",
    "batch_size": "global batch size (all devices, all hosts)",
    "max_steps": "stop after this many steps in total (0: all epochs)",
    "lr_boundaries": "epochs at which the learning rate is multiplied by lr_decay",
    "checkpoint_every_steps": "0: at the end of every epoch",
    "dtype": f"compute dtype, one of {', '.join(DTYPES)}; parameters stay float32",
    "distributed": "multi-host: call jax.distributed.initialize() (auto-detects on TPU/SLURM)",
}


class ConfigError(ValueError):
    """A bad configuration value; the message names the field."""


def _suggest(value: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate(config: TrainConfig) -> TrainConfig:
    """Check ranges and names; raise :class:`ConfigError` naming the field."""
    if config.recipe not in RECIPES:
        raise ConfigError(
            f"recipe: unknown {config.recipe!r}{_suggest(config.recipe, list(RECIPES))}; "
            f"choose from {', '.join(RECIPES)}"
        )
    if config.dataset not in DATASETS:
        raise ConfigError(
            f"dataset: unknown {config.dataset!r}{_suggest(config.dataset, DATASETS)}; "
            f"choose from {', '.join(DATASETS)}"
        )
    if config.dtype not in DTYPES:
        raise ConfigError(
            f"dtype: must be one of {', '.join(DTYPES)}, got {config.dtype!r}"
            + _suggest(config.dtype, DTYPES)
        )
    if not isinstance(config.model_kwargs, dict):
        raise ConfigError(f"model_kwargs: must be a JSON object, got {config.model_kwargs!r}")
    _check_model_kwargs(config.model_kwargs)
    try:  # builds the (uninitialised) module: checks the name, depth and overrides
        create_model(config.model, **config.model_kwargs)
    except (ValueError, TypeError) as err:
        field = "model" if not config.model_kwargs else "model/model_kwargs"
        raise ConfigError(f"{field}: {err}") from None
    positive = ("batch_size", "eval_batch_size", "epochs", "log_every_steps", "eval_every_epochs")
    for name in positive:
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}: must be >= 1, got {getattr(config, name)}")
    for name in ("max_steps", "checkpoint_every_steps", "augment_pad", "seed"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}: must be >= 0, got {getattr(config, name)}")
    if config.seed >= SEED_LIMIT:
        raise ConfigError(f"seed: must be < 2**32, got {config.seed}")
    for name in ("lr", "momentum", "weight_decay", "lr_decay"):
        if not math.isfinite(getattr(config, name)):
            raise ConfigError(f"{name}: must be a finite number, got {getattr(config, name)}")
    if config.keep_checkpoints < 1:
        raise ConfigError(f"keep_checkpoints: must be >= 1, got {config.keep_checkpoints}")
    if not config.lr > 0:
        raise ConfigError(f"lr: must be > 0, got {config.lr}")
    if not 0 <= config.momentum < 1:
        raise ConfigError(f"momentum: must be in [0, 1), got {config.momentum}")
    if config.weight_decay < 0:
        raise ConfigError(f"weight_decay: must be >= 0, got {config.weight_decay}")
    if not 0 < config.lr_decay <= 1:
        raise ConfigError(f"lr_decay: must be in (0, 1], got {config.lr_decay}")
    bounds = list(config.lr_boundaries)
    if not all(0 < b < math.inf for b in bounds) or bounds != sorted(bounds):
        raise ConfigError(
            f"lr_boundaries: must be increasing positive epochs, got {config.lr_boundaries}"
        )
    if not config.workdir:
        raise ConfigError("workdir: must not be empty")
    if config.num_processes is not None and config.num_processes < 1:
        raise ConfigError(f"num_processes: must be >= 1, got {config.num_processes}")
    if config.process_id is not None and not (
        0 <= config.process_id < (config.num_processes or math.inf)
    ):
        raise ConfigError(
            f"process_id: must be in [0, num_processes={config.num_processes}), "
            f"got {config.process_id}"
        )
    return config


def _check_model_kwargs(kwargs: dict[str, Any]) -> None:
    valid = {f.name for f in dataclasses.fields(SparseNet)} - {"parent", "name"}
    valid = (valid | set(LAYOUT_OVERRIDES)) - set(RUN_SET_KWARGS)
    for key in kwargs:
        if key in RUN_SET_KWARGS:
            raise ConfigError(f"model_kwargs: {key!r} is not allowed ({RUN_SET_KWARGS[key]})")
        if key not in valid:
            raise ConfigError(
                f"model_kwargs: unknown key {key!r}{_suggest(key, sorted(valid))}; "
                f"valid: {', '.join(sorted(valid))}"
            )


def identity(config: TrainConfig) -> dict[str, Any]:
    """The fields a checkpoint belongs to (see :data:`IDENTITY_FIELDS`)."""
    return {name: getattr(config, name) for name in IDENTITY_FIELDS}


def to_json(config: TrainConfig) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}")
    if "lr_boundaries" in values:
        values = {**values, "lr_boundaries": tuple(values["lr_boundaries"])}
    return validate(TrainConfig(**values))


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None


def _parser_type(annotation: Any) -> Any:
    if annotation in ("bool", bool):
        return _bool
    if annotation in ("int", "int | None", int):
        return int
    if annotation in ("float", float):
        return float
    if annotation in ("dict[str, Any]",):
        return _json_object
    if annotation in ("tuple[float, ...]",):
        return _float_list
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparsenet_jax.train",
        description="Train SparseNet/DenseNet/ResNet. A recipe sets the defaults; flags override.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = _parser_type(field.type if isinstance(field.type, str) else str(field.type))
        parser.add_argument(
            flag,
            dest=field.name,
            type=kind,
            default=None,
            metavar=field.name.upper(),
            help=_HELP.get(field.name, field.name.replace("_", " "))
            + (f" (cifar10 default: {_default(field)})" if field.name != "recipe" else ""),
        )
    return parser


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse the command line into a validated config; bad input exits with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None}
    recipe = given.get("recipe", TrainConfig.recipe)
    if recipe not in RECIPES:
        parser.error(
            f"--recipe: unknown {recipe!r}{_suggest(recipe, list(RECIPES))}; "
            f"choose from {', '.join(RECIPES)}"
        )
    values = {**RECIPES[recipe], **given, "recipe": recipe}
    if "workdir" not in given:
        values["workdir"] = f"runs/{recipe}"
    try:
        return from_dict(values)
    except ConfigError as err:
        parser.error(f"--{str(err).split(':', 1)[0].replace('_', '-')}:{str(err).split(':', 1)[1]}")
    raise AssertionError("unreachable")
