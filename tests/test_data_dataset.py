"""The clip dataset, the failure-tolerant collate, FailureLog, and real DataLoaders with workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from videos import RAW, frame_indices, write_broken_files, write_video

from vared_convert.data.decode import VideoReader
from vared_convert.data.dataset import FailureLog, VideoClipDataset, collate_clips, make_loader
from vared_convert.data.layouts import VideoRecord, index_dataset
from vared_convert.errors import VaredError

SMALL = dict(size=32, short_side=32, normalization=RAW)  # no resize, pixel values kept


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ROOT/train/<class>/ with 3 + 3 index videos of 24 to 34 frames at 10 fps."""
    root = tmp_path_factory.mktemp("folders")
    for label, name in enumerate(["jump", "walk"]):
        for i in range(3):
            write_video(root / f"train/{name}/{name}{i}.mp4", 24 + 5 * i * label, fps=10, gop=8)
    return root


def indices(item: dict) -> list[int]:
    return frame_indices(item["clip"], channels_first=True)


def test_eval_item_is_the_centred_clip(folders: Path) -> None:
    index = index_dataset(folders)
    dataset = VideoClipDataset.from_index(index, "train", train=False, frames=4, stride=2, **SMALL)
    assert not dataset.train and len(dataset) == 6 and dataset.num_videos == 6
    item = dataset[0]  # jump0: 24 frames, 2.4 s; the clip spans 0.8 s and starts at 0.8 s
    assert item["clip"].shape == (3, 4, 32, 32) and item["clip"].dtype == torch.float32
    assert (item["label"], item["video"], item["path"]) == (0, 0, str(folders / "train/jump/jump0.mp4"))
    assert indices(item) == [8, 10, 12, 14]


def test_several_uniform_eval_clips_per_video(folders: Path) -> None:
    records = index_dataset(folders).splits["train"][:1]
    dataset = VideoClipDataset(records, ["jump", "walk"], train=False, frames=4, stride=2, clips_per_video=3, **SMALL)
    assert len(dataset) == 3
    assert [indices(dataset[i]) for i in range(3)] == [[2, 4, 6, 8], [8, 10, 12, 14], [13, 15, 17, 19]]
    assert {dataset[i]["video"] for i in range(3)} == {0}


def test_kinetics_window_is_cut_at_decode_time(tmp_path: Path) -> None:
    path = write_video(tmp_path / "whole.mp4", 34, fps=10, gop=6)
    record = VideoRecord(path, 0, start=2.0, end=3.0)
    centred = VideoClipDataset([record], ["a"], train=False, frames=4, stride=2, **SMALL)
    assert indices(centred[0]) == [21, 23, 25, 27]
    training = VideoClipDataset([record], ["a"], train=True, frames=4, stride=2, flip=False, **SMALL)
    starts = set()
    for epoch in range(12):
        training.set_epoch(epoch)
        got = indices(training[0])
        assert all(20 <= i <= 29 for i in got) and got == sorted(got)
        starts.add(got[0])
    assert len(starts) > 1


def test_clip_longer_than_the_video_repeats_the_last_frame(tmp_path: Path) -> None:
    path = write_video(tmp_path / "short.mp4", 10, fps=10)  # 1 s; the clip needs 1.6 s
    for train in (False, True):
        dataset = VideoClipDataset([VideoRecord(path, 0)], ["a"], train=train, frames=8, stride=2, **SMALL)
        assert indices(dataset[0]) == [0, 2, 4, 6, 8, 9, 9, 9]


def test_variable_frame_rate_clip_is_sampled_by_time(tmp_path: Path) -> None:
    pts = [0.0, 0.1, 0.15, 0.2, 0.6, 0.65, 0.7, 0.75, 0.8, 1.4, 1.5, 1.6, 1.7, 1.75, 1.8, 1.9]
    path = write_video(tmp_path / "vfr.mp4", len(pts), fps=10, pts=pts)
    dataset = VideoClipDataset([VideoRecord(path, 0)], ["a"], train=False, frames=4, stride=2, **SMALL)
    with VideoReader(path) as reader:
        fps, duration = reader.fps, reader.duration
    start = (duration - 4 * 2 / fps) / 2  # centred; times 2 frame periods apart at the nominal fps
    expected = [max(i for i, p in enumerate(pts) if p <= start + k * 2 / fps + 1e-9) for k in range(4)]
    assert indices(dataset[0]) == expected
    assert expected != list(range(expected[0], expected[0] + 8, 2))  # not what counting frames would give


def test_broken_files_are_skipped_reported_once_and_training_goes_on(folders: Path, tmp_path: Path) -> None:
    good = index_dataset(folders).splits["train"][:4]
    broken = write_broken_files(tmp_path / "broken")
    records = good[:2] + [VideoRecord(p, 1) for p in broken.values()] + good[2:]
    dataset = VideoClipDataset(records, ["jump", "walk"], train=True, frames=4, stride=2, **SMALL)
    loader = make_loader(dataset, batch_size=3, workers=2, shuffle=True, seed=1)
    log = FailureLog(dataset.num_videos)
    reported: list[tuple[str, str]] = []
    for epoch in range(2):
        decoded = []
        for batch in loader:
            new = log.update(batch)  # what finetune reports: the files that failed for the first time
            assert len(new) == (len(batch["failed"]) if epoch == 0 else 0)
            reported += new
            if batch["clip"] is not None:
                assert batch["clip"].shape[1:] == (3, 4, 32, 32)
                assert batch["label"].shape == batch["video"].shape == (len(batch["path"]),)
                decoded += batch["path"]
        assert sorted(decoded) == sorted(str(r.path) for r in good)
        assert log.count == len(broken)
    assert sorted(path for path, _ in reported) == sorted(str(p) for p in broken.values())  # once each
    assert dict(reported)[str(broken["empty"])] == "empty file (0 bytes)"
    assert log.decoded == 8 and log.new() == []


def test_failure_log_report_writes_one_line_per_new_file() -> None:
    log = FailureLog(total_videos=3)
    log.add([("a.mp4", "missing file"), ("b.mp4", "no video stream")], decoded=1)
    log.add([("a.mp4", "missing file")])
    lines: list[str] = []
    assert log.report(lines.append) == 2 and log.report(lines.append) == 0
    assert lines == ["skipped unreadable video a.mp4: missing file", "skipped unreadable video b.mp4: no video stream"]


def test_a_batch_where_everything_failed() -> None:
    batch = collate_clips([{"failed": "a.mp4", "reason": "missing file"}, {"failed": "b.mp4", "reason": "x"}])
    assert batch == {
        "clip": None,
        "label": None,
        "video": None,
        "path": [],
        "failed": [("a.mp4", "missing file"), ("b.mp4", "x")],
    }


def test_nothing_decodes_is_a_clear_error(tmp_path: Path) -> None:
    broken = write_broken_files(tmp_path)
    dataset = VideoClipDataset([VideoRecord(p, 0) for p in broken.values()], ["a"], train=True, **SMALL)
    log = FailureLog(dataset.num_videos)
    with pytest.raises(VaredError, match=f"none of the {len(broken)} videos could be decoded"):
        for batch in make_loader(dataset, batch_size=2, workers=0):
            log.update(batch)


def test_clips_depend_on_seed_and_epoch_not_on_workers(folders: Path) -> None:
    index = index_dataset(folders)

    def epochs(workers: int, seed: int = 0, count: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
        dataset = VideoClipDataset.from_index(index, "train", frames=4, stride=2, size=24, short_side=32, seed=seed)
        loader = make_loader(dataset, batch_size=3, workers=workers, shuffle=True, seed=seed)
        out = [_concat(loader) for _ in range(count)]
        loader.set_epoch(0)
        assert all(torch.equal(a, b) for a, b in zip(_concat(loader), out[0]))  # epoch 0 again: same clips
        return out

    two_workers = epochs(2)
    in_process = epochs(0)
    for (clips, videos), (clips0, videos0) in zip(two_workers, in_process):
        assert torch.equal(videos, videos0) and torch.equal(clips, clips0)
    (first, order1), (second, order2) = two_workers
    assert not torch.equal(order1, order2) or not torch.equal(first, second)  # a new epoch draws new clips
    assert not torch.equal(first[torch.argsort(order1)], second[torch.argsort(order2)])
    other_seed = epochs(0, seed=1, count=1)[0]
    assert not torch.equal(other_seed[0][torch.argsort(other_seed[1])], first[torch.argsort(order1)])


def _concat(loader) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    batches = list(loader)
    return torch.cat([b["clip"] for b in batches]), torch.cat([b["video"] for b in batches])


def test_video_that_ends_before_its_annotated_window_is_skipped(tmp_path: Path) -> None:
    """A Kinetics download that stops at 2.4 s, annotated 3-4 s: no clip of its last frame."""
    path = write_video(tmp_path / "short.mp4", 24, fps=10)
    records = [VideoRecord(path, 0, start=3.0, end=4.0), VideoRecord(path, 0, start=2.0, end=3.0)]
    for train in (False, True):
        dataset = VideoClipDataset(records, ["a"], train=train, frames=4, stride=1, **SMALL)
        reason = "the video ends at 2.40 s, before its annotated window 3-4 s"
        assert dataset[0] == {"failed": str(path), "reason": reason}
        assert all(20 <= i <= 23 for i in indices(dataset[1]))  # ends inside its window: clips from 2-2.4 s


def test_rotated_video_is_cropped_upright(tmp_path: Path) -> None:
    """A phone video stored sideways (48 wide, 32 high) with a 90° display rotation; upright it is 32 x 48."""
    upright = np.zeros((4, 48, 32, 3), np.uint8)
    upright[:, :24] = 255  # the top half is white
    path = write_video(tmp_path / "phone.mp4", np.ascontiguousarray(np.rot90(upright, -1, axes=(1, 2))), rotation=90)
    dataset = VideoClipDataset([VideoRecord(path, 0)], ["a"], train=False, frames=2, stride=1, size=16,
                               short_side=16, normalization=RAW)
    clip = dataset[0]["clip"]  # upright 32 x 48 -> 16 x 24, centre crop rows 4-19
    assert clip.shape == (3, 2, 16, 16)
    assert clip[:, :, :4].mean() > 200 and clip[:, :, -4:].mean() < 50
