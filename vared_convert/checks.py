"""Argument checks shared by the library's entry points: each raises :class:`~vared_convert.errors.ArgumentError`
naming the argument as its command-line flag, so the CLI prints it as it is."""

from __future__ import annotations

import math
from typing import Any

from .errors import ArgumentError

__all__ = ["choice", "integer", "number", "flag_name"]


def flag_name(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return name if name.startswith("-") else "--" + name.replace("_", "-")


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]``; a bool, a float or a string is refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentError(flag_name(name), value, "expected an integer")
    _check_range(name, value, minimum, maximum)
    return value


def number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None, *,
           above: float | None = None) -> float:
    """``value`` as a finite float within ``[minimum, maximum]`` (and ``> above``); ints are fine, nan and inf
    are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentError(flag_name(name), value, "expected a number")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentError(flag_name(name), value, "expected a finite number")
    if above is not None and not value > above:
        raise ArgumentError(flag_name(name), value, f"must be greater than {above:g}")
    _check_range(name, value, minimum, maximum)
    return value


def choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise ArgumentError(flag_name(name), value, "expected one of " + ", ".join(choices))
    return value


def _check_range(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise ArgumentError(flag_name(name), value, f"must be between {minimum:g} and {maximum:g}")
    if minimum is not None and value < minimum:
        raise ArgumentError(flag_name(name), value, f"must be at least {minimum:g}")
    if maximum is not None and value > maximum:
        raise ArgumentError(flag_name(name), value, f"must be at most {maximum:g}")
