"""DynamicConv3d: invariant 2 (each option's computed part is the slice of the full conv), shapes, cheap ops,
grouped inference and the training path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vared_convert.nn import ChannelRebuild, DynamicConv3d, FrameRebuild, channel_count, decide

# kernel, stride, padding, dilation, groups
CONV_KINDS = {
    "3x3x3": ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1),
    "3x3x3-strided": ((3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), 1),
    "3x1x1-temporal": ((3, 1, 1), (1, 1, 1), (1, 0, 0), (1, 1, 1), 1),
    "1x3x3-spatial": ((1, 3, 3), (1, 2, 2), (0, 1, 1), (1, 1, 1), 1),
    "1x1x1-pointwise": ((1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), 1),
    "1x1x1-strided": ((1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1), 1),
    "3x3x3-depthwise": ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 16),
    "3x3x3-dilated": ((3, 3, 3), (1, 1, 1), (2, 2, 2), (2, 2, 2), 1),
}
OPTIONS_16 = [(1, 16), (1, 8), (1, 4), (2, 16), (2, 8), (2, 4)]


def make(kind: str, bias: bool = True, options=OPTIONS_16) -> tuple[nn.Conv3d, DynamicConv3d]:
    kernel, stride, padding, dilation, groups = CONV_KINDS[kind]
    conv = nn.Conv3d(16, 16, kernel, stride, padding, dilation, groups, bias=bias)
    return conv, DynamicConv3d.from_conv(conv, options)


@pytest.mark.parametrize("frames", [8, 7])
@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
def test_computed_part_is_the_slice_of_the_full_conv(kind, frames):
    conv, dyn = make(kind)
    x = torch.randn(2, 16, frames, 10, 10)
    full = conv(x)
    for index, (factor, k) in enumerate(OPTIONS_16):
        part = dyn.computed_part(x, index)
        expected = full[:, :k, ::factor]
        assert part.shape == expected.shape
        # bit-exact for most kernels; strided 1x1x1 convs take another kernel (about 1e-6 relative)
        torch.testing.assert_close(part, expected, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
def test_every_option_restores_the_full_shape_and_keeps_computed_values(kind):
    conv, dyn = make(kind)
    x = torch.randn(2, 16, 7, 9, 9)
    full = conv(x)
    for index, (factor, k) in enumerate(OPTIONS_16):
        out = dyn.run_option(x, index)
        assert out.shape == full.shape
        torch.testing.assert_close(out[:, :k, ::factor], full[:, :k, ::factor], rtol=2e-6, atol=2e-6)


def test_full_option_is_bit_exact():
    conv, dyn = make("3x3x3")
    x = torch.randn(2, 16, 8, 10, 10)
    assert torch.equal(dyn.run_option(x, 0), conv(x))


def test_frame_rebuild_starts_as_linear_interpolation_clamped_at_the_end():
    rebuild = FrameRebuild(channels=3, factor=2)
    computed = torch.randn(1, 3, 4, 2, 2)
    out = rebuild(computed, frames=7)
    assert out.shape == (1, 3, 7, 2, 2)
    torch.testing.assert_close(out[:, :, 0::2], computed)
    torch.testing.assert_close(out[:, :, 1], (computed[:, :, 0] + computed[:, :, 1]) / 2)
    torch.testing.assert_close(out[:, :, 5], (computed[:, :, 2] + computed[:, :, 3]) / 2)
    rebuild4 = FrameRebuild(channels=3, factor=4)
    out4 = rebuild4(computed, frames=16)
    torch.testing.assert_close(out4[:, :, 1], 0.75 * computed[:, :, 0] + 0.25 * computed[:, :, 1])
    torch.testing.assert_close(out4[:, :, 15], computed[:, :, 3])  # clamped: no frame after the last


def test_channel_rebuild_recovers_filters_that_are_scaled_copies():
    # A conv whose last 8 filters are scaled copies of the first 8 (plus bias shifts) loses nothing at r=0.5:
    # the data-free init finds each copy's source and scale.
    conv = nn.Conv3d(16, 16, 1, bias=True)
    with torch.no_grad():
        perm = torch.randperm(8)
        conv.weight[8:] = conv.weight[:8][perm] * torch.linspace(-2, 2, 8).view(8, 1, 1, 1, 1)
    dyn = DynamicConv3d.from_conv(conv, [(1, 16), (1, 8)])
    x = torch.randn(2, 16, 4, 6, 6)
    rebuilt = dyn.run_option(x, 1)
    torch.testing.assert_close(rebuilt, conv(x), rtol=1e-4, atol=1e-4)
    assert torch.equal(dyn.rebuild_channels[0].source, perm)


def test_channel_rebuild_rejects_bad_sizes():
    with pytest.raises(ValueError):
        ChannelRebuild(8, 8)


def test_grouped_conv_gets_no_channel_option():
    conv = nn.Conv3d(16, 32, 3, padding=1, groups=4)
    with pytest.raises(ValueError, match="channel options"):
        DynamicConv3d.from_conv(conv, [(1, 32), (1, 16)])
    DynamicConv3d.from_conv(conv, [(1, 32), (2, 32)])  # temporal only is fine


def test_option_zero_must_be_full():
    conv = nn.Conv3d(4, 8, 3, padding=1)
    with pytest.raises(ValueError, match="option 0"):
        DynamicConv3d.from_conv(conv, [(2, 8), (1, 8)])


def test_channel_count_rounds_up():
    assert channel_count(0.25, 10) == 3
    assert channel_count(0.5, 64) == 32
    assert channel_count(1.0, 7) == 7
    assert channel_count(0.01, 7) == 1


def _steer_gate(dyn: DynamicConv3d, feature_to_option: dict[int, int]) -> None:
    """Make the gate pick option o when input channel c carries a large mean."""
    with torch.no_grad():
        dyn.gate.fc1.weight.zero_()
        dyn.gate.fc1.bias.zero_()
        dyn.gate.fc2.weight.zero_()
        dyn.gate.fc2.bias.zero_()
        dyn.gate.fc2.bias[0] = 1.0  # nothing steered: the full option
        for hidden, (channel, option) in enumerate(feature_to_option.items()):
            dyn.gate.fc1.weight[hidden, channel] = 1.0
            dyn.gate.fc2.weight[option, hidden] = 10.0


def test_mixed_batch_equals_each_video_alone():
    conv, dyn = make("3x3x3")
    dyn.eval()
    _steer_gate(dyn, {0: 5, 1: 3, 2: 1})
    x = torch.randn(5, 16, 8, 10, 10) * 0.1
    for sample, channel in enumerate([0, 1, 2, 0, 3]):  # channel 3 steers nothing: option 0
        x[sample, channel] += 5.0
    with torch.no_grad():
        result = decide(dyn, x)
        batched, choices = result.output, result.decisions[dyn].choice.tolist()
        alone = torch.cat([dyn(x[i : i + 1]) for i in range(5)])
    assert choices == [5, 3, 1, 5, 0]
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    for i, option in enumerate(choices):
        torch.testing.assert_close(batched[i : i + 1], dyn.run_option(x[i : i + 1], option).detach())


def test_fresh_gate_picks_the_full_option_so_a_converted_layer_equals_the_original():
    conv, dyn = make("3x3x3")
    dyn.eval()
    x = torch.randn(3, 16, 8, 10, 10)
    with torch.no_grad():
        result = decide(dyn, x)
        assert torch.equal(result.output, conv(x))
    assert result.decisions[dyn].choice.tolist() == [0, 0, 0]


def test_training_forward_is_the_chosen_option_and_trains_the_gate():
    conv, dyn = make("3x3x3")
    dyn.train()
    dyn.temperature = 5.0
    x = torch.randn(4, 16, 8, 10, 10)
    result = decide(dyn, x)
    out = result.output
    for i, option in enumerate(result.decisions[dyn].choice.tolist()):
        torch.testing.assert_close(out[i : i + 1].detach(), dyn.run_option(x[i : i + 1], option).detach(),
                                   rtol=1e-5, atol=1e-5)
    out.square().mean().backward()
    assert dyn.gate.fc2.weight.grad.abs().sum() > 0
    assert dyn.weight.grad.abs().sum() > 0


def test_random_policy_trains_the_cheap_ops():
    conv, dyn = make("3x3x3")
    dyn.train()
    dyn.policy = "random"
    x = torch.randn(16, 16, 8, 10, 10)
    result = decide(dyn, x)
    result.output.square().mean().backward()
    assert len(set(result.decisions[dyn].choice.tolist())) > 1
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dyn.rebuild_channels.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dyn.rebuild_frames.parameters())


def test_forced_policy_ignores_the_gate():
    conv, dyn = make("3x3x3")
    dyn.eval()
    dyn.policy = 4
    x = torch.randn(2, 16, 8, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), dyn.run_option(x, 4))


def test_training_path_has_the_gradients_of_the_weighted_sum_of_all_options():
    """The cheap training path (autograd only through the chosen branch) equals sum_o w_o * y_o exactly."""
    conv, dyn = make("3x3x3-strided")
    dyn.train()
    dyn.temperature = 2.0
    with torch.no_grad():  # a gate that spreads its choices
        dyn.gate.fc2.weight.normal_(0, 1.0)
    x = torch.randn(6, 16, 7, 10, 10, requires_grad=True)
    probe = torch.randn(6, 16, 4, 5, 5)
    params = [p for p in dyn.parameters() if p.requires_grad]

    norm_state = {k: v.clone() for k, v in dyn.gate.norm.state_dict().items()}  # training updates its estimates
    torch.manual_seed(3)
    result = decide(dyn, x)
    fast = result.output
    assert len(set(result.decisions[dyn].choice.tolist())) > 1
    grads_fast = torch.autograd.grad((fast * probe).sum(), params + [x], allow_unused=True)

    dyn.gate.norm.load_state_dict(norm_state)
    torch.manual_seed(3)
    weights = dyn.gate.straight_through(dyn.gate(x), dyn.temperature)
    full = F.conv3d(x, dyn.weight, dyn.bias, dyn.stride, dyn.padding, dyn.dilation, dyn.groups)
    naive = sum(weights[:, o].view(-1, 1, 1, 1, 1) * dyn._derive(full, o, full.shape[2]) for o in range(6))
    grads_naive = torch.autograd.grad((naive * probe).sum(), params + [x], allow_unused=True)

    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads_fast, grads_naive):
        if expected is None:
            assert got is None or got.abs().sum() == 0
        else:
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
