"""Tiny test videos written with PyAV, and broken files to mix into datasets.

`index_frames` makes frames whose grey level encodes their index, so `frame_indices` can tell which frames a
decoder returned, through H.264 and colour conversion.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch

GREY_BASE, GREY_STEP = 16, 7  # frame i is grey level 16 + 7 i: up to 34 distinct frames
RAW = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # a "normalisation" that keeps 0..255 pixel values


def index_frames(count: int, size: int = 32) -> np.ndarray:
    """``count`` uniform grey frames ``(T, size, size, 3)``, frame ``i`` at level ``16 + 7 i``."""
    if GREY_BASE + GREY_STEP * (count - 1) > 255:
        raise ValueError(f"at most {(255 - GREY_BASE) // GREY_STEP + 1} index frames")
    levels = GREY_BASE + GREY_STEP * np.arange(count, dtype=np.int64)
    return np.broadcast_to(levels[:, None, None, None], (count, size, size, 3)).astype(np.uint8)


def frame_indices(frames: torch.Tensor, channels_first: bool = False) -> list[int]:
    """The index of each frame of an `index_frames` video: ``(T, H, W, C)`` or ``(C, T, H, W)`` with
    ``channels_first``, in 0..255 pixel values."""
    per_frame = frames.float().mean(dim=(0, 2, 3) if channels_first else (1, 2, 3))
    return [round((float(m) - GREY_BASE) / GREY_STEP) for m in per_frame]


def write_video(
    path: str | Path,
    frames: np.ndarray | int,
    fps: float = 10,
    pts: Sequence[float] | None = None,
    *,
    codec: str = "libx264",
    gop: int | None = None,
    format: str | None = None,
    bframes: int | None = None,
    rotation: int = 0,
    codec_options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    audio_seconds: float | None = None,
) -> Path:
    """Write ``frames`` (an array ``(T, H, W, 3)`` uint8, or a count of `index_frames`) to ``path``.

    ``pts`` (seconds, one per frame) gives a variable frame rate; ``gop`` the key-frame interval; ``bframes``
    the most B-frames in a row; ``rotation`` a display rotation (degrees counter-clockwise) in the container;
    ``audio_seconds`` adds a silent AAC track of that length.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(frames, int):
        frames = index_frames(frames)
    with av.open(str(path), "w", format=format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000), options=codec_options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        if bframes is not None:
            stream.codec_context.max_b_frames = bframes
        if rotation:
            stream.set_display_rotation(rotation)
        if audio_seconds:
            _write_silence(container, audio_seconds)
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = round(pts[i] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _write_silence(container: av.container.OutputContainer, seconds: float) -> None:
    stream = container.add_stream("aac", rate=16000)
    samples = np.zeros((1, int(16000 * seconds)), np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = 16000
    for packet in [*stream.encode(frame), *stream.encode()]:
        container.mux(packet)


def write_audio_only(path: str | Path, seconds: float = 0.5) -> Path:
    """An mp4 with one AAC audio stream and no video."""
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        samples = np.zeros((1, int(16000 * seconds)), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_broken_files(folder: str | Path) -> dict[str, Path]:
    """One of each kind of unreadable video in ``folder``, by kind; ``missing`` is a path that does not exist."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    whole = write_video(folder / "whole.tmp.mp4", 12).read_bytes()
    (folder / "whole.tmp.mp4").unlink()
    files = {
        "random": folder / "random_bytes.mp4",
        "truncated": folder / "truncated.mp4",
        "empty": folder / "empty.mp4",
        "text": folder / "not_a_video.mp4",
        "audio": folder / "audio_only.mp4",
        "missing": folder / "missing.mp4",
    }
    files["random"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("<html><body>This video is unavailable.</body></html>\n")
    write_audio_only(files["audio"])
    return files
