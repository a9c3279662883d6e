"""A real tiny finetune run names each unreadable video once (FailureLog.update feeds the "failed" event)."""

from __future__ import annotations

from pathlib import Path

from finetune_helpers import converted_tiny, tiny_dataset
from videos import write_broken_files


def test_finetune_names_each_unreadable_video_once(run_vared, tmp_path: Path) -> None:  # noqa: ANN001
    data = tiny_dataset(tmp_path / "data", train_per_class=1, val_per_class=1)
    broken = write_broken_files(tmp_path / "data/broken")
    bad_train, bad_val = broken["empty"], broken["text"]
    with open(data / "train.csv", "a") as f:
        f.write(f"{bad_train.relative_to(data).as_posix()},rise\n")
    with open(data / "val.csv", "a") as f:
        f.write(f"{bad_val.relative_to(data).as_posix()},fall\n")
    model = converted_tiny(tmp_path / "tiny_vared.pth")
    proc = run_vared("finetune", model, "--data", data, "--frames", "4", "--stride", "2", "--size", "32",
                     "--batch-size", "3", "--workers", "0", "--epochs", "2", "--target-flops", "0.5", "--device", "cpu",
                     "--run-dir", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("skipped unreadable video")]
    assert lines == [
        f"skipped unreadable video {bad_train}: empty file (0 bytes)",
        f"skipped unreadable video {bad_val}: not a readable video (Invalid data found when processing input)",
    ]  # once each, over two epochs
