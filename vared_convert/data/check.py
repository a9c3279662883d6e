"""`vared data check`: what a dataset holds and which of its files cannot be read.

Each video's header is read, its first frame decoded, and every packet of the file read (not decoded), so a
truncated download is found: its packets end before the header's duration. A video that ends before its
annotated window (Kinetics) is reported too. Reading the packets costs about as much as reading the file
(benchmarks/bench_loader.py prints the figures).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .dataset import clip_window
from .decode import DecodeError, VideoReader
from .layouts import MissingVideo, VideoRecord, index_dataset

__all__ = ["DatasetReport", "UnreadableVideo", "check_dataset"]

Progress = Callable[[int, int], None]  # (files checked, total files)
SHOWN_ROWS = 40  # classes and unreadable files listed in the tables; --json has them all
SHOWN_MISSING = 5  # missing videos named in the terminal report; --json has them all


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
    missing: dict[str, list[MissingVideo]] = field(default_factory=dict)  # annotated but absent from disk
    notes: list[str] = field(default_factory=list)  # what the index assumed or found odd

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
        title = Text(f"{self.root} · layout {self.layout} · {len(self.classes)} classes")  # no markup in names
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
                str(len(self.missing.get(split, []))),
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
        parts += [Text(f"note: {note}", style="yellow") for note in self.notes]
        missing = [m for split_missing in self.missing.values() for m in split_missing]
        if missing:
            shown = ", ".join(str(m) for m in missing[:SHOWN_MISSING])
            extra = len(missing) - SHOWN_MISSING
            more = f", ... ({extra} more; --json lists all)" if extra > 0 else ""
            count = f"{len(missing)} annotated video{'s are' if len(missing) > 1 else ' is'} not on disk"
            parts.append(Text(f"{count}: {shown}{more}", style="yellow"))
        if self.unreadable:
            count = len(self.unreadable)
            title = f"{count} unreadable file{'s' if count > 1 else ''} (skipped in training)"
            bad = Table(title=title, title_justify="left")
            bad.add_column(Text(f"file (in {self.root})"), overflow="fold")
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
                "missing": len(self.missing.get(split, [])),
                "duration": dict(zip(("min", "median", "max"), stats)) if stats else None,
                "per_class": self.per_class.get(split, {}),
            }
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.classes,
            "splits": splits,
            "unreadable": [{"path": u.path, "split": u.split, "reason": u.reason} for u in self.unreadable],
            "missing": [{"name": m.name, "split": m.split, "source": m.source}
                        for split_missing in self.missing.values() for m in split_missing],
            "notes": self.notes,
        }


def check_dataset(
    root: str | Path,
    layout: str = "auto",
    progress: Progress | None = None,
    *,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> DatasetReport:
    """Index ``root`` (see `index_dataset`) and try every video; see `DatasetReport`. Layout errors raise
    `VaredError`."""
    index = index_dataset(root, layout, class_names=class_names, num_classes=num_classes)
    report = DatasetReport(
        root=Path(root),
        layout=index.layout,
        classes=index.classes,
        videos={split: len(records) for split, records in index.splits.items()},
        per_class={split: _per_class(records, index.classes) for split, records in index.splits.items()},
        durations={split: [] for split in index.splits},
        missing={split: list(missing) for split, missing in index.missing.items()},
        notes=list(index.notes),
    )
    total = sum(report.videos.values())
    done = 0
    for split, records in index.splits.items():
        for record in records:
            try:
                with VideoReader(record.path, threads=1) as reader:  # frame threads would decode ahead
                    duration = reader.verify()
                    begin, end = clip_window(record, duration, reader.fps)
            except DecodeError as exc:
                report.unreadable.append(UnreadableVideo(str(record.path), split, exc.reason))
            else:
                report.durations[split].append(max(0.0, end - begin))
            done += 1
            if progress:
                progress(done, total)
    return report


def _per_class(records: list[VideoRecord], classes: list[str]) -> dict[str, int]:
    counts = Counter(record.label for record in records)
    return {name: counts[label] for label, name in enumerate(classes)}
