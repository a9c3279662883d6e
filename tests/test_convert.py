"""Conversion: invariant 1 on every supported architecture, saved files that reload exactly, and the rules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from models_for_tests import Streaming, pads_its_input, tiny, untraceable
from vared_convert.arch import ArchSpec, build_model
from vared_convert.checkpoint import load_model, save_model
from vared_convert.convert import convert
from vared_convert.errors import VaredError
from vared_convert.nn import AdaptiveBlock, AdaptiveLayer, AdaptiveStage, DynamicConv3d, adaptive_layers, decide, dynamic_convs, forced_policy

ARCHS = {
    "torchvision:r3d_18": (3, 8, 64, 64),
    "torchvision:mc3_18": (3, 8, 64, 64),
    "torchvision:r2plus1d_18": (3, 8, 64, 64),
    "torchvision:s3d": (3, 16, 224, 224),  # S3D's fixed 2×7×7 head pool needs its native spatial size
    "pytorchvideo:i3d_r50": (3, 8, 64, 64),
    "pytorchvideo:slow_r50": (3, 8, 64, 64),
    "pytorchvideo:c2d_r50": (3, 8, 64, 64),
    "pytorchvideo:x3d_xs": (3, 4, 64, 64),
    "pytorchvideo:x3d_s": (3, 8, 64, 64),
    "pytorchvideo:x3d_m": (3, 8, 64, 64),
    "pytorchvideo:x3d_l": (3, 8, 64, 64),
    "pytorchvideo:r2plus1d_r50": (3, 8, 64, 64),
    "pytorchvideo:csn_r101": (3, 8, 64, 64),
    "pytorchvideo:slowfast_r50": (3, 16, 64, 64),
}


def _randomise_gates(model: torch.nn.Module) -> None:
    """Give every gate random weights so decisions differ between videos and layers."""
    with torch.no_grad():
        for _, layer in adaptive_layers(model):
            layer.gate.fc2.weight.normal_(0, 5.0)
            layer.gate.fc2.bias.normal_(0, 1.0)


CONV_GRANULARITY = ["torchvision:r3d_18", "pytorchvideo:x3d_s", "pytorchvideo:slowfast_r50"]
STAGE_GRANULARITY = ["torchvision:r3d_18", "torchvision:r2plus1d_18", "torchvision:s3d", "pytorchvideo:i3d_r50",
                     "pytorchvideo:x3d_s", "pytorchvideo:csn_r101", "pytorchvideo:slowfast_r50"]


@pytest.mark.parametrize("arch,granularity", [(a, "block") for a in sorted(ARCHS)] + [(a, "conv") for a in CONV_GRANULARITY]
                         + [(a, "stage") for a in STAGE_GRANULARITY])
def test_architecture_converts_exactly_and_reloads(arch, granularity, tmp_path):
    shape = ARCHS[arch]
    original = build_model(ArchSpec(arch, num_classes=5))
    before = copy.deepcopy(original.state_dict())
    result = convert(original, shape, arch=ArchSpec(arch, num_classes=5), granularity=granularity)
    report = result.report

    # Invariant 1: the full path is the original model.
    assert report.max_abs_error is not None and report.max_abs_error <= 1e-5
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = original(x)
        with forced_policy(result.model, (1, 1.0)):
            torch.testing.assert_close(result.model(x), expected, rtol=0, atol=1e-5)
        # a fresh gate prefers the full option, so the converted model behaves as the original
        torch.testing.assert_close(result.model(x), expected, rtol=0, atol=1e-5)

    assert len(report.converted) + len(report.converted_blocks) > 0 and 0.5 < report.converted_flops_share <= 1.0
    assert all(isinstance(result.model.get_submodule(d.name), DynamicConv3d) for d in report.converted)
    kinds = {"stage": AdaptiveStage}
    assert all(isinstance(result.model.get_submodule(d.name), kinds.get(d.kind, AdaptiveBlock))
               for d in report.converted_blocks)
    if granularity == "conv":
        assert not report.blocks
    if granularity == "stage" and arch not in ("torchvision:s3d", "pytorchvideo:slowfast_r50"):
        assert any(d.kind == "stage" for d in report.converted_blocks)  # residual stages (S3D has none; fx stops in SlowFast)
    # every original key survives, with the same values; the original model is untouched
    converted_sd = result.model.state_dict()
    for key, value in before.items():
        assert torch.equal(converted_sd[key], value), key
        assert torch.equal(original.state_dict()[key], value), key
    assert not any(isinstance(m, AdaptiveLayer) for m in original.modules())

    # Saved file: plain data + tensors, loads with weights_only=True, rebuilds the same model.
    _randomise_gates(result.model)
    path = save_model(result.model, tmp_path / "model.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "vared" and raw["arch"]["name"] == arch
    reloaded = load_model(path)
    with torch.no_grad():
        y_a, decided = result.model(x), decide(reloaded, x)
        y_b = decided.output
        choices = [c.tolist() for c in decided.decisions.choices([m for _, m in adaptive_layers(reloaded)])]
        torch.testing.assert_close(y_b, y_a, rtol=0, atol=0)
        with forced_policy(result.model, (2, 0.5)), forced_policy(reloaded, (2, 0.5)):
            torch.testing.assert_close(reloaded(x), result.model(x), rtol=0, atol=0)
    assert any(any(c) for c in choices), "random gates should pick non-full options somewhere"


def test_slowfast_is_converted_in_place_and_says_where_fx_stopped():
    model = build_model(ArchSpec("pytorchvideo:slowfast_r50", num_classes=5))
    report = convert(model, (3, 16, 64, 64)).report
    assert report.analysis == "hooks"
    assert "blocks.5" in report.trace_failure  # the module that stopped the trace
    stems = [d for d in report.static if d.reason.startswith("stem")]
    assert {d.name for d in stems} == {"blocks.0.multipathway_blocks.0.conv", "blocks.0.multipathway_blocks.1.conv"}


def test_untraceable_user_model_names_the_module_and_still_converts():
    model = untraceable()
    result = convert(model, (3, 4, 16, 16), only=["body.conv"])
    assert result.report.analysis == "hooks"
    assert "'body'" in result.report.trace_failure
    assert [d.name for d in result.report.converted] == ["body.conv"]
    assert result.report.max_abs_error <= 1e-5


@pytest.mark.parametrize("granularity", ["block", "conv"])
def test_a_model_that_pads_the_clip_itself_keeps_its_stem_static(granularity):
    # TF-style "same" padding in forward: fx cannot trace it, and the stem conv reads a 37×37 copy of a 32×32 clip.
    model = pads_its_input()
    report = convert(model, (3, 4, 32, 32), granularity=granularity).report
    assert report.analysis == "hooks" and "'stem'" in report.trace_failure
    reasons = {d.name: d.reason for d in report.static}
    assert reasons["stem.conv"] == "stem: reads the input clip"
    assert {d.name for d in report.converted} == {"body.0.conv", "body.2.conv"}
    assert report.max_abs_error <= 1e-5


def _state(model: nn.Module) -> dict:
    """Every attribute, parameter and buffer of every module: (the object, a copy of its values if a tensor)."""
    state = {}
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            entries = value.items() if key in ("_parameters", "_buffers") else [(None, value)]
            for sub, v in entries:
                state[(name, key, sub)] = (v, v.detach().clone() if isinstance(v, torch.Tensor) else None)
    return state


def _assert_unchanged(before: dict, model: nn.Module) -> None:
    after = _state(model)
    assert after.keys() == before.keys()
    for key, (value, copied) in before.items():
        assert after[key][0] is value, f"{key} was replaced by {type(after[key][0]).__name__}"
        if copied is not None:
            assert torch.equal(after[key][1], copied), key


@pytest.mark.parametrize("untraceable", [True, False])
@pytest.mark.parametrize("granularity", ["block", "conv"])
def test_a_model_with_stream_buffers_converts_without_touching_it(untraceable, granularity):
    # Streaming MoViNet keeps the last frames of each clip on its modules (assigned in forward).
    model = Streaming(untraceable=untraceable).eval()
    before = _state(model)
    result = convert(model, (3, 6, 16, 16), granularity=granularity)
    _assert_unchanged(before, model)
    report = result.report
    assert report.analysis == "hooks"
    if untraceable:
        assert "'tail'" in report.trace_failure
    else:  # fx traced it, but a graph cannot keep what forward stores on the module
        assert "stream1.stream" in report.trace_failure and "stores" in report.trace_failure
    if granularity == "block":
        assert not report.blocks and report.block_failure
    assert {"stream1.conv", "stream2.conv"} <= {d.name for d in report.converted}
    assert {d.name: d.reason for d in report.static}["stem"] == "stem: reads the input clip"
    # exact over consecutive clips: the converted model streams as the original does
    reference = copy.deepcopy(model)
    clips = [torch.randn(1, 3, 6, 16, 16) for _ in range(3)]
    with torch.no_grad(), forced_policy(result.model, (1, 1.0)):
        for x in clips:
            torch.testing.assert_close(result.model(x), reference(x), rtol=0, atol=1e-5)


def test_rules_stem_cheap_skip_only():
    model = tiny()
    report = convert(model, (3, 8, 32, 32), granularity="conv").report
    reasons = {d.name: d.reason for d in report.static}
    assert reasons["stem.0"].startswith("stem")
    converted = {d.name for d in report.converted}
    assert {"block1.0", "block2.0", "block3.0"} <= converted

    report = convert(model, (3, 8, 32, 32), granularity="conv", skip=["block2"]).report
    assert not any(d.name.startswith("block2.") for d in report.converted)
    assert "skipped by --skip block2" in {d.reason for d in report.static}

    report = convert(model, (3, 8, 32, 32), granularity="conv", only=["stem.0", "block[23].*"]).report
    assert {d.name for d in report.converted} == {"stem.0", "block2.0", "block3.0"}

    report = convert(model, (3, 8, 32, 32), granularity="conv", min_flops_share=0.2).report
    assert all("too cheap" in d.reason or d.reason.startswith("stem") for d in report.static)
    assert all(d.share >= 0.2 for d in report.converted)

    with pytest.raises(VaredError, match="selects no convertible conv"):
        convert(model, (3, 8, 32, 32), granularity="conv", only=["nothing.here"])


def test_search_space_is_configurable_and_options_follow_shapes():
    model = tiny()
    result = convert(model, (3, 2, 32, 32), granularity="conv", temporal=[1, 2, 4], channel=[1, 0.5])
    for d in result.report.converted:
        frames = d.output_shape[1]
        factors = {r for r, _ in d.options}
        ks = {k for _, k in d.options}
        assert ks <= {d.out_channels, d.out_channels // 2}
        if frames == 1:
            assert factors == {1}
        else:  # 2 output frames: R=2 and R=4 would compute the same single frame; only one is offered
            assert factors == {1, 2}
    with pytest.raises(VaredError, match="--temporal"):
        convert(model, (3, 8, 32, 32), temporal=[2])
    with pytest.raises(VaredError, match="--channel"):
        convert(model, (3, 8, 32, 32), channel=[0.5, 1.5])


def test_bad_models_and_shapes():
    with pytest.raises(VaredError, match="no Conv3d"):
        convert(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3)), (3, 2, 4, 4))
    with pytest.raises(VaredError, match="input-shape"):
        convert(tiny(), None)
    with pytest.raises(VaredError, match="C,T,H,W"):
        convert(tiny(), (3, 8, 32))
    converted = convert(tiny(), (3, 8, 32, 32)).model
    with pytest.raises(VaredError, match="already converted"):
        convert(converted, (3, 8, 32, 32))
    with pytest.raises(VaredError, match="does not run on a clip"):
        convert(untraceable(), (5, 4, 16, 16))


class _CheapAndDearConvs(nn.Module):
    """A pointwise 4→4 conv over a large map (cheap ops and gate cost as much as it) before a dear 3×3×3 conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(3, 4, 1)
        self.pointwise = nn.Conv3d(4, 4, 1, bias=False)
        self.down = nn.Conv3d(4, 64, (1, 4, 4), stride=(1, 4, 4))
        self.dear = nn.Conv3d(64, 64, 3, padding=1, bias=False)

    def forward(self, x):
        return self.dear(self.down(self.pointwise(self.stem(x))))


def test_a_conv_whose_rebuild_costs_what_it_skips_stays_static():
    """The pointwise 4→4 conv does 4 multiply-adds per output; rebuilding the channels and frames its cheapest
    option skips costs more, so no option of it could save anything."""
    report = convert(_CheapAndDearConvs(), (3, 16, 96, 96), granularity="conv", min_flops_share=0,
                     max_gate_overhead=1.0).report
    decisions = {d.name: d for d in report.layers}
    assert decisions["dear"].converted and not decisions["pointwise"].converted
    assert "its cheapest option would save" in decisions["pointwise"].reason


def test_time_aware_rule_keeps_static_what_would_not_save_time():
    model = _CheapAndDearConvs()
    rules = dict(granularity="conv", min_flops_share=0, max_gate_overhead=1.0, min_option_saving=-10.0)
    plain = convert(model, (3, 16, 96, 96), **rules)
    assert {"pointwise", "dear"} <= {d.name for d in plain.report.converted}
    timed = convert(model, (3, 16, 96, 96), **rules, time_aware=True)
    decisions = {d.name: d for d in timed.report.layers}
    assert decisions["dear"].converted
    assert not decisions["pointwise"].converted and "no time to save" in decisions["pointwise"].reason
    assert not isinstance(timed.model.pointwise, DynamicConv3d) and isinstance(timed.model.dear, DynamicConv3d)
    assert timed.report.max_abs_error == 0.0
    assert [layer.name for layer in timed.recipe.layers] == [d.name for d in timed.report.converted]
    # timed with inference's conv kernel, then left as converted: no module keeps the kernel it was timed with
    assert timed.model.dear.conv_kernel == "aten"
    assert not any(type(m).__name__.startswith("OneDNN") for m in timed.model.modules())



class _CheapAndDearBlocks(nn.Module):
    """_CheapAndDearConvs with its pointwise and dear convs each followed by a BatchNorm and a ReLU: chain blocks."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(3, 4, 1)
        self.pointwise = nn.Sequential(nn.Conv3d(4, 4, 1, bias=False), nn.BatchNorm3d(4), nn.ReLU())
        self.down = nn.Conv3d(4, 64, (1, 4, 4), stride=(1, 4, 4))
        self.dear = nn.Sequential(nn.Conv3d(64, 64, 3, padding=1, bias=False), nn.BatchNorm3d(64), nn.ReLU())

    def forward(self, x):
        return self.dear(self.down(self.pointwise(self.stem(x))))


def test_time_aware_rule_sends_blocks_that_would_not_save_time_to_the_per_conv_rules():
    model = _CheapAndDearBlocks().eval()
    rules = dict(granularity="block", min_flops_share=0, max_gate_overhead=1.0, min_option_saving=-10.0)
    cheap_ops, dear_ops = ("pointwise.0", "pointwise.1", "pointwise.2"), ("dear.0", "dear.1", "dear.2")
    plain = convert(model, (3, 16, 96, 96), **rules)
    assert {cheap_ops, dear_ops} <= {tuple(d.ops) for d in plain.report.converted_blocks}
    timed = convert(model, (3, 16, 96, 96), **rules, time_aware=True)
    blocks = {tuple(d.ops): d for d in timed.report.blocks}
    assert blocks[dear_ops].converted
    assert not blocks[cheap_ops].converted and "no time to save" in blocks[cheap_ops].reason
    # its conv went on to the per-conv rules, whose own timing keeps it static too
    assert "pointwise.0" not in {d.name for d in timed.report.converted}
    assert not any(isinstance(m, AdaptiveLayer) for m in timed.model.pointwise.modules())
    assert timed.report.max_abs_error == 0.0
