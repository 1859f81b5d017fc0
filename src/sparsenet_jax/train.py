"""``python -m sparsenet_jax.train``: train, or resume, one network (``--help`` lists the flags).

The command line is :mod:`sparsenet_jax.training.cli`, the loop
:mod:`sparsenet_jax.training.loop`; this module is only the entry point (also of the
``sparsenet-train`` script).
"""

import sys

from sparsenet_jax import _entry
from sparsenet_jax._legacy import forward_attributes

__all__ = ["run"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.training.loop")


def run() -> int:
    """The trainer's command line (Ctrl-C while it loads: see :mod:`sparsenet_jax._entry`)."""
    return _entry.run(
        "sparsenet_jax.training.cli", "SIGINT before the first step finished: nothing to save"
    )


if __name__ == "__main__":
    sys.exit(run())
