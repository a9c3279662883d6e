"""Decode the frames of a video shown at given times, with PyAV, reading only what those times need.

Times are seconds from the video's first frame. The frame for a time ``t`` is the one on screen at ``t``: the
last frame whose presentation time is ``<= t``, so variable frame rates are handled exactly. "``<= t``" allows
for the rounding of the container's clock (one tick of its time base, at most half a frame period): Matroska
and WebM keep milliseconds, so the frame of 1/15 s is stored at 67 ms. The first frame's time is the earliest
presentation time among the first packets, not the header's start, which AVI gives one frame early when the
stream has B-frames.

The reader seeks to the key frame before the first time, decodes forward and stops as soon as the last time is
covered. Until a packet comes within two frame periods of the first time, the decoder skips non-reference
frames (nothing else is predicted from them, so every other frame decodes exactly as without skipping; a read
whose answer would have been a skipped frame is decoded again without skipping). Only the frames that are used
are converted to RGB (and resized, in FFmpeg's scaler), and turned upright when the stream carries a rotation
(phone videos). Times past the end of the video take the last frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter
from torch.utils.data import get_worker_info

from ..errors import VaredError
from .transforms import short_side_size

__all__ = ["DecodeError", "StreamScan", "VideoInfo", "VideoReader", "decode_threads", "probe_video", "read_frames"]

TIME_EPS = 1e-6  # seconds: the least tolerance between a frame's time and a requested time
ORIGIN_PACKETS = 16  # packets read to find the first presentation time (more than any B-frame reordering)
SKIP_MARGIN = 2.0  # frame periods before the first time at which non-reference frames decode again
TRUNCATION_MARGIN = 1.0  # frame periods the packets may end before the header's duration without being cut
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
    ``skip_nonref=False`` decodes every frame before a clip too (the frames are the same; it only costs more).
    """

    def __init__(self, path: str | Path, threads: int | None = None, *, skip_nonref: bool = True):
        self.path = Path(path)
        self.threads = threads
        self.skip_nonref = skip_nonref
        self.frames_decoded = 0  # frames out of the decoder so far (skipped ones are not decoded)
        self._duration: float | None = None
        self._start: float | None = None
        self._reformatter = VideoReformatter()
        self._open()
        stream = self._stream
        self._header_start = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        # nominal fps: the mean rate where the container times the stream (FFmpeg's guess can be the fastest
        # rate of a variable-rate stream), the codec's rate for raw streams (their mean rate is a made-up 25)
        timed = bool(stream.duration or self._container.duration)
        rates = (stream.average_rate, stream.guessed_rate) if timed else (stream.guessed_rate, stream.average_rate)
        self.fps = float(next((rate for rate in (*rates, stream.base_rate) if rate), DEFAULT_FPS))
        # a frame stored one clock tick after a requested time (the container rounded it) is that time's frame
        self.tolerance = max(TIME_EPS, min(float(stream.time_base or 0), 0.5 / self.fps))

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the file."""
        self._container.close()

    @property
    def start(self) -> float:
        """Presentation time of the first frame, seconds: the earliest among the first packets, never before
        the header's start time."""
        if self._start is None:
            self._start = self._first_time()
        return self._start

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end: the header's value, else measured from the packets."""
        if self._duration is None:
            header = self._header_duration()
            self._duration = header if header else self.scan().duration
        return self._duration

    @property
    def info(self) -> VideoInfo:
        """Size (as stored, before any rotation), nominal fps, duration and codec of the video stream."""
        ctx = self._stream.codec_context
        return VideoInfo(ctx.width, ctx.height, self.fps, self.duration, self.start, ctx.name)

    def read(
        self, times: Sequence[float], size: tuple[int, int] | None = None, *, short_side: int | None = None
    ) -> torch.Tensor:
        """The frames shown at ``times`` (seconds from the first frame, non-decreasing) as uint8 ``(T, H, W, 3)``,
        upright.

        ``size`` ``(height, width)``, or ``short_side`` (the upright frame's shorter side, aspect kept), resizes
        in FFmpeg's scaler, which costs less than resizing afterwards.
        """
        if not len(times):
            raise ValueError("no times to read")
        if any(b < a for a, b in zip(times, times[1:])):
            raise ValueError("times must be non-decreasing")
        targets = [self.start + float(t) for t in times]
        frames = None
        if times[0] > self.tolerance:
            frames = self._decode(targets, size, short_side, seek=True)
            # None: the seek landed past the first time or on frames without timestamps
        if frames is None:
            frames = self._decode(targets, size, short_side, seek=False)
        if frames is None:
            raise DecodeError(self.path, "no frames decoded")
        return torch.from_numpy(np.stack(frames))

    def first_frame(self) -> torch.Tensor:
        """Decode the first frame, uint8 ``(H, W, 3)``: proof that the stream decodes."""
        return self.read([0.0])[0]

    def scan(self) -> StreamScan:
        """Read (not decode) every packet of the file, of every stream: where the video's packets end and
        whether the file holds what its header promises (see `StreamScan`)."""
        start, default = self.start, 1.0 / self.fps
        video_end = end = None
        video_packets = corrupt = 0
        self._reopen()  # from the first packet of every stream (peeking read the video's alone)
        self._at_start, stream = False, self._stream
        try:
            for packet in self._container.demux():
                if packet.size == 0:
                    continue
                corrupt += packet.is_corrupt
                video = packet.stream.index == stream.index
                video_packets += video
                if packet.pts is None or not packet.stream.time_base:
                    continue
                base = packet.stream.time_base
                length = float(packet.duration * base) if packet.duration else (default if video else 0.0)
                packet_end = float(packet.pts * base) + length
                if video:
                    video_end = packet_end if video_end is None else max(video_end, packet_end)
                end = packet_end if end is None else max(end, packet_end)
        except DECODE_ERRORS as exc:
            raise DecodeError(self.path, f"unreadable packets ({_describe(exc)})") from None
        if video_packets == 0:
            raise DecodeError(self.path, "no video packets")
        duration = video_end - start if video_end is not None else video_packets / self.fps
        return StreamScan(max(0.0, duration), video_packets, corrupt, self._cut_short(video_end, end))

    def verify(self) -> float:
        """Decode the first frame and read every packet; the duration the video's packets reach, seconds.

        `DecodeError` for a file that does not decode, has corrupt packets, or ends before its header says
        (an incomplete download): what `vared data check` runs on each file.
        """
        self.first_frame()
        scan = self.scan()
        if scan.cut_short:
            raise DecodeError(self.path, scan.cut_short)
        if scan.corrupt:
            raise DecodeError(self.path, f"{scan.corrupt} corrupt packet{'s' if scan.corrupt > 1 else ''}")
        return scan.duration

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
        self._peeked: list[av.Packet] = []  # read to find the first frame's time, not yet decoded
        self._peeked_all = False  # the peeked packets are the whole stream, flush packet included
        self._at_start = True  # nothing read yet but the peeked packets
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

    def _rewind(self) -> None:
        """Back to the first packet (reopening the file, which works for every container)."""
        if not self._at_start:
            self._reopen()

    def _first_time(self) -> float:
        self._rewind()
        stream = self._stream
        try:
            for packet in self._container.demux(stream):
                self._peeked.append(packet)
                if len(self._peeked) >= ORIGIN_PACKETS:
                    break
            else:
                self._peeked_all = True
        except DECODE_ERRORS as exc:
            raise DecodeError(self.path, f"unreadable packets ({_describe(exc)})") from None
        times = [float(p.pts * stream.time_base) for p in self._peeked if p.pts is not None and p.size]
        first = min(times) if times else None
        known = [t for t in (first, self._header_start) if t is not None]
        return max(known) if known else 0.0

    def _packets(self) -> Iterator[av.Packet]:
        """The video packets from where the file stands: the peeked ones first; the flush packet last."""
        peeked, whole, self._peeked, self._peeked_all = self._peeked, self._peeked_all, [], False
        self._at_start = False
        yield from peeked
        if not whole:
            yield from self._container.demux(self._stream)

    def _header_duration(self) -> float | None:
        container = self._container
        if container.duration and self._video_header_duration() is None:
            return container.duration / av.time_base
        return self._video_header_duration() or (self._stream.frames / self.fps if self._stream.frames else None)

    def _video_header_duration(self) -> float | None:
        """The video stream's own length in the header (Matroska keeps it in a DURATION tag), or ``None``."""
        stream = self._stream
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        return _tag_seconds(stream.metadata.get("DURATION") or stream.metadata.get("duration"))

    def _cut_short(self, video_end: float | None, end: float | None) -> str | None:
        """Why the packets end before the header says (a video stream's own length, else the file's, which
        the last packet of any stream must reach), or ``None``."""
        margin, start = TRUNCATION_MARGIN / self.fps, self.start
        own = self._video_header_duration()
        if own is not None:
            promised, reached = (self._header_start if self._header_start is not None else start) + own, video_end
        elif self._container.duration:
            container = self._container
            promised, reached = ((container.start_time or 0) + container.duration) / av.time_base, end
        else:
            return None
        if reached is None or reached >= promised - margin:
            return None
        return (f"truncated: its packets end at {reached - start:.2f} s of the {promised - start:.2f} s its header "
                "gives (an incomplete download?)")

    def _decode(
        self, targets: list[float], size: tuple[int, int] | None, short_side: int | None, seek: bool
    ) -> list[np.ndarray] | None:
        frames = self._walk(targets, size, short_side, seek, skip=self.skip_nonref)
        if frames is _SKIPPED:  # the answer was a skipped frame (a long gap in a variable-rate stream)
            frames = self._walk(targets, size, short_side, seek, skip=False)
        return frames  # type: ignore[return-value]

    def _walk(
        self, targets: list[float], size: tuple[int, int] | None, short_side: int | None, seek: bool, skip: bool
    ) -> list[np.ndarray] | None | object:
        """Walk the frames once; ``None`` when this pass cannot place the frames (the caller retries unseeked),
        `_SKIPPED` when a frame it skipped was one to return."""
        tol, out = self.tolerance, []
        previous = converted = source = previous_time = None
        skip_until = targets[0] - SKIP_MARGIN / self.fps
        skipping = skip and skip_until > self.start
        skipped: list[float] = []  # times of the non-key packets read while non-reference frames were skipped

        def rgb(frame: av.VideoFrame) -> np.ndarray:
            nonlocal converted, source
            if frame is not source:
                turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns to stand it upright
                upright = (frame.height, frame.width) if turns % 2 == 0 else (frame.width, frame.height)
                height, width = size or (short_side_size(*upright, short_side) if short_side else upright)
                if turns % 2:
                    height, width = width, height
                converted = self._reformatter.reformat(frame, width, height, "rgb24", interpolation="BILINEAR")
                converted, source = converted.to_ndarray(), frame
                if turns:
                    converted = np.rot90(converted, turns)
            return converted

        def missed(shown: float | None, target: float) -> bool:  # a skipped frame was on screen at target
            return any((shown is None or p > shown + TIME_EPS) and p <= target + tol for p in skipped)

        if seek:
            try:
                self._peeked, self._peeked_all, self._at_start = [], False, False
                self._container.seek(int(targets[0] / self._stream.time_base), stream=self._stream, backward=True)
            except DECODE_ERRORS:  # raw streams cannot seek
                return None
        else:
            self._rewind()
        stream = self._stream  # after any reopening
        ctx = stream.codec_context
        ctx.skip_frame = "NONREF" if skipping else "DEFAULT"
        count, time = 0, 0.0
        try:
            for packet in self._packets():
                if skipping:
                    if packet.pts is None or float(packet.pts * stream.time_base) >= skip_until:
                        skipping, ctx.skip_frame = False, "DEFAULT"
                    elif not packet.is_keyframe:
                        skipped.append(float(packet.pts * stream.time_base))
                for frame in packet.decode():
                    self.frames_decoded += 1
                    if frame.pts is None:
                        if seek:
                            return None
                        time = self.start + count / self.fps
                    else:
                        time = float(frame.time)
                    if seek and count == 0 and time > targets[0] + tol:
                        return None
                    count += 1
                    while len(out) < len(targets) and time > targets[len(out)] + tol:
                        if missed(previous_time, targets[len(out)]):
                            return _SKIPPED
                        out.append(rgb(previous if previous is not None else frame))
                    if len(out) < len(targets) and targets[-1] <= time + tol:
                        out.extend([rgb(frame)] * (len(targets) - len(out)))
                    if len(out) == len(targets):
                        return out
                    previous, previous_time = frame, time
        except DECODE_ERRORS as exc:
            raise DecodeError(self.path, f"decode error ({_describe(exc)})") from None
        finally:
            ctx.skip_frame = "DEFAULT"
        if previous is None:
            return None
        if missed(previous_time, targets[-1]):
            return _SKIPPED
        out.extend([rgb(previous)] * (len(targets) - len(out)))  # past the end: the last frame
        return out


_SKIPPED = object()  # `VideoReader._walk`: decode again without skipping


@dataclass(frozen=True)
class StreamScan:
    """What reading every packet of a file found (`VideoReader.scan`)."""

    duration: float  # seconds from the first frame to the end of the video's last packet
    packets: int  # video packets
    corrupt: int  # packets the demuxer flagged as corrupt, in any stream
    cut_short: str | None  # why the file ends before its header says (a truncated download), or None


def _tag_seconds(text: str | None) -> float | None:
    """``"00:01:02.500000000"`` (a Matroska DURATION tag) -> 62.5; ``None`` if absent or unreadable."""
    if not text:
        return None
    try:
        hours, minutes, seconds = text.strip().split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


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
