"""Checkpoints in ``workdir/checkpoints``: keep the last K, check them, restore the newest good one.

Guarantees on top of Orbax:

* nothing non-finite is saved: the whole state (parameters, optimizer state,
  BatchNorm statistics) is checked before each save;
* every finished checkpoint gets a manifest (``checkpoint_checksums/<step>.json``),
  written once Orbax has committed it: the sha256 of each of its files, and the
  identity of the run it belongs to (see :mod:`~sparsenet_jax.training.identity`);
* :meth:`Checkpoints.restore` is read-only and verifies the manifest, so
  flipped bytes are caught like a truncated file; the trainer, export and the
  notebook all restore through it;
* one broken folder never hides the good ones: :meth:`Checkpoints.resume`
  (the trainer's, on process 0 only) moves a broken checkpoint to
  ``checkpoints_unreadable/`` with one warning line, and the next one is tried.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import pathlib
import shutil
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from sparsenet_jax._files import write_atomic
from sparsenet_jax.training import steps
from sparsenet_jax.training.errors import TrainingError, warn


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


def _manifest(identity: dict[str, Any] | None, folder: pathlib.Path) -> str:
    return json.dumps({"identity": identity, "sha256": _digest(folder)}, indent=0)


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

    def __init__(
        self, workdir: pathlib.Path, keep: int = 3, identity: dict[str, Any] | None = None
    ) -> None:
        """Checkpoints of ``workdir``, keeping the newest ``keep``.

        ``identity`` (the run's identity fields) is written into each new
        checkpoint's manifest; reading needs none.
        """
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.folder = (workdir / "checkpoints").absolute()
        self.sums = workdir.absolute() / "checkpoint_checksums"
        self.quarantine = workdir.absolute() / "checkpoints_unreadable"
        self.abandoned = workdir.absolute() / "checkpoints_abandoned"
        self.identity = json.loads(json.dumps(identity)) if identity is not None else None
        self.options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=False)
        self.manager: Any = None
        self.skipped: dict[int, str] = {}  # the last restore's unreadable steps, and why
        self._saving = False  # opened to save (with create=True) by every process
        self.failed = False  # a save failed and was reported

    def _open(self, create: bool = False) -> None:
        if self.manager is not None:
            self.manager.close()
        if create:  # only a saving run makes the folder; reading one leaves no trace
            self.folder.mkdir(parents=True, exist_ok=True)
        with _quiet_orbax():
            self.manager = self._ocp.CheckpointManager(self.folder, options=self.options)

    # -- restoring ---------------------------------------------------------

    def _read_manifest(self, step: int) -> dict[str, Any] | None:
        """``{"identity", "sha256"}`` of ``step``; None when it has none (older, or killed)."""
        path = self.sums / f"{step}.json"
        if not path.exists():
            return None
        value = json.loads(path.read_text())  # OSError, JSONDecodeError: the caller's to report
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        if "sha256" not in value:  # the older format: only the checksums
            return {"identity": None, "sha256": value}
        return value

    def newest_identity(self) -> dict[str, Any] | None:
        """The identity recorded with the newest checkpoint that recorded one."""
        for step_dir in self._step_dirs():
            try:
                manifest = self._read_manifest(int(step_dir.name))
            except (OSError, ValueError):
                continue
            if manifest and isinstance(manifest.get("identity"), dict):
                return dict(manifest["identity"])
        return None

    def _problem(self, step_dir: pathlib.Path) -> str | None:
        """Why ``step_dir`` cannot be a good checkpoint, or None if it may be."""
        if not (step_dir / "_CHECKPOINT_METADATA").is_file() or not (step_dir / "default").is_dir():
            return "incomplete: no Orbax metadata"
        try:
            manifest = self._read_manifest(int(step_dir.name))
        except (OSError, ValueError):
            return "its checksum manifest is unreadable"
        if manifest is not None:  # absent: saved by an older version, or killed before writing it
            expected = manifest["sha256"]
            if not isinstance(expected, dict):
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

    def saved_steps(self) -> list[int]:
        """The steps that have a checkpoint folder, newest first."""
        return [int(d.name) for d in self._step_dirs()]

    def restore(
        self, target: Any = None, step: int | None = None, *, report: bool = True
    ) -> tuple[Any, int] | None:
        """The newest checkpoint (or ``step``'s) that verifies and restores; changes nothing.

        Args:
          target: the state to restore into (its structure, shapes and
            shardings), e.g. ``run.abstract_state()``; None restores the raw tree.
          step: restore this step only.
          report: one warning line for each unreadable checkpoint passed over.

        Returns:
          ``(state, step)``, or None when there is no checkpoint (and no ``step`` asked).

        Raises:
          TrainingError: ``step`` has no good checkpoint, or checkpoints exist
            and none is readable.
        """
        found = self.saved_steps()
        if step is not None and step not in found:
            raise TrainingError(
                f"no checkpoint of step {step} in {self.folder}; there are "
                f"{', '.join(map(str, sorted(found))) or 'none'}"
            )
        problems: dict[int, str] = {}
        self.skipped = problems  # what resume() sets aside
        for candidate in [step] if step is not None else found:
            why = self._problem(self.folder / str(candidate))
            if why is None:
                why, state = self._try_restore(candidate, target)
                if why is None:
                    return state, candidate
            problems[candidate] = why
            if report:
                warn(f"checkpoint {candidate} in {self.folder} is unreadable ({why})")
        if not found:
            return None
        raise self._all_unreadable(sorted(problems), step)

    def _try_restore(self, step: int, target: Any) -> tuple[str | None, Any]:
        """(None, state), or (why it failed, None) for a checkpoint its manifest did not cover."""
        if self.manager is None:
            self._open()
        try:
            with _quiet_orbax():
                args = self._ocp.args.StandardRestore(target)
                return None, self.manager.restore(step, args=args)
        except Exception as err:
            first = (str(err).splitlines() or [""])[0][:160]
            if (self.sums / f"{step}.json").exists():
                # Its bytes verified: the checkpoint is whole but does not fit the target.
                raise TrainingError(
                    f"checkpoint {step} in {self.folder} is intact but does not fit this "
                    f"run's state ({type(err).__name__}: {first})"
                ) from None
            return f"{type(err).__name__}: {first}", None

    def resume(self, target: Any, step: int | None = None) -> tuple[Any, int] | None:
        """The trainer's restore: broken checkpoints are moved aside first (process 0 only).

        With ``step``, the checkpoints after it are moved to ``checkpoints_abandoned/``
        so that the run goes on from ``step`` as if they had never been written.
        """
        try:
            restored = self.restore(target, step, report=False)
        except TrainingError:
            for broken, why in sorted(self.skipped.items()):  # all broken: the user decides
                warn(f"checkpoint {broken} in {self.folder} is unreadable ({why})")
            raise
        if jax.process_index() == 0:
            for broken, why in self.skipped.items():
                self._set_aside(broken, why)
            if restored is not None and step is not None:
                for later in (s for s in self.saved_steps() if s > step):
                    self._set_aside(later, f"resuming from step {step}", self.abandoned)
        if self.manager is not None:  # the next save opens it again, seeing the folder as it is
            self.manager.close()
            self.manager = None
        return restored

    def _set_aside(self, step: int, why: str, into: pathlib.Path | None = None) -> None:
        into = into or self.quarantine
        into.mkdir(parents=True, exist_ok=True)
        dest = into / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(self.folder / str(step)), dest)
        manifest = self.sums / f"{step}.json"
        if manifest.exists():
            shutil.move(str(manifest), dest.with_name(dest.name + ".manifest.json"))
        if into == self.quarantine:
            warn(f"checkpoint {step} in {self.folder} is unreadable ({why}); moved to {dest}")
        else:
            warn(f"checkpoint {step} in {self.folder} set aside ({why}): moved to {dest}")

    def _all_unreadable(self, found: list[int], step: int | None = None) -> TrainingError:
        if step is not None:
            return TrainingError(f"checkpoint {step} in {self.folder} is unreadable")
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
        if not self._saving:  # the same decision on every process: opening is collective
            self._open(create=True)
            self._saving = True
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
            if not self.folder.is_dir():
                return  # nothing was ever saved
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
                    write_atomic(manifest, _manifest(self.identity, self.folder / step))
                except OSError as err:  # the checkpoint itself is complete; it stays usable
                    warn(f"could not write the checksums of checkpoint {step} ({err.strerror})")

    def last_saved_note(self) -> str:
        """Where the run can be resumed from, for error messages."""
        if self.manager is None:
            if not self.folder.is_dir():
                return "no checkpoint was saved"
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
