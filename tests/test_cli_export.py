"""`vared export` and `vared evaluate` as a user runs them: verified files, JSON, one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cli_checks import assert_one_line_error
from test_export import SHAPE, TwoConvNet, adaptive_two_conv, rgb_two_conv_net
from vared_convert.arch import ArchSpec
from vared_convert.checkpoint import save_model
from vared_convert.convert import convert
from vared_convert.data.synthetic import CLASSES, write_synthetic_dataset
from vared_convert.recipe import ModelInfo


class NoisyNet(TwoConvNet):
    """Adds fresh noise to its input on every call: no exported program can reproduce its outputs."""

    def forward(self, x):
        return super().forward(x + torch.rand_like(x))


# the models here are this file's own code: a vared file runs such code only when the user names it with --arch
TWO_CONV = ("--arch", "test_export:two_conv_net")
RGB = ("--arch", "test_export:rgb_two_conv_net")


def noisy_net(num_classes: int = 3) -> nn.Module:
    return NoisyNet(num_classes)


def rgb_adaptive() -> nn.Module:
    """Both convs of an RGB TwoConvNet adaptive, gates fresh (every clip takes the full option)."""
    spec = ArchSpec("test_export:rgb_two_conv_net", len(CLASSES))
    model = rgb_two_conv_net(len(CLASSES))
    return convert(model, (3, 8, 16, 16), arch=spec, convert_stem=True, min_flops_share=0).model


@pytest.fixture(scope="module")
def two_conv_file(tmp_path_factory):
    model = adaptive_two_conv()
    model.vared_info = ModelInfo(ArchSpec("test_export:two_conv_net"), model.vared_info.recipe)
    return save_model(model, tmp_path_factory.mktemp("models") / "two_conv.pth")


def test_export_writes_verified_dynamic_onnx_and_pt2(run_vared, two_conv_file, tmp_path):
    proc = run_vared("export", two_conv_file, *TWO_CONV, "--onnx", tmp_path / "m.onnx", "--pt2", tmp_path / "m.pt2", check=True)
    assert proc.stdout.count("✓ verified") == 2 and "gates + If, batch 1" in proc.stdout
    assert "ONNX Runtime" in proc.stdout and "max abs difference" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.pt2"]


def test_export_static_policy_json(run_vared, two_conv_file, tmp_path):
    proc = run_vared("export", two_conv_file, *TWO_CONV, "--onnx", tmp_path / "s.onnx", "--static-policy", "--option", "2,0.5",
                     "--json", check=True)
    data = json.loads(proc.stdout)
    (result,) = data["exports"]
    assert result["policy"] == "static" and result["batch"] == "any" and result["max_abs_error"] <= 1e-4
    assert result["options"] == {"conv1": 4, "conv2": 4}
    assert result["lowering"] == "none"


def test_export_with_frame_lowering(run_vared, two_conv_file, tmp_path):
    proc = run_vared("export", two_conv_file, *TWO_CONV, "--onnx", tmp_path / "s.onnx", "--static-policy", "--option", "1,0.5",
                     "--conv-lowering", "frames", check=True)
    assert "convs lowered to frames" in proc.stdout and "✓ verified" in proc.stdout
    bad = run_vared("export", two_conv_file, *TWO_CONV, "--onnx", tmp_path / "b.onnx", "--conv-lowering", "im2col")
    assert_one_line_error(bad, "--conv-lowering must be one of none, frames")
    assert not (tmp_path / "b.onnx").exists()


def test_export_static_policy_from_data(run_vared, tmp_path):
    path = save_model(rgb_adaptive(), tmp_path / "m.pth")
    write_synthetic_dataset(tmp_path / "data", train_per_class=0, val_per_class=1, frames=16, size=32)
    proc = run_vared("export", path, *RGB, "--onnx", tmp_path / "s.onnx", "--static-policy", "--data", tmp_path / "data",
                     "--workers", "0", check=True)
    assert "most frequent decisions" in proc.stdout and "1,1 ×2" in proc.stdout  # fresh gates: the full option


def test_failed_verification_exits_non_zero_and_writes_nothing(run_vared, tmp_path):
    result = convert(noisy_net(), SHAPE, arch="test_cli_export:noisy_net", convert_stem=True, min_flops_share=0,
                     verify=False)
    path = save_model(result.model, tmp_path / "noisy.pth")
    proc = run_vared("export", path, "--arch", "test_cli_export:noisy_net", "--onnx", tmp_path / "n.onnx", "--static-policy", "--option", "1,1")
    assert_one_line_error(proc, "verification failed")
    assert not (tmp_path / "n.onnx").exists()


def test_export_and_evaluate_bad_inputs_are_one_line_errors(run_vared, two_conv_file, tmp_path):
    out = ["--onnx", tmp_path / "o.onnx"]
    (tmp_path / "taken.onnx").write_bytes(b"precious")
    cases = [
        (["export", two_conv_file, *TWO_CONV], "nothing to write"),
        (["export", tmp_path / "missing.pth", *out], "no such file"),
        (["export", two_conv_file, *TWO_CONV, *out, "--option", "2,0.5"], "add --static-policy"),
        (["export", two_conv_file, *TWO_CONV, *out, "--static-policy"], "exactly one of --option"),
        (["export", two_conv_file, *TWO_CONV, *out, "--static-policy", "--option", "2"], "--option '2'"),
        (["export", two_conv_file, *TWO_CONV, "--onnx", tmp_path / "taken.onnx"], "--force"),
        (["evaluate", two_conv_file, *TWO_CONV, "--data", tmp_path / "nowhere"], "no such dataset directory"),
    ]
    for args, needle in cases:
        assert_one_line_error(run_vared(*args), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]
    assert (tmp_path / "taken.onnx").read_bytes() == b"precious"


def test_evaluate_prints_top1_and_flops_ratio(run_vared, tmp_path):
    path = save_model(rgb_adaptive(), tmp_path / "m.pth")
    write_synthetic_dataset(tmp_path / "data", train_per_class=0, val_per_class=1, frames=16, size=32)
    proc = run_vared("evaluate", path, *RGB, "--data", tmp_path / "data", "--workers", "0", "--clips-per-video", "2",
                     check=True)
    assert "top-1 clip" in proc.stdout and "top-1 video" in proc.stdout and "FLOPs ratio" in proc.stdout
    proc = run_vared("evaluate", path, *RGB, "--data", tmp_path / "data", "--workers", "0", "--json", check=True)
    data = json.loads(proc.stdout)
    assert data["clips"] == data["videos"] == len(CLASSES)
    assert 1 < data["flops_ratio"] < 1.05  # fresh gates: the full option, plus the gates themselves
