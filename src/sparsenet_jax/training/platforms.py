"""Which JAX platform a command runs on: quiet where there is no TPU, one line where there is none asked for.

Shared by ``python -m sparsenet_jax.train`` and ``python -m sparsenet_jax.aot``
(issue 18, "Noisy"). Call :func:`setup_platforms` before anything starts a
JAX backend (after ``jax.distributed.initialize``, which must come first).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

import jax
from jax._src import hardware_utils

from sparsenet_jax.training.errors import TrainingError
from sparsenet_jax.training.host_memory import reuse_host_memory


def _no_accelerator() -> bool:
    """No TPU chip and no NVIDIA GPU on this machine (the checks JAX itself makes)."""
    try:
        chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
        return chips == 0 and not hardware_utils.has_visible_nvidia_gpu()
    except Exception:  # a private API: if it moves, change nothing
        return False


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide what native code (libtpu) writes to file descriptor 2 meanwhile.

    Without a TPU, libtpu warns that TPU_WORKER_HOSTNAMES and
    TPU_ACCELERATOR_TYPE are unset: it would bury the one line that matters.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def setup_platforms() -> None:
    """Start JAX's backends now, so that a platform this machine lacks is one line.

    * ``JAX_PLATFORMS`` unset on a machine with neither a TPU nor a GPU: run on
      CPU without trying libtpu, which (when the ``[tpu]`` extra is installed)
      prints ``unexpected worker hostname`` lines at every start.
    * ``JAX_PLATFORMS=tpu|cuda|bogus`` with no such device: one line, in place
      of JAX's 30–50-line traceback (``cuda``: a bare ``AssertionError``).
    * On CPU alone, glibc's malloc keeps the step's buffers mapped between
      steps (:mod:`~sparsenet_jax.training.host_memory`): set before the backend
      starts, or its threads have their own arenas.

    Raises:
      TrainingError: the platforms asked for cannot start here.
    """
    asked = jax.config.jax_platforms  # type: ignore[attr-defined]
    if not asked and _no_accelerator():
        jax.config.update("jax_platforms", "cpu")
    if jax.config.jax_platforms == "cpu":  # type: ignore[attr-defined]
        reuse_host_memory()
    try:
        with quiet_stderr() if asked and _no_accelerator() else contextlib.nullcontext():
            jax.devices()
    except (RuntimeError, AssertionError) as err:
        if not asked:
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        reason = reason.split(" (set JAX_PLATFORMS=")[0] or f"no {asked} device on this machine"
        raise TrainingError(
            f"JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS', asked)}: {reason}; "
            "unset it to run on the devices this machine has"
        ) from None
