"""The synthetic action dataset: layouts written, determinism, and static vs moving classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vared_convert.data.decode import read_frames
from vared_convert.data.layouts import index_dataset
from vared_convert.data.synthetic import CLASSES, MOTION_CLASSES, STATIC_CLASSES, render_video, write_synthetic_dataset


def test_writes_both_layouts_with_the_same_labels(tmp_path: Path) -> None:
    progress: list[int] = []
    index = write_synthetic_dataset(
        tmp_path, train_per_class=2, val_per_class=1, frames=8, size=32, fps=8, progress=lambda d, t: progress.append(t)
    )
    assert index.classes == sorted(STATIC_CLASSES + MOTION_CLASSES) == list(CLASSES) and len(CLASSES) == 8
    assert {split: len(records) for split, records in index.splits.items()} == {"train": 16, "val": 8}
    assert progress == [24] * 24
    folders, lists = index_dataset(tmp_path, layout="folders"), index_dataset(tmp_path, layout="lists")
    for other in (folders, lists):
        assert other.classes == index.classes and other.splits == index.splits
    video = read_frames(index.splits["val"][0].path, [0.0, 0.875])
    assert video.shape == (2, 32, 32, 3)


def test_frames_are_a_function_of_the_seed(tmp_path: Path) -> None:
    first = write_synthetic_dataset(tmp_path / "a", train_per_class=1, val_per_class=0, frames=4, size=32, seed=3)
    again = write_synthetic_dataset(tmp_path / "b", train_per_class=1, val_per_class=0, frames=4, size=32, seed=3)
    other = write_synthetic_dataset(tmp_path / "c", train_per_class=1, val_per_class=0, frames=4, size=32, seed=4)
    for a, b, c in zip(first.splits["train"], again.splits["train"], other.splits["train"]):
        assert a.path.read_bytes() == b.path.read_bytes()
        assert a.path.read_bytes() != c.path.read_bytes()


@pytest.mark.parametrize("label", CLASSES)
def test_static_classes_stand_still_and_motion_classes_move(label: str) -> None:
    """Four frames apart, static videos differ by camera noise only; moving ones by whole texture edges."""
    for seed in range(3):
        video = render_video(label, np.random.default_rng([7, seed]), frames=16, size=32).astype(np.float64)
        change = max(np.percentile(np.abs(video[t + 4] - video[t]), 99) for t in range(12))
        if label in STATIC_CLASSES:
            assert change < 35
        else:
            assert change > 70


def test_unknown_class() -> None:
    with pytest.raises(ValueError, match="unknown synthetic class"):
        render_video("dance", np.random.default_rng(0))
