"""`vared convert` as a user runs it: tables or JSON, a verified output file, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from cli_checks import assert_one_line_error
from models_for_tests import tiny


@pytest.fixture(scope="module")
def r3d_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "r3d.pth"
    model = torchvision.models.video.r3d_18(num_classes=10)
    torch.save({"state_dict": {"module." + k: v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    return path


def test_convert_prints_tables_and_writes_a_verified_model(run_vared, r3d_checkpoint, tmp_path):
    out = tmp_path / "r3d_vared.pth"
    proc = run_vared("convert", r3d_checkpoint, "--arch", "torchvision:r3d_18", "--num-classes", "10",
                     "--input-shape", "3,8,64,64", "--out", out, check=True)
    assert "Adaptive blocks (8)" in proc.stdout and "layer4.1.adaptive" in proc.stdout  # the default: blocks
    assert "residual" in proc.stdout and "stem: reads the input clip" in proc.stdout
    assert "verified" in proc.stdout and "max abs difference 0" in proc.stdout
    raw = torch.load(out, weights_only=True)
    assert raw["format"] == "vared" and raw["recipe"]["input_shape"] == [3, 8, 64, 64]
    assert [p.name for p in tmp_path.iterdir()] == ["r3d_vared.pth"]  # no temporary file left

    per_conv = run_vared("convert", r3d_checkpoint, "--arch", "torchvision:r3d_18", "--num-classes", "10",
                         "--input-shape", "3,8,64,64", "--granularity", "conv", "--out", tmp_path / "c.pth", check=True)
    assert "Adaptive convolutions (16)" in per_conv.stdout and "layer4.1.conv2.0" in per_conv.stdout
    assert "Adaptive blocks" not in per_conv.stdout


def test_convert_json_for_scripts(run_vared, tmp_path):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny().state_dict(), ckpt)
    (tmp_path / "classes.txt").write_text("walk\nrun\njump\nsit\n")
    proc = run_vared("convert", ckpt, "--arch", "models_for_tests:tiny", "--input-shape", "3,8,32,32",
                     "--out", tmp_path / "o.pth", "--temporal", "1,2,4", "--channel", "1,0.5",
                     "--skip", "block1", "--classes", tmp_path / "classes.txt", "--granularity", "conv", "--json",
                     check=True)
    data = json.loads(proc.stdout)
    assert {"converted", "static", "converted_flops_share", "max_abs_error"} <= set(data)
    assert data["max_abs_error"] == 0.0
    assert "block2.0" in data["converted"] and "block1.0" in data["static"]
    layer = next(x for x in data["layers"] if x["name"] == "block2.0")
    assert sorted({r for r, _ in layer["options"]}) == [1, 2, 4]
    assert torch.load(tmp_path / "o.pth", weights_only=True)["class_names"] == ["walk", "run", "jump", "sit"]


def test_bad_inputs_give_one_line_errors_and_no_output(run_vared, r3d_checkpoint, tmp_path):
    out = tmp_path / "out.pth"
    common = ["--out", out, "--input-shape", "3,8,64,64"]
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(r3d_checkpoint.read_bytes()[:100_000])
    cases = [
        (["convert", tmp_path / "missing.pth", "--arch", "torchvision:r3d_18", *common], "no such file"),
        (["convert", garbage, "--arch", "torchvision:r3d_18", *common], "not a"),
        (["convert", truncated, "--arch", "torchvision:r3d_18", *common], "truncated or corrupt"),
        (["convert", r3d_checkpoint, "--arch", "torchvision:r4d_18", *common], "unknown torchvision architecture"),
        (["convert", r3d_checkpoint, "--arch", "nosuchpkg.models:net", *common], "cannot import module"),
        (["convert", r3d_checkpoint, "--arch", "models_for_tests:not_a_module", *common], "not an nn.Module"),
        (["convert", r3d_checkpoint, "--arch", "torchvision:r3d_18", *common], "--num-classes 10"),
        (["convert", r3d_checkpoint, "--arch", "torchvision:r2plus1d_18", "--num-classes", "10", *common],
         "missing keys"),
        (["convert", r3d_checkpoint, "--arch", "torchvision:r3d_18", "--num-classes", "10", "--out", out,
          "--input-shape", "3,8"], "C,T,H,W"),
        (["convert", r3d_checkpoint, "--arch", "torchvision:r3d_18", "--num-classes", "10", "--out", out,
          "--input-shape", "3,8,64,64", "--channel", "1,abc"], "--channel"),
    ]
    for args, needle in cases:
        assert_one_line_error(run_vared(*args), needle)
    assert set(tmp_path.iterdir()) == {garbage, truncated}  # no output, no temporary file

    out.write_bytes(b"precious")
    proc = run_vared("convert", r3d_checkpoint, "--arch", "torchvision:r3d_18", "--num-classes", "10", *common)
    assert_one_line_error(proc, "--force")
    assert out.read_bytes() == b"precious"


def test_help_reads_well(run_vared):
    proc = run_vared("--help", check=True)
    assert "convert" in proc.stdout
    proc = run_vared("convert", "--help", check=True)
    for flag in ["--arch", "--out", "--input-shape", "--temporal", "--channel", "--skip", "--only",
                 "--trust-pickle", "--force", "--json"]:
        assert flag in proc.stdout
