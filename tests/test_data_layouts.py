"""Indexing the three dataset layouts: folders per class, list files, Kinetics annotations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vared_convert.data.layouts import VideoRecord, index_dataset
from vared_convert.errors import VaredError


def touch(path: Path) -> Path:
    """Index-only tests need files, not videos: indexing never decodes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def relative(records: list[VideoRecord], root: Path) -> list[tuple[str, int]]:
    return [(r.path.relative_to(root).as_posix(), r.label) for r in records]


# ---- folders ------------------------------------------------------------------------------------------------


def test_folders_sorted_classes_and_splits(tmp_path: Path) -> None:
    for name in ["train/walk/b.mp4", "train/walk/a.avi", "train/jump/x.mkv", "validate/walk/v.mp4", "val2/z/q.mp4"]:
        touch(tmp_path / name)
    touch(tmp_path / "train/walk/notes.txt")  # not a video: ignored
    touch(tmp_path / "train/jump/.hidden.mp4")
    index = index_dataset(tmp_path)
    assert index.layout == "folders"
    assert index.classes == ["jump", "walk"]
    assert set(index.splits) == {"train", "val"}  # "validate" is val; "val2" is no split
    assert relative(index.splits["train"], tmp_path) == [
        ("train/jump/x.mkv", 0),
        ("train/walk/a.avi", 1),
        ("train/walk/b.mp4", 1),
    ]
    assert relative(index.split("validate"), tmp_path) == [("validate/walk/v.mp4", 1)]
    with pytest.raises(VaredError, match="no 'test' split"):
        index.split("test")


def test_class_names_fix_the_label_order(tmp_path: Path) -> None:
    for name in ["train/a/1.mp4", "train/b/2.mp4"]:
        touch(tmp_path / name)
    index = index_dataset(tmp_path, class_names=["c", "b", "a"])
    assert index.classes == ["c", "b", "a"]
    assert relative(index.splits["train"], tmp_path) == [("train/a/1.mp4", 2), ("train/b/2.mp4", 1)]
    with pytest.raises(VaredError, match="class 'b' is in the data but not in the model's 2 classes"):
        index_dataset(tmp_path, class_names=["a", "z"])
    with pytest.raises(VaredError, match="appears twice"):
        index_dataset(tmp_path, class_names=["a", "b", "a"])


# ---- lists --------------------------------------------------------------------------------------------------


def test_lists_space_separated_integer_labels_with_classes_file(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("clips/a 1.mp4 1\n\n# a comment\nclips/b.mp4 0\n/abs/c.mp4 2\n")
    (tmp_path / "val.txt").write_text("clips/d.mp4 2\n")
    (tmp_path / "classes.txt").write_text("run\nswim\nfly\n")
    index = index_dataset(tmp_path)
    assert index.layout == "lists"
    assert index.classes == ["run", "swim", "fly"]
    assert relative(index.splits["train"][:2], tmp_path) == [("clips/a 1.mp4", 1), ("clips/b.mp4", 0)]
    assert index.splits["train"][2].path == Path("/abs/c.mp4")
    assert [r.label for r in index.splits["val"]] == [2]


def test_lists_integer_labels_without_names_are_numbered(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a.mp4 3\nb.mp4 1\n")  # PySlowFast: .csv, space separated
    index = index_dataset(tmp_path)
    assert index.classes == ["0", "1", "2", "3"]
    assert [r.label for r in index.splits["train"]] == [3, 1]
    with pytest.raises(VaredError, match="label 3 is out of range for 2 classes"):
        index_dataset(tmp_path, class_names=["x", "y"])


def test_lists_comma_separated_class_names_with_header(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text('path,label\nv/1.mp4,high jump\nv/2.mp4,"abseiling"\n')
    (tmp_path / "test.csv").write_text("v/3.mp4,abseiling\n")
    index = index_dataset(tmp_path)
    assert index.classes == ["abseiling", "high jump"]
    assert relative(index.splits["train"], tmp_path) == [("v/1.mp4", 1), ("v/2.mp4", 0)]
    assert set(index.splits) == {"train", "test"}
    reordered = index_dataset(tmp_path, class_names=["high jump", "abseiling", "other"])
    assert [r.label for r in reordered.splits["train"]] == [0, 1]
    with pytest.raises(VaredError, match="'high jump'"):
        index_dataset(tmp_path, class_names=["abseiling"])


def test_lists_bad_line_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.mp4 1\nonly-a-path\n")
    with pytest.raises(VaredError, match=r"train.txt:2: expected 'path label'"):
        index_dataset(tmp_path)


# ---- kinetics -----------------------------------------------------------------------------------------------

KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc\n"


def test_kinetics_cut_and_whole_videos_and_missing(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/train.csv").write_text(
        KINETICS_HEADER
        + "abseiling,a_b-c1234567,14,24,train,0\n"  # cut file
        + '"passing American football (in game)",whole_video,30,40,train,0\n'  # whole video, window at decode
        + "abseiling,gone_from_yt,0,10,train,0\n"  # not on disk
    )
    (tmp_path / "annotations/validate.csv").write_text(KINETICS_HEADER + "zumba,zz,5,15,val,0\n")
    (tmp_path / "annotations/test.csv").write_text("youtube_id,time_start,time_end,split\nqq,0,10,test\n")
    cut = touch(tmp_path / "videos/train/abseiling/a_b-c1234567_000014_000024.mp4")
    whole = touch(tmp_path / "videos/raw/whole_video.mkv")
    val = touch(tmp_path / "videos/val/zz_000005_000015.mp4")
    touch(tmp_path / "train/x/unrelated.mp4")  # a folder layout too: the annotations win

    index = index_dataset(tmp_path)
    assert index.layout == "kinetics"
    assert index.classes == ["abseiling", "passing American football (in game)", "zumba"]
    assert index.splits["train"] == [VideoRecord(cut, 0), VideoRecord(whole, 1, 30.0, 40.0)]
    assert index.splits["val"] == [VideoRecord(val, 2)]
    assert "test" not in index.splits  # no labels
    assert index.missing == {"train": 1}
    assert index_dataset(tmp_path, layout="folders").classes == ["x"]


def test_kinetics_split_column_wins_over_file_name(tmp_path: Path) -> None:
    (tmp_path / "kinetics400.csv").write_text(KINETICS_HEADER + "a,v1,0,10,train,0\nb,v2,0,10,validate,0\n")
    touch(tmp_path / "v1.mp4")
    touch(tmp_path / "v2.mp4")
    index = index_dataset(tmp_path, layout="kinetics")
    assert {split: [r.path.name for r in records] for split, records in index.splits.items()} == {
        "train": ["v1.mp4"],
        "val": ["v2.mp4"],
    }


# ---- detection and errors -----------------------------------------------------------------------------------


def test_lists_win_over_folders_and_layout_can_be_chosen(tmp_path: Path) -> None:
    touch(tmp_path / "train/a/1.mp4")
    touch(tmp_path / "train/b/2.mp4")
    (tmp_path / "train.csv").write_text("train/b/2.mp4,b\n")
    assert index_dataset(tmp_path).layout == "lists"
    assert len(index_dataset(tmp_path).splits["train"]) == 1
    assert len(index_dataset(tmp_path, layout="folders").splits["train"]) == 2


@pytest.mark.parametrize(
    ("setup", "layout", "message"),
    [
        (None, "auto", "no such dataset directory"),
        ("empty", "auto", "no videos found in .*: expected ROOT/train/<class>/<video>"),
        ("empty", "walk", "unknown layout 'walk' \\(choose auto, folders, lists, kinetics\\)"),
        ("empty", "kinetics", "no Kinetics annotation CSVs"),
        ("class-dirs-only", "auto", "no videos found in .* \\(layout 'folders'\\)"),
    ],
)
def test_unusable_roots_are_one_line_errors(tmp_path: Path, setup: str | None, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if setup:
        root.mkdir()
    if setup == "class-dirs-only":
        (root / "train/a").mkdir(parents=True)
        touch(root / "train/a/readme.txt")
    with pytest.raises(VaredError, match=message) as info:
        index_dataset(root, layout=layout)
    assert "\n" not in str(info.value)


def test_class_list_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    """The classes saved with a model give the same labels on data that lacks some classes."""
    train_root, eval_root = tmp_path / "train_data", tmp_path / "eval_data"
    for name in ["train/ant/1.mp4", "train/bee/2.mp4", "train/cat/3.mp4"]:
        touch(train_root / name)
    touch(eval_root / "val/cat/9.mp4")  # only one class here: sorted on its own it would be label 0
    trained = index_dataset(train_root)
    torch.save({"state_dict": {}, "classes": trained.classes}, tmp_path / "model.pth")

    classes = torch.load(tmp_path / "model.pth")["classes"]
    assert classes == ["ant", "bee", "cat"]
    assert [r.label for r in index_dataset(eval_root).splits["val"]] == [0]
    evaluated = index_dataset(eval_root, class_names=classes)
    assert evaluated.classes == classes and [r.label for r in evaluated.splits["val"]] == [2]
    touch(eval_root / "val/dog/1.mp4")
    with pytest.raises(VaredError, match="class 'dog' is in the data but not in the model's 3 classes"):
        index_dataset(eval_root, class_names=classes)


def test_kinetics_bad_row_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(KINETICS_HEADER + "a,v1,0,10,train,0\nb,v2,zero,10,train,0\n")
    with pytest.raises(VaredError, match=r"train.csv:3: expected youtube_id, time_start, time_end"):
        index_dataset(tmp_path)
