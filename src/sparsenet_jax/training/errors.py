"""The one error type of a run that cannot go on; the CLI prints it as one line."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot go on: non-finite values, a busy or mismatched workdir, no memory, …"""
