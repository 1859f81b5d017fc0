"""Checkpoints in ``workdir/checkpoints``: keep the last K, check them, resume the newest good one.

Three guarantees on top of Orbax:

* nothing non-finite is saved: the whole state (parameters, optimizer state,
  BatchNorm statistics) is checked before each save;
* every finished checkpoint gets a checksum manifest (``checkpoint_checksums/<step>.json``),
  written once Orbax has committed it, and a restore verifies it, so flipped
  bytes are caught like a truncated file;
* one broken folder never hides the good ones: a broken checkpoint is moved
  to ``checkpoints_unreadable/`` with one warning line, and the next one is tried.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import pathlib
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from sparsenet_jax._files import write_atomic
from sparsenet_jax.training import steps
from sparsenet_jax.training.errors import TrainingError


def warn(message: str) -> None:
    """One line on stderr for a recoverable problem."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


@jax.jit
def _finite_parts(state: steps.TrainState) -> dict[str, jax.Array]:
    def finite(tree: Any) -> jax.Array:
        leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
        return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)

    return {
        "parameters": finite(state.params),
        "BatchNorm statistics": finite(state.batch_stats),
        "optimizer state": finite(state.opt_state),
    }


def non_finite_parts(state: steps.TrainState) -> list[str]:
    """The parts of ``state`` holding a NaN or an infinity (empty when all is finite)."""
    return [name for name, ok in jax.device_get(_finite_parts(state)).items() if not ok]


def _digest(folder: pathlib.Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digests[str(path.relative_to(folder))] = h.hexdigest()
    return digests


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Orbax logs a traceback per failed restore; the warning line says it all."""
    loggers = [logging.getLogger(name) for name in ("absl", "orbax")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class Checkpoints:
    """Orbax CheckpointManager with checks; see the module docstring."""

    def __init__(self, workdir: pathlib.Path, keep: int) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.folder = (workdir / "checkpoints").absolute()
        self.sums = workdir.absolute() / "checkpoint_checksums"
        self.quarantine = workdir.absolute() / "checkpoints_unreadable"
        self.options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager: Any = None
        self.failed = False  # a save failed and was reported

    def _open(self) -> None:
        if self.manager is not None:
            self.manager.close()
        with _quiet_orbax():
            self.manager = self._ocp.CheckpointManager(self.folder, options=self.options)

    # -- restoring ---------------------------------------------------------

    def _problem(self, step_dir: pathlib.Path) -> str | None:
        """Why ``step_dir`` cannot be a good checkpoint, or None if it may be."""
        if not (step_dir / "_CHECKPOINT_METADATA").is_file() or not (step_dir / "default").is_dir():
            return "incomplete: no Orbax metadata"
        manifest = self.sums / f"{step_dir.name}.json"
        if manifest.exists():  # absent: saved by an older version, or killed before writing it
            try:
                expected = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError):
                return "its checksum manifest is unreadable"
            actual = _digest(step_dir)
            bad = sorted(
                k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k)
            )
            if bad:
                return f"checksum mismatch in {bad[0]}" + (
                    f" and {len(bad) - 1} more" if bad[1:] else ""
                )
        return None

    def _step_dirs(self) -> list[pathlib.Path]:
        if not self.folder.is_dir():
            return []
        return sorted(
            (p for p in self.folder.iterdir() if p.is_dir() and p.name.isdigit()),
            key=lambda p: int(p.name),
            reverse=True,
        )

    def restore_latest(self, target: steps.TrainState) -> steps.TrainState | None:
        """The newest checkpoint that verifies and restores; broken ones are moved aside.

        Raises:
          TrainingError: checkpoints exist but none is readable (training from
            step 0 would overwrite them: the user decides).
        """
        found = self._step_dirs()
        problems = {int(d.name): self._problem(d) for d in found}
        if found and all(problems.values()):
            for step, why in sorted(problems.items()):
                warn(f"checkpoint {step} in {self.folder} is unreadable ({why})")
            raise self._all_unreadable(sorted(problems))
        for step, why in problems.items():
            if why:
                self._set_aside(step, why)
        self._open()
        for step in sorted((s for s, why in problems.items() if not why), reverse=True):
            try:
                with _quiet_orbax():
                    args = self._ocp.args.StandardRestore(target)
                    return self.manager.restore(step, args=args)
            except Exception as err:  # a corrupt file the manifest did not cover
                self._set_aside(step, f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
                self._open()
        if found:
            raise self._all_unreadable(sorted(problems))
        return None

    def _set_aside(self, step: int, why: str) -> None:
        self.quarantine.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(self.folder / str(step)), dest)
        (self.sums / f"{step}.json").unlink(missing_ok=True)
        warn(
            f"checkpoint {step} in {self.folder} is unreadable ({why}); "
            f"moved to {dest}, trying an older one"
        )

    def _all_unreadable(self, found: list[int]) -> TrainingError:
        return TrainingError(
            f"every checkpoint in {self.folder} is unreadable "
            f"(steps {', '.join(map(str, found))}); move that folder away "
            "to start again from step 0"
        )

    # -- saving ------------------------------------------------------------

    def save(self, state: steps.TrainState, force: bool = False) -> None:
        """Check ``state`` is finite, then save it asynchronously (once per step)."""
        step = int(state.step)
        bad = non_finite_parts(state)
        if bad:
            raise TrainingError(
                f"the state at step {step} has non-finite {' and '.join(bad)}; "
                f"not saved ({self.last_saved_note()}). Lower --lr or check the data."
            )
        self.wait()  # the previous save has had a whole interval to finish
        if step in self.manager.all_steps():
            return
        try:
            self.manager.save(step, args=self._ocp.args.StandardSave(state), force=force)
        except Exception as err:
            raise self._save_failed(err) from err

    def wait(self) -> None:
        """Finish pending writes, then checksum every committed checkpoint lacking a manifest."""
        if self.manager is None:
            self._open()
        try:
            self.manager.wait_until_finished()
        except Exception as err:
            raise self._save_failed(err) from err
        if jax.process_index() != 0:
            return
        self.sums.mkdir(exist_ok=True)
        kept = {str(s) for s in self.manager.all_steps()}
        for manifest in self.sums.glob("*.json"):
            if manifest.stem not in kept:  # Orbax removed that checkpoint
                manifest.unlink(missing_ok=True)
        for step in kept:
            manifest = self.sums / f"{step}.json"
            if not manifest.exists() and (self.folder / step).is_dir():
                try:
                    write_atomic(manifest, json.dumps(_digest(self.folder / step), indent=0))
                except OSError as err:  # the checkpoint itself is complete; it stays usable
                    warn(f"could not write the checksums of checkpoint {step} ({err.strerror})")

    def last_saved_note(self) -> str:
        """Where the run can be resumed from, for error messages."""
        if self.manager is None:
            self._open()
        with contextlib.suppress(Exception):
            self.manager.wait_until_finished()
        saved = self.manager.latest_step()
        return (
            f"the last good checkpoint is step {saved}"
            if saved is not None
            else "no checkpoint was saved"
        )

    def _save_failed(self, err: Exception) -> TrainingError:
        """One line for a failed write (full disk, lost mount, …), naming the folder."""
        if getattr(err, "errno", None) == errno.ENOSPC or "No space left on device" in str(err):
            reason = "no space left on device"
        else:
            reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}"
        try:
            done = sorted(int(p.name) for p in self.folder.iterdir() if p.name.isdigit())
        except OSError:  # the folder itself is gone (a lost mount)
            done = []
        kept = f"the last complete checkpoint is step {done[-1]}" if done else "none was completed"
        self.failed = True
        return TrainingError(f"could not save a checkpoint in {self.folder}: {reason} ({kept})")

    def close(self) -> None:
        """Close the manager; a write error it raises again after a reported failure is dropped."""
        manager, self.manager = self.manager, None
        if manager is None:
            return
        try:
            manager.close()
        except Exception as err:
            if not self.failed:
                raise self._save_failed(err) from err
