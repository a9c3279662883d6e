"""Calibration: after training, the gates' thresholds move the decisions' mean FLOPs ratio onto the target."""

from __future__ import annotations

import pytest
import torch

from finetune_helpers import CLIP, converted_tiny, tiny_dataset
from vared_convert.checkpoint import load_model
from vared_convert.data.dataset import VideoClipDataset, make_loader
from vared_convert.data.layouts import index_dataset
from vared_convert.flops import CostModel
from vared_convert.nn import adaptive_layers, forced_policy
from vared_convert.train.calibrate import calibrate_gates, clear_calibration, mean_cost_ratio
from vared_convert.train.finetune import finetune

SHAPE = (3, CLIP["frames"], CLIP["size"], CLIP["size"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly finetuned tiny model, not calibrated, and its training clips in batches."""
    root = tmp_path_factory.mktemp("cal")
    data = tiny_dataset(root / "data", train_per_class=3, val_per_class=1)
    converted = converted_tiny(root / "tiny_vared.pth")
    result = finetune(converted, dict(CLIP, data=str(data), epochs=3, target_flops=0.5, lr=2e-2, flops_weight=20,
                                      run_dir=str(root / "run"), calibrate=False))
    assert result.calibration is None and result.final is None
    index = index_dataset(str(data))
    clips = VideoClipDataset.from_index(index, "train", train=False, frames=CLIP["frames"], stride=CLIP["stride"],
                                        size=CLIP["size"], normalization="kinetics")
    batches = [b["clip"] for b in make_loader(clips, 8, 0)]
    return root, data, converted, result.out, batches


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_calibration_moves_the_flops_ratio_to_the_target(trained, target):
    _, _, _, path, batches = trained
    model = load_model(path)
    costs = CostModel(model, SHAPE)
    before = mean_cost_ratio(model, batches, costs)
    assert abs(before - target) > 0.05, before  # training alone left it off target: calibration has work to do
    calibration = calibrate_gates(model, batches, costs, target)
    assert abs(calibration.before - before) < 1e-9
    assert abs(calibration.reached - target) <= 0.02, calibration
    assert abs(mean_cost_ratio(model, batches, costs) - calibration.reached) < 1e-9  # the gates were left set to it
    # toward cheaper options for a lower target than training reached, dearer ones for a higher one
    assert (calibration.strength > 0) == (target < before), calibration
    clear_calibration(model)
    assert abs(mean_cost_ratio(model, batches, costs) - before) < 1e-9


def test_finetune_calibrates_saves_and_keeps_the_full_path_exact(trained, tmp_path):
    root, data, converted, _, batches = trained
    result = finetune(converted, dict(CLIP, data=str(data), epochs=3, target_flops=0.5, lr=2e-2, flops_weight=20,
                                      run_dir=str(tmp_path / "run")))
    calibration = result.calibration
    assert calibration is not None and calibration.clips == 24
    assert abs(calibration.reached - 0.5) <= 0.02 and abs(calibration.before - 0.5) > 0.05, calibration
    assert result.final is not None and result.final.clips == 8
    # the file holds the offsets (weights_only load), and decides as the calibrated model did
    saved = load_model(result.out)
    offsets = [layer.gate.logit_offset for _, layer in adaptive_layers(saved)]
    assert any(bool(o.abs().sum() > 0) for o in offsets)
    assert abs(mean_cost_ratio(saved, batches, CostModel(saved, SHAPE)) - calibration.reached) < 1e-9
    # the full option never consults the gate: still the original network
    original = load_model(converted)
    clips = torch.cat(batches)
    with torch.no_grad(), forced_policy(saved, (1, 1.0)), forced_policy(original, (1, 1.0)):
        torch.testing.assert_close(saved(clips), original(clips), rtol=0, atol=1e-5)
    # an old model file without the offsets still loads, uncalibrated
    state = {k: v for k, v in saved.state_dict().items() if not k.endswith("logit_offset")}
    fresh = load_model(converted)
    from vared_convert.checkpoint import load_weights

    load_weights(fresh, state)
    assert all(float(layer.gate.logit_offset.abs().sum()) == 0 for _, layer in adaptive_layers(fresh))
