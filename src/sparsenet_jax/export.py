"""``python -m sparsenet_jax.export``: write a trained run as a ``jax.export`` artifact.

The work is in :mod:`sparsenet_jax.tools.export`; this module is only the entry point.
"""

import sys

from sparsenet_jax._legacy import forward_attributes
from sparsenet_jax.tools.export import main

__all__ = ["main"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.tools.export")

if __name__ == "__main__":
    sys.exit(main())
