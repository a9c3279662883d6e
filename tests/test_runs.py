"""Runs (``granularity="stage"`` on a plain network): chain blocks in a row at one resolution under one gate. What is
found, the full option = the original, the whole run on every R-th frame with one rebuild, executed work equal to
the analytic cost, the model's own forward rewritten (keys kept, checkpoint, export)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from test_blocks import _analytic_executed, _executed_macs, pin_gates
from test_export import ort_session
from vared_convert.arch import ArchSpec, build_model
from vared_convert.checkpoint import load_model, save_model
from vared_convert.convert import convert
from vared_convert.export import export_model, static_policy
from vared_convert.flops import count_macs, option_costs
from vared_convert.nn import AdaptiveBlock, adaptive_layers, decide, forced_policy, option_index

SHAPE = (3, 8, 32, 32)
RUN_OPS = ["block2.0", "block2.1", "block2.2", "block3.0", "block3.1", "block3.2"]


@pytest.fixture(scope="module")
def demo_runs():
    """demo_c3d at stage granularity: block2 (stride 1,2,2) and block3 (stride 1) are one run; block1 (before
    block2's spatial stride) stays a chain block; the stem is static. Only the top-level forward connects them."""
    torch.manual_seed(0)
    spec = ArchSpec("vared:demo_c3d", num_classes=5)
    original = build_model(spec).eval()
    return original, convert(original, SHAPE, arch=spec, granularity="stage", min_flops_share=0)


def test_chain_blocks_at_one_resolution_are_one_run_and_its_full_option_is_the_original(demo_runs):
    original, result = demo_runs
    blocks = result.report.converted_blocks
    assert [(d.name, d.kind, d.owner) for d in blocks] == [("adaptive", "chain", ""), ("adaptive_1", "run", "")]
    run = result.model.get_submodule("adaptive_1")
    assert isinstance(run, AdaptiveBlock) and run.kind == "run" and blocks[1].ops == RUN_OPS
    assert list(run.members) == RUN_OPS and (run.in_channels, run.width, run.out_channels) == (32, 64, 80)
    assert [o.as_list() for o in run.options] == [[1, 64], [1, 32], [1, 16], [2, 64], [2, 32], [2, 16]]
    # the model's own forward is rewritten: a new module, the original untouched, every original key kept, and
    # what the run adds is its gate and its frame rebuild (no channel rebuild: its last conv writes its full width)
    assert result.model is not original and type(original).__name__ == "TinyC3D"
    keys, original_keys = set(result.model.state_dict()), set(original.state_dict())
    assert original_keys <= keys
    added = {k.split(".")[1] for k in keys - original_keys if k.startswith("adaptive_1.")}
    assert added == {"gate", "rebuild_frames", "_first", "_last"}
    assert len(adaptive_layers(result.model)) == 2
    x = torch.randn(2, *SHAPE)
    with torch.no_grad(), forced_policy(result.model, (1, 1.0)):
        assert (result.model(x) - original(x)).abs().max() <= 1e-5
    assert [(b.owner, b.kind) for b in result.recipe.blocks] == [("", "chain"), ("", "run")]


def test_a_run_starts_only_where_the_resolution_changes():
    """tiny_c3d: block2 strides in time and space, block3 does not: one run (block2, block3); block1 is a chain
    block of its own (block2's stride starts a new resolution)."""
    torch.manual_seed(0)
    result = convert(build_model(ArchSpec("vared:tiny_c3d")), (3, 8, 56, 56), granularity="stage",
                     min_flops_share=0)
    assert [(d.kind, d.ops[0], d.ops[-1]) for d in result.report.converted_blocks] == [
        ("chain", "block1.0", "block1.2"), ("run", "block2.0", "block3.2")]


def test_temporal_option_runs_the_whole_run_on_every_other_frame_with_one_rebuild(demo_runs):
    """At (2, full) the run computes block2 at twice its temporal stride and block3 on those frames, then rebuilds
    the frames once: the output's computed frames are exactly those of the original blocks on every other frame,
    and its channel option makes block3 read only the computed channels of block2."""
    original, result = demo_runs
    run = result.model.get_submodule("adaptive_1").eval()
    x = torch.randn(2, 32, 8, 28, 28)
    with torch.no_grad():
        subsampled = copy.deepcopy(original)
        subsampled.block2[0].stride = (2, 2, 2)
        expected = subsampled.block3(subsampled.block2(x))  # 4 frames
        half = run.run_option(x, option_index(run, 2, 1.0))
        assert half.shape == (2, 80, 8, 14, 14)
        torch.testing.assert_close(half[:, :, ::2], expected, rtol=1e-5, atol=1e-5)
        computed = run.computed_part(x, option_index(run, 2, 0.5))
    assert computed.shape == (2, 80, 4, 14, 14)
    steps = [(s[0], s[2], s[3]) for s in run._plans[option_index(run, 2, 0.5)] if s[0] == "conv"]
    assert steps == [("conv", 32, 32), ("conv", 80, 32)]  # block2 writes 32 of 64, block3 reads them, writes 80


class _Holding(nn.Module):
    """A run with the modules it runs registered (fvcore traces parameters of registered modules only; the run's
    own holder is the whole network)."""

    def __init__(self, run: AdaptiveBlock):
        super().__init__()
        self.ops, self.run = nn.ModuleList(run._ops), run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


def test_run_option_costs_match_fvcore_and_executed_macs_the_decisions(demo_runs):
    original, result = demo_runs
    model = copy.deepcopy(result.model).eval()
    run = model.get_submodule("adaptive_1")
    x = torch.randn(1, 32, 8, 28, 28)
    costs = option_costs(run, x.shape)
    for o in range(run.num_options):
        run.policy = o
        assert count_macs(_Holding(run), x, vared_handles=False)[0] == costs[o].total, o
    run.policy = None
    assert costs[option_index(run, 2, 0.5)].conv < 0.3 * costs[0].conv
    layers = [layer for _, layer in adaptive_layers(model)]
    for option in [(1, 0.5), (2, 1.0), (2, 0.25)]:
        pin_gates(layers, option)
        clip = torch.randn(1, *SHAPE)
        executed, decisions = _executed_macs(model, clip)
        assert executed == pytest.approx(_analytic_executed(model, original, clip, decisions), rel=0.01), option
    with torch.no_grad():
        for layer in layers:
            layer.gate.fc1.weight.normal_(0, 5.0)
            layer.gate.fc2.weight.normal_(0, 20.0)
            layer.gate.fc2.bias.normal_(0, 1.0)
    clips = torch.randn(6, *SHAPE) + 3 * torch.randn(6, 3, 1, 1, 1)  # videos that differ in colour
    executed, decisions = _executed_macs(model, clips)
    assert len(set(decisions[run].choice.tolist())) > 1, "a mixed batch"
    assert executed == pytest.approx(_analytic_executed(model, original, clips, decisions), rel=0.01)


def test_a_rewritten_model_reloads_from_its_checkpoint_and_exports(demo_runs, tmp_path):
    _, result = demo_runs
    model = copy.deepcopy(result.model).eval()
    with torch.no_grad():
        for _, layer in adaptive_layers(model):
            layer.gate.fc2.weight.normal_(0, 5.0)
            layer.gate.fc2.bias.normal_(0, 1.0)
    reloaded = load_model(save_model(model, tmp_path / "m.pth"))
    assert type(reloaded).__name__ == type(model).__name__ and set(reloaded.state_dict()) == set(model.state_dict())
    clips = torch.randn(4, *SHAPE)
    with torch.no_grad():
        decided = decide(reloaded, clips)
        torch.testing.assert_close(decided.output, model(clips), rtol=0, atol=0)
    export_model(reloaded, onnx=tmp_path / "s.onnx", policy=static_policy(reloaded, (2, 0.5)))
    with torch.no_grad(), forced_policy(reloaded, (2, 0.5)):
        expected = reloaded(clips)
    session = ort_session(tmp_path / "s.onnx")
    got = session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_a_run_that_cannot_save_time_leaves_its_blocks_to_the_block_rules():
    """--time-aware with a saving no option reaches: the run falls back to its blocks (with the reason), which fall
    back to the per-conv rules in turn; nothing is converted and the model still equals the original."""
    torch.manual_seed(0)
    original = build_model(ArchSpec("vared:demo_c3d")).eval()
    result = convert(original, SHAPE, granularity="stage", time_aware=True, min_time_saving=0.99)
    run = next(d for d in result.report.blocks if d.kind == "run")
    assert not run.converted and run.reason.startswith("per-block: no time to save on cpu")
    blocks = [d for d in result.report.blocks if d.kind == "chain" and d.ops[0] in ("block2.0", "block3.0")]
    assert len(blocks) == 2 and all(d.reason.startswith("per-conv: no time to save") for d in blocks)
    assert not result.report.converted_blocks
    x = torch.randn(1, *SHAPE)
    with torch.no_grad():
        assert (result.model(x) - original(x)).abs().max() <= 1e-5


def test_a_run_held_by_a_module_rewrites_that_module_only():
    """Chain blocks in a Sequential: the Sequential is the run's owner and is rewritten in place."""
    torch.manual_seed(0)

    def conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv3d(cin, cout, 3, (1, stride, stride), 1, bias=False), nn.BatchNorm3d(cout),
                             nn.ReLU())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv_block(3, 8, 2)
            self.features = nn.Sequential(conv_block(8, 16, 2), conv_block(16, 16, 1), conv_block(16, 16, 1))
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.features(self.stem(x)).mean(dim=(2, 3, 4)))

    original = Net().eval()
    result = convert(original, SHAPE, granularity="stage", min_flops_share=0)
    assert [(d.name, d.kind, len(d.ops)) for d in result.report.converted_blocks] == [("features.adaptive", "run", 9)]
    assert type(result.model) is Net
    x = torch.randn(2, *SHAPE)
    with torch.no_grad(), forced_policy(result.model, (1, 1.0)):
        assert (result.model(x) - original(x)).abs().max() <= 1e-5
