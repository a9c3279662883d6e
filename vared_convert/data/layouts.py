"""Find the videos of a dataset and their labels, whatever the layout on disk.

Layouts, detected in this order by ``layout="auto"``:

* ``"kinetics"``, ``"ssv2"``, ``"ucf101"`` (``"ucf101:2"`` for split 2), ``"hmdb51"`` (``"hmdb51:3"``): the
  annotation files of those datasets as published (`vared_convert.data.published`).
* ``"lists"``: ``ROOT/{train,val,test}.{csv,txt}`` with one ``path label`` line per video (PySlowFast,
  pytorchvideo, mmaction2; see `vared_convert.data.listfiles` for how lines are read); paths relative to
  ``ROOT`` (``..`` may not leave it; absolute paths are allowed and noted); labels all class names, or all
  integers indexing the class list: ``class_names``, else a class file in ``ROOT`` (``classes.txt``,
  ``classInd.txt`` numbered from 1, ``label_map*.txt``), else ``num_classes`` classes named ``"0"``, ``"1"``,
  ..., else as many as the highest label + 1 (a note says so).
* ``"folders"``: ``ROOT/{train,val,test}/<class>/<video>``, classes sorted by name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from ..errors import VaredError
from .listfiles import INTEGER, ClassFile, ListRow, find_class_file, read_class_file, read_list
from .published import (
    hmdb51_folder,
    index_hmdb51,
    index_kinetics,
    index_ssv2,
    index_ucf101,
    is_kinetics_csv,
    kinetics_csvs,
    ssv2_folder,
    ucf101_folder,
)
from .records import (
    SPLIT_ALIASES,
    VIDEO_EXTENSIONS,
    MissingVideo,
    VideoIndex,
    VideoRecord,
    checked_class_names,
    is_video,
    normalize_split,
    resolve_classes,
)

__all__ = [
    "LAYOUTS",
    "VIDEO_EXTENSIONS",
    "MissingVideo",
    "VideoIndex",
    "VideoRecord",
    "detect_layout",
    "index_dataset",
    "normalize_split",
]

LAYOUTS = ("folders", "lists", "kinetics", "ucf101", "hmdb51", "ssv2")
SPLIT_NUMBERS = {"ucf101": (1, 2, 3), "hmdb51": (1, 2, 3)}
LIST_SUFFIXES = (".csv", ".txt")
SHOWN_IN_NOTES = 3  # examples a note quotes


def index_dataset(
    root: str | Path,
    layout: str = "auto",
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
) -> VideoIndex:
    """Index the videos under ``root``.

    ``class_names`` (the list a model checkpoint stores) fixes the class order, so label ``i`` means
    ``class_names[i]`` whatever the data contains; a class in the data that the list lacks is a `VaredError`.
    ``num_classes`` is the class count of a list layout with integer labels and no class names.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise VaredError(f"no such dataset directory: {root}")
    name, _, number = layout.partition(":")
    if name not in ("auto", *LAYOUTS) or (number and not _split_number(name, number)):
        raise VaredError(f"unknown layout '{layout}' (choose auto, {', '.join(LAYOUTS)}; ucf101:N and hmdb51:N read "
                         "split N = 1, 2 or 3)")
    if class_names is not None:
        class_names = checked_class_names(class_names)
    if num_classes is not None and num_classes < 1:
        raise VaredError(f"the class count must be at least 1, got {num_classes}")
    if name == "auto":
        name = detect_layout(root)
    split_number = _split_number(name, number) or 1
    if name == "kinetics":
        index = index_kinetics(root, class_names)
    elif name == "ssv2":
        index = index_ssv2(root, class_names)
    elif name == "ucf101":
        index = index_ucf101(root, class_names, split_number)
    elif name == "hmdb51":
        index = index_hmdb51(root, class_names, split_number)
    elif name == "lists":
        index = _index_lists(root, class_names, num_classes)
    else:
        index = _index_folders(root, class_names)
    if not any(index.splits.values()):
        missing = sum(len(m) for m in index.missing.values())
        found = f": the annotations name {missing} videos, none on disk" if missing else ""
        raise VaredError(f"no videos found in {root} (layout '{index.layout}'){found}")
    if len(index.classes) == 1:
        index.notes.append(f"only one class ('{index.classes[0]}'): a classifier needs two or more")
    return index


def _split_number(layout: str, number: str) -> int | None:
    if number.isdigit() and int(number) in SPLIT_NUMBERS.get(layout, ()):
        return int(number)
    return None


def detect_layout(root: Path) -> str:
    """The layout of ``root``: published annotation files first, then list files, then class folders."""
    checks: list[tuple[str, Callable[[Path], object]]] = [
        ("kinetics", kinetics_csvs),
        ("ssv2", ssv2_folder),
        ("ucf101", ucf101_folder),
        ("hmdb51", hmdb51_folder),
        ("lists", _list_files),
        ("folders", _split_dirs),
    ]
    for name, found in checks:
        if found(root):
            return name
    raise VaredError(
        f"no videos found in {root}: expected ROOT/train/<class>/<video>, ROOT/train.csv with 'path label' lines, "
        "or the annotation files of Kinetics, UCF101, HMDB51 or Something-Something v2"
    )


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
                per_class[class_dir.name] = sorted(p for p in class_dir.rglob("*") if is_video(p))
        videos[split] = per_class
    classes = resolve_classes({c for per_class in videos.values() for c in per_class}, class_names)
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
            if split not in files and path.is_file() and not is_kinetics_csv(path):
                files[split] = path
    return files


def _index_lists(root: Path, class_names: list[str] | None, num_classes: int | None) -> VideoIndex:
    files = _list_files(root)
    rows = {split: read_list(path) for split, path in files.items()}
    located = [(files[split], row) for split, split_rows in rows.items() for row in split_rows]
    for path, row in located:
        if row.label is None:
            raise VaredError(f"{path}:{row.line}: expected 'path label', got '{row.path}'")
    notes: list[str] = []
    classes, label_of = _list_classes(root, located, class_names, num_classes, notes)
    outside: list[str] = []
    splits = {
        split: [VideoRecord(_video_path(root, files[split], row, outside), label_of(files[split], row))
                for row in split_rows]
        for split, split_rows in rows.items()
    }
    if outside:
        notes.append(f"{len(outside)} list entries are outside {root} (absolute paths), e.g. "
                     + ", ".join(outside[:SHOWN_IN_NOTES]))
    return VideoIndex(classes, splits, "lists", notes=notes)


def _list_classes(
    root: Path,
    located: list[tuple[Path, ListRow]],
    class_names: list[str] | None,
    num_classes: int | None,
    notes: list[str],
) -> tuple[list[str], Callable[[Path, ListRow], int]]:
    """The class list of a lists layout and a function giving each row's label (see the module's docstring)."""
    integer = _labels_are_integers(located)
    class_path = find_class_file(root)
    numbering = read_class_file(class_path) if class_path else None
    if integer and numbering is None:  # integers index the model's classes, or classes named "0", "1", ...
        highest = max(int(row.label) for _, row in located)  # type: ignore[arg-type]
        count = num_classes or highest + 1
        numbering = ClassFile(None, class_names or [str(i) for i in range(count)], 0)
        if class_names is None and num_classes is None:
            lowest = min(int(row.label) for _, row in located)  # type: ignore[arg-type]
            one_based = " (no label is 0: if they count from 1, number classInd.txt lines from 1)" if lowest > 0 else ""
            notes.append(
                f"no class names: {count} classes, numbered 0..{count - 1}, from the highest label ({highest}) + 1"
                f"{one_based}; name them in {root / 'classes.txt'} (one per line) or give the count"
            )
    if integer:
        found = {numbering.names[_numbered(path, row, numbering)] for path, row in located}  # type: ignore[union-attr]
    else:
        found = {row.label for _, row in located}  # type: ignore[misc]
        unknown = sorted(found - set(numbering.names)) if numbering else []
        if unknown:
            raise VaredError(f"class '{unknown[0]}' of the list files is not in {numbering.path}")  # type: ignore
    if class_names is not None:
        classes = resolve_classes(found, class_names)
    else:
        classes = numbering.names if numbering else resolve_classes(found, None)
    position = {name: i for i, name in enumerate(classes)}
    if integer:
        return classes, lambda path, row: position[numbering.names[_numbered(path, row, numbering)]]  # type: ignore
    return classes, lambda path, row: position[row.label]  # type: ignore[index]


def _labels_are_integers(located: list[tuple[Path, ListRow]]) -> bool:
    """Whether the labels are integers; a `VaredError` at the first line of the rarer kind when mixed."""
    kinds = [bool(INTEGER.fullmatch(row.label or "")) for _, row in located]
    if not kinds:
        return False
    integer = sum(kinds) * 2 >= len(kinds)
    for (path, row), kind in zip(located, kinds):
        if kind != integer:
            what, others = ("an integer", "class names") if kind else ("a class name", "integers")
            raise VaredError(f"{path}:{row.line}: label '{row.label}' is {what} but the other labels are {others}; "
                             "use one or the other")
    return integer


def _numbered(path: Path, row: ListRow, numbering: ClassFile) -> int:
    """The index into ``numbering``'s names that an integer label gives; a `VaredError` out of range."""
    index = int(row.label) - numbering.base  # type: ignore[arg-type]
    if not 0 <= index < len(numbering.names):
        first, count = numbering.base, len(numbering.names)
        of = f" of {numbering.path.name}" if numbering.path else ""
        raise VaredError(
            f"{path}:{row.line}: label {row.label} is out of range for the {count} classes{of} "
            f"({first}..{first + count - 1})"
        )
    return index


def _video_path(root: Path, list_file: Path, row: ListRow, outside: list[str]) -> Path:
    """The video of a list row: relative to ``root`` (and inside it), or an absolute path (noted)."""
    written = Path(row.path).expanduser()
    if written.is_absolute():
        outside.append(f"{list_file.name}:{row.line} {row.path}")
        return written
    path = Path(os.path.normpath(root / written))
    if not path.is_relative_to(Path(os.path.normpath(root))):
        raise VaredError(
            f"{list_file}:{row.line}: path '{row.path}' leaves the dataset folder; paths are relative to {root} "
            "(write an absolute path to use a video elsewhere)"
        )
    return root / written
