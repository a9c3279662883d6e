"""`vared data check`: what a dataset holds and which of its files cannot be read.

Each video's header is read and its first frame decoded, nothing more, so a check costs a few milliseconds
per file.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .decode import DecodeError, VideoReader
from .layouts import VideoRecord, index_dataset

__all__ = ["DatasetReport", "UnreadableVideo", "check_dataset"]

Progress = Callable[[int, int], None]  # (files checked, total files)
SHOWN_ROWS = 40  # classes and unreadable files listed in the tables; --json has them all


@dataclass(frozen=True)
class UnreadableVideo:
    """A video that failed to open or decode, and why."""

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

    def __rich__(self) -> RenderableType:
        """Tables for a terminal: splits with durations, videos per class, unreadable files."""
        title = f"{self.root} · layout {self.layout} · {len(self.classes)} classes"
        splits = Table(title=title, title_justify="left")
        for column in ("split", "videos", "readable", "unreadable", "missing", "min s", "median s", "max s"):
            splits.add_column(column, justify="left" if column == "split" else "right")
        for split, count in self.videos.items():
            stats = self.duration_stats(split)
            unreadable = sum(1 for u in self.unreadable if u.split == split)
            splits.add_row(
                split,
                str(count),
                str(len(self.durations.get(split, []))),
                Text(str(unreadable), style="red" if unreadable else ""),
                str(self.missing.get(split, 0)),
                *([f"{s:.2f}" for s in stats] if stats else ["-"] * 3),
            )
        classes = Table(title="videos per class", title_justify="left")
        classes.add_column("label", justify="right")
        classes.add_column("class")
        for split in self.videos:
            classes.add_column(split, justify="right")
        for label, name in enumerate(self.classes[:SHOWN_ROWS]):
            classes.add_row(str(label), Text(name), *(str(self.per_class[s].get(name, 0)) for s in self.videos))
        if len(self.classes) > SHOWN_ROWS:
            classes.add_row("", f"... {len(self.classes) - SHOWN_ROWS} more", *([""] * len(self.videos)))
        parts: list[RenderableType] = [splits, classes]
        if self.unreadable:
            count = len(self.unreadable)
            title = f"{count} unreadable file{'s' if count > 1 else ''} (skipped in training)"
            bad = Table(title=title, title_justify="left")
            bad.add_column(f"file (in {self.root})", overflow="fold")
            bad.add_column("split")
            bad.add_column("reason", style="red")
            for item in self.unreadable[:SHOWN_ROWS]:
                path = Path(item.path)
                shown = path.relative_to(self.root) if path.is_relative_to(self.root) else path
                bad.add_row(Text(str(shown)), item.split, Text(item.reason))
            if len(self.unreadable) > SHOWN_ROWS:
                bad.add_row(f"... {len(self.unreadable) - SHOWN_ROWS} more (--json lists all)", "", "")
            parts.append(bad)
        else:
            parts.append(Text("every video decodes", style="green"))
        return Group(*parts)

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
        per_class={split: _per_class(records, index.classes) for split, records in index.splits.items()},
        durations={split: [] for split in index.splits},
        missing=dict(index.missing),
    )
    total = sum(report.videos.values())
    done = 0
    for split, records in index.splits.items():
        for record in records:
            try:
                with VideoReader(record.path, threads=1) as reader:  # frame threads would decode ahead
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


def _per_class(records: list[VideoRecord], classes: list[str]) -> dict[str, int]:
    counts = Counter(record.label for record in records)
    return {name: counts[label] for label, name in enumerate(classes)}
