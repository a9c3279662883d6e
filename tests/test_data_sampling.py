"""Clip sampling in seconds: spans at the nominal fps, random and uniform starts, clips longer than the video."""

from __future__ import annotations

import random

import pytest

from vared_convert.data.sampling import clip_span, clip_starts, clip_times


def test_span_and_times_use_the_nominal_frame_rate() -> None:
    assert clip_span(16, 4, 30.0) == pytest.approx(16 * 4 / 30)
    times = clip_times(1.0, 4, 4, 30.0)
    assert times == pytest.approx([1.0, 1 + 4 / 30, 1 + 8 / 30, 1 + 12 / 30])  # stride 4 at 30 fps: 133 ms
    with pytest.raises(ValueError):
        clip_span(0, 4, 30.0)


def test_training_starts_are_random_inside_the_window_and_seeded() -> None:
    starts = clip_starts(2.0, 12.0, 3.0, train=True, clips=200, rng=random.Random(7))
    assert all(2.0 <= s <= 9.0 for s in starts)
    assert max(starts) - min(starts) > 6.0  # they spread over the room
    assert starts == clip_starts(2.0, 12.0, 3.0, train=True, clips=200, rng=random.Random(7))
    assert starts != clip_starts(2.0, 12.0, 3.0, train=True, clips=200, rng=random.Random(8))


def test_evaluation_starts_are_centred_or_uniform() -> None:
    assert clip_starts(0.0, 10.0, 2.0, train=False) == [4.0]
    assert clip_starts(1.0, 11.0, 2.0, train=False, clips=4) == pytest.approx([2.0, 4.0, 6.0, 8.0])


def test_clip_longer_than_the_video_starts_at_the_beginning_and_repeats_the_last_frame() -> None:
    fps, end = 10.0, 1.0  # ten frames, the last one at 0.9 s
    span = clip_span(8, 2, fps)
    assert span > end
    assert clip_starts(0.0, end, span, train=True, rng=random.Random(0)) == [0.0]
    assert clip_starts(0.0, end, span, train=False, clips=3) == [0.0, 0.0, 0.0]
    times = clip_times(0.0, 8, 2, fps, end=end)
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.9, 0.9])
