"""Adaptive blocks: what torch.fx finds, the invariants that hold for each kind, executed work equal to the analytic
cost (counted, not timed), the training gradient, the fallback to per-conv, and export with one If per block."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models_for_tests import PoolInBranch, tiny, tiny_res
from test_dynamic_conv import _steer_gate
from test_export import ort_session
from vared_convert.convert import convert
from vared_convert.export import export_model, static_policy
from vared_convert.flops import count_macs, gate_macs, option_costs
from vared_convert.nn import (AdaptiveBlock, AdaptiveStage, DynamicConv3d, adaptive_layers, decide, forced_policy, option_index,
                              set_policy)

SHAPE = (3, 8, 32, 32)


@pytest.fixture(scope="module")
def residual():
    """TinyRes at block granularity: two X3D-style bottlenecks (one with squeeze-excitation) as blocks; its
    top-level BasicBlock-like branch falls back to per-conv (no module holds it)."""
    torch.manual_seed(0)
    original = tiny_res()
    return original, convert(original, SHAPE, min_flops_share=0)


def _blocks(model):
    return [layer for _, layer in adaptive_layers(model) if isinstance(layer, AdaptiveBlock)]


def test_residual_branches_become_blocks_and_others_fall_back_with_the_reason(residual):
    original, result = residual
    report = result.report
    assert [d.name for d in report.converted_blocks] == ["blocks.0.adaptive", "blocks.1.adaptive"]
    assert all(d.kind == "residual" for d in report.converted_blocks)
    assert report.converted_blocks[0].ops[-1] == "blocks.0.norm_c" and "blocks.0.se" in report.converted_blocks[0].ops
    top = next(d for d in report.blocks if d.ops[0] == "conv1.0")
    assert not top.converted and "top-level forward" in top.reason
    assert {d.name for d in report.converted} == {"conv1.0", "conv2.0"}  # per-conv there
    names = {d.name for d in report.layers}  # the squeeze-excitation's convs belong to their block
    assert not any(name.startswith("blocks.") for name in names)
    # every original key survives; the recipe rebuilds the same structure
    assert set(original.state_dict()) <= set(result.model.state_dict())
    assert [(b.owner, b.kind) for b in result.recipe.blocks] == [("blocks.0", "residual"), ("blocks.1", "residual")]

    pooled = convert(PoolInBranch(), (3, 4, 16, 16), min_flops_share=0).report
    assert pooled.blocks[0].reason == "per-conv: MaxPool3d cannot be shrunk"
    assert {d.name for d in pooled.converted} == {"branch.0", "branch.2"}


def test_full_option_is_the_original_and_channel_options_shrink_everything_inside(residual):
    original, result = residual
    model = result.model
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        expected = original(x)
        with forced_policy(model, (1, 1.0)):
            assert (model(x) - expected).abs().max() <= 1e-5
    block = model.get_submodule("blocks.0.adaptive")
    k = option_index(block, 1, 0.25)
    widths = [step for step in block._plans[k] if step[0] in ("conv", "norm", "se")]
    # conv_a 8→6, BN 6, depthwise 6, BN 6, SE 6, conv_c reads 6 and writes 8, BN 8
    assert [(s[0], s[2]) for s in widths] == [("conv", 6), ("norm", 6), ("conv", 6), ("norm", 6), ("se", 6),
                                              ("conv", 8), ("norm", 8)]


def test_chain_block_computed_part_is_the_exact_slice_of_the_full_chain():
    """Invariant 2 holds for chain blocks: conv → BN → ReLU computed for frames 0, R, ... and channels < k equal
    those of the full chain's output (the rebuild happens after BN and activation)."""
    torch.manual_seed(0)
    model = convert(tiny(), SHAPE).model
    block = model.get_submodule("block2.adaptive")
    assert block.kind == "chain"
    x = torch.randn(2, 16, 8, 16, 16)
    with torch.no_grad():
        full = block.computed_part(x, 0)
        for o, option in enumerate(block.options):
            part = block.computed_part(x, o)
            torch.testing.assert_close(part, full[:, : option.channels, :: option.temporal], rtol=1e-5, atol=1e-6)
            out = block.run_option(x, o)
            assert out.shape == full.shape
            torch.testing.assert_close(out[:, : option.channels, :: option.temporal], part)


def pin_gates(layers, option: tuple[int, float]) -> None:
    """Make every gate of ``layers`` pick ``option`` whatever its input (the gates still run and decide)."""
    with torch.no_grad():
        for layer in layers:
            layer.gate.fc2.weight.zero_()
            layer.gate.fc2.bias.zero_()
            layer.gate.fc2.bias[option_index(layer, *option)] = 10.0


def _executed_macs(model: nn.Module, x: torch.Tensor) -> tuple[float, "object"]:
    """Multiply-adds of every conv and matrix product the eager inference path runs (FlopCounterMode counts
    FLOPs = 2 × MACs), with the decisions taken."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        decided = decide(model, x)
    return counter.get_total_flops() / 2, decided.decisions


def _analytic_executed(model, original, x, decisions) -> float:
    """What the decisions should cost in convs and products: the original's convs and linears, each adaptive
    layer's full conv work replaced, per video, by its chosen option's convs and φ_s, plus its gate's linears."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        original(x)
    total = counter.get_total_flops() / 2
    for _, layer in adaptive_layers(model):
        d = decisions[layer]
        single = (1, *d.input_shape[1:])
        costs = option_costs(layer, single)
        gate = layer.gate
        total -= x.shape[0] * costs[0].conv
        total += sum(costs[o].conv + costs[o].channel_rebuild for o in d.choice.tolist())
        total += x.shape[0] * (gate.fc1.in_features * gate.hidden + gate.hidden * gate.num_options)
    return total


@pytest.mark.parametrize("granularity", ["block", "conv", "stage"])
def test_executed_macs_equal_the_analytic_cost_of_the_decisions(granularity):
    """Counted, not timed: the inference path computes exactly the chosen options (never the full block cut down),
    at batch 1 for every forced option and in a mixed batch that the gates split."""
    torch.manual_seed(0)
    original = tiny_res()
    model = convert(original, SHAPE, min_flops_share=0, granularity=granularity).model.eval()
    layers = [layer for _, layer in adaptive_layers(model)]
    assert any(isinstance(layer, AdaptiveBlock) for layer in layers) == (granularity == "block")
    assert any(isinstance(layer, AdaptiveStage) for layer in layers) == (granularity == "stage")
    for option in [(1, 1.0), (1, 0.5), (1, 0.25), (2, 1.0), (2, 0.5), (2, 0.25)]:
        pin_gates(layers, option)
        x = torch.randn(1, *SHAPE)
        executed, decisions = _executed_macs(model, x)
        assert executed == pytest.approx(_analytic_executed(model, original, x, decisions), rel=0.01), option
    with torch.no_grad():
        for layer in layers:
            layer.gate.fc2.weight.normal_(0, 20.0)
            layer.gate.fc2.bias.normal_(0, 1.0)
    x = torch.randn(6, *SHAPE) * torch.linspace(0.2, 4.0, 6).view(6, 1, 1, 1, 1)
    executed, decisions = _executed_macs(model, x)
    assert any(len(set(decisions[layer].choice.tolist())) > 1 for layer in layers), "a mixed batch"
    assert executed == pytest.approx(_analytic_executed(model, original, x, decisions), rel=0.01)


def test_block_option_costs_match_fvcore_on_the_block_forced_to_each_option(residual):
    _, result = residual
    for owner_name in ("blocks.0", "blocks.1"):  # the rewritten modules holding the blocks (and their weights)
        owner = result.model.get_submodule(owner_name)
        block = owner.adaptive
        x = torch.randn(1, 8, 8, 16, 16)
        costs = option_costs(block, x.shape)
        for o in range(block.num_options):
            block.policy = o
            counted, _ = count_macs(owner, x, vared_handles=False)
            assert counted == costs[o].total, (o, counted, costs[o])
        block.policy = None
        assert gate_macs(block, x.shape) < 0.05 * costs[0].total


def test_straight_through_training_has_the_gradients_of_the_weighted_sum_of_all_options(residual):
    """A residual block's options are not slices of one computation: each runs on its own, and the gate's
    straight-through gradient (the options' outputs recomputed in backward) equals that of sum_o w_o · y_o."""
    _, result = residual
    block = result.model.get_submodule("blocks.0.adaptive")
    block.train()
    block.temperature = 2.0
    with torch.no_grad():
        block.gate.fc2.weight.normal_(0, 1.0)
    x = torch.randn(6, 8, 8, 16, 16, requires_grad=True)
    probe = torch.randn(6, 8, 8, 16, 16)
    params = [p for p in block.gate.parameters()] + [p for p in block.rebuild_frames.parameters()]
    params += [p for op in block._ops for p in op.parameters()]
    norm_state = {k: v.clone() for k, v in block.gate.norm.state_dict().items()}  # training updates its estimates
    torch.manual_seed(3)
    decided = decide(block, x)
    assert len(set(decided.decisions[block].choice.tolist())) > 1
    grads = torch.autograd.grad((decided.output * probe).sum(), params + [x], allow_unused=True)
    block.gate.norm.load_state_dict(norm_state)
    torch.manual_seed(3)
    weights = block.gate.straight_through(block.gate(x), block.temperature)
    naive = sum(weights[:, o].view(-1, 1, 1, 1, 1) * block.run_option(x, o) for o in range(block.num_options))
    expected = torch.autograd.grad((naive * probe).sum(), params + [x], allow_unused=True)
    torch.testing.assert_close(decided.output, naive, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected):
        if want is None:
            assert got is None or got.abs().sum() == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    block.eval()


def test_sliced_weights_are_made_once_and_follow_weight_updates(residual):
    _, result = residual
    block = result.model.get_submodule("blocks.1.adaptive")
    block.eval()
    x = torch.randn(1, 8, 8, 16, 16)
    o = option_index(block, 1, 0.5)
    block.run_option(x, o)
    cached = dict(block._cache)
    assert cached, "the last conv's input-channel prefix is kept"
    block.run_option(x, o)
    assert all(block._cache[key][1] is value[1] for key, value in cached.items())  # reused, not re-sliced
    conv_c = block._ops[7]
    with torch.no_grad():
        before = block.run_option(x, o)
        conv_c.weight.mul_(2.0)  # an optimiser step or a load_state_dict: a new version of the weight
        after = block.run_option(x, o)
        conv_c.weight.div_(2.0)
        block.train()
        reference = block.run_option(x, o)  # the training path slices on every call
        block.eval()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(block.run_option(x, o), reference)


def _pin(model: nn.Module, option: int | None = None, name: str | None = None) -> None:
    """Pin the gate of layer ``name`` (or of every layer) to ``option``: it still runs, and picks that option."""
    with torch.no_grad():
        for layer_name, layer in adaptive_layers(model):
            if name is None or layer_name == name:
                layer.gate.fc2.weight.zero_()
                layer.gate.fc2.bias.zero_()
                layer.gate.fc2.bias[option] = 10.0


def test_block_export_has_an_if_per_block_and_follows_pytorch_on_every_branch(residual, tmp_path):
    import onnx.numpy_helper as nh

    _, result = residual
    model = copy.deepcopy(result.model).eval()
    with torch.no_grad():  # distinct gate weights, so that the exporter keeps one initializer per gate
        for _, layer in adaptive_layers(model):
            layer.gate.fc2.weight.normal_(0, 1e-3)
            layer.gate.fc2.bias.normal_(0, 1e-3)
    export_model(model, onnx=tmp_path / "m.onnx", pt2=tmp_path / "m.pt2")
    exported = onnx.load(tmp_path / "m.onnx")
    gates = len(adaptive_layers(model))
    assert sum(node.op_type == "If" for node in exported.graph.node) == gates  # the top of each gate's tree
    name = "blocks.0.adaptive"
    block = model.get_submodule(name)
    inits = {init.name: init for init in exported.graph.initializer}
    clip = torch.randn(1, *SHAPE)
    for option in range(block.num_options):
        _pin(model, option, name)
        pinned = copy.deepcopy(exported)
        for init in pinned.graph.initializer:
            if init.name.startswith(f"{name}.layer.gate.fc2."):
                init.CopyFrom(nh.from_array(getattr(block.gate.fc2, init.name.rsplit(".", 1)[1]).detach().numpy(),
                                            init.name))
        assert f"{name}.layer.gate.fc2.bias" in inits
        session = ort_session_from(pinned)
        with torch.no_grad():
            decided = decide(model, clip)
        assert int(decided.decisions[block].choice) == option
        got = session.run(None, {session.get_inputs()[0].name: clip.numpy()})[0]
        np.testing.assert_allclose(got, decided.output.numpy(), rtol=1e-4, atol=1e-5)
    policy = static_policy(model, (2, 0.5))
    export_model(model, onnx=tmp_path / "s.onnx", policy=policy)
    clips = torch.randn(3, *SHAPE)
    with torch.no_grad(), forced_policy(model, (2, 0.5)):
        expected = model(clips)
    session = ort_session(tmp_path / "s.onnx")
    got = session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def ort_session_from(model_proto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model_proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


class _DepthwiseStem(nn.Module):
    """X3D's stem: a spatial conv on the clip, then a depthwise temporal conv, BatchNorm and ReLU (a chain block
    whose first conv is depthwise)."""

    def __init__(self):
        super().__init__()
        self.conv_t = nn.Conv3d(3, 16, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False)
        self.conv_xy = nn.Conv3d(16, 16, (5, 1, 1), padding=(2, 0, 0), groups=16, bias=False)
        self.norm = nn.BatchNorm3d(16)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.norm(self.conv_xy(self.conv_t(x))))


class _WithDepthwiseStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _DepthwiseStem()
        self.conv2 = nn.Conv3d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.conv2(self.stem(x)).mean(dim=(2, 3, 4)))


def test_chain_block_starting_with_a_depthwise_conv_shrinks_it_to_the_option():
    """A depthwise conv's first k outputs read only its first k inputs: at a channel option the chain computes k
    channels (not all of them, with k more rebuilt on top), each the exact slice, at the analytic cost."""
    torch.manual_seed(0)
    original = _WithDepthwiseStem().eval()
    with torch.no_grad():
        original.stem.norm.running_mean.normal_()
        original.stem.norm.running_var.uniform_(0.5, 2.0)
    model = convert(original, SHAPE, min_flops_share=0, only=["stem.conv_xy"]).model.eval()
    (name, block), = adaptive_layers(model)
    assert isinstance(block, AdaptiveBlock) and block.kind == "chain", name
    x = torch.randn(2, 16, 8, 16, 16)
    with torch.no_grad():
        full = block.computed_part(x, 0)
        for o, option in enumerate(block.options):
            part = block.computed_part(x, o)
            assert part.shape[1] == option.channels
            torch.testing.assert_close(part, full[:, : option.channels, :: option.temporal], rtol=1e-5, atol=1e-6)
            assert block.run_option(x, o).shape == full.shape
            block.policy = o
            counter = FlopCounterMode(display=False)
            with counter:
                block(x)
            assert counter.get_total_flops() / 2 == option_costs(block, x.shape)[o].conv + \
                option_costs(block, x.shape)[o].channel_rebuild, option
    block.policy = None
    clip = torch.randn(1, *SHAPE)
    with torch.no_grad(), forced_policy(model, (1, 1.0)):
        torch.testing.assert_close(model(clip), original(clip), rtol=0, atol=1e-5)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_inference_route_of_every_option_equals_the_reference_route(residual, layout):
    """Eager inference takes its own routes (the last BatchNorm or ReLU writing straight into φ_t's output, kept
    weight slices, in-place rebuilds); every option of every block must give what the reference route gives, in
    both memory layouts, and follow a change of the BatchNorm's statistics."""
    _, result = residual
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    chain = convert(tiny(), SHAPE, min_flops_share=0).model
    blocks = _blocks(copy.deepcopy(result.model)) + _blocks(chain)
    assert {b.kind for b in blocks} == {"residual", "chain"}
    generator = torch.Generator().manual_seed(0)
    for block in blocks:
        norms = [m for m in block._ops if isinstance(m, nn.BatchNorm3d)]
        with torch.no_grad():  # statistics and affine parameters that a fold could get wrong
            for norm in norms:
                norm.running_mean.normal_(generator=generator)
                norm.running_var.uniform_(0.5, 2.0, generator=generator)
                norm.weight.normal_(generator=generator)
                norm.bias.normal_(generator=generator)
            for rebuild in block.rebuild_frames:
                rebuild.blend.weight.normal_(generator=generator)
        x = torch.randn(2, block.in_channels, 8, 8, 8, generator=generator).contiguous(memory_format=fmt)
        for o in range(block.num_options):
            with torch.no_grad():
                fast = block.run_option(x, o, fast=True)
                reference = block.run_option(x, o, fast=False)
            torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5, msg=f"{block} option {o}")
            if layout == "channels_last":
                assert fast.is_contiguous(memory_format=fmt), (block, o)
        temporal = next(o for o, option in enumerate(block.options) if option.temporal > 1)
        with torch.no_grad():
            norms[-1].running_var.mul_(3.0)  # a new version of the statistics: the folded scale must follow
            torch.testing.assert_close(block.run_option(x, temporal, fast=True),
                                       block.run_option(x, temporal, fast=False), rtol=1e-5, atol=1e-5)
