"""``python -m sparsenet_jax.export``: write a trained run as a ``jax.export`` artifact.

The work is in :mod:`sparsenet_jax.tools.export`; this module is only the entry point (also
of the ``sparsenet-export`` script).
"""

import sys

from sparsenet_jax import _entry
from sparsenet_jax._legacy import forward_attributes

__all__ = ["run"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.tools.export")


def run() -> int:
    """The export's command line (Ctrl-C while it loads: see :mod:`sparsenet_jax._entry`)."""
    return _entry.run(
        "sparsenet_jax.tools.export", "SIGINT: stopped the export: nothing was written"
    )


if __name__ == "__main__":
    sys.exit(run())
