"""PyAV decoding by timestamp: the frame on screen at each time, seeking, odd containers, broken files."""

from __future__ import annotations

from pathlib import Path

import pytest
from videos import frame_indices, write_broken_files, write_video

from vared_convert.data.decode import DecodeError, VideoReader, probe_video, read_frames


def shown_at(pts: list[float], times: list[float]) -> list[int]:
    """The rule, written plainly: the last frame presented at or before each time (the first frame before it)."""
    return [max([i for i, p in enumerate(pts) if p <= t + 1e-9], default=0) for t in times]


def test_constant_rate_times_pick_frames_and_seek(tmp_path: Path) -> None:
    path = write_video(tmp_path / "cfr.mp4", 30, fps=10, gop=5)  # key frame every 0.5 s
    with VideoReader(path) as reader:
        assert (reader.fps, reader.duration, reader.start) == (10.0, 3.0, 0.0)
        assert frame_indices(reader.read([0.0, 0.1, 0.25, 1.0])) == [0, 1, 2, 10]
        assert frame_indices(reader.read([2.05, 2.2, 2.35])) == [20, 22, 23]  # seek past three key frames
        assert frame_indices(reader.read([0.3])) == [3]  # and back
    info = probe_video(path, first_frame=True)
    assert (info.width, info.height, info.codec) == (32, 32, "h264")


def test_times_past_the_end_repeat_the_last_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", 6, fps=10)
    assert frame_indices(read_frames(path, [0.4, 0.5, 0.6, 3.0, 100.0])) == [4, 5, 5, 5, 5]


def test_variable_frame_rate_follows_timestamps(tmp_path: Path) -> None:
    pts = [0.0, 0.04, 0.3, 0.32, 0.5, 0.9, 0.95, 1.0, 1.4, 1.45, 2.2, 2.21]
    path = write_video(tmp_path / "vfr.mp4", len(pts), fps=10, pts=pts, gop=4)
    times = [0.0, 0.02, 0.2, 0.31, 0.33, 0.5, 0.7, 0.97, 1.0, 1.42, 2.0, 2.205, 2.3]
    frames = read_frames(path, times)
    assert frame_indices(frames) == shown_at(pts, times) == [0, 0, 1, 2, 3, 4, 4, 6, 7, 8, 9, 10, 11]
    with VideoReader(path) as reader:
        assert reader.fps == pytest.approx(len(pts) / reader.duration)  # nominal: the mean rate, not the time base


def test_resize_in_the_scaler(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", 4, fps=10)
    frames = read_frames(path, [0.0, 0.1], size=(16, 24))
    assert frames.shape == (2, 16, 24, 3) and str(frames.dtype) == "torch.uint8"
    assert frame_indices(frames) == [0, 1]


def test_stream_without_duration_or_timestamps(tmp_path: Path) -> None:
    path = write_video(tmp_path / "raw.h264", 20, fps=10, format="h264")  # elementary stream: no pts, no duration
    with VideoReader(path) as reader:
        assert reader.duration == pytest.approx(2.0)
        assert frame_indices(reader.read([0.0, 0.55, 1.2, 5.0])) == [0, 5, 12, 19]
        assert frame_indices(reader.read([0.55, 1.2])) == [5, 12]  # cannot seek: decoded from the start


def test_matroska_without_stream_duration(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mkv", 20, fps=10, gop=5)
    with VideoReader(path) as reader:
        assert reader.duration == pytest.approx(2.0, abs=0.05)
        assert frame_indices(reader.read([1.25, 1.5])) == [12, 15]


def test_transport_stream_with_start_offset_and_unseekable_key_frames(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.ts", 20, fps=10, format="mpegts")  # starts at a non-zero time
    with VideoReader(path) as reader:
        assert reader.start > 0
        assert frame_indices(reader.read([0.0, 1.0, 1.35])) == [0, 10, 13]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("random", "not a readable video"),
        ("truncated", "not a readable video"),
        ("empty", "empty file (0 bytes)"),
        ("text", "not a readable video"),
        ("audio", "no video stream"),
        ("missing", "missing file"),
    ],
)
def test_unreadable_files_raise_with_a_reason(tmp_path: Path, kind: str, reason: str) -> None:
    path = write_broken_files(tmp_path)[kind]
    with pytest.raises(DecodeError) as info:
        probe_video(path, first_frame=True)
    assert info.value.path == str(path)
    assert info.value.reason.startswith(reason)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_times_must_be_sorted(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", 4)
    with VideoReader(path) as reader, pytest.raises(ValueError, match="non-decreasing"):
        reader.read([0.2, 0.1])
