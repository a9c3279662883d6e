"""`vared data check`: the report behind it, its tables and JSON, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner
from videos import write_broken_files, write_video

from vared_convert import cli
from vared_convert.cli import app
from vared_convert.data.check import check_dataset
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
