"""``python -m sparsenet_jax.train``: train, or resume, one network (``--help`` lists the flags).

The command line is :mod:`sparsenet_jax.training.cli`, the loop
:mod:`sparsenet_jax.training.loop`; this module is only the entry point (also of the
``sparsenet-train`` script).
"""

import signal
import sys

from sparsenet_jax._legacy import forward_attributes

__all__ = ["run"]
__getattr__ = forward_attributes(__name__, "sparsenet_jax.training.loop")


def run() -> int:
    """The trainer's command line; returns its exit status.

    Ctrl-C while jax and flax load (the first seconds) raised KeyboardInterrupt
    inside a half-initialised extension module: a traceback, or a segmentation
    fault. The signal is held until they have loaded, then stops the run in one
    line, as it does later on.
    """
    held: list[int] = []
    default = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        from sparsenet_jax.training.cli import main
    finally:
        signal.signal(signal.SIGINT, default)
    if held:
        print("SIGINT before the first step finished: nothing to save", file=sys.stderr)
        return 128 + signal.SIGINT
    return main()


if __name__ == "__main__":
    sys.exit(run())
