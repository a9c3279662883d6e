"""The soft modulation gate: its eager inference route gives the reference formulation's logits and decisions,
whatever the layout, frame count or state of its weights, and follows every change of them."""

from __future__ import annotations

import copy

import pytest
import torch

from vared_convert.nn import DynamicConv3d, decide
from vared_convert.nn.gate import SoftModulationGate


def _trained_gate(channels: int, options: int = 6) -> SoftModulationGate:
    """A gate whose norm, weights and offset are all away from their initial values."""
    gate = SoftModulationGate(channels, options)
    with torch.no_grad():
        for p in gate.parameters():
            p.normal_()
        gate.norm.running_mean.normal_()
        gate.norm.running_var.uniform_(0.2, 3.0)
        gate.logit_offset.normal_()
    return gate.eval()


@pytest.mark.parametrize("shape", [(3, 16, 4, 12, 12), (1, 8, 1, 7, 9), (2, 24, 5, 56, 40)])
@pytest.mark.parametrize("layout", ["ncdhw", "channels-last"])
def test_inference_route_gives_the_reference_logits(shape, layout):
    torch.manual_seed(0)
    gate = _trained_gate(shape[1])
    x = torch.randn(shape)
    if layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        reference = gate(x)
    torch.testing.assert_close(gate.infer(x), reference, rtol=1e-5, atol=1e-5)


def test_inference_route_follows_every_change_of_the_gate():
    torch.manual_seed(0)
    gate = _trained_gate(16)
    x = torch.randn(2, 16, 4, 12, 12)
    gate.infer(x)  # fold once
    changes = [
        lambda g: g.fc1.weight.mul_(2),
        lambda g: g.fc1.bias.add_(1),
        lambda g: g.fc2.weight.mul_(-1),
        lambda g: g.fc2.bias.add_(3),
        lambda g: g.norm.running_mean.add_(0.5),
        lambda g: g.norm.running_var.mul_(2),
        lambda g: g.logit_offset.sub_(2),
        lambda g: g.load_state_dict(_trained_gate(16).state_dict()),
    ]
    for change in changes:
        with torch.no_grad():
            before = gate.infer(x)
            change(gate)
            after, reference = gate.infer(x), gate(x)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, reference, rtol=1e-5, atol=1e-5)
    for other in (torch.randn(2, 16, 2, 12, 12), torch.randn(2, 16, 4, 20, 20), x):  # other grids: other averages
        with torch.no_grad():
            torch.testing.assert_close(gate.infer(other), gate(other), rtol=1e-5, atol=1e-5)


def test_a_copied_layer_decides_like_the_original():
    torch.manual_seed(0)
    layer = DynamicConv3d.from_conv(torch.nn.Conv3d(16, 16, 3, padding=1), [(1, 16), (1, 8), (2, 8)])
    layer.gate = _trained_gate(16, 3)
    layer.eval()
    x = torch.randn(6, 16, 4, 12, 12)
    decided = decide(layer, x)
    copied = copy.deepcopy(layer)
    with torch.no_grad():
        copied.gate.fc2.bias.add_(torch.tensor([0.0, 0.0, 100.0]))  # the copy's own weights, not the cache of the first
    assert torch.equal(decide(layer, x).decisions[layer].choice, decided.decisions[layer].choice)
    assert decide(copied, x).decisions[copied].choice.eq(2).all()
    torch.testing.assert_close(decided.decisions[layer].choice, layer.gate(x).argmax(1))
