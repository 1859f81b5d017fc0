"""How the commands start: their libraries load with Ctrl-C held.

Ctrl-C while jax loads (the first seconds of a command) raised KeyboardInterrupt
inside a half-initialised extension module: a traceback, or a segmentation fault
with no message. Each entry point (``python -m sparsenet_jax.train|aot|export``
and the ``sparsenet-*`` scripts) imports its command through :func:`run`, which
holds SIGINT meanwhile and, if one came, stops in one line before doing anything.
"""

from __future__ import annotations

import importlib
import signal
import sys


def run(command: str, stopped: str) -> int:
    """Import ``command`` with SIGINT held, then run its ``main()``.

    Args:
      command: the module of the command line (it has ``main() -> int``).
      stopped: the line to print when Ctrl-C came while it loaded.

    Returns:
      The exit status: ``main()``'s, or 130 after a Ctrl-C during the imports.
    """
    held: list[int] = []
    default = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        main = importlib.import_module(command).main
    finally:
        signal.signal(signal.SIGINT, default)
    if held:
        print(stopped, file=sys.stderr)
        return 128 + signal.SIGINT
    return int(main())
