"""PyAV decoding by timestamp: the frame on screen at each time, seeking, odd containers, broken files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
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


# ---- container clocks, B-frames in AVI, rotation -------------------------------------------------------------


@pytest.mark.parametrize(("name", "codec"), [("v.mkv", "libx264"), ("v.webm", "libvpx-vp9"), ("v8.webm", "libvpx")])
def test_millisecond_timestamps_give_the_frame_at_exact_frame_times(tmp_path: Path, name: str, codec: str) -> None:
    """Matroska stores 1/15 s as 67 ms: the frame of 2/30 s is still the frame shown at 2/30 s."""
    path = write_video(tmp_path / name, 30, fps=30, codec=codec, gop=10)
    with VideoReader(path) as reader:
        assert reader.fps == 30.0
        times = [i / reader.fps for i in range(30)]
        assert frame_indices(reader.read(times)) == list(range(30))  # from the start
        assert frame_indices(reader.read(times[17:])) == list(range(17, 30))  # after a seek


@pytest.mark.parametrize("name", ["v.avi", "v.mp4"])
def test_mpeg4_with_b_frames_is_not_one_frame_late(tmp_path: Path, name: str) -> None:
    """AVI stores no presentation times: FFmpeg makes them from the decode order, one frame after the header's
    start. The first frame's time comes from the packets, so frame i is shown at i / fps."""
    path = write_video(tmp_path / name, 20, fps=10, codec="mpeg4", gop=10, bframes=2, codec_options={"b": "4M"})
    with VideoReader(path) as reader:
        assert frame_indices(reader.read([i / 10 for i in range(20)])) == list(range(20))
        assert frame_indices(reader.read([1.0, 1.1, 1.55])) == [10, 11, 15]
        assert reader.duration == pytest.approx(2.0)


def upright_frames(count: int = 3) -> np.ndarray:
    """Portrait frames (48 high, 32 wide): black, with a white block in the top-left corner."""
    frames = np.zeros((count, 48, 32, 3), np.uint8)
    frames[:, :16, :16] = 255
    return frames


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_phone_video_comes_out_upright(tmp_path: Path, rotation: int) -> None:
    """A phone stores the sensor's frames and a display rotation (counter-clockwise, in degrees)."""
    upright = upright_frames()
    stored = np.ascontiguousarray(np.rot90(upright, -rotation // 90, axes=(1, 2)))  # undo the display rotation
    path = write_video(tmp_path / f"phone{rotation}.mp4", stored, rotation=rotation)
    frames = read_frames(path, [0.0, 0.1])
    assert frames.shape == (2, 48, 32, 3)
    corner = frames[0].float().mean(-1)
    assert corner[:16, :16].mean() > 200 and corner[-16:, -16:].mean() < 50  # white top-left, black bottom-right
    with VideoReader(path) as reader:
        assert reader.read([0.0], short_side=16).shape == (1, 24, 16, 3)  # the upright frame's short side
        assert reader.read([0.0], size=(24, 16)).shape == (1, 24, 16, 3)


def test_read_from_the_start_after_another_read(tmp_path: Path) -> None:
    path = write_video(tmp_path / "v.mp4", 20, fps=10, gop=5)
    with VideoReader(path) as reader:
        assert frame_indices(reader.read([1.2])) == [12]
        assert frame_indices(reader.read([0.0, 0.1])) == [0, 1]


# ---- skipping non-reference frames before the clip ------------------------------------------------------------

FIXED_B_FRAMES = {"x264-params": "bframes=3:b-pyramid=0:b-adapt=0:scenecut=0"}  # I B B B P B B B P ...


def non_reference(path: Path) -> set[int]:
    """Frame indices (pts in frame periods) that a decoder told to skip non-reference frames leaves out."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        everything = [f.pts for f in container.decode(stream)]
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONREF"
        kept = {f.pts for f in container.decode(stream)}
    return {i for i, pts in enumerate(everything) if pts not in kept}


@pytest.mark.parametrize("size", [(48, 64), (240, 240)])  # slice threads; frame threads (57600 pixels)
def test_skipping_non_reference_frames_returns_the_same_frames(tmp_path: Path, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (34, *size, 3), dtype=np.uint8)  # noise: any wrong frame shows
    path = write_video(tmp_path / "v.mp4", frames, fps=10, gop=40, codec_options=FIXED_B_FRAMES)
    assert len(non_reference(path)) > 20
    reads = [sorted(rng.uniform(0, 3.6, 4)) for _ in range(12)] + [[2.25, 2.45, 2.65, 2.85, 3.05], [3.0, 99.0]]
    decoded = {}
    for skip in (True, False):
        with VideoReader(path, threads=2, skip_nonref=skip) as reader:
            decoded[skip] = reader.frames_decoded, [reader.read(times, short_side=24) for times in reads]
            decoded[skip] = reader.frames_decoded, decoded[skip][1]
    (skipping, got), (plain, expected) = decoded[True], decoded[False]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert skipping < 0.9 * plain  # it did skip


def test_a_skipped_frame_that_is_the_answer_is_decoded_after_all(tmp_path: Path) -> None:
    """Variable frame rate: frame 19 (a B-frame at 1.9 s) stays on screen until 4 s, far past the margin."""
    pts = [i / 10 for i in range(20)] + [4.0, 4.1, 4.2, 4.3]
    path = write_video(tmp_path / "gap.mp4", len(pts), fps=10, pts=pts, gop=40, codec_options=FIXED_B_FRAMES)
    assert 19 in non_reference(path)
    with VideoReader(path) as reader:
        assert frame_indices(reader.read([3.9, 4.0, 4.25])) == [19, 20, 22]
