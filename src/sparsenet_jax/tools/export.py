"""Export the eval-mode network with its weights as a ``jax.export`` artifact.

The artifact is serialized StableHLO with the weights as constants, a symbolic
batch dimension and fixed image size, lowered for CPU, CUDA and TPU where the
installed JAX can target them (no accelerator is needed to lower for one). Load
it with :func:`sparsenet_jax.load_exported` (imports JAX only, not Flax) or
``jax.export.deserialize``. A ``.json`` file beside it records the input shape,
the platforms and, from a training workdir, the model and normalisation
statistics; and the artifact's sha256 with an ``identity`` digest of the
sidecar's facts, which :func:`~sparsenet_jax.load_exported` verifies before
any byte reaches jax.

Command line: ``python -m sparsenet_jax.export --workdir W --out model.jax``
exports the newest checkpoint of a training workdir. A ``--seeds N`` workdir
holds N networks: ``--seed-index I`` (0 … N-1) names the one to write, and
the sidecar records its ``seed``, ``seed_index`` and the run's ``seeds``.

Serialization needs the ``flatbuffers`` package (``pip install flatbuffers``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.export  # jax < 0.8 does not load this submodule with `import jax`
import jax.numpy as jnp

from sparsenet_jax._files import write_atomic
from sparsenet_jax.data import DatasetInfo, dataset_info
from sparsenet_jax.model.network import SparseNet
from sparsenet_jax.tools.artifact import identity_digest
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training import identity, memory, replicas
from sparsenet_jax.training.build import build_run
from sparsenet_jax.training.checkpoints import Checkpoints
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.platforms import setup_platforms

DEFAULT_PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "tpu")
PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "rocm", "tpu")  # what jax.export can lower for


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote: the file, its platforms, and notes on platforms left out."""

    path: str
    platforms: tuple[str, ...]
    notes: tuple[str, ...] = ()
    step: int | None = None  # the checkpoint exported (from a workdir)
    seed: int | None = None  # the exported network's --seed (from a workdir)
    seeds: int = 1  # how many replicas the workdir holds (--seeds)


def export_model(
    model: SparseNet,
    variables: Mapping[str, Any],
    out_path: str | os.PathLike[str],
    platforms: Sequence[str] | None = None,
    *,
    image_size: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> ExportResult:
    """Write ``model`` in eval mode with ``variables`` as a ``jax.export`` artifact.

    Args:
      model: the network (its ``dtype`` is the compute dtype of the export).
      variables: ``{"params", "batch_stats"}``.
      out_path: the file to write; ``out_path + ".json"`` gets the metadata.
      platforms: to lower for; default cpu, cuda and tpu. A platform that fails
        to lower is left out, with a note, unless none lowers.
      image_size: height = width of the input (default ``model.default_input_size``).
      metadata: extra JSON-able facts for the ``.json`` file (model name, mean/std).
        Its ``model``, ``mean`` and ``std`` (``null`` when absent) join the
        sidecar's identity with the artifact's ``sha256`` and input shape.

    Returns:
      An :class:`ExportResult`.

    Raises:
      ImportError: ``flatbuffers`` is missing (JAX's serialization needs it).
      ValueError: an unknown platform, none could be lowered for, or
        ``out_path`` is a directory.
    """
    _require_flatbuffers()
    _check_out(out_path)
    platforms = tuple(platforms or DEFAULT_PLATFORMS)
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown:
        raise ValueError(f"unknown platform(s) {unknown}: choose from {', '.join(PLATFORMS)}")
    size = image_size or model.default_input_size
    shape = jax.export.symbolic_shape(f"b, {size}, {size}, {model.in_channels}")
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    weights = jax.tree_util.tree_map(jnp.asarray, dict(variables))

    @jax.jit
    def predict(images: jax.Array) -> jax.Array:
        return model.apply(weights, images)  # type: ignore[return-value]

    exported, notes = _export_for(predict, spec, platforms)
    out = os.fspath(out_path)
    data = bytes(exported.serialize())
    extra = dict(metadata or {})
    info: dict[str, Any] = {
        "format": "jax.export",
        "input_dtype": "float32",
        "num_classes": model.num_classes,
        "compute_dtype": jnp.dtype(model.dtype).name,
        "platforms": list(exported.platforms),
        **extra,
        # The identity: what ties this sidecar to this artifact (see exported.read_sidecar).
        "sha256": hashlib.sha256(data).hexdigest(),
        "model": extra.get("model"),
        "input_shape": [None, size, size, model.in_channels],
        "mean": extra.get("mean"),
        "std": extra.get("std"),
    }
    info["identity"] = identity_digest(info)
    write_atomic(out, data)
    write_atomic(out + ".json", json.dumps(info, indent=2) + "\n")
    return ExportResult(out, tuple(exported.platforms), notes)


def _export_for(
    fn: Any, spec: jax.ShapeDtypeStruct, platforms: tuple[str, ...]
) -> tuple[jax.export.Exported, tuple[str, ...]]:
    """Lower for all ``platforms`` at once; failing that, for those that lower alone."""
    try:
        return jax.export.export(fn, platforms=platforms)(spec), ()
    except Exception:  # find which platform fails, keep the others
        pass
    good, notes = [], []
    for platform in platforms:
        try:
            jax.export.export(fn, platforms=(platform,))(spec)
            good.append(platform)
        except Exception as err:
            notes.append(f"left out {platform}: {type(err).__name__}: {str(err)[:200]}")
    if not good:
        raise ValueError(f"could not lower for any of {platforms}: " + "; ".join(notes))
    return jax.export.export(fn, platforms=tuple(good))(spec), tuple(notes)


def _require_flatbuffers() -> None:
    try:
        import flatbuffers  # noqa: F401
    except ImportError:
        raise ImportError(
            "writing a jax.export artifact needs the flatbuffers package: pip install flatbuffers"
        ) from None


def _check_out(out_path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output path that is a directory (or whose sidecar is one)."""
    out = os.fspath(out_path)
    for path in (out, out + ".json"):
        if os.path.isdir(path):
            raise ValueError(
                f"{path} is a directory: name the artifact's file, e.g. "
                f"{os.path.join(out, 'model.jax')}"
            )


def export_workdir(
    workdir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    step: int | None = None,
    dtype: str = "float32",
    platforms: Sequence[str] | None = None,
    seed_index: int | None = None,
) -> ExportResult:
    """Export the newest (or ``step``'s) checkpoint of a training workdir.

    Args:
      workdir: a ``python -m sparsenet_jax.train`` workdir (``config.json`` and
        Orbax checkpoints in ``checkpoints/<step>/``).
      out_path: the artifact to write.
      step: the checkpoint to export (default: the newest that restores).
      dtype: compute dtype of the export, ``"float32"`` or ``"bfloat16"``;
        the weights stay float32.
      platforms: see :func:`export_model`.
      seed_index: which replica of a ``--seeds N`` workdir to write, 0 … N-1
        (required there); a one-seed workdir accepts only 0.

    Raises:
      ExportError: no workdir, no config, no readable checkpoint, a missing or
        out-of-range ``seed_index``.
    """
    _check_out(out_path)
    root = pathlib.Path(workdir)
    config, info = _config_of(root, dtype)
    index = _seed_index(root, config.seeds, seed_index)
    checkpoints = Checkpoints(root)
    if not checkpoints.saved_steps():
        raise ExportError(
            f"no checkpoint in {checkpoints.folder}: train first, or pass another --workdir"
        )
    try:
        run = build_run(config, jax.devices("cpu")[:1], info=info)
    except (config_lib.ConfigError, TrainingError) as err:
        raise ExportError(f"{root / identity.CONFIG_FILE}: {err}") from None
    try:  # the trainer's verified, read-only restore
        restored = checkpoints.restore(run.abstract_state(), step)
    except TrainingError as err:
        raise ExportError(str(err)) from None
    finally:
        checkpoints.close()
    if restored is None:
        raise ExportError(
            f"no checkpoint in {checkpoints.folder}: train first, or pass another --workdir"
        )
    state, restored_step = restored
    if run.seeds > 1:  # the checkpoint holds every replica: keep the one asked for
        state = replicas.select(state, index, run.seeds)
    info = run.info
    seed = run.config.replica_seeds[index]
    metadata = {
        "model": run.config.model,
        "model_kwargs": run.config.model_kwargs,
        "dataset": info.name,
        "mean": list(info.mean),
        "std": list(info.std),
        "step": restored_step,
        "seed": seed,
        "seed_index": index,
        "seeds": run.seeds,
    }
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    result = export_model(
        run.model, variables, out_path, platforms, image_size=info.image_size, metadata=metadata
    )
    return dataclasses.replace(result, step=restored_step, seed=seed, seeds=run.seeds)


def _seed_index(root: pathlib.Path, seeds: int, asked: int | None) -> int:
    """The replica to export: ``asked``, checked against the workdir's ``--seeds``."""
    if seeds > 1 and asked is None:
        raise ExportError(
            f"{root} holds {seeds} networks (--seeds {seeds}): pass --seed-index 0 … "
            f"{seeds - 1} to choose the one to export"
        )
    if asked is None:
        return 0
    if seeds == 1 and asked != 0:
        raise ExportError(
            f"--seed-index {asked}: {root} is a run of one seed; only --seed-index 0 applies"
        )
    if not 0 <= asked < seeds:
        raise ExportError(
            f"--seed-index {asked}: {root} holds {seeds} seeds, index 0 … {seeds - 1}"
        )
    return asked


# ---------------------------------------------------------------------------
# From a training workdir


class ExportError(RuntimeError):
    """The workdir cannot be exported; the command line prints it as one line."""


def _saved_config(root: pathlib.Path) -> dict[str, Any]:
    """``root/config.json``; ExportError when there is no workdir or no readable config."""
    if not root.is_dir():
        raise ExportError(f"no such workdir: {root}")
    try:
        saved = identity.read_saved(root)
    except TrainingError as err:
        raise ExportError(str(err)) from None
    if saved is None:
        raise ExportError(f"{root} is not a training workdir: it has no config.json")
    return saved


def _config_of(root: pathlib.Path, dtype: str) -> tuple[TrainConfig, DatasetInfo]:
    """The config of ``root`` and its data's facts, for ``build_run`` (the one way to build).

    The data's facts (classes, image size, mean and std) are those the run
    recorded, so exporting needs no access to the data. A config naming a
    network too big for this machine is refused here, before anything is read
    or traced (issue 18 item 1).
    """
    saved = _saved_config(root)
    fields = {k: v for k, v in saved.items() if k != identity.DATA_KEY}
    try:
        # What only training needs (the loader, where it started from) is not checked here.
        overrides = {"dtype": dtype, "init_from": None, "loader": "auto", "restore_step": None}
        config = config_lib.from_dict({**fields, **overrides})
        info = identity.recorded_data(root) or dataset_info(config.dataset)
    except config_lib.ConfigError as err:
        raise ExportError(f"{root / identity.CONFIG_FILE}: {err}") from None
    try:
        memory.check_size(config, devices=1, train=False, info=info)
    except TrainingError as err:
        raise ExportError(str(err)) from None
    return config, info


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sparsenet_jax.export``: 0 on success, 1 with one error line."""
    parser = argparse.ArgumentParser(
        prog="python -m sparsenet_jax.export",
        description="Export a training workdir's weights as a jax.export artifact.",
    )
    parser.add_argument("--workdir", required=True, help="the training workdir")
    parser.add_argument("--out", required=True, help="the artifact to write (e.g. model.jax)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument(
        "--seed-index",
        type=int,
        metavar="I",
        help="of a --seeds N workdir, the replica to export (0 … N-1; required there)",
    )
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--platforms",
        default=",".join(DEFAULT_PLATFORMS),
        help="comma-separated platforms to lower for (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    try:
        setup_platforms()  # one line for a JAX_PLATFORMS this machine lacks; quiet on CPU
        result = export_workdir(
            args.workdir,
            args.out,
            step=args.step,
            dtype=args.dtype,
            platforms=platforms,
            seed_index=args.seed_index,
        )
    except (ExportError, ImportError, OSError, ValueError, TypeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    whose = f" of seed {result.seed} (one of {result.seeds})" if result.seeds > 1 else ""
    print(
        f"wrote {result.path} from step {result.step}{whose} for {', '.join(result.platforms)} "
        f"(metadata: {result.path}.json)"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
