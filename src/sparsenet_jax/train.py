"""``python -m sparsenet_jax.train``: train, or resume, one network (``--help`` lists the flags).

The command line is :mod:`sparsenet_jax.training.cli`, the loop
:mod:`sparsenet_jax.training.loop`; this module is only the entry point.
"""

import signal
import sys

from sparsenet_jax._legacy import forward_attributes

if __name__ == "__main__":
    # Ctrl-C while jax and flax load (the first seconds) raised KeyboardInterrupt inside
    # a half-initialised extension module: a traceback, or a segmentation fault. The
    # signal is held until they have loaded, then stops the run in one line, as later on.
    _held: list[int] = []
    _default = signal.signal(signal.SIGINT, lambda signum, frame: _held.append(signum))

from sparsenet_jax.training.cli import main

__all__ = ["main"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.training.loop")

if __name__ == "__main__":
    signal.signal(signal.SIGINT, _default)
    if _held:
        print("SIGINT before the first step finished: nothing to save", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    sys.exit(main())
