"""The one "did you mean" of every error message that names a bad choice."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(value: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """Up to ``n`` choices that look like ``value``, closest first."""
    return difflib.get_close_matches(value, list(choices), n=n)


def did_you_mean(value: str, choices: Iterable[str], n: int = 1) -> str:
    """`` (did you mean 'x'?)`` for the closest choices, or ``""`` when none is close."""
    close = close_matches(value, choices, n)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
