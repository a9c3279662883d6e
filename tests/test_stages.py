"""Adaptive stages (``granularity="stage"``): what is found, the full option = the original, costs = fvcore, the
temporal option running the whole stage (residual stream included) on every R-th frame, the training gradient,
export with one If per gate, and the checkpoint."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models_for_tests import tiny_res
from test_blocks import ort_session_from
from test_export import ort_session
from vared_convert.arch import ArchSpec, build_model
from vared_convert.checkpoint import load_model, save_model
from vared_convert.convert import convert
from vared_convert.export import export_model, static_policy
from vared_convert.flops import count_macs, gate_macs, option_costs
from vared_convert.nn import (AdaptiveBlock, AdaptiveStage, StageBranch, adaptive_layers, decide, forced_policy,
                              option_index)

SHAPE = (3, 8, 32, 32)


@pytest.fixture(scope="module")
def staged():
    """TinyRes at stage granularity: its two X3D-style bottlenecks (``blocks``, a Sequential) are one stage; the
    top-level BasicBlock-like branch is no stage (one block, no module holds it) and goes per-conv."""
    torch.manual_seed(0)
    original = tiny_res()
    return original, convert(original, SHAPE, min_flops_share=0, granularity="stage")


def test_a_stage_of_residual_blocks_is_one_adaptive_layer_and_its_full_option_is_the_original(staged):
    original, result = staged
    stages = [d for d in result.report.converted_blocks if d.kind == "stage"]
    assert [d.name for d in stages] == ["blocks"]
    assert [b[0] for b in stages[0].branches] == ["blocks.0.conv_a", "blocks.1.conv_a"]
    stage = result.model.get_submodule("blocks")
    assert isinstance(stage, AdaptiveStage) and stage.branch_names == ["0.adaptive", "1.adaptive"]
    assert all(isinstance(b, StageBranch) for b in stage.branches())
    assert [o.as_list() for o in stage.options] == [[1, 24], [1, 12], [1, 6], [2, 24], [2, 12], [2, 6]]
    layers = [layer for _, layer in adaptive_layers(result.model)]
    assert not any(isinstance(layer, AdaptiveBlock) for layer in layers)  # the branches have no gates of their own
    assert sum(isinstance(layer, AdaptiveStage) for layer in layers) == 1
    # every original key survives; what the stage adds is its gate and its frame rebuild
    keys, original_keys = set(result.model.state_dict()), set(original.state_dict())
    assert original_keys <= keys
    assert {k for k in keys - original_keys if k.startswith("blocks.")} == {
        k for k in keys if k.startswith(("blocks.gate.", "blocks.rebuild_frames."))}
    x = torch.randn(3, *SHAPE)
    with torch.no_grad(), forced_policy(result.model, (1, 1.0)):
        assert (result.model(x) - original(x)).abs().max() <= 1e-5
    assert result.recipe.blocks[0].kind == "stage" and result.recipe.blocks[0].branches == stages[0].branches


def test_temporal_option_runs_the_whole_stage_on_every_other_frame(staged):
    """The second block's input is the first block's output: at a temporal option both branches see T/R frames,
    so the residual stream between them ran on those frames too, and the stage rebuilds T frames once at its exit."""
    _, result = staged
    stage = result.model.get_submodule("blocks")
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((args[0].shape[2], args[1][0])))
             for b in stage.branches()]
    x = torch.randn(2, 8, 8, 16, 16)
    try:
        for option in [(1, 1.0), (2, 1.0), (2, 0.25), (1, 0.5)]:
            seen.clear()
            o = option_index(stage, *option)
            out = stage.eval().run_option(x, o)
            assert out.shape == x.shape
            widths = [b.counts[i] for b, (_, i) in zip(stage.branches(), seen)]
            assert [s[0] for s in seen] == [8 // option[0]] * 2, option
            assert widths == [max(1, int(-(-24 * option[1] // 1)))] * 2, option
    finally:
        for h in hooks:
            h.remove()


def test_stage_option_costs_match_fvcore_on_the_stage_forced_to_each_option(staged):
    _, result = staged
    stage = result.model.get_submodule("blocks")
    x = torch.randn(1, 8, 8, 16, 16)
    costs = option_costs(stage, x.shape)
    for o in range(stage.num_options):
        stage.policy = o
        counted, _ = count_macs(stage, x, vared_handles=False)
        assert counted == costs[o].total, (o, counted, costs[o])
    stage.policy = None
    assert costs[option_index(stage, 2, 0.5)].conv < 0.3 * costs[0].conv
    assert gate_macs(stage, x.shape) < 0.05 * costs[0].total
    # costing a new clip shape in training leaves the BatchNorms' statistics and modes as they were
    stage.train()
    before = copy.deepcopy(stage.state_dict())
    option_costs(stage, (1, 8, 4, 12, 12))
    assert all(torch.equal(before[k], v) for k, v in stage.state_dict().items())
    assert all(m.training for m in stage.modules())
    stage.eval()


def test_straight_through_training_has_the_gradients_of_the_weighted_sum_of_all_options(staged):
    _, result = staged
    stage = copy.deepcopy(result.model.get_submodule("blocks")).train()
    for m in stage.modules():  # BatchNorms with fixed statistics: a group of videos then computes what the batch does
        if isinstance(m, torch.nn.BatchNorm3d):
            m.eval()
    stage.temperature = 2.0
    with torch.no_grad():
        stage.gate.fc2.weight.normal_(0, 1.0)
    x = torch.randn(6, 8, 8, 16, 16, requires_grad=True)
    probe = torch.randn(6, 8, 8, 16, 16)
    params = list(stage.gate.parameters()) + list(stage.rebuild_frames.parameters())
    params += [p for b in stage.branches() for op in b._run._ops for p in op.parameters()]
    state = copy.deepcopy(stage.state_dict())  # training updates the gate's and the BatchNorms' estimates
    torch.manual_seed(3)
    decided = decide(stage, x)
    assert len(set(decided.decisions[stage].choice.tolist())) > 1
    grads = torch.autograd.grad((decided.output * probe).sum(), params + [x], allow_unused=True)
    stage.load_state_dict(state)
    torch.manual_seed(3)
    weights = stage.gate.straight_through(stage.gate(x), stage.temperature)
    naive = sum(weights[:, o].view(-1, 1, 1, 1, 1) * stage.run_option(x, o) for o in range(stage.num_options))
    expected = torch.autograd.grad((naive * probe).sum(), params + [x], allow_unused=True)
    torch.testing.assert_close(decided.output, naive, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        if want is None:
            assert got is None or got.abs().sum() == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_stage_export_has_an_if_per_gate_and_follows_pytorch_on_every_option(staged, tmp_path):
    import onnx
    import onnx.numpy_helper as nh

    _, result = staged
    model = copy.deepcopy(result.model).eval()
    with torch.no_grad():  # distinct gate weights, so that the exporter keeps one initializer per gate
        for _, layer in adaptive_layers(model):
            layer.gate.fc2.weight.normal_(0, 1e-3)
            layer.gate.fc2.bias.normal_(0, 1e-3)
    export_model(model, onnx=tmp_path / "m.onnx", pt2=tmp_path / "m.pt2")
    exported = onnx.load(tmp_path / "m.onnx")
    assert sum(node.op_type == "If" for node in exported.graph.node) == len(adaptive_layers(model))
    stage = model.get_submodule("blocks")
    clip = torch.randn(1, *SHAPE)
    for option in range(stage.num_options):
        with torch.no_grad():
            stage.gate.fc2.weight.zero_()
            stage.gate.fc2.bias.zero_()
            stage.gate.fc2.bias[option] = 10.0
        pinned = copy.deepcopy(exported)
        for init in pinned.graph.initializer:
            if init.name.startswith("blocks.layer.gate.fc2."):
                init.CopyFrom(nh.from_array(getattr(stage.gate.fc2, init.name.rsplit(".", 1)[1]).detach().numpy(),
                                            init.name))
        session = ort_session_from(pinned)
        with torch.no_grad():
            decided = decide(model, clip)
        assert int(decided.decisions[stage].choice) == option
        got = session.run(None, {session.get_inputs()[0].name: clip.numpy()})[0]
        np.testing.assert_allclose(got, decided.output.numpy(), rtol=1e-4, atol=1e-5)
    export_model(model, onnx=tmp_path / "s.onnx", policy=static_policy(model, (2, 0.5)))
    clips = torch.randn(3, *SHAPE)
    with torch.no_grad(), forced_policy(model, (2, 0.5)):
        expected = model(clips)
    session = ort_session(tmp_path / "s.onnx")
    got = session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_a_stage_with_a_temporal_stride_runs_on_every_other_frame_too_and_reloads(tmp_path):
    """r3d_18: layer2–4 start with a temporal stride (8 → 4 → 2 → 1 frames at this clip). A temporal option
    still runs a stage on every other frame where that halves its output frames (layer2, layer3), not where the
    output is one frame either way (layer4). The checkpoint rebuilds the stages from the recipe."""
    torch.manual_seed(0)
    spec = ArchSpec("torchvision:r3d_18", num_classes=3)
    original = build_model(spec)
    result = convert(original, (3, 8, 32, 32), arch=spec, granularity="stage")
    options = {d.name: {tuple(o) for o in d.options} for d in result.report.converted_blocks}
    assert set(options) == {"layer1", "layer2", "layer3", "layer4"}
    assert [{t for t, _ in options[name]} for name in ("layer1", "layer2", "layer3", "layer4")] == [{1, 2}] * 3 + [{1}]
    layer2 = result.model.get_submodule("layer2").eval()
    x = torch.randn(2, 64, 8, 16, 16)
    for option in range(layer2.num_options):
        assert layer2.run_option(x, option).shape == (2, 128, 4, 8, 8)
    costs = option_costs(layer2, (1, 64, 8, 16, 16))
    half = costs[option_index(layer2, 2, 1.0)]
    assert half.conv == pytest.approx(costs[0].conv / 2, rel=0.01)  # every op on half the frames
    for o in range(layer2.num_options):  # the analytic costs, strided convs and all, are fvcore's
        layer2.policy = o
        assert count_macs(layer2, x[:1], vared_handles=False)[0] == costs[o].total, o
    layer2.policy = None
    with torch.no_grad():
        for _, layer in adaptive_layers(result.model):
            layer.gate.fc2.weight.normal_(0, 5.0)
            layer.gate.fc2.bias.normal_(0, 1.0)
    path = save_model(result.model, tmp_path / "m.pth")
    reloaded = load_model(path)
    assert [type(layer).__name__ for _, layer in adaptive_layers(reloaded)] == ["AdaptiveStage"] * 4
    x = torch.randn(3, 3, 8, 32, 32)
    with torch.no_grad():
        decided = decide(reloaded, x)
        torch.testing.assert_close(decided.output, result.model(x), rtol=0, atol=0)
    assert any(c.any() for c in decided.decisions.choices([m for _, m in adaptive_layers(reloaded)]))


class _BasicReusingItsReLU(torch.nn.Module):
    """A residual block that calls one ReLU module twice, inside its branch and after the add (as torchvision's
    2-D ResNet blocks do)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm3d(channels)
        self.relu = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm3d(channels)

    def forward(self, x):
        return self.relu(x + self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))))


class _ReusedReLUNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv3d(3, 8, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.layer = torch.nn.Sequential(_BasicReusingItsReLU(8), _BasicReusingItsReLU(8))
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.layer(self.stem(x)).mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("granularity", ["block", "stage"])
def test_a_module_called_twice_is_matched_by_its_place_in_the_run(granularity):
    """The branch's ReLU is the same module as the one after the add: the block is still found and rewritten."""
    torch.manual_seed(0)
    model = _ReusedReLUNet().eval()
    result = convert(model, (3, 4, 16, 16), min_flops_share=0, granularity=granularity)
    kinds = [d.kind for d in result.report.converted_blocks]
    assert kinds == (["residual", "residual"] if granularity == "block" else ["stage"]), result.report.blocks
    x = torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad(), forced_policy(result.model, (1, 1.0)):
        torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=1e-5)
    with torch.no_grad(), forced_policy(result.model, (2, 0.5)):
        assert result.model(x).shape == (2, 3)
