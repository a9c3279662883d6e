"""Indexing the three dataset layouts: folders per class, list files, Kinetics annotations."""

from __future__ import annotations

import json
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
    with pytest.raises(VaredError, match=r"label 3 is out of range for the 2 classes \(0..1\)"):
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
    assert {split: [str(m) for m in missing] for split, missing in index.missing.items()} == {
        "train": ["gone_from_yt_000000_000010 or gone_from_yt.* (annotations/train.csv:4)"]
    }
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
        ("empty", "walk", "unknown layout 'walk' \\(choose auto, folders, lists, kinetics, ucf101, hmdb51, ssv2;"),
        ("empty", "ucf101:4", "unknown layout 'ucf101:4'"),
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


# ---- list files as published: names with spaces, 1-based labels, label maps, bad lines ------------------------


def test_space_separated_class_names_with_spaces_keep_their_words(tmp_path: Path) -> None:
    """Kinetics names hold spaces and brackets: the path ends at its video extension, not at the last space."""
    (tmp_path / "train.txt").write_text(
        "k400/punching/a.mp4 punching person (boxing)\n"
        "k400/my clips/b c.mkv passing American football (in game)\n"
        "k400/abseiling/d.webm abseiling\n"
    )
    index = index_dataset(tmp_path)
    assert index.classes == ["abseiling", "passing American football (in game)", "punching person (boxing)"]
    assert relative(index.splits["train"], tmp_path) == [
        ("k400/punching/a.mp4", 2),
        ("k400/my clips/b c.mkv", 1),
        ("k400/abseiling/d.webm", 0),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("videos/abc punching person (boxing)", "train.txt:2: cannot tell the video path from the label in"),
        ("a.mp4 b.mp4 punching person", "train.txt:2: cannot tell the video path from the label in"),
        ("a.mp4 3 7 12", "train.txt:2: several labels \\('3 7 12'\\)"),
    ],
)
def test_space_separated_lines_in_doubt_are_refused(tmp_path: Path, line: str, message: str) -> None:
    (tmp_path / "train.txt").write_text(f"x.mp4 abseiling\n{line}\n")
    with pytest.raises(VaredError, match=message) as info:
        index_dataset(tmp_path)
    assert "\n" not in str(info.value)
    if "cannot tell" in message:
        assert "write 'path,label' lines" in str(info.value)


def test_a_minus_one_label_is_refused_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.mp4 0\nb.mp4 1\nc.mp4 -1\nd.mp4 2\n")
    with pytest.raises(VaredError, match=r"train.txt:3: label -1 is out of range for the 3 classes \(0..2\)"):
        index_dataset(tmp_path)
    (tmp_path / "classes.txt").write_text("run\nswim\nfly\n")
    with pytest.raises(VaredError, match=r"train.txt:3: label -1 is out of range for the 3 classes of classes.txt"):
        index_dataset(tmp_path)


def test_labels_mixing_integers_and_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.mp4 run\nb.mp4 swim\nc.mp4 7\nd.mp4 fly\n")
    with pytest.raises(VaredError, match=r"train.txt:3: label '7' is an integer but the other labels are class names"):
        index_dataset(tmp_path)


def test_integer_labels_without_names_say_where_the_class_count_comes_from(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("a.mp4 3\nb.mp4 1\n")
    index = index_dataset(tmp_path)
    assert index.classes == ["0", "1", "2", "3"]
    assert len(index.notes) == 1 and "4 classes, numbered 0..3, from the highest label (3) + 1" in index.notes[0]
    assert "no label is 0" in index.notes[0]  # a hint that they may count from 1
    given = index_dataset(tmp_path, num_classes=10)
    assert given.classes == [str(i) for i in range(10)] and given.notes == []
    with pytest.raises(VaredError, match=r"train.txt:1: label 3 is out of range for the 2 classes \(0..1\)"):
        index_dataset(tmp_path, num_classes=2)


def test_one_based_labels_with_a_numbered_class_index(tmp_path: Path) -> None:
    """UCF101's classInd.txt numbers classes from 1, and its lists use those numbers."""
    (tmp_path / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 ApplyLipstick\n3 Archery\n")
    (tmp_path / "train.txt").write_text("v/a.avi 1\nv/b.avi 3\n")
    (tmp_path / "val.txt").write_text("v/c.avi 2\n")
    index = index_dataset(tmp_path)
    assert index.classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"] and index.notes == []
    assert [r.label for r in index.splits["train"]] == [0, 2] and [r.label for r in index.splits["val"]] == [1]
    (tmp_path / "train.txt").write_text("v/a.avi 1\nv/b.avi 0\n")  # 0 is no class when counting from 1
    with pytest.raises(VaredError, match=r"train.txt:2: label 0 is out of range for the 3 classes of classInd.txt"):
        index_dataset(tmp_path)


def test_mmaction2_list_with_its_label_map(tmp_path: Path) -> None:
    """mmaction2: 'path label' (0-based) relative to a per-split video folder, names in label_map_k400.txt;
    the README's conversion prefixes the folder: sed 's|^|videos_train/|' LIST > train.txt."""
    (tmp_path / "label_map_k400.txt").write_text("abseiling\nair drumming\nanswering questions\n")
    listed = "abseiling/x_000010_000020.mp4 0\nanswering questions/y_000000_000010.mp4 2\n"
    (tmp_path / "train.txt").write_text("".join(f"videos_train/{line}\n" for line in listed.splitlines()))
    index = index_dataset(tmp_path)
    assert index.classes == ["abseiling", "air drumming", "answering questions"]
    assert relative(index.splits["train"], tmp_path) == [
        ("videos_train/abseiling/x_000010_000020.mp4", 0),
        ("videos_train/answering questions/y_000000_000010.mp4", 2),
    ]


def test_list_files_that_are_not_utf8_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_bytes("a.mp4 run\nb.mp4 café\n".encode("latin-1"))
    with pytest.raises(VaredError, match=r"train.txt:2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        index_dataset(tmp_path)
    (tmp_path / "train.txt").write_bytes("\ufeffa.mp4 run\nb.mp4 café\n".encode())  # a BOM is fine
    assert index_dataset(tmp_path).classes == ["café", "run"]
    (tmp_path / "classes.txt").write_bytes(b"\xff\xfer\x00u\x00n\x00")  # UTF-16
    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    with pytest.raises(VaredError, match=r"classes.txt:1: not UTF-8 text"):
        index_dataset(tmp_path)


def test_kinetics_csv_that_is_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_bytes((KINETICS_HEADER + "caf\xe9,v1,0,10,train,0\n").encode("latin-1"))
    with pytest.raises(VaredError, match=r"train.csv:2: not UTF-8 text"):
        index_dataset(tmp_path)


def test_paths_that_leave_the_dataset_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "train.txt").write_text("ok/a.mp4 0\n../../etc/passwd 1\n")
    with pytest.raises(VaredError, match=r"train.txt:2: path '../../etc/passwd' leaves the dataset folder"):
        index_dataset(root)
    (root / "train.txt").write_text("ok/../b.mp4 0\n/etc/passwd 1\n")  # inside after all; absolute: noted
    index = index_dataset(root)
    assert [r.path for r in index.splits["train"]] == [root / "ok/../b.mp4", Path("/etc/passwd")]
    assert f"1 list entries are outside {root} (absolute paths), e.g. train.txt:2 /etc/passwd" in index.notes


def test_empty_list_and_one_class(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("# nothing yet\n\n")
    with pytest.raises(VaredError, match=r"no videos found in .* \(layout 'lists'\)"):
        index_dataset(tmp_path)
    (tmp_path / "train.txt").write_text("a.mp4 run\nb.mp4 run\n")
    assert index_dataset(tmp_path).notes == ["only one class ('run'): a classifier needs two or more"]


def test_odd_names_in_folders(tmp_path: Path) -> None:
    names = ["train/high [jump]/a b.mp4", "train/café/ü [1].mkv", "train/[/x]/v.mp4"]
    for name in names:
        touch(tmp_path / name)
    index = index_dataset(tmp_path)
    assert index.classes == ["[", "café", "high [jump]"]
    assert sorted(relative(index.splits["train"], tmp_path)) == [
        ("train/[/x]/v.mp4", 0),
        ("train/café/ü [1].mkv", 1),
        ("train/high [jump]/a b.mp4", 2),
    ]


# ---- published layouts: UCF101, HMDB51, Something-Something v2, Kinetics splits -------------------------------


def test_ucf101_split_files_as_published(tmp_path: Path) -> None:
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\r\n2 Archery\r\n3 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_text(
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\r\n"  # UCF101 spells this class two ways
        "Archery/v_Archery_g09_c01.avi 2\r\n"
    )
    (lists / "testlist01.txt").write_text("Archery/v_Archery_g01_c01.avi\r\nArchery/v_Archery_g02_c01.avi\r\n")
    (lists / "trainlist02.txt").write_text("Archery/v_Archery_g01_c01.avi 2\r\n")
    for name in ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "HandstandPushups/v_HandStandPushups_g08_c01.avi",
                 "Archery/v_Archery_g09_c01.avi", "Archery/v_Archery_g01_c01.avi"]:
        touch(tmp_path / "UCF-101" / name)
    index = index_dataset(tmp_path)
    assert index.layout == "ucf101" and index.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert [(r.path.name, r.label) for r in index.splits["train"]] == [
        ("v_ApplyEyeMakeup_g08_c01.avi", 0),
        ("v_HandStandPushups_g08_c01.avi", 2),
        ("v_Archery_g09_c01.avi", 1),
    ]
    assert [(r.path.name, r.label) for r in index.splits["val"]] == [("v_Archery_g01_c01.avi", 1)]  # from the folder
    assert [str(m) for m in index.missing["val"]] == [
        "Archery/v_Archery_g02_c01.avi (ucfTrainTestlist/testlist01.txt:2)"
    ]
    second = index_dataset(tmp_path, layout="ucf101:2")
    assert second.layout == "ucf101:2" and list(second.splits) == ["train"]


def test_hmdb51_split_files_as_published(tmp_path: Path) -> None:
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("Brushing_my_hair_1.avi 1 \nBrushing_hair_2.avi 2 \nx.avi 0 \n")
    (splits / "cartwheel_test_split1.txt").write_text("Cartwheel_[x]_3.avi 2 \n")
    (splits / "cartwheel_test_split2.txt").write_text("Cartwheel_[x]_3.avi 1 \n")
    for name in ["brush_hair/Brushing_my_hair_1.avi", "brush_hair/Brushing_hair_2.avi",
                 "cartwheel/Cartwheel_[x]_3.avi"]:
        touch(tmp_path / "hmdb51_org" / name)
    index = index_dataset(tmp_path)
    assert index.layout == "hmdb51" and index.classes == ["brush_hair", "cartwheel"]
    assert [(r.path.name, r.label) for r in index.splits["train"]] == [("Brushing_my_hair_1.avi", 0)]
    assert [(r.path.name, r.label) for r in index.splits["val"]] == [
        ("Brushing_hair_2.avi", 0),
        ("Cartwheel_[x]_3.avi", 1),
    ]
    assert index.missing == {}
    assert [r.path.name for r in index_dataset(tmp_path, layout="hmdb51:2").splits["train"]] == ["Cartwheel_[x]_3.avi"]


def test_something_something_v2_json_as_published(tmp_path: Path) -> None:
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "labels.json").write_text(json.dumps({
        "Approaching something with your camera": "0",
        "Holding something next to something": "2",
        "Pushing something from left to right": "1",
    }))
    (labels / "train.json").write_text(json.dumps([
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "vicks vaporub bottle"]},
        {"id": "42326", "label": "pushing a pen from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
    ]))
    (labels / "validation.json").write_text(json.dumps([
        {"id": "1", "template": "Approaching [something] with your camera", "placeholders": ["x"]},
        {"id": "404", "template": "Approaching [something] with your camera", "placeholders": ["y"]},
    ]))
    (labels / "test.json").write_text(json.dumps([{"id": "5"}]))
    for name in ["78687", "42326", "1", "5"]:
        touch(tmp_path / f"20bn-something-something-v2/{name}.webm")
    index = index_dataset(tmp_path)
    assert index.layout == "ssv2"
    assert index.classes == ["Approaching something with your camera", "Pushing something from left to right",
                             "Holding something next to something"]
    assert [(r.path.name, r.label) for r in index.splits["train"]] == [("78687.webm", 2), ("42326.webm", 1)]
    assert [(r.path.name, r.label) for r in index.splits["val"]] == [("1.webm", 0)]
    assert [str(m) for m in index.missing["val"]] == ["404.webm (labels/validation.json entry 1)"]


def test_kinetics_id_in_two_splits_reads_each_splits_folder(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(KINETICS_HEADER + "a,same_id,0,10,train,0\na,only_val,0,10,train,0\n")
    (tmp_path / "validate.csv").write_text(KINETICS_HEADER + "b,same_id,20,30,val,0\n")
    train_file = touch(tmp_path / "videos_train/same_id.mp4")
    val_file = touch(tmp_path / "videos_val/same_id.mp4")
    touch(tmp_path / "videos_val/only_val.mp4")
    index = index_dataset(tmp_path)
    assert index.splits["train"] == [VideoRecord(train_file, 0, 0.0, 10.0)]
    assert index.splits["val"] == [VideoRecord(val_file, 1, 20.0, 30.0)]
    assert [str(m) for m in index.missing["train"]] == [
        "only_val_000000_000010 or only_val.* (only in another split's folder: videos_val/only_val.mp4) (train.csv:3)"
    ]


def test_published_layouts_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text('{"a": "0",')
    (tmp_path / "train.json").write_text("[]")
    with pytest.raises(VaredError, match=r"labels.json:1: not valid JSON"):
        index_dataset(tmp_path)
    (tmp_path / "labels.json").write_text('{"a": "0"}')
    (tmp_path / "train.json").write_text('[{"id": "1", "template": "b"}]')
    with pytest.raises(VaredError, match=r"train.json entry 0: template 'b' is not a class of labels.json"):
        index_dataset(tmp_path)
