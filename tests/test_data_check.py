"""`vared data check`: the report behind it, its tables and JSON, and its errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from videos import write_broken_files, write_video

from vared_convert import cli
from vared_convert.cli import app
from vared_convert.data.check import check_dataset
from vared_convert.data.decode import VideoReader
from vared_convert.errors import VaredError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train: 2 + 1 good videos and two broken ones; val: 1 good video."""
    root = tmp_path_factory.mktemp("check")
    write_video(root / "train/bow/b0.mp4", 10, fps=10)
    write_video(root / "train/bow/b1.mp4", 20, fps=10)
    write_video(root / "train/wave/w0.mp4", 30, fps=10)
    write_video(root / "val/wave/w1.mp4", 15, fps=10)
    broken = write_broken_files(root / "tmp")
    os.replace(broken["truncated"], root / "train/wave/truncated.mp4")
    os.replace(broken["empty"], root / "train/bow/empty.mp4")
    return root


def test_report_counts_durations_and_unreadable_files(dataset: Path) -> None:
    seen: list[tuple[int, int]] = []
    report = check_dataset(dataset, progress=lambda done, total: seen.append((done, total)))
    assert report.layout == "folders" and report.classes == ["bow", "wave"]
    assert report.videos == {"train": 5, "val": 1}
    assert report.per_class["train"] == {"bow": 3, "wave": 2}
    assert report.duration_stats("train") == pytest.approx((1.0, 2.0, 3.0))
    assert report.duration_stats("val") == pytest.approx((1.5, 1.5, 1.5))
    assert report.readable == 4
    assert sorted((Path(u.path).name, u.split, u.reason) for u in report.unreadable) == [
        ("empty.mp4", "train", "empty file (0 bytes)"),
        ("truncated.mp4", "train", "not a readable video (Invalid data found when processing input)"),
    ]
    assert seen[-1] == (6, 6) and len(seen) == 6


def test_cli_prints_tables(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.console, "width", 160)  # a wide terminal: no folded cells
    result = CliRunner().invoke(app, ["data", "check", str(dataset)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "layout folders" in out and "2 classes" in out
    for text in ("bow", "wave", "train", "val", "1.00", "2.00", "3.00"):
        assert text in out
    assert "train/wave/truncated.mp4" in out and "empty file (0 bytes)" in out
    assert "2 unreadable files" in out


def test_cli_json_for_scripts(dataset: Path) -> None:
    result = CliRunner().invoke(app, ["data", "check", str(dataset), "--json", "--layout", "folders"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["classes"] == ["bow", "wave"] and data["layout"] == "folders"
    assert data["splits"]["train"]["videos"] == 5 and data["splits"]["train"]["unreadable"] == 2
    assert data["splits"]["train"]["duration"] == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert data["splits"]["val"]["per_class"] == {"bow": 0, "wave": 1}
    assert {Path(u["path"]).name for u in data["unreadable"]} == {"truncated.mp4", "empty.mp4"}


def test_cli_user_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert isinstance(result.exception, VaredError) and "no such dataset directory" in str(result.exception)
    result = runner.invoke(app, ["data", "check", str(tmp_path), "--layout", "zip"])
    assert isinstance(result.exception, VaredError) and "unknown layout 'zip'" in str(result.exception)
    write_broken_files(tmp_path / "train/a")
    result = runner.invoke(app, ["data", "check", str(tmp_path)])
    assert isinstance(result.exception, VaredError)
    assert str(result.exception) == f"none of the 5 videos in {tmp_path} can be decoded"
    assert "empty file (0 bytes)" in result.stdout  # the table comes first, so the reasons are shown


def test_console_script_error_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "vared_convert", "data", "check", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: no such dataset directory: {tmp_path / 'nope'}"


# ---- truncated downloads, windows past the end, missing videos, notes, odd names -----------------------------


def noise_video(path: Path, **kwargs) -> Path:  # noqa: ANN003
    """40 frames of noise at 48 px: the packets, not the header, make most of the file."""
    frames = np.random.default_rng(0).integers(0, 256, (40, 48, 48, 3), dtype=np.uint8)
    return write_video(path, frames, fps=10, gop=10, **kwargs)


def cut(path: Path, fraction: float) -> Path:
    """The first ``fraction`` of the file, as a download that stopped."""
    target = path.with_name(f"cut_{path.name}")
    target.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
    return target


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Whole files of several containers, and truncated copies whose first frame still decodes."""
    root = tmp_path_factory.mktemp("downloads") / "train/a"
    files = {
        "mp4": noise_video(root / "fast.mp4", container_options={"movflags": "faststart"}),
        "mkv": noise_video(root / "v.mkv", audio_seconds=6.0),  # the audio outlasts the video: not truncated
        "webm": noise_video(root / "v.webm", codec="libvpx-vp9"),
        "avi": noise_video(root / "v.avi", codec="mpeg4", bframes=2),
        "flv": noise_video(root / "v.flv", codec="flv"),
        "ts": noise_video(root / "v.ts", format="mpegts"),
    }
    for kind in ("mp4", "mkv", "webm"):
        files[f"cut {kind}"] = cut(files[kind], 0.6)
    return files


def test_truncated_downloads_are_found(downloads: dict[str, Path]) -> None:
    for kind in ("cut mp4", "cut mkv", "cut webm"):
        with VideoReader(downloads[kind]) as reader:
            reader.first_frame()  # what the check used to try: it decodes
    report = check_dataset(downloads["mp4"].parents[2])
    reasons = {Path(u.path).name: u.reason for u in report.unreadable}
    assert set(reasons) == {"cut_fast.mp4", "cut_v.mkv", "cut_v.webm"}
    for reason in reasons.values():
        assert re.fullmatch(r"truncated: its packets end at \d\.\d\d s of the 4\.00 s its header gives "
                            r"\(an incomplete download\?\)", reason), reason
    assert report.readable == 6
    assert report.duration_stats("train") == pytest.approx((4.0, 4.0, 4.0), abs=0.11)


def test_video_ending_before_its_window_is_reported(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\na,short,3,4,train\n"
                                        "a,fine,1,2,train\nb,gone1,0,10,train\n")
    write_video(tmp_path / "videos/short.mp4", 24, fps=10)
    write_video(tmp_path / "videos/fine.mp4", 24, fps=10)
    report = check_dataset(tmp_path)
    assert [(Path(u.path).name, u.reason) for u in report.unreadable] == [
        ("short.mp4", "the video ends at 2.40 s, before its annotated window 3-4 s")
    ]
    assert report.durations["train"] == [pytest.approx(1.0)]


@pytest.fixture
def kinetics_with_missing(tmp_path: Path) -> Path:
    rows = "".join(f"a,gone{i},0,10,train\n" for i in range(7)) + "a,here,0,10,train\nb,gone_val,0,10,val\n"
    (tmp_path / "k400.csv").write_text("label,youtube_id,time_start,time_end,split\n" + rows)
    write_video(tmp_path / "here.mp4", 10, fps=10)
    return tmp_path


def test_missing_videos_are_named(kinetics_with_missing: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.console, "width", 400)
    result = CliRunner().invoke(app, ["data", "check", str(kinetics_with_missing)])
    assert result.exit_code == 0, result.output
    assert ("8 annotated videos are not on disk: gone0_000000_000010 or gone0.* (k400.csv:2), gone1_000000_000010 or "
            "gone1.* (k400.csv:3)") in result.stdout
    assert "... (3 more; --json lists all)" in result.stdout
    data = json.loads(CliRunner().invoke(app, ["data", "check", str(kinetics_with_missing), "--json"]).stdout)
    assert data["splits"]["train"]["missing"] == 7 and data["splits"]["val"]["missing"] == 1
    assert [m["name"].split("_0")[0] for m in data["missing"]] == [f"gone{i}" for i in range(7)] + ["gone_val"]
    assert data["missing"][-1] == {"name": "gone_val_000000_000010 or gone_val.*", "split": "val",
                                   "source": "k400.csv:10"}


def test_notes_and_class_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli.console, "width", 400)
    write_video(tmp_path / "v/a.mp4", 10, fps=10)
    (tmp_path / "train.txt").write_text("v/a.mp4 2\n")
    result = CliRunner().invoke(app, ["data", "check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "note: no class names: 3 classes, numbered 0..2, from the highest label (2) + 1" in result.stdout
    data = json.loads(CliRunner().invoke(app, ["data", "check", str(tmp_path), "--json", "--num-classes", "5"]).stdout)
    assert data["classes"] == ["0", "1", "2", "3", "4"] and data["notes"] == []
    (tmp_path / "names.txt").write_text("run\nswim\nfly\n")
    data = json.loads(CliRunner().invoke(app, ["data", "check", str(tmp_path), "--json", "--classes",
                                               str(tmp_path / "names.txt")]).stdout)
    assert data["classes"] == ["run", "swim", "fly"] and data["splits"]["train"]["per_class"]["fly"] == 1


def test_brackets_and_unicode_in_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich reads [...] as markup: names must be printed as text."""
    monkeypatch.setattr(cli.console, "width", 400)
    root = tmp_path / "my [/odd] data"
    write_video(root / "train/[bold]high jump/ü [1].mp4", 10, fps=10)
    write_video(root / "train/café/a b.mkv", 10, fps=10)
    (root / "train/café/bad [b].mp4").write_bytes(b"junk")
    result = CliRunner().invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 0, result.output
    for text in (str(root), "[bold]high jump", "café", "train/café/bad [b].mp4"):
        assert text in result.stdout
