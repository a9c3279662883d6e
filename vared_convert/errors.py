"""Errors a user can act on. The CLI prints them on one line and exits non-zero, without a traceback."""

from __future__ import annotations

__all__ = ["VaredError", "NotConvertedError"]


class VaredError(Exception):
    """Bad input or a state the user can fix: the message says what went wrong and what to do."""


class NotConvertedError(VaredError):
    """A plain checkpoint where a converted vared model (or an ``--arch`` to build the network) was needed."""
