"""``python -m sparsenet_jax.aot``: compile a run for a TPU (or this machine) without running it.

The work is in :mod:`sparsenet_jax.tools.aot`; this module is only the entry point (also of
the ``sparsenet-aot`` script).
"""

import sys

from sparsenet_jax import _entry
from sparsenet_jax._legacy import forward_attributes

__all__ = ["run"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.tools.aot")


def run() -> int:
    """The TPU check's command line (Ctrl-C while it loads: see :mod:`sparsenet_jax._entry`)."""
    return _entry.run(
        "sparsenet_jax.tools.aot", "SIGINT: stopped the TPU check: nothing was written"
    )


if __name__ == "__main__":
    sys.exit(run())
