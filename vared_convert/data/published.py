"""The annotation files of published datasets, read as they are downloaded.

* Kinetics-400/600/700: ``label,youtube_id,time_start,time_end,split`` CSVs in ``ROOT`` or
  ``ROOT/annotations``; videos anywhere under ``ROOT`` named ``<youtube_id>_<start:06d>_<end:06d>.<ext>``
  (already cut) or ``<youtube_id>.<ext>`` (the window is cut at decode time). A video in a folder that names a
  split (``train/``, ``videos_val/``) serves that split only, so an id in two splits reads each split's file.
* UCF101: ``classInd.txt`` (``1 ApplyEyeMakeup``, numbered from 1) and ``trainlist0N.txt`` (1-based labels) /
  ``testlist0N.txt`` (no labels: the class is the folder) in ``ROOT`` or ``ROOT/ucfTrainTestlist``; split N
  (default 1) with layout ``ucf101:N``; the test list is the ``val`` split.
* HMDB51: ``<class>_test_split<N>.txt`` files (``video.avi 1``: 1 train, 2 test, 0 unused) in ``ROOT`` or a
  folder inside it (``testTrainMulti_7030_splits``); classes sorted by name; test is ``val``.
* Something-Something v2: ``labels.json`` (``{"Approaching something ...": "0"}``) with ``train.json`` /
  ``validation.json`` (``[{"id": "78687", "template": "Holding [something] ..."}]``) in ``ROOT`` or a folder
  inside it; videos ``<id>.webm`` anywhere under ``ROOT``.

Videos are found by name under ``ROOT``; one that an annotation names but the disk lacks is listed in
`VideoIndex.missing` with the annotation line that asked for it.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import VaredError
from .listfiles import INTEGER, read_class_file, read_list, read_text
from .records import MissingVideo, VideoIndex, VideoRecord, folder_split, is_video, normalize_split, resolve_classes

__all__ = [
    "hmdb51_folder",
    "index_hmdb51",
    "index_kinetics",
    "index_ssv2",
    "index_ucf101",
    "is_kinetics_csv",
    "kinetics_csvs",
    "ssv2_folder",
    "ucf101_folder",
]

KINETICS_FIELDS = {"youtube_id", "time_start", "time_end"}
HMDB_SPLIT_FILE = re.compile(r"(.+)_test_split(\d)\.txt")
HMDB_SPLITS = {"1": "train", "2": "val"}  # 0: not used in this split


def _videos_by_name(root: Path, fold_case: bool) -> dict[str, list[Path]]:
    """Every video under ``root`` by file name and by stem (both keys; lower-cased with ``fold_case``)."""
    found: dict[str, list[Path]] = defaultdict(list)
    for path in sorted(root.rglob("*")):
        if is_video(path):
            for key in {path.name, path.stem}:
                found[key.lower() if fold_case else key].append(path)
    return found


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _candidates_folder(root: Path, is_folder: Any) -> Path | None:
    """``root`` or a folder directly inside it for which ``is_folder`` holds."""
    if is_folder(root):
        return root
    return next((d for d in sorted(root.iterdir()) if d.is_dir() and is_folder(d)), None)


# ---- Kinetics -----------------------------------------------------------------------------------------------


def is_kinetics_csv(path: Path) -> bool:
    """A CSV whose header has ``youtube_id``, ``time_start`` and ``time_end``."""
    if path.suffix.lower() != ".csv":
        return False
    with path.open("rb") as f:  # the header alone: the CSVs of Kinetics-700 hold half a million rows
        first = f.readline().decode("utf-8-sig", errors="replace")
    header = next(csv.reader([first]), [])
    return KINETICS_FIELDS <= {h.strip() for h in header}


def kinetics_csvs(root: Path) -> list[Path]:
    """The Kinetics annotation CSVs in ``root`` and ``root/annotations``."""
    folders = [root, root / "annotations"]
    return [p for folder in folders if folder.is_dir() for p in sorted(folder.glob("*.csv")) if is_kinetics_csv(p)]


def index_kinetics(root: Path, class_names: list[str] | None) -> VideoIndex:
    """Index the Kinetics CSVs under ``root`` (see the module's docstring)."""
    csvs = kinetics_csvs(root)
    if not csvs:
        raise VaredError(f"no Kinetics annotation CSVs (label,youtube_id,time_start,time_end,split) in {root}")
    rows: list[tuple[str, str, str, float, float, str]] = []  # split, label, youtube id, start, end, source
    for path in csvs:
        for n, row in enumerate(csv.DictReader(io.StringIO(read_text(path)), skipinitialspace=True), 2):
            split, label = normalize_split(row.get("split") or path.stem), (row.get("label") or "").strip()
            if not split or not label:  # test sets come without labels
                continue
            try:
                youtube_id, start, end = row["youtube_id"].strip(), float(row["time_start"]), float(row["time_end"])
            except (AttributeError, TypeError, ValueError):
                raise VaredError(f"{path}:{n}: expected youtube_id, time_start, time_end, got {row}") from None
            rows.append((split, label, youtube_id, start, end, f"{_relative(path, root)}:{n}"))
    classes = resolve_classes({label for _, label, *_ in rows}, class_names)
    label_of = {name: i for i, name in enumerate(classes)}
    videos = _videos_by_name(root, fold_case=False)  # YouTube ids differ in case alone
    splits: dict[str, list[VideoRecord]] = {}
    missing: dict[str, list[MissingVideo]] = {}
    for split, label, youtube_id, start, end, source in rows:
        records = splits.setdefault(split, [])
        cut_name = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        cut, cut_elsewhere = _in_split(videos.get(cut_name, []), split, root)
        whole, whole_elsewhere = _in_split(videos.get(youtube_id, []), split, root)
        if cut is not None:
            records.append(VideoRecord(cut, label_of[label]))
        elif whole is not None:
            records.append(VideoRecord(whole, label_of[label], start, end))
        else:
            elsewhere = cut_elsewhere or whole_elsewhere
            name = f"{cut_name} or {youtube_id}.*"
            if elsewhere is not None:
                name += f" (only in another split's folder: {_relative(elsewhere, root)})"
            missing.setdefault(split, []).append(MissingVideo(split, name, source))
    return VideoIndex(classes, splits, "kinetics", missing)


def _in_split(paths: list[Path], split: str, root: Path) -> tuple[Path | None, Path | None]:
    """The file for ``split`` among same-named ``paths``: one in that split's folder, else one in no split's
    folder; and, when neither, one in another split's folder (to name it)."""
    own = [p for p in paths if folder_split(p, root) == split]
    neutral = [p for p in paths if folder_split(p, root) is None]
    chosen = (own or neutral or [None])[0]
    return chosen, (paths[0] if chosen is None and paths else None)


# ---- UCF101 -------------------------------------------------------------------------------------------------


def ucf101_folder(root: Path) -> Path | None:
    """The folder with ``classInd.txt`` and ``trainlist01.txt``: ``root`` or one inside it."""
    return _candidates_folder(root, lambda d: (d / "classInd.txt").is_file() and (d / "trainlist01.txt").is_file())


def index_ucf101(root: Path, class_names: list[str] | None, split_number: int = 1) -> VideoIndex:
    """Index UCF101's split files (see the module's docstring)."""
    folder = ucf101_folder(root)
    if folder is None:
        raise VaredError(f"no UCF101 split files (classInd.txt, trainlist01.txt) in {root} or a folder inside it")
    class_file = read_class_file(folder / "classInd.txt")
    names = class_file.names
    by_lower = {name.lower(): name for name in names}
    videos = _videos_by_name(root, fold_case=True)
    found: dict[str, list[tuple[str, Path | None, str]]] = {}  # split -> (class, path, list entry)
    missing: dict[str, list[MissingVideo]] = {}
    for split, stem in (("train", "trainlist"), ("val", "testlist")):
        path = folder / f"{stem}{split_number:02d}.txt"
        if not path.is_file():
            continue
        entries = found.setdefault(split, [])
        for row in read_list(path):
            source = f"{_relative(path, root)}:{row.line}"
            folder_class = by_lower.get(Path(row.path).parent.name.lower())
            if row.label is None:
                if folder_class is None:
                    raise VaredError(f"{source}: no label, and the folder of '{row.path}' is no class of classInd.txt")
                name = folder_class
            else:
                name = _numbered_name(row.label, class_file.base, names, source)
            video = _find(videos, row.path)
            if video is None:
                missing.setdefault(split, []).append(MissingVideo(split, row.path, source))
            entries.append((name, video, source))
    if not found:
        raise VaredError(f"no trainlist{split_number:02d}.txt or testlist{split_number:02d}.txt in {folder}")
    classes = resolve_classes(names, class_names) if class_names is not None else names
    label_of = {name: i for i, name in enumerate(classes)}
    splits = {
        split: [VideoRecord(video, label_of[name]) for name, video, _ in entries if video is not None]
        for split, entries in found.items()
    }
    return VideoIndex(classes, splits, "ucf101" if split_number == 1 else f"ucf101:{split_number}", missing)


def _numbered_name(label: str, base: int, names: list[str], source: str) -> str:
    if not INTEGER.fullmatch(label):
        raise VaredError(f"{source}: label '{label}' is not a class number")
    index = int(label) - base
    if not 0 <= index < len(names):
        raise VaredError(f"{source}: label {label} is out of range ({base}..{base + len(names) - 1})")
    return names[index]


def _find(videos: dict[str, list[Path]], written: str) -> Path | None:
    """The video a list entry names: the one whose folder matches too, else the only one of that name."""
    entry = Path(written.replace("\\", "/"))
    candidates = videos.get(entry.name.lower(), [])
    same_folder = [p for p in candidates if p.parent.name.lower() == entry.parent.name.lower()]
    if same_folder:
        return same_folder[0]
    return candidates[0] if len(candidates) == 1 else None


# ---- HMDB51 -------------------------------------------------------------------------------------------------


def hmdb51_folder(root: Path) -> Path | None:
    """The folder with HMDB51's ``<class>_test_split1.txt`` files: ``root`` or one inside it."""
    return _candidates_folder(root, lambda d: any(d.glob("*_test_split1.txt")))


def index_hmdb51(root: Path, class_names: list[str] | None, split_number: int = 1) -> VideoIndex:
    """Index HMDB51's split files (see the module's docstring)."""
    folder = hmdb51_folder(root)
    if folder is None:
        raise VaredError(f"no HMDB51 split files (<class>_test_split1.txt) in {root} or a folder inside it")
    files = sorted(folder.glob(f"*_test_split{split_number}.txt"))
    if not files:
        raise VaredError(f"no HMDB51 files *_test_split{split_number}.txt in {folder}")
    names = [HMDB_SPLIT_FILE.fullmatch(f.name)[1] for f in files]  # type: ignore[index]
    classes = resolve_classes(names, class_names)
    label_of = {name: i for i, name in enumerate(classes)}
    videos = _videos_by_name(root, fold_case=True)
    splits: dict[str, list[VideoRecord]] = {"train": [], "val": []}
    missing: dict[str, list[MissingVideo]] = {}
    for name, path in zip(names, files):
        for n, line in enumerate(read_text(path).splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            source = f"{_relative(path, root)}:{n}"
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise VaredError(f"{source}: expected 'video.avi 0|1|2', got '{line.strip()}'")
            split = HMDB_SPLITS.get(fields[1])
            if split is None:
                continue
            video = _find(videos, f"{name}/{fields[0]}")
            if video is None:
                missing.setdefault(split, []).append(MissingVideo(split, f"{name}/{fields[0]}", source))
            else:
                splits[split].append(VideoRecord(video, label_of[name]))
    return VideoIndex(classes, splits, "hmdb51" if split_number == 1 else f"hmdb51:{split_number}", missing)


# ---- Something-Something v2 ---------------------------------------------------------------------------------

SSV2_SPLITS = {"train.json": "train", "validation.json": "val"}


def ssv2_folder(root: Path) -> Path | None:
    """The folder with ``labels.json`` and ``train.json`` or ``validation.json``: ``root`` or one inside it."""
    return _candidates_folder(
        root, lambda d: (d / "labels.json").is_file() and any((d / name).is_file() for name in SSV2_SPLITS)
    )


def _json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise VaredError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None


def index_ssv2(root: Path, class_names: list[str] | None) -> VideoIndex:
    """Index Something-Something v2's JSON files (see the module's docstring)."""
    folder = ssv2_folder(root)
    if folder is None:
        raise VaredError(f"no Something-Something v2 labels.json with train.json or validation.json in {root}")
    labels = _json(folder / "labels.json")
    if not isinstance(labels, dict) or not all(isinstance(v, (str, int)) and INTEGER.fullmatch(str(v))
                                               for v in labels.values()):
        raise VaredError(f"{folder / 'labels.json'}: expected {{\"class name\": \"index\", ...}}")
    names = [name for name, _ in sorted(labels.items(), key=lambda item: int(item[1]))]
    if [int(labels[name]) for name in names] != list(range(len(names))):
        raise VaredError(f"{folder / 'labels.json'}: the indices are not 0..{len(names) - 1}")
    classes = resolve_classes(names, class_names) if class_names is not None else names
    label_of = {name: i for i, name in enumerate(classes)}
    videos = _videos_by_name(root, fold_case=True)
    splits: dict[str, list[VideoRecord]] = {}
    missing: dict[str, list[MissingVideo]] = {}
    for file_name, split in SSV2_SPLITS.items():
        path = folder / file_name
        if not path.is_file():
            continue
        entries = _json(path)
        if not isinstance(entries, list):
            raise VaredError(f"{path}: expected a list of {{\"id\": ..., \"template\": ...}} entries")
        records = splits.setdefault(split, [])
        for k, entry in enumerate(entries):
            source = f"{_relative(path, root)} entry {k}"
            if not isinstance(entry, dict) or "id" not in entry or "template" not in entry:
                raise VaredError(f"{source}: expected an object with 'id' and 'template'")
            name = str(entry["template"]).replace("[", "").replace("]", "")
            if name not in label_of:
                raise VaredError(f"{source}: template '{entry['template']}' is not a class of labels.json")
            candidates = videos.get(str(entry["id"]).lower(), [])
            if candidates:
                records.append(VideoRecord(candidates[0], label_of[name]))
            else:
                missing.setdefault(split, []).append(MissingVideo(split, f"{entry['id']}.webm", source))
    return VideoIndex(classes, splits, "ssv2", missing)
