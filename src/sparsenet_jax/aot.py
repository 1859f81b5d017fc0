"""``python -m sparsenet_jax.aot``: compile a run for a TPU (or this machine) without running it.

The work is in :mod:`sparsenet_jax.tools.aot`; this module is only the entry point.
"""

import sys

from sparsenet_jax._legacy import forward_attributes
from sparsenet_jax.tools.aot import main

__all__ = ["main"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.tools.aot")

if __name__ == "__main__":
    sys.exit(main())
