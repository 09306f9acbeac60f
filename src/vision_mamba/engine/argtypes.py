"""argparse ``type=`` checkers for the commands' numeric options: a bad value is argparse's one-line usage error
(exit 2) naming the option, not a traceback later or a silently odd run."""
from __future__ import annotations

import argparse

__all__ = ["positive_int", "non_negative_int", "fraction"]


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """An integer >= 0 (0 often meaning "none" or "all")."""
    return _whole_number(text, 0)


def fraction(text: str) -> float:
    """A number in [0, 1] (a score or mask threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value:g}")
    return value
