"""Where clips start and which times they show, in seconds, so variable frame rates sample correctly.

A clip is ``frames`` frames spaced ``stride`` frames apart at the video's nominal fps (stride 4 at 30 fps is
133 ms) and spans ``frames * stride / fps`` seconds. Training takes a random start; evaluation takes the
centres of ``clips`` equal segments (one clip: the centred one).

A clip longer than the video (or its annotated window) starts at the first frame and repeats the last frame
for the times past the end: the clip keeps its frame spacing and no motion is made up by looping.
"""

from __future__ import annotations

import random

__all__ = ["clip_span", "clip_starts", "clip_times"]


def clip_span(frames: int, stride: int, fps: float) -> float:
    """Seconds a clip covers: ``frames * stride`` frame periods at ``fps``."""
    if frames < 1 or stride < 1:
        raise ValueError(f"frames and stride must be >= 1, got {frames} and {stride}")
    return frames * stride / fps


def clip_starts(
    begin: float,
    end: float,
    span: float,
    *,
    train: bool,
    clips: int = 1,
    rng: random.Random | None = None,
) -> list[float]:
    """Start times of ``clips`` clips of ``span`` seconds inside ``[begin, end]``.

    Training: independent uniform random starts drawn from ``rng``. Evaluation: the clips centred on ``clips``
    equal segments of the room left, deterministic. A span longer than the window starts every clip at
    ``begin``.
    """
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    room = max(0.0, end - begin - span)
    if train:
        rng = rng or random.Random()
        return [begin + rng.uniform(0.0, room) for _ in range(clips)]
    return [begin + room * (k + 0.5) / clips for k in range(clips)]


def clip_times(start: float, frames: int, stride: int, fps: float, end: float | None = None) -> list[float]:
    """The ``frames`` times of a clip starting at ``start``; with ``end``, times past the last frame before
    ``end`` are clamped to it (the last frame repeats)."""
    step = stride / fps
    times = [start + i * step for i in range(frames)]
    if end is None:
        return times
    last = max(start, end - 1.0 / fps)
    return [min(t, last) for t in times]
