"""predict/evaluate: per-clip FLOPs ratios from the gates' decisions, clip- and video-level top-1, datasets."""

from __future__ import annotations

import pytest
import torch

from models_for_tests import tiny
from vared_convert.convert import convert
from vared_convert.data.synthetic import CLASSES, write_synthetic_dataset
from vared_convert.errors import VaredError
from vared_convert.flops import CostModel
from vared_convert.nn import adaptive_layers, forced_policy, option_index
from vared_convert.predict import evaluate, evaluate_dataset, predict

SHAPE = (3, 8, 32, 32)


@pytest.fixture()
def adaptive():
    return convert(tiny(num_classes=len(CLASSES)), SHAPE, arch="models_for_tests:tiny").model


def _pin_gates(model, option):
    """Every gate picks ``option`` (T, C) whatever the input: the decisions are known, the gates still run."""
    with torch.no_grad():
        for _, layer in adaptive_layers(model):
            layer.gate.fc2.weight.zero_()
            layer.gate.fc2.bias.zero_()
            layer.gate.fc2.bias[option_index(layer, *option)] = 10.0


def test_predict_reports_each_clips_flops_ratio(adaptive):
    clips = torch.randn(3, *SHAPE)
    costs = CostModel(adaptive, SHAPE)
    fresh = predict(adaptive, clips, costs)  # a fresh gate picks the full option: the original plus the gates
    assert fresh.logits.shape == (3, len(CLASSES))
    torch.testing.assert_close(fresh.flops_ratio, torch.full((3,), 1 + costs.gate_macs / costs.original_macs))

    _pin_gates(adaptive, (2, 0.5))
    out = predict(adaptive, clips, costs)
    indices = [option_index(layer, 2, 0.5) for _, layer in adaptive_layers(adaptive)]
    expected = (costs.forced_macs(indices) + costs.gate_macs) / costs.original_macs
    torch.testing.assert_close(out.flops_ratio, torch.full((3,), expected))
    with torch.no_grad(), forced_policy(adaptive, (2, 0.5)):
        torch.testing.assert_close(out.logits, adaptive(clips))  # the gates' decision is the forced one


def test_evaluate_counts_clips_and_averages_a_videos_clip_logits(adaptive):
    torch.manual_seed(1)
    clips = torch.randn(6, *SHAPE)
    with torch.no_grad():
        logits = adaptive.eval()(clips)
    top = logits.argmax(1)
    labels = top.clone()
    labels[[1, 4]] = (top[[1, 4]] + 1) % len(CLASSES)  # clips 1 and 4 wrong
    videos = torch.tensor([0, 0, 1, 1, 2, 2])
    batches = [{"clip": clips[:4], "label": labels[:4], "video": videos[:4], "failed": []},
               {"clip": None, "label": None, "video": None, "failed": [("gone.mp4", "unreadable")]},
               {"clip": clips[4:], "label": labels[4:], "video": videos[4:], "failed": []}]
    report = evaluate(adaptive, batches)
    assert (report.clips, report.videos, report.failed) == (6, 3, 1)
    assert report.clip_top1 == pytest.approx(100 * 4 / 6)
    expected_videos = sum(int(logits[2 * v : 2 * v + 2].mean(0).argmax() == labels[2 * v]) for v in range(3))
    assert report.video_top1 == pytest.approx(100 * expected_videos / 3)
    assert report.flops_ratio > 1  # fresh gates: full option everywhere, plus what the gates cost
    assert set(report.to_dict()) >= {"clip_top1", "video_top1", "flops_ratio", "clips", "videos", "adaptive_gflops"}


def test_evaluate_dataset_reads_a_split_in_the_models_shape(adaptive, tmp_path):
    write_synthetic_dataset(tmp_path / "data", train_per_class=0, val_per_class=1, frames=16, size=32)
    _pin_gates(adaptive, (1, 0.25))
    report = evaluate_dataset(adaptive, tmp_path / "data", stride=1, clips_per_video=2, batch_size=4, workers=0)
    assert (report.clips, report.videos) == (2 * len(CLASSES), len(CLASSES))
    assert report.flops_ratio < 0.9
    with pytest.raises(VaredError, match="no such dataset"):
        evaluate_dataset(adaptive, tmp_path / "missing", workers=0)
    with pytest.raises(VaredError, match="no clip to evaluate"):
        evaluate(adaptive, [])
