"""Decode the frames of a video shown at given times, with PyAV, reading only what those times need.

Times are seconds from the video's first frame. The frame for a time ``t`` is the one on screen at ``t``: the
last frame whose presentation time is ``<= t``, so variable frame rates are handled exactly. The reader seeks to
the key frame before the first time, decodes forward and stops as soon as the last time is covered; only the
frames that are used are converted to RGB (and resized, in FFmpeg's scaler). Times past the end of the video
take the last frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import get_worker_info

from ..errors import VaredError

__all__ = ["DecodeError", "VideoInfo", "VideoReader", "decode_threads", "probe_video", "read_frames"]

TIME_EPS = 1e-6  # seconds: a frame presented exactly at a requested time is that time's frame
DEFAULT_FPS = 30.0  # for streams that state no frame rate at all
DECODE_ERRORS = (av.FFmpegError, OSError, ValueError)
FRAME_THREADS_MIN_PIXELS = 50_000  # 128x128 frames decode faster with slice threads, 256x256 ones with frame threads

av.logging.set_libav_level(av.logging.FATAL)  # bad files are reported once by the data pipeline, not by FFmpeg


class DecodeError(VaredError):
    """A video that cannot be read: ``path`` and a short ``reason`` ("missing file", "no video stream", ...)."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"cannot decode {path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says (duration measured from the packets when the header lacks it)."""

    width: int
    height: int
    fps: float  # nominal frame rate: the mean rate (the codec's rate for raw streams)
    duration: float  # seconds from the first frame to the end of the stream
    start: float  # presentation time of the first frame, seconds
    codec: str


class VideoReader:
    """An open video file. Use as a context manager; `read` may be called several times.

    ``threads`` decoding threads (FFmpeg frame and slice threads); ``None`` picks `decode_threads`.
    """

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads
        self._duration: float | None = None
        self._reformatter = VideoReformatter()
        self._open()
        stream = self._stream
        self.start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        # nominal fps: the mean rate where the container times the stream (FFmpeg's guess can be the fastest
        # rate of a variable-rate stream), the codec's rate for raw streams (their mean rate is a made-up 25)
        timed = bool(stream.duration or self._container.duration)
        rates = (stream.average_rate, stream.guessed_rate) if timed else (stream.guessed_rate, stream.average_rate)
        self.fps = float(next((rate for rate in (*rates, stream.base_rate) if rate), DEFAULT_FPS))

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the file."""
        self._container.close()

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end: the header's value, else measured from the packets."""
        if self._duration is None:
            self._duration = self._header_duration() or self._scan_duration()
        return self._duration

    @property
    def info(self) -> VideoInfo:
        """Size, nominal fps, duration and codec of the video stream."""
        ctx = self._stream.codec_context
        return VideoInfo(ctx.width, ctx.height, self.fps, self.duration, self.start, ctx.name)

    def read(self, times: Sequence[float], size: tuple[int, int] | None = None) -> torch.Tensor:
        """The frames shown at ``times`` (seconds from the first frame, non-decreasing) as uint8 ``(T, H, W, 3)``.

        ``size`` ``(height, width)`` resizes in FFmpeg's scaler, which costs less than resizing afterwards.
        """
        if not len(times):
            raise ValueError("no times to read")
        if any(b < a for a, b in zip(times, times[1:])):
            raise ValueError("times must be non-decreasing")
        targets = [self.start + float(t) for t in times]
        frames = None
        if targets[0] > self.start + TIME_EPS:
            frames = self._decode(targets, size, seek=True)
            if frames is None:  # the seek landed past the first time or on frames without timestamps
                self._reopen()
        if frames is None:
            frames = self._decode(targets, size, seek=False)
        if frames is None:
            raise DecodeError(self.path, "no frames decoded")
        return torch.from_numpy(np.stack(frames))

    def first_frame(self) -> torch.Tensor:
        """Decode the first frame, uint8 ``(H, W, 3)``: proof that the stream decodes."""
        return self.read([0.0])[0]

    # ---- internals ------------------------------------------------------------------------------------------

    def _open(self) -> None:
        path = self.path
        if not path.exists():
            raise DecodeError(path, "missing file")
        if not path.is_file():
            raise DecodeError(path, "not a file")
        if path.stat().st_size == 0:
            raise DecodeError(path, "empty file (0 bytes)")
        try:
            self._container = av.open(str(path), metadata_errors="ignore")
        except DECODE_ERRORS as exc:
            raise DecodeError(path, f"not a readable video ({_describe(exc)})") from None
        if not self._container.streams.video:
            self._container.close()
            raise DecodeError(path, "no video stream")
        self._stream = stream = self._container.streams.video[0]
        pixels = stream.codec_context.width * stream.codec_context.height
        threads = self.threads or decode_threads()
        stream.thread_count = threads
        if threads > 1:
            # frame threads start with each file and decode past the clip's end: on small frames they cost more
            # than they give, slice threads do not (benchmarks/bench_loader.py)
            stream.thread_type = "AUTO" if pixels >= FRAME_THREADS_MIN_PIXELS else "SLICE"

    def _reopen(self) -> None:
        self._container.close()
        self._open()

    def _header_duration(self) -> float | None:
        stream = self._stream
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if self._container.duration:
            return self._container.duration / av.time_base
        if stream.frames:
            return stream.frames / self.fps
        return None

    def _scan_duration(self) -> float:
        """Read (not decode) every packet: the end of the last one, or the packet count at the nominal fps."""
        stream, end, count = self._stream, None, 0
        try:
            for packet in self._container.demux(stream):
                if packet.size == 0:
                    continue
                count += 1
                if packet.pts is not None:
                    packet_end = float((packet.pts + (packet.duration or 0)) * stream.time_base)
                    end = packet_end if end is None else max(end, packet_end)
        except DECODE_ERRORS as exc:
            raise DecodeError(self.path, f"unreadable packets ({_describe(exc)})") from None
        self._reopen()
        if count == 0:
            raise DecodeError(self.path, "no video packets")
        return end - self.start if end is not None else count / self.fps

    def _decode(self, targets: list[float], size: tuple[int, int] | None, seek: bool) -> list[np.ndarray] | None:
        """Walk the frames once; ``None`` when this pass cannot place the frames (the caller retries unseeked)."""
        stream, out = self._stream, []
        previous = converted = source = None

        def rgb(frame: av.VideoFrame) -> np.ndarray:
            nonlocal converted, source
            if frame is not source:
                height, width = size if size else (frame.height, frame.width)
                converted = self._reformatter.reformat(frame, width, height, "rgb24", interpolation="BILINEAR")
                converted, source = converted.to_ndarray(), frame
            return converted

        if seek:
            try:
                self._container.seek(int(targets[0] / stream.time_base), stream=stream, backward=True)
            except DECODE_ERRORS:  # raw streams cannot seek
                return None
        try:
            for count, frame in enumerate(self._container.decode(stream)):
                if frame.pts is None:
                    if seek:
                        return None
                    time = self.start + count / self.fps
                else:
                    time = float(frame.time)
                if seek and count == 0 and time > targets[0] + TIME_EPS:
                    return None
                while len(out) < len(targets) and time > targets[len(out)] + TIME_EPS:
                    out.append(rgb(previous if previous is not None else frame))
                if len(out) < len(targets) and targets[-1] <= time + TIME_EPS:
                    out.extend([rgb(frame)] * (len(targets) - len(out)))
                if len(out) == len(targets):
                    return out
                previous = frame
        except DECODE_ERRORS as exc:
            raise DecodeError(self.path, f"decode error ({_describe(exc)})") from None
        if previous is None:
            return None
        out.extend([rgb(previous)] * (len(targets) - len(out)))  # past the end: the last frame
        return out


def decode_threads() -> int:
    """Threads for one decoder: the cores left to it (inside a DataLoader worker, shared by the workers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    worker = get_worker_info()
    return max(1, cores // (worker.num_workers if worker else 1))


def _describe(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def probe_video(path: str | Path, *, first_frame: bool = False) -> VideoInfo:
    """Read a video's header (and decode its first frame if ``first_frame``); `DecodeError` if unreadable."""
    with VideoReader(path) as reader:
        info = reader.info
        if first_frame:
            reader.first_frame()
    return info


def read_frames(path: str | Path, times: Sequence[float], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Open ``path`` and return the frames shown at ``times`` (see `VideoReader.read`)."""
    with VideoReader(path) as reader:
        return reader.read(times, size)
