"""Errors a user can act on. The CLI prints each on one line and exits non-zero, without a traceback.

Library functions raise these in API terms (the argument, the value, the file); ``cli.py`` only prints them.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VaredError", "ArgumentError", "OutputError", "NotConvertedError", "UnrecognisedArchError",
           "UntrustedArchError", "Terminated"]


class VaredError(Exception):
    """Bad input or a state the user can fix: the message says what went wrong and what to do."""


class ArgumentError(VaredError, ValueError):
    """An argument out of its range or of the wrong form; ``argument`` names it (as its CLI flag) and ``value``
    is what was given."""

    def __init__(self, argument: str, value: Any, expected: str, shown: str | None = None):
        self.argument, self.value, self.expected = argument, value, expected
        if shown is None:
            shown = f"{value:g}" if isinstance(value, float) else (str(value) if isinstance(value, int) else repr(value))
        super().__init__(f"{argument} {shown}: {expected}")


class OutputError(VaredError):
    """An output that must not or cannot be written: it is an input, exists, or its folder refuses it."""


class NotConvertedError(VaredError):
    """A plain checkpoint where a converted vared model (or an ``--arch`` to build the network) was needed."""


class UnrecognisedArchError(NotConvertedError):
    """A plain checkpoint whose weights match no registry architecture, or several: ``--arch`` must say which."""


class UntrustedArchError(VaredError):
    """A model file whose architecture is user code (``module.path:factory``) that the user has not named."""


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that every ``finally`` (temporary files) runs on the way out."""
