"""Clips from labelled videos as a torch Dataset, a collate that survives unreadable files, and the loader.

An item whose video cannot be decoded is ``{"failed": path, "reason": why}`` instead of a clip. `collate_clips`
drops such items and lists them under ``"failed"``, so the main process can report each bad file once with a
`FailureLog` while training goes on.

Randomness (clip start, crop, flip) is drawn per item from ``(seed, epoch, index)``: it differs between items,
epochs and workers, and one seed and epoch give the same clips whatever the number of workers. `make_loader`
advances the epoch each time the loader is iterated.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate

from ..errors import VaredError
from .decode import DecodeError, VideoReader
from .layouts import VideoIndex, VideoRecord
from .sampling import clip_span, clip_starts, clip_times
from .transforms import ClipTransform, Stats

__all__ = ["ClipLoader", "FailureLog", "VideoClipDataset", "clip_window", "collate_clips", "make_loader"]

Item = dict[str, Any]


class VideoClipDataset(Dataset):
    """``clips_per_video`` clips of ``frames`` frames, ``stride`` apart, from each record.

    Item ``i`` is clip ``i % clips_per_video`` of video ``i // clips_per_video``:
    ``{"clip": float32 (3, T, size, size), "label": int, "video": int, "path": str}``, or
    ``{"failed": path, "reason": str}`` when the video cannot be decoded. In evaluation the clips are centred
    on equal segments of the video; in training each is at a random time.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        classes: Sequence[str],
        *,
        train: bool,
        frames: int = 16,
        stride: int = 4,
        size: int = 112,
        short_side: int | None = None,
        clips_per_video: int = 1,
        normalization: str | Stats = "kinetics",
        flip: bool | None = None,
        seed: int = 0,
    ):
        if frames < 1 or stride < 1 or clips_per_video < 1 or size < 1:
            raise VaredError(
                f"frames, stride, size and clips per video must be >= 1 (got {frames}, {stride}, {size}, "
                f"{clips_per_video})"
            )
        self.records = list(records)
        self.classes = list(classes)
        self.train = train
        self.frames = frames
        self.stride = stride
        self.clips_per_video = clips_per_video
        self.seed = seed
        self.transform = ClipTransform(size, short_side, train=train, flip=flip, normalization=normalization)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by workers, persistent or not

    @classmethod
    def from_index(cls, index: VideoIndex, split: str, **kwargs: Any) -> VideoClipDataset:
        """The dataset of one split of an index (``train`` defaults to ``split == "train"``)."""
        kwargs.setdefault("train", split == "train")
        return cls(index.split(split), index.classes, **kwargs)

    def __len__(self) -> int:
        return len(self.records) * self.clips_per_video

    @property
    def num_videos(self) -> int:
        """Distinct video files (what a `FailureLog` counts against)."""
        return len({record.path for record in self.records})

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the random clips are drawn for (`ClipLoader` does it on every pass)."""
        self._epoch.fill_(epoch)

    def __getitem__(self, index: int) -> Item:
        video, clip = divmod(index, self.clips_per_video)
        record = self.records[video]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
        try:
            frames = self._read(record, clip, rng)
        except DecodeError as exc:
            return {"failed": str(record.path), "reason": exc.reason}
        return {"clip": self.transform(frames, rng), "label": record.label, "video": video, "path": str(record.path)}

    def _read(self, record: VideoRecord, clip: int, rng: random.Random) -> torch.Tensor:
        with VideoReader(record.path) as reader:
            info = reader.info
            begin, end = clip_window(record, info.duration, info.fps)
            span = clip_span(self.frames, self.stride, info.fps)
            if self.train:
                start = clip_starts(begin, end, span, train=True, rng=rng)[0]
            else:
                start = clip_starts(begin, end, span, train=False, clips=self.clips_per_video)[clip]
            times = clip_times(start, self.frames, self.stride, info.fps, end=end)
            return reader.read(times, short_side=self.transform.short_side)


def clip_window(record: VideoRecord, duration: float, fps: float) -> tuple[float, float]:
    """Where clips of ``record`` may lie, seconds from its first frame: its annotated window cut to the video.

    `DecodeError` when the video ends before the window holds a frame (a Kinetics download that stops early).
    """
    end = duration if record.end is None else min(record.end, duration)
    begin = record.start or 0.0
    if record.start is not None and duration < begin + 1.0 / fps:
        window = f"{record.start:g}-{record.end:g} s" if record.end is not None else f"from {record.start:g} s"
        raise DecodeError(record.path, f"the video ends at {duration:.2f} s, before its annotated window {window}")
    return min(begin, end), end


def collate_clips(items: Sequence[Item]) -> dict[str, Any]:
    """Stack the decoded items; failed ones go to ``"failed"`` as ``(path, reason)`` pairs.

    Returns ``{"clip": (B, 3, T, H, W), "label": (B,), "video": (B,), "path": [B], "failed": [...]}``. When
    every item of the batch failed, ``clip``, ``label`` and ``video`` are ``None`` and ``path`` is empty:
    skip the batch.
    """
    ok = [item for item in items if "failed" not in item]
    failed = [(item["failed"], item["reason"]) for item in items if "failed" in item]
    if not ok:
        return {"clip": None, "label": None, "video": None, "path": [], "failed": failed}
    return {  # default_collate stacks straight into shared memory inside a worker: no copy to send the batch
        "clip": default_collate([item["clip"] for item in ok]),
        "label": default_collate([item["label"] for item in ok]),
        "video": default_collate([item["video"] for item in ok]),
        "path": [item["path"] for item in ok],
        "failed": failed,
    }


class FailureLog:
    """The unreadable videos met so far, each reported once; a `VaredError` when none of them decodes.

    ``total_videos`` is the number of distinct files the loader can reach (`VideoClipDataset.num_videos`):
    once all of them have failed without a single clip decoded, `add` raises.
    """

    def __init__(self, total_videos: int):
        self.total_videos = total_videos
        self.decoded = 0
        self._reasons: dict[str, str] = {}
        self._unreported: list[tuple[str, str]] = []

    @property
    def count(self) -> int:
        """Distinct files that failed."""
        return len(self._reasons)

    def add(self, failed: Iterable[tuple[str, str]], decoded: int = 0) -> None:
        """Record a batch's failures and how many clips it decoded."""
        self.decoded += decoded
        for path, reason in failed:
            if path not in self._reasons:
                self._reasons[path] = reason
                self._unreported.append((path, reason))
        if self.decoded == 0 and self.total_videos and self.count >= self.total_videos:
            path, reason = next(iter(self._reasons.items()))
            raise VaredError(f"none of the {self.count} videos could be decoded (e.g. {path}: {reason})")

    def update(self, batch: dict[str, Any]) -> list[tuple[str, str]]:
        """`add` a batch from `collate_clips`; return the failures not returned before (see `new`)."""
        self.add(batch["failed"], decoded=len(batch["path"]))
        return self.new()

    def new(self) -> list[tuple[str, str]]:
        """Failures not returned before, as ``(path, reason)``; each path comes out once."""
        new, self._unreported = self._unreported, []
        return new

    def report(self, write: Callable[[str], None] = print) -> int:
        """Write one line per new failure; return how many."""
        new = self.new()
        for path, reason in new:
            write(f"skipped unreadable video {path}: {reason}")
        return len(new)


class ClipLoader(DataLoader):
    """A DataLoader whose clips and shuffle order are a function of ``seed`` and the epoch.

    Each iteration sets the epoch of the dataset and of the sampler (a ``DistributedSampler`` has
    ``set_epoch``), then advances it. ``shuffle`` uses a sampler of its own, reseeded every epoch, so the order
    does not depend on the number of workers either.
    """

    def __init__(self, dataset: Dataset, *, seed: int = 0, shuffle: bool = False, **kwargs: Any):
        self.seed = seed
        self.epoch = 0
        self._order = torch.Generator()
        if shuffle and kwargs.get("sampler") is None:
            kwargs["sampler"] = RandomSampler(dataset, generator=self._order)
        super().__init__(dataset, generator=torch.Generator().manual_seed(seed), **kwargs)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws (to resume a run)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for target in (self.dataset, self.sampler):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)
        self._order.manual_seed(random.Random(f"{self.seed}:{epoch}").getrandbits(63))
        return super().__iter__()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int = 2,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    *,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> ClipLoader:
    """A `ClipLoader` with `collate_clips` and persistent, seeded workers.

    Pass a ``sampler`` (e.g. a ``DistributedSampler``) instead of ``shuffle``; its ``set_epoch`` is called too.
    """
    return ClipLoader(
        dataset,
        seed=seed,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate_clips,
        pin_memory=pin_memory,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        worker_init_fn=seed_worker if workers > 0 else None,
    )


def seed_worker(worker_id: int) -> None:
    """Seed Python's and NumPy's global RNGs from the worker's torch seed, for any transform that uses them."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
