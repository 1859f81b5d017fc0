"""One place that builds a run: model, optimizer, mesh, initial state and the jitted steps.

The trainer, ``python -m sparsenet_jax.aot``, the notebook and the benchmarks
all call :func:`build_run`; nothing builds a step a second way, so what the
deviceless TPU check compiles is exactly what training runs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from sparsenet_jax import data as data_lib
from sparsenet_jax._text import did_you_mean
from sparsenet_jax.model.network import SparseNet
from sparsenet_jax.model.presets import LAYOUT_OVERRIDES, create_model
from sparsenet_jax.training import mesh as mesh_lib
from sparsenet_jax.training import optim, replicas, steps
from sparsenet_jax.training.config import RUN_SET_KWARGS, ConfigError, TrainConfig
from sparsenet_jax.training.errors import TrainingError


def resolve_dtype(dtype: str, platform: str) -> str:
    """``"auto"`` is bfloat16 compute on TPU (parameters stay float32), float32 elsewhere."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if platform == "tpu" else "float32"


def backend_defaults(platform: str, chosen: dict[str, Any] | None = None) -> dict[str, Any]:
    """``create_model`` settings chosen by backend; ``--model-kwargs`` (``chosen``) win.

    On TPU the networks are bound by memory traffic, and sharing each output's
    BatchNorm statistics among its readers cuts the bytes a train step moves by
    about a fifth (``benchmarks/results/tpu-compile-notes.md``). Elsewhere it is
    off: on XLA:CPU it is no faster, and in float32 its other summation order
    moves a reference SGD-step test past its bound. Same parameters either way.

    On CPU a 3×3 convolution whose input is at least twice as wide as its output
    is computed as GEMMs over shifted copies (``conv_impl="auto"``): XLA:CPU's own
    weight-gradient convolution is its slowest kernel, and its forward convolution
    works on the narrow output a few channels at a time. On a quiet 2-core machine
    the GEMM weight gradient made the sparsenet-40-24 train step 1.37× faster but
    resnet-56's 1.16× slower, whose convolutions are as wide in as out
    (``benchmarks/results/cpu-peers-2026-11-28-quiet.md`` and
    ``cpu-conv-impl-2026-11-28.md``); the GEMM forward pass and input gradient then
    made it 1.30× faster again (``cpu-gemm-conv-2026-12-06.md``).
    Not where the user asked for ``channel_bucket``, which needs XLA's convolution.
    """
    chosen = chosen or {}
    if platform == "tpu":
        return {"share_stats": True}
    if platform == "cpu" and not chosen.get("channel_bucket"):
        return {"conv_impl": "auto"}
    return {}


def default_replica_mode(platform: str) -> str:
    """How ``--seeds`` replicas share a program (:data:`replicas.REPLICA_MODES`).

    ``vmap`` batches the replicas: a convolution whose kernel differs per
    replica becomes one grouped convolution. XLA:CPU and XLA:GPU run those far
    slower than the replicas' own convolutions (``benchmarks/seeds.py``,
    sparsenet-40-24 at batch 64, two replicas against one network: 0.20× the
    images/s on the 2-core CPU, 0.50× on an H200), so there the replicas are
    unrolled. On CPU the GEMM convolutions (``conv_impl="auto"``) are batched
    products under ``vmap``, not grouped convolutions: two replicas then reached
    1.16× one network's images/s, but unrolled ones 1.29×
    (``benchmarks/results/cpu-gemm-conv-2026-12-06.md``), so unrolled stays. On TPU
    vmap is kept: for eight sparsenet-40-24 replicas on a v5e-1 the compiler estimates
    0.81× the aggregate throughput of one network under vmap and 0.93× unrolled, but
    unrolled takes 878 s to compile against 92 s
    (``benchmarks/results/tpu-v5e.md``; not timed on a chip yet).
    """
    return "vmap" if platform == "tpu" else "unroll"


@dataclasses.dataclass(frozen=True)
class Run:
    """Everything a caller needs to train, evaluate or compile ahead of time.

    Attributes:
      config: the run's configuration, with ``dtype`` resolved for the backend.
      info: the dataset's sizes and statistics.
      model: the network.
      model_kwargs: every ``create_model`` override used, dtypes as strings, so
        ``create_model(config.model, info.num_classes, **model_kwargs)`` rebuilds it.
      mesh: the 1-D ``data`` mesh the state is replicated on and batches sharded over.
      learning_rate: the schedule (a function of the step).
      tx: the optimizer.
      steps_per_epoch, total_steps: the step counter's meaning.
      train_step, eval_step: the jitted steps.
    """

    config: TrainConfig
    info: data_lib.DatasetInfo
    model: SparseNet
    model_kwargs: dict[str, Any]
    mesh: Mesh
    learning_rate: optax.Schedule
    tx: optax.GradientTransformation
    steps_per_epoch: int
    total_steps: int
    train_step: Callable[..., Any]
    eval_step: Callable[..., Any]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.info.image_size, self.info.image_size, self.info.channels)

    @property
    def seeds(self) -> int:
        """How many replicas the state holds (``--seeds``); 1: no replica axis."""
        return self.config.seeds

    def init_state(self) -> steps.TrainState:
        """The initial state (parameters, BatchNorm statistics, optimizer), replicated.

        With ``--seeds N`` it holds N replicas, replica i initialised as ``--seed seed+i``.
        """
        return mesh_lib.replicate(self._fresh_state(), self.mesh)

    def _fresh_state(self) -> steps.TrainState:
        states = [
            steps.create_train_state(self.model, self.tx, seed, (1, *self.image_shape))
            for seed in self.config.replica_seeds
        ]
        return states[0] if self.seeds == 1 else replicas.stack(states)

    def abstract_state(self) -> steps.TrainState:
        """Shapes, dtypes and shardings of the state, allocating nothing."""
        return self._abstract_state

    @functools.cached_property
    def _abstract_state(self) -> steps.TrainState:
        # Traced once: the parameter count, the memory estimate and aot all need it.
        shapes = jax.eval_shape(self._fresh_state)
        replicated, _ = mesh_lib.shardings(self.mesh)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
        )

    def abstract_batch(self, train: bool) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and shardings of one global batch, as the input pipeline delivers it."""
        stacked = train and self.seeds > 1  # one batch per replica's data order
        _, batched = mesh_lib.shardings(self.mesh, stacked)
        size = self.config.batch_size if train else self.config.eval_batch_size
        lead = (self.seeds, size) if stacked else (size,)
        # In-memory datasets arrive as uint8 and are augmented on device; the
        # ImageNet loader augments and normalises on the host.
        pixels = jnp.float32 if self.config.dataset == "imagenet2012" else jnp.uint8
        batch = {
            "image": jax.ShapeDtypeStruct((*lead, *self.image_shape), pixels, sharding=batched),
            "label": jax.ShapeDtypeStruct(lead, jnp.int32, sharding=batched),
        }
        if not train:
            batch["mask"] = jax.ShapeDtypeStruct((size,), jnp.float32, sharding=batched)
        return batch

    @functools.cached_property
    def num_params(self) -> int:
        """The network's parameter count (of one replica, with ``--seeds``)."""
        leaves = jax.tree_util.tree_leaves(self.abstract_state().params)
        return sum(leaf.size for leaf in leaves) // self.seeds


def check_model(config: TrainConfig, info: data_lib.DatasetInfo | None = None) -> None:
    """The name, depth and overrides build a network whose stem fits the dataset's images.

    ``info`` gives the image size; without it the catalogue's is used, and an
    image folder's is checked later, once its images have been read.

    Raises:
      ConfigError: naming the field (``model`` or ``model_kwargs``).
    """
    valid = {f.name for f in dataclasses.fields(SparseNet)} - {"parent", "name"}
    valid = (valid | set(LAYOUT_OVERRIDES)) - set(RUN_SET_KWARGS)
    for key in config.model_kwargs:
        if key in RUN_SET_KWARGS:
            raise ConfigError(f"model_kwargs: {key!r} is not allowed ({RUN_SET_KWARGS[key]})")
        if key not in valid:
            raise ConfigError(
                f"model_kwargs: unknown key {key!r}{did_you_mean(key, sorted(valid))}; "
                f"valid: {', '.join(sorted(valid))}"
            )
    try:  # builds the (uninitialised) module
        model = create_model(config.model, **config.model_kwargs)
    except (ValueError, TypeError) as err:
        field = "model" if not config.model_kwargs else "model/model_kwargs"
        raise ConfigError(f"{field}: {err}") from None
    if info is None and config.dataset in data_lib.LOCAL_DATASETS:
        return  # its image size is known once the data has been read
    size = (info or data_lib.dataset_info(config.dataset)).image_size
    fits = "imagenet" if size > 64 else "cifar"  # 224×224 ImageNet; 32×32 CIFAR and digits
    if model.stem != fits and "stem" not in config.model_kwargs:  # an explicit stem is a choice
        example = {"imagenet": "sparsenet-121-32", "cifar": "sparsenet-40-24"}[fits]
        raise ConfigError(
            f"model: {config.model} has the {model.stem} stem, but {config.dataset} has "
            f"{size}×{size} images; use a model with the {fits} stem, such as {example}"
        )


def resolve_loader(config: TrainConfig) -> str:
    """``auto``: in memory for small datasets; for ImageNet grain if installed, else threads.

    Raises:
      ConfigError: the loader does not serve the dataset, or grain is missing.
    """
    streamed = config.dataset == "imagenet2012"
    loader = config.loader
    if loader == "auto":
        if not streamed:
            return "memory"
        return "grain" if importlib.util.find_spec("grain") is not None else "threads"
    if (loader == "memory") == streamed:
        raise ConfigError(
            f"loader: {loader} does not serve {config.dataset}; use "
            f"{'grain or threads' if streamed else 'memory'} (or auto)"
        )
    if loader == "grain" and importlib.util.find_spec("grain") is None:
        raise ConfigError("loader: grain is not installed (pip install 'sparsenet_jax[grain]')")
    return loader


def resolve(config: TrainConfig, platform: str) -> TrainConfig:
    """``config`` as it will run on ``platform``: what ``auto`` and the backend chose.

    The compute dtype, the backend's model defaults (shared BatchNorm
    statistics on TPU, the GEMM weight gradient on CPU) merged under
    ``--model-kwargs``, and the loader: what ``config.json`` records, so the
    workdir says how the network ran.
    """
    return dataclasses.replace(
        config,
        dtype=resolve_dtype(config.dtype, platform),
        model_kwargs={**backend_defaults(platform, config.model_kwargs), **config.model_kwargs},
        loader=resolve_loader(config),
    )


def build_run(
    config: TrainConfig,
    devices: Sequence[jax.Device] | None = None,
    info: data_lib.DatasetInfo | None = None,
    replica_mode: str | None = None,
) -> Run:
    """Build the run ``config`` describes, on ``devices`` (default: all of them).

    Args:
      config: the run; ``Run.config`` is it resolved for the devices (:func:`resolve`).
      devices: may be compile-only devices (a TPU topology on a machine without
        one): nothing here allocates or runs anything on them.
      info: the dataset's facts as read (sizes, classes, statistics); default:
        the catalogue's (an image folder's are read from its data).
      replica_mode: how ``--seeds`` replicas share the program; default: the
        backend's (:func:`default_replica_mode`).

    Raises:
      TrainingError: the batch sizes do not fit the devices or the dataset.
      ConfigError: the network does not fit the data, or the loader the dataset.
    """
    if info is None:
        info = data_lib.dataset_info(config.dataset, config.data_dir, config.image_size)
    mesh = mesh_lib.data_mesh(devices)
    platform = mesh.devices.flat[0].platform
    config = resolve(config, platform)
    steps_per_epoch = _steps_per_epoch(config, info, mesh.size)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)

    lr = optim.config_learning_rate(config, steps_per_epoch)
    tx = optim.make_optimizer(lr, config.momentum, config.nesterov, config.weight_decay)
    check_model(config, info)
    model_kwargs = {
        "in_channels": info.channels,
        "dtype": config.dtype,
        **config.model_kwargs,
    }
    model = create_model(
        config.model, num_classes=info.num_classes, **{**model_kwargs, "dtype": _dtype(config)}
    )
    preprocess = make_preprocess(config, info)
    mode = replica_mode or default_replica_mode(platform)
    train_step, eval_step = _pure_steps(config, model, tx, preprocess, info.num_classes, mode)
    return Run(
        config=config,
        info=info,
        model=model,
        model_kwargs=model_kwargs,
        mesh=mesh,
        learning_rate=lr,
        tx=tx,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        train_step=mesh_lib.jit_train_step(train_step, mesh, replicas=config.seeds > 1),
        eval_step=mesh_lib.jit_eval_step(eval_step, mesh),
    )


def _pure_steps(
    config: TrainConfig,
    model: SparseNet,
    tx: optax.GradientTransformation,
    preprocess: steps.Preprocess,
    num_classes: int,
    replica_mode: str,
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The train and eval steps before jit: of one network, or vmapped over ``--seeds`` replicas."""
    top_k = 5 if num_classes > 10 else 0
    eval_step = steps.make_eval_step(model, preprocess, top_k=top_k)
    if config.seeds == 1:
        train_step = steps.make_train_step(
            model, tx, config.seed, preprocess, label_smoothing=config.label_smoothing
        )
        return train_step, eval_step
    seeded = steps.make_seeded_train_step(model, tx, preprocess, config.label_smoothing)
    train_step = replicas.train_step(seeded, config.replica_seeds, replica_mode)
    return train_step, replicas.eval_step(eval_step, config.seeds, replica_mode)


def _steps_per_epoch(config: TrainConfig, info: data_lib.DatasetInfo, devices: int) -> int:
    for name in ("batch_size", "eval_batch_size"):
        if getattr(config, name) % devices:
            raise TrainingError(
                f"{name} {getattr(config, name)} must be divisible by the {devices} devices"
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
    return steps_per_epoch


def _dtype(config: TrainConfig) -> Any:
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def make_preprocess(config: TrainConfig, info: data_lib.DatasetInfo) -> steps.Preprocess:
    """Augment and normalise inside the jitted step (the host only gathers uint8)."""
    dtype = _dtype(config)
    if config.dataset == "imagenet2012":  # the loader augments and normalises on the host
        return lambda rng, images, train: images.astype(dtype)

    def preprocess(rng: jax.Array, images: jax.Array, train: bool) -> jax.Array:
        if train:
            images = data_lib.augment(rng, images, pad=config.augment_pad, flip=config.augment_flip)
        return data_lib.normalize(images, info, dtype)

    return preprocess
