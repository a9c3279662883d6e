"""`vared data check`: what a dataset holds and which of its files cannot be read.

Each video's header is read and its first frame decoded, nothing more, so a check costs a few milliseconds
per file.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .decode import DecodeError, VideoReader
from .layouts import index_dataset

__all__ = ["DatasetReport", "UnreadableVideo", "check_dataset"]

Progress = Callable[[int, int], None]  # (files checked, total files)


@dataclass(frozen=True)
class UnreadableVideo:
    path: str
    split: str
    reason: str


@dataclass
class DatasetReport:
    """Classes, videos and durations per split, and the files that failed (with the reason)."""

    root: Path
    layout: str
    classes: list[str]
    videos: dict[str, int]  # per split, as listed (readable or not)
    per_class: dict[str, dict[str, int]]  # split -> class -> videos
    durations: dict[str, list[float]]  # split -> seconds of each readable video (its window when cut at decode)
    unreadable: list[UnreadableVideo] = field(default_factory=list)
    missing: dict[str, int] = field(default_factory=dict)  # annotated but absent (Kinetics)

    @property
    def readable(self) -> int:
        return sum(len(d) for d in self.durations.values())

    def duration_stats(self, split: str) -> tuple[float, float, float] | None:
        """(min, median, max) seconds of the readable videos of a split."""
        durations = self.durations.get(split)
        if not durations:
            return None
        return min(durations), statistics.median(durations), max(durations)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        splits = {}
        for split, count in self.videos.items():
            stats = self.duration_stats(split)
            splits[split] = {
                "videos": count,
                "readable": len(self.durations.get(split, [])),
                "unreadable": sum(1 for u in self.unreadable if u.split == split),
                "missing": self.missing.get(split, 0),
                "duration": dict(zip(("min", "median", "max"), stats)) if stats else None,
                "per_class": self.per_class.get(split, {}),
            }
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "splits": splits,
            "unreadable": [{"path": u.path, "split": u.split, "reason": u.reason} for u in self.unreadable],
        }


def check_dataset(root: str | Path, layout: str = "auto", progress: Progress | None = None) -> DatasetReport:
    """Index ``root`` and try every video; see `DatasetReport`. Layout errors raise `VaredError`."""
    index = index_dataset(root, layout)
    report = DatasetReport(
        root=Path(root),
        layout=index.layout,
        classes=index.classes,
        videos={split: len(records) for split, records in index.splits.items()},
        per_class={
            split: {name: sum(1 for r in records if r.label == label) for label, name in enumerate(index.classes)}
            for split, records in index.splits.items()
        },
        durations={split: [] for split in index.splits},
        missing=dict(index.missing),
    )
    total = sum(report.videos.values())
    done = 0
    for split, records in index.splits.items():
        for record in records:
            try:
                with VideoReader(record.path) as reader:
                    reader.first_frame()
                    duration = reader.duration
            except DecodeError as exc:
                report.unreadable.append(UnreadableVideo(str(record.path), split, exc.reason))
            else:
                end = duration if record.end is None else min(record.end, duration)
                report.durations[split].append(max(0.0, end - (record.start or 0.0)))
            done += 1
            if progress:
                progress(done, total)
    return report
