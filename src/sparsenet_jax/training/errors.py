"""The one error type of a run that cannot go on, which the CLI prints as one line, and the
one-line warning of a problem a run recovers from."""

from __future__ import annotations

import sys


class TrainingError(RuntimeError):
    """A run that cannot go on: non-finite values, a busy or mismatched workdir, no memory, …"""


def warn(message: str) -> None:
    """One line on stderr for a recoverable problem."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
