"""What every dataset layout produces: labelled video records per split, the class list, what is missing."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import VaredError

__all__ = [
    "SPLIT_ALIASES",
    "VIDEO_EXTENSIONS",
    "MissingVideo",
    "VideoIndex",
    "VideoRecord",
    "checked_class_names",
    "folder_split",
    "is_video",
    "normalize_split",
    "resolve_classes",
]

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".ogv", ".3gp", ".ts"}
)
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
}


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video; ``start``/``end`` (seconds) restrict it to a window cut at decode time."""

    path: Path
    label: int
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class MissingVideo:
    """An annotated video that is not on disk: what was looked for, and the annotation line that asked."""

    split: str
    name: str  # e.g. "abc123_000010_000020 or abc123.*" (Kinetics), "ApplyEyeMakeup/v_x.avi" (UCF101)
    source: str  # "annotations/train.csv:12"

    def __str__(self) -> str:
        return f"{self.name} ({self.source})"


@dataclass
class VideoIndex:
    """The videos of a dataset per split, with the class list their labels index into.

    ``missing`` lists the annotated videos absent from disk, per split; ``notes`` says what the index assumed
    (e.g. a class count taken from the highest label) or found odd, one line each.
    """

    classes: list[str]
    splits: dict[str, list[VideoRecord]]
    layout: str
    missing: dict[str, list[MissingVideo]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[VideoRecord]:
        """The records of one split (``validate``/``valid`` mean ``val``); a missing split is a `VaredError`."""
        key = normalize_split(name) or name
        if key not in self.splits:
            raise VaredError(f"no '{name}' split in this dataset (found: {', '.join(self.splits) or 'none'})")
        return self.splits[key]


def normalize_split(name: str) -> str | None:
    """``"validate"`` -> ``"val"``; ``None`` for a name that is not a split."""
    return SPLIT_ALIASES.get(name.strip().lower())


def folder_split(path: Path, root: Path) -> str | None:
    """The split a video's folders name (``train/``, ``videos_val/``, ``val_256/``), or ``None`` if none or two."""
    found = set()
    for part in path.relative_to(root).parent.parts:
        for word in re.split(r"[^a-z]+", part.lower()):
            if normalize_split(word):
                found.add(normalize_split(word))
    return found.pop() if len(found) == 1 else None


def is_video(path: Path) -> bool:
    """A visible file with a video extension."""
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def checked_class_names(names: Sequence[str], source: str = "the class list") -> list[str]:
    """The names as strings; a `VaredError` for an empty or repeated one."""
    names = [str(n) for n in names]
    seen: set[str] = set()
    for name in names:
        if not name.strip():
            raise VaredError(f"{source} has an empty class name")
        if name in seen:
            raise VaredError(f"class '{name}' appears twice in {source}")
        seen.add(name)
    return names


def resolve_classes(found: Iterable[str], class_names: list[str] | None) -> list[str]:
    """The class list: the names found, sorted, or ``class_names`` (which must hold every name found)."""
    found = set(found)
    if class_names is None:
        return sorted(found)
    unknown = sorted(found - set(class_names))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise VaredError(f"class '{unknown[0]}'{more} is in the data but not in the model's {len(class_names)} classes")
    return class_names
