"""Profiling: fvcore totals, analytic per-option costs of a whole model, clips, latency, JSON and plots."""

from __future__ import annotations

import json

import pytest
import torch

from cli_checks import assert_one_line_error
from models_for_tests import tiny
from test_dynamic_conv import _steer_gate
from vared_convert.arch import ArchSpec, build_model
from vared_convert.checkpoint import save_model
from vared_convert.convert import convert
from vared_convert.errors import VaredError
from vared_convert.flops import count_macs
from vared_convert.nn import adaptive_layers, forced_policy
from vared_convert.profile import Reservoir, profile_model
from vared_convert.recipe import model_info

OPTIONS = [(1, 1.0), (1, 0.5), (1, 0.25), (2, 1.0), (2, 0.5), (2, 0.25)]


@pytest.fixture(scope="module", params=["conv", "block"])
def r3d_full_size(request):
    """torchvision r3d_18 at its usual clip, 3×16×112×112, converted (random weights) at each granularity."""
    original = build_model(ArchSpec("torchvision:r3d_18"))
    return original, convert(original, (3, 16, 112, 112), arch="torchvision:r3d_18", granularity=request.param).model


def test_r3d_18_original_equals_fvcore_and_every_option_matches_fvcore(r3d_full_size):
    original, adaptive = r3d_full_size
    clip = torch.zeros(1, 3, 16, 112, 112)
    fvcore_total, _ = count_macs(original, clip, vared_handles=False)
    report = profile_model(adaptive)
    assert report.original_macs == fvcore_total
    assert abs(report.original_macs / 1e9 - 40.74) < 0.01  # r3d_18's well-known ~40.7 GFLOPs
    for option in OPTIONS:
        forced = profile_model(adaptive, option=option)
        with forced_policy(adaptive, option):
            counted, _ = count_macs(adaptive, clip)
        assert abs(forced.adaptive_macs - counted) <= 0.01 * counted, option
        assert forced.mode == "forced" and forced.gate_macs == 0
    cheapest = profile_model(adaptive, option=(2, 0.25))
    assert cheapest.flops_ratio < 0.2


def test_static_report_gives_ranges_and_json_keys(r3d_full_size):
    _, adaptive = r3d_full_size
    report = profile_model(adaptive)
    data = report.to_dict()
    assert report.mode == "static"
    assert {"unit", "input_shape", "original_gflops", "adaptive_gflops", "flops_ratio", "gate_gflops", "layers"} <= set(data)
    assert data["input_shape"] == [3, 16, 112, 112]
    assert all({"name", "original_gflops", "adaptive_gflops", "option_counts"} <= set(layer) for layer in data["layers"])
    dynamic = [layer for layer in report.layers if layer.dynamic]
    blocks = model_info(adaptive).recipe.granularity == "block"
    assert len(dynamic) == (8 if blocks else 16) and all(layer.min_macs < layer.original_macs for layer in dynamic)
    assert report.min_macs < report.original_macs < report.adaptive_macs  # the gates cost a little
    assert report.gate_macs < 0.001 * report.original_macs
    total = sum(layer.original_macs for layer in report.layers) + report.other_macs
    assert total == report.original_macs


@pytest.mark.parametrize("granularity", ["conv", "block"])
def test_every_row_has_the_same_output_shape_convention(granularity):
    # output_shape is (C, T, H, W) of one clip at the full option, static and adaptive rows alike
    original = tiny().eval()
    shape = (3, 8, 32, 32)
    model = convert(original, shape, granularity=granularity).model
    report = profile_model(model, option=(2, 0.5))
    rows = report.to_dict()["layers"]
    assert {row["dynamic"] for row in rows} == {True, False}
    outputs: dict[str, list[int]] = {}

    def record(name):
        def hook(module, args, out):
            outputs.setdefault(name, list(out.shape[1:]))

        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()]
    with torch.no_grad(), forced_policy(model, (1, 1.0)):
        model(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    for row in rows:
        assert len(row["output_shape"]) == 4 and row["output_shape"] == outputs[row["name"]], row["name"]


def test_decisions_on_clips_are_counted_per_layer_and_class():
    model = convert(tiny(), (3, 8, 32, 32)).model
    layers = adaptive_layers(model)
    name, steered = layers[0]
    _steer_gate(steered, {0: 5})  # input channel 0 large -> option 5 (2, 0.25)
    clips = torch.randn(4, 3, 8, 32, 32)
    labels = torch.tensor([0, 1, 0, 1])
    report = profile_model(model, clips=[(clips[:2], labels[:2]), (clips[2:], labels[2:])], class_names=["a", "b"])
    assert report.mode == "clips" and report.clips == 4
    row = next(r for r in report.layers if r.name == name)
    assert sum(row.option_counts.values()) == 4
    for r in report.layers:
        if r.dynamic:
            assert sum(r.option_counts.values()) == 4
    assert set(report.class_histograms) == {"a", "b"}
    assert sum(report.class_histograms["a"].values()) == 2 * len(layers)
    # the mean over clips equals the per-layer sums plus static parts
    dyn_sum = sum(r.adaptive_macs + r.gate_macs for r in report.layers if r.dynamic)
    static_sum = sum(r.original_macs for r in report.layers if not r.dynamic) + report.other_macs
    assert report.adaptive_macs == pytest.approx(dyn_sum + static_sum, rel=1e-9)


def test_latency_is_measured_side_by_side():
    model = convert(tiny(), (3, 8, 32, 32), arch=ArchSpec("models_for_tests:tiny")).model
    report = profile_model(model, option=(2, 0.5), latency=True, repeats=3, warmup=1)
    lat = report.latency.to_dict()
    assert {"original_ms", "adaptive_ms", "time_ratio", "device", "threads"} <= set(lat)
    assert lat["original_ms"] > 0 and lat["adaptive_ms"] > 0 and lat["device"] == "cpu"
    assert lat["time_ratio"] == pytest.approx(lat["adaptive_ms"] / lat["original_ms"])


def test_the_clips_timed_on_data_are_a_uniform_sample_of_all_of_them():
    """A dataset listed class by class must not be timed on its first class only: every position of the stream is
    kept with the same chance, and the same stream gives the same sample."""
    count, size, draws = 20, 4, 2000
    kept = torch.zeros(count)
    for seed in range(draws):
        sample = Reservoir(size, seed)
        for position in range(count):
            sample.offer(position)
        assert len(sample.items) == size == len(set(sample.items))
        kept[sample.items] += 1
    assert torch.allclose(kept / draws, torch.full((count,), size / count), atol=0.05)
    again = [Reservoir(size, 7), Reservoir(size, 7)]
    for sample in again:
        for position in range(count):
            sample.offer(position)
    assert again[0].items == again[1].items

    model = convert(tiny(), (3, 8, 32, 32), arch=ArchSpec("models_for_tests:tiny")).model
    batches = [(torch.randn(4, 3, 8, 32, 32), None) for _ in range(3)]
    report = profile_model(model, clips=batches, latency=True, latency_clips=5, repeats=1, warmup=0)
    assert report.latency.clips == 5 and report.clips == 12


def test_bad_options_and_shapes():
    model = convert(tiny(), (3, 8, 32, 32), arch=ArchSpec("models_for_tests:tiny")).model
    with pytest.raises(VaredError, match="search space"):
        profile_model(model, option=(3, 0.5))
    with pytest.raises(VaredError, match="search space"):
        profile_model(model, option=(2, 0.3))
    with pytest.raises(VaredError, match="reads 3-channel clips, not 5"):
        profile_model(model, (5, 8, 32, 32))
    with pytest.raises(VaredError, match="converted model"):
        profile_model(tiny(), (3, 8, 32, 32), option=(2, 0.5))


def test_cli_profile_json_plot_and_errors(run_vared, tmp_path):
    model = convert(tiny(), (3, 8, 32, 32), arch=ArchSpec("models_for_tests:tiny")).model
    path = save_model(model, tmp_path / "m.pth")
    assert_one_line_error(run_vared("profile", path), "user code ('models_for_tests:tiny')")  # user code: named only
    trust = ("--arch", "models_for_tests:tiny")
    proc = run_vared("profile", path, *trust, "--option", "2,0.5", "--latency", "--repeats", "2",
                     "--json", tmp_path / "r.json", "--plot", tmp_path / "s.png", check=True)
    assert "FLOPs ratio" in proc.stdout and "time ratio" in proc.stdout and "GFLOPs = 10⁹ multiply-adds" in proc.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["latency"]["time_ratio"] > 0 and data["option"] == [2, 0.5]
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run_vared("profile", path, *trust, "--json", "-", check=True)
    assert json.loads(proc.stdout)["mode"] == "static"
    plain = tmp_path / "plain.pth"
    torch.save(tiny().state_dict(), plain)
    proc = run_vared("profile", plain, "--arch", "models_for_tests:tiny", "--input-shape", "3,8,32,32", "--json", "-",
                     check=True)
    assert json.loads(proc.stdout)["flops_ratio"] == 1.0
    for args, needle in [(["--option", "2,x"], "--option"), (["--option", "4,0.5"], "search space"),
                         (["--input-shape", "5,8,32,32"], "reads 3-channel clips, not 5")]:
        proc = run_vared("profile", path, *trust, *args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert needle in proc.stderr.strip().splitlines()[-1]


def test_cli_profile_on_data_counts_decisions_per_clip(run_vared, tmp_path):
    from finetune_helpers import converted_tiny, tiny_dataset

    data = tiny_dataset(tmp_path / "data", train_per_class=1, val_per_class=1)
    model = converted_tiny(tmp_path / "m.pth")
    proc = run_vared("profile", model, "--data", data, "--clips", "6", "--stride", "2", "--workers", "0",
                     "--json", "-", check=True)
    report = json.loads(proc.stdout)
    assert report["mode"] == "clips" and report["clips"] == 6
    dynamic = [layer for layer in report["layers"] if layer["option_counts"]]
    assert len(dynamic) == 3 and all(sum(layer["option_counts"].values()) == 6 for layer in dynamic)
    # a freshly converted model's gates all pick the full option: the cost is the original's plus the gates'
    assert all(set(layer["option_counts"]) == {"1,1"} for layer in dynamic)
    assert report["flops_ratio"] == pytest.approx(1 + report["gate_gflops"] / report["original_gflops"])
    empty = tmp_path / "empty"
    empty.mkdir()
    for args, needle in [(["--data", empty], "no videos"), (["--data", data, "--clips", "0"], "--clips")]:
        assert_one_line_error(run_vared("profile", model, *args), needle)
