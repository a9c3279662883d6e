"""Find the videos of a dataset and their labels, whatever the layout on disk.

Three layouts, detected in this order by ``layout="auto"``:

* ``"kinetics"``: the official Kinetics annotation CSVs (``label,youtube_id,time_start,time_end,split``) in
  ``ROOT`` or ``ROOT/annotations``, beside videos anywhere under ``ROOT`` named either
  ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` (already cut) or ``<youtube_id>.<ext>`` (the whole video; the
  annotated window is cut at decode time).
* ``"lists"``: ``ROOT/{train,val,test}.{csv,txt}`` with one ``path label`` line per video, space or comma
  separated (PySlowFast, pytorchvideo, mmaction2); paths relative to ``ROOT``; labels all integers (indices
  into the class list: ``class_names``, else ``ROOT/classes.txt``, else ``"0"``, ``"1"``, ...) or class names.
* ``"folders"``: ``ROOT/{train,val,test}/<class>/<video>``, classes sorted by name.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import VaredError

__all__ = [
    "LAYOUTS",
    "VIDEO_EXTENSIONS",
    "VideoIndex",
    "VideoRecord",
    "detect_layout",
    "index_dataset",
    "normalize_split",
]

LAYOUTS = ("folders", "lists", "kinetics")
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
LIST_SUFFIXES = (".csv", ".txt")
LIST_HEADER_FIELDS = {"path", "video", "video_path", "file", "filename"}
KINETICS_FIELDS = {"youtube_id", "time_start", "time_end"}


@dataclass(frozen=True)
class VideoRecord:
    """One labelled video; ``start``/``end`` (seconds) restrict it to a window cut at decode time."""

    path: Path
    label: int
    start: float | None = None
    end: float | None = None


@dataclass
class VideoIndex:
    """The videos of a dataset per split, with the class list their labels index into."""

    classes: list[str]
    splits: dict[str, list[VideoRecord]]
    layout: str
    missing: dict[str, int] = field(default_factory=dict)  # annotated videos absent from disk, per split

    def split(self, name: str) -> list[VideoRecord]:
        """The records of one split (``validate``/``valid`` mean ``val``); a missing split is a `VaredError`."""
        key = normalize_split(name) or name
        if key not in self.splits:
            raise VaredError(f"no '{name}' split in this dataset (found: {', '.join(self.splits) or 'none'})")
        return self.splits[key]


def normalize_split(name: str) -> str | None:
    """``"validate"`` -> ``"val"``; ``None`` for a name that is not a split."""
    return SPLIT_ALIASES.get(name.strip().lower())


def index_dataset(root: str | Path, layout: str = "auto", class_names: Sequence[str] | None = None) -> VideoIndex:
    """Index the videos under ``root``.

    ``class_names`` (the list a model checkpoint stores) fixes the class order, so label ``i`` means
    ``class_names[i]`` whatever the data contains; a class in the data that the list lacks is a `VaredError`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VaredError(f"no such dataset directory: {root}")
    if layout not in ("auto", *LAYOUTS):
        raise VaredError(f"unknown layout '{layout}' (choose auto, {', '.join(LAYOUTS)})")
    if class_names is not None:
        class_names = _checked_class_names(class_names)
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "kinetics":
        index = _index_kinetics(root, class_names)
    elif layout == "lists":
        index = _index_lists(root, class_names)
    else:
        index = _index_folders(root, class_names)
    if not any(index.splits.values()):
        raise VaredError(f"no videos found in {root} (layout '{layout}')")
    return index


def detect_layout(root: Path) -> str:
    """The layout of ``root``: Kinetics CSVs first, then list files, then class folders."""
    if _kinetics_csvs(root):
        return "kinetics"
    if _list_files(root):
        return "lists"
    if _split_dirs(root):
        return "folders"
    raise VaredError(
        f"no videos found in {root}: expected ROOT/train/<class>/<video>, ROOT/train.csv with 'path label' lines, "
        "or Kinetics annotation CSVs"
    )


def _checked_class_names(names: Sequence[str]) -> list[str]:
    names = [str(n) for n in names]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise VaredError(f"class '{name}' appears twice in the class list")
        seen.add(name)
    return names


def _resolve_classes(found: set[str], class_names: list[str] | None) -> list[str]:
    if class_names is None:
        return sorted(found)
    unknown = sorted(found - set(class_names))
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise VaredError(f"class '{unknown[0]}'{more} is in the data but not in the model's {len(class_names)} classes")
    return class_names


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".") and path.is_file()


# ---- folders ------------------------------------------------------------------------------------------------


def _split_dirs(root: Path) -> dict[str, Path]:
    dirs: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        split = normalize_split(child.name) if child.is_dir() else None
        if split and split not in dirs and any(c.is_dir() for c in child.iterdir()):
            dirs[split] = child
    return dirs


def _index_folders(root: Path, class_names: list[str] | None) -> VideoIndex:
    videos: dict[str, dict[str, list[Path]]] = {}
    for split, split_dir in _split_dirs(root).items():
        per_class = {}
        for class_dir in sorted(split_dir.iterdir()):
            if class_dir.is_dir() and not class_dir.name.startswith("."):
                per_class[class_dir.name] = sorted(p for p in class_dir.rglob("*") if _is_video(p))
        videos[split] = per_class
    classes = _resolve_classes({c for per_class in videos.values() for c in per_class}, class_names)
    label_of = {name: i for i, name in enumerate(classes)}
    splits = {
        split: [VideoRecord(path, label_of[c]) for c, paths in per_class.items() for path in paths]
        for split, per_class in videos.items()
    }
    return VideoIndex(classes, splits, "folders")


# ---- lists --------------------------------------------------------------------------------------------------


def _list_files(root: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for name in SPLIT_ALIASES:
        for suffix in LIST_SUFFIXES:
            path = root / f"{name}{suffix}"
            split = SPLIT_ALIASES[name]
            if split not in files and path.is_file() and not _is_kinetics_csv(path):
                files[split] = path
    return files


def _read_list(path: Path) -> list[tuple[str, str, int]]:
    """``(video path, label text, line number)`` per line; a header line naming the columns is skipped."""
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    comma = bool(lines) and all("," in line for _, line in lines)
    rows = []
    for n, line in lines:
        fields = next(csv.reader([line])) if comma else line.rsplit(maxsplit=1)
        fields = [f.strip() for f in fields]
        if len(fields) != 2 or not all(fields):
            raise VaredError(f"{path}:{n}: expected 'path label', got '{line}'")
        if not rows and fields[0].lower() in LIST_HEADER_FIELDS:
            continue
        rows.append((fields[0], fields[1], n))
    return rows


def _index_lists(root: Path, class_names: list[str] | None) -> VideoIndex:
    files = _list_files(root)
    rows = {split: _read_list(path) for split, path in files.items()}
    labels = [label for split_rows in rows.values() for _, label, _ in split_rows]
    integer = bool(labels) and all(label.isdigit() for label in labels)
    if integer:
        classes = class_names or _classes_file(root) or [str(i) for i in range(max(map(int, labels)) + 1)]
    else:
        classes = _resolve_classes(set(labels), class_names)
    label_of = {name: i for i, name in enumerate(classes)}
    splits: dict[str, list[VideoRecord]] = {}
    for split, split_rows in rows.items():
        records = []
        for video, label, n in split_rows:
            index = int(label) if integer else label_of[label]
            if index >= len(classes):
                raise VaredError(f"{files[split]}:{n}: label {index} is out of range for {len(classes)} classes")
            path = Path(video).expanduser()
            records.append(VideoRecord(path if path.is_absolute() else root / path, index))
        splits[split] = records
    return VideoIndex(classes, splits, "lists")


def _classes_file(root: Path) -> list[str] | None:
    path = root / "classes.txt"
    if not path.is_file():
        return None
    return _checked_class_names([line.strip() for line in path.read_text().splitlines() if line.strip()])


# ---- kinetics -----------------------------------------------------------------------------------------------


def _is_kinetics_csv(path: Path) -> bool:
    if path.suffix.lower() != ".csv":
        return False
    with path.open(newline="") as f:
        header = next(csv.reader(f), [])
    return KINETICS_FIELDS <= {h.strip() for h in header}


def _kinetics_csvs(root: Path) -> list[Path]:
    folders = [root, root / "annotations"]
    return [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.csv")) if _is_kinetics_csv(p)]


def _index_kinetics(root: Path, class_names: list[str] | None) -> VideoIndex:
    csvs = _kinetics_csvs(root)
    if not csvs:
        raise VaredError(f"no Kinetics annotation CSVs (label,youtube_id,time_start,time_end,split) in {root}")
    rows: list[tuple[str, str, str, float, float]] = []  # split, label, youtube id, start, end
    for path in csvs:
        with path.open(newline="") as f:
            for n, row in enumerate(csv.DictReader(f, skipinitialspace=True), 2):
                split, label = normalize_split(row.get("split") or path.stem), (row.get("label") or "").strip()
                if not split or not label:  # test sets come without labels
                    continue
                try:
                    youtube_id, start, end = row["youtube_id"].strip(), float(row["time_start"]), float(row["time_end"])
                except (AttributeError, TypeError, ValueError):
                    raise VaredError(f"{path}:{n}: expected youtube_id, time_start, time_end, got {row}") from None
                rows.append((split, label, youtube_id, start, end))
    classes = _resolve_classes({label for _, label, *_ in rows}, class_names)
    label_of = {name: i for i, name in enumerate(classes)}
    videos: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if _is_video(path):
            videos.setdefault(path.stem, path)
    splits: dict[str, list[VideoRecord]] = {}
    missing: dict[str, int] = {}
    for split, label, youtube_id, start, end in rows:
        records = splits.setdefault(split, [])
        cut = videos.get(f"{youtube_id}_{int(start):06d}_{int(end):06d}")
        whole = videos.get(youtube_id)
        if cut is not None:
            records.append(VideoRecord(cut, label_of[label]))
        elif whole is not None:
            records.append(VideoRecord(whole, label_of[label], start, end))
        else:
            missing[split] = missing.get(split, 0) + 1
    return VideoIndex(classes, splits, "kinetics", missing)
