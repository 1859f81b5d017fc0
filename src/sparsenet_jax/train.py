"""``python -m sparsenet_jax.train``: train, or resume, one network (``--help`` lists the flags).

The command line is :mod:`sparsenet_jax.training.cli`, the loop
:mod:`sparsenet_jax.training.loop`; this module is only the entry point.
"""

import sys

from sparsenet_jax._legacy import forward_attributes
from sparsenet_jax.training.cli import main

__all__ = ["main"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.training.loop")

if __name__ == "__main__":
    sys.exit(main())
