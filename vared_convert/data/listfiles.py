"""Annotation text files: list files of ``path label`` lines, class files, and reading them as UTF-8.

A list line is ``path,label`` (CSV: quote a field that holds a comma) or ``path label`` with spaces. With
spaces, a class name that holds spaces is told from the path by the path's video extension
(``clips/a b.mp4 punching person (boxing)``); a line where that leaves doubt is refused, never guessed.

A class file is one name per line (label 0 first: ``classes.txt``, mmaction2's ``label_map_*.txt``), or
``index name`` lines numbered from 0 or 1 (UCF101's ``classInd.txt``), whose first index is then label 0.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import VaredError
from .records import VIDEO_EXTENSIONS, checked_class_names

__all__ = [
    "INTEGER",
    "ClassFile",
    "ListRow",
    "find_class_file",
    "read_class_file",
    "read_list",
    "read_text",
    "split_spaced_line",
]

INTEGER = re.compile(r"[+-]?\d+")
LIST_HEADER_FIELDS = {"path", "video", "video_path", "file", "filename"}
CLASS_FILE_NAMES = ("classes.txt", "classInd.txt", "label_map.txt")
_EXTENSION_END = re.compile(
    r"(?:" + "|".join(re.escape(ext) for ext in sorted(VIDEO_EXTENSIONS)) + r")(?=\s)", re.IGNORECASE
)
_NUMBERED = re.compile(r"(\d+)[\s,]+(\S.*)")


def read_text(path: Path) -> str:
    """The text of an annotation file: UTF-8, with or without a byte-order mark; a `VaredError` otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VaredError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise VaredError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


@dataclass(frozen=True)
class ListRow:
    """One line of a list file: the video path as written, its label text (``None`` if the line has none)."""

    path: str
    label: str | None
    line: int


def split_spaced_line(line: str) -> tuple[str, str | None] | None:
    """``(path, label)`` of a space-separated line, ``(path, None)`` for a lone path, ``None`` when the
    split is in doubt (several words and no single video extension to end the path)."""
    fields = line.split()
    if len(fields) == 1:
        return fields[0], None
    ends = [m.end() for m in _EXTENSION_END.finditer(line)]
    if len(ends) == 1:
        return line[: ends[0]].strip(), line[ends[0] :].strip()
    if len(fields) == 2:
        return fields[0], fields[1]
    if not ends and INTEGER.fullmatch(fields[-1]):  # a path with spaces and no extension, an integer label
        path, label = line.rsplit(maxsplit=1)
        return path.strip(), label
    return None


def read_list(path: Path) -> list[ListRow]:
    """The rows of a list file, blank lines and ``#`` comments left out, a header line naming the columns
    skipped; a `VaredError` naming the line for one that cannot be read."""
    lines = [(n, line.strip()) for n, line in enumerate(read_text(path).splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line and not line.startswith("#")]
    comma = bool(lines) and all("," in line for _, line in lines)
    rows: list[ListRow] = []
    for n, line in lines:
        if comma:
            fields = [f.strip() for f in next(csv.reader([line]))]
            if len(fields) != 2 or not fields[0]:
                raise VaredError(f"{path}:{n}: expected 'path,label', got '{line}' (quote a field holding a comma)")
            video, label = fields[0], fields[1] or None
        else:
            split = split_spaced_line(line)
            if split is None:
                raise VaredError(
                    f"{path}:{n}: cannot tell the video path from the label in '{line}'; write 'path,label' lines "
                    "(quote a field holding a comma), or integer labels with the class names in classes.txt"
                )
            video, label = split
        if label is not None and " " in label and all(INTEGER.fullmatch(w) for w in label.split()):
            raise VaredError(f"{path}:{n}: several labels ('{label}'): vared reads one label per video")
        if not rows and video.lower() in LIST_HEADER_FIELDS:
            continue
        rows.append(ListRow(video, label, n))
    return rows


@dataclass(frozen=True)
class ClassFile:
    """The classes a class file names, in label order, and the index its first line gives (0 or 1);
    ``path`` is ``None`` for classes numbered from a class count."""

    path: Path | None
    names: list[str]
    base: int


def read_class_file(path: Path) -> ClassFile:
    """Read one name per line, or ``index name`` lines numbered from 0 or 1 (see the module's docstring)."""
    lines = [line.strip() for line in read_text(path).splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise VaredError(f"{path}: no class names in it (one per line)")
    numbered = [_NUMBERED.fullmatch(line) for line in lines]
    if all(numbered):
        indices = [int(m[1]) for m in numbered]  # type: ignore[index]
        if indices[0] in (0, 1) and indices == list(range(indices[0], indices[0] + len(indices))):
            names = [m[2].strip() for m in numbered]  # type: ignore[index]
            return ClassFile(path, checked_class_names(names, str(path)), indices[0])
    return ClassFile(path, checked_class_names(lines, str(path)), 0)


def find_class_file(folder: Path) -> Path | None:
    """``classes.txt``, ``classInd.txt``, ``label_map.txt`` or a single ``label_map_*.txt`` in ``folder``."""
    for name in CLASS_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    maps = sorted(folder.glob("label_map*.txt"))
    return maps[0] if len(maps) == 1 else None
