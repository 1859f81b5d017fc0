"""What run a workdir holds: ``config.json``, its change history, and the check on resume.

``config.json`` keeps the configuration that ran, resolved for the machine
(the compute dtype, backend defaults such as shared BatchNorm statistics on
TPU, the loader) and the facts of the data it ran on (classes, image size,
mean and std). Fields that fix what a step means (``IDENTITY_FIELDS``) must
match on resume; each checkpoint's manifest carries them too, so the check
holds when ``config.json`` is lost. Nothing is written until the first step
is about to run: a refused start leaves no trace.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import jax

from sparsenet_jax._files import read_jsonl, write_atomic
from sparsenet_jax.data import DatasetInfo
from sparsenet_jax.training import config as config_lib
from sparsenet_jax.training.config import TrainConfig
from sparsenet_jax.training.errors import TrainingError

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
DATA_KEY = "data"  # config.json's record of the dataset's facts, beside the config fields
log = logging.getLogger("sparsenet_jax.training")

# Where and how a run is watched, not what it computes.
_NOT_RECORDED = frozenset(
    {
        "workdir",
        "progress",
        "compilation_cache_dir",
        "data_dir",
        "distributed",
        "coordinator_address",
        "num_processes",
        "process_id",
        "restore_step",
    }
)
# Identity fields an older config.json may lack, and the value the older version ran with
# (None: it did not record which, so any value is accepted).
_BEFORE_RECORDED: dict[str, Any] = {"loader": None, "image_size": None, "seeds": 1}


def data_record(info: DatasetInfo) -> dict[str, Any]:
    """The dataset's facts as ``config.json`` records them (tuples as lists)."""
    return dict(json.loads(json.dumps(dataclasses.asdict(info))))


def info_from_record(record: dict[str, Any]) -> DatasetInfo:
    """The :class:`DatasetInfo` a workdir recorded (a resumed or exported run uses it)."""
    fields = {f.name for f in dataclasses.fields(DatasetInfo)}
    values: dict[str, Any] = {
        k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in fields
    }
    return DatasetInfo(**values)


def read_saved(workdir: pathlib.Path) -> dict[str, Any] | None:
    """``config.json`` as a dict; None when absent.

    Raises:
      TrainingError: it exists but is not a JSON object (the user must look).
    """
    path = workdir / CONFIG_FILE
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TrainingError(
            f"{path} is unreadable ({err}); restore it or use a new --workdir"
        ) from None
    if not isinstance(value, dict):
        raise TrainingError(
            f"{path} holds {type(value).__name__}, not a configuration; "
            "restore it or use a new --workdir"
        )
    return value


def recorded_data(workdir: pathlib.Path) -> DatasetInfo | None:
    """The data facts ``config.json`` recorded, if any (older workdirs have none)."""
    try:
        saved = read_saved(workdir)
    except TrainingError:
        return None
    record = (saved or {}).get(DATA_KEY)
    return info_from_record(record) if isinstance(record, dict) else None


def check_identity(
    workdir: pathlib.Path, config: TrainConfig, checkpoint_identity: dict[str, Any] | None
) -> None:
    """Refuse to resume ``workdir`` with another identity; write nothing.

    Args:
      workdir: the run's folder.
      config: the resolved configuration about to run.
      checkpoint_identity: the identity recorded with the newest checkpoint
        (None: no checkpoint, or none recorded one).

    Raises:
      TrainingError: the identity differs, or checkpoints exist and nothing
        says which run they belong to.
    """
    mine = config_lib.identity(config)
    mine = json.loads(json.dumps(mine))  # tuples as lists, as in the files
    saved = read_saved(workdir)
    sources = []
    if saved is not None:
        sources.append((f"{workdir / CONFIG_FILE}", saved))
    if checkpoint_identity is not None:
        sources.append(("its newest checkpoint", checkpoint_identity))
    if (
        not sources
        and (workdir / "checkpoints").is_dir()
        and any(p.name.isdigit() for p in (workdir / "checkpoints").iterdir())
    ):
        raise TrainingError(
            f"{workdir} has checkpoints but no {CONFIG_FILE} and no identity recorded with "
            "them, so nothing says which run they belong to; restore config.json or use a "
            "new --workdir"
        )
    for where, recorded in sources:
        mismatched = [k for k in config_lib.IDENTITY_FIELDS if _differs(recorded, k, mine[k])]
        if mismatched:
            diff = ", ".join(f"{k}: {_shown(recorded, k)}, asked {mine[k]!r}" for k in mismatched)
            raise TrainingError(
                f"{workdir} holds a run of another configuration ({where} says {diff}); these "
                "settings fix what a step means: resume with the saved values or use a new "
                "--workdir"
            )


def _differs(recorded: dict[str, Any], key: str, asked: Any) -> bool:
    if key == "model_kwargs" and isinstance(recorded.get(key), dict):
        # config.json keeps every kwarg that ran; only some fix what a step means.
        return config_lib.step_kwargs(recorded[key]) != asked
    if key in recorded:
        return bool(recorded[key] != asked)
    return key in _BEFORE_RECORDED and _BEFORE_RECORDED[key] not in (None, asked)


def _shown(recorded: dict[str, Any], key: str) -> str:
    if key in recorded:
        return f"workdir has {recorded[key]!r}"
    return f"workdir (an older version) ran with {_BEFORE_RECORDED[key]!r}"


def record(workdir: pathlib.Path, config: TrainConfig, info: DatasetInfo) -> None:
    """Write ``config.json`` (first start) or log and append the changed settings (a resume).

    Called once the run is about to take its first step; process 0 only.
    """
    if jax.process_index() != 0:
        return
    mine = json.loads(config_lib.to_json(config))
    saved = read_saved(workdir)
    if saved is None:
        first = {**mine, DATA_KEY: data_record(info)}
        write_atomic(workdir / CONFIG_FILE, json.dumps(first, indent=2, sort_keys=True) + "\n")
        return
    _record_changes(workdir, _effective(workdir, saved), mine)


def _effective(workdir: pathlib.Path, saved: dict[str, Any]) -> dict[str, Any]:
    """The configuration the last start used: config.json plus the recorded changes."""
    effective = dict(saved)
    history = workdir / HISTORY_FILE
    if not history.exists():
        return effective
    for entry in read_jsonl(history):
        changed = entry.get("changed")
        if not isinstance(changed, dict):
            log.warning("%s: skipped an entry without a 'changed' object", history)
            continue
        for key, pair in changed.items():
            if isinstance(pair, list) and len(pair) == 2:
                effective[key] = pair[1]
    return effective


def _record_changes(workdir: pathlib.Path, before: dict[str, Any], now: dict[str, Any]) -> None:
    changed = {
        k: [before.get(k), v]
        for k, v in now.items()
        if before.get(k) != v and k not in _NOT_RECORDED
    }
    if not changed:
        return
    log.info(
        "resuming with changed settings: %s",
        ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()),
    )
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "changed": changed}
    with (workdir / HISTORY_FILE).open("a") as f:
        f.write(json.dumps(entry) + "\n")
