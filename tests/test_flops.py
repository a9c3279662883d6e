"""Invariant 3: the analytic cost of every option equals fvcore's count of the module forced to that option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_dynamic_conv import CONV_KINDS, OPTIONS_16
from vared_convert.flops import conv_macs, count_macs, gate_macs, option_costs
from vared_convert.nn import DynamicConv3d
from vared_convert.nn.gate import clip_statistics, grid_cells, motion_cell, sample_step

EXTRA_KINDS = {
    # (2+1)D factorised pair, as in r2plus1d: a spatial conv then a temporal one
    "2+1d-spatial": nn.Conv3d(16, 24, (1, 3, 3), (1, 1, 1), (0, 1, 1), bias=False),
    "2+1d-temporal": nn.Conv3d(16, 16, (3, 1, 1), (2, 1, 1), (1, 0, 0), bias=False),
}


def _conv(kind: str) -> nn.Conv3d:
    if kind in EXTRA_KINDS:
        return EXTRA_KINDS[kind]
    kernel, stride, padding, dilation, groups = CONV_KINDS[kind]
    return nn.Conv3d(16, 16, kernel, stride, padding, dilation, groups)


@pytest.mark.parametrize("frames", [8, 5])
@pytest.mark.parametrize("kind", sorted(CONV_KINDS) + sorted(EXTRA_KINDS))
def test_analytic_option_cost_matches_fvcore(kind, frames):
    conv = _conv(kind)
    out_ch = conv.out_channels
    options = [(1, out_ch), (1, out_ch // 2), (1, out_ch // 4), (2, out_ch), (2, out_ch // 2), (4, out_ch // 4)]
    dyn = DynamicConv3d.from_conv(conv, options).eval()
    x = torch.randn(2, 16, frames, 12, 12)
    assert count_macs(conv, x, vared_handles=False)[0] == conv_macs(conv, x.shape)
    analytic = option_costs(dyn, x.shape)
    assert analytic[0].total == conv_macs(conv, x.shape)
    for index in range(len(options)):
        dyn.policy = index
        counted, _ = count_macs(dyn, x)
        assert counted == analytic[index].total, (kind, options[index])
    assert analytic[-1].total < analytic[0].total
    dyn.policy = None
    assert count_macs(dyn.gate, x)[0] == gate_macs(dyn, x.shape)
    channels_last = x.contiguous(memory_format=torch.channels_last_3d)  # the gate pools it frame by frame in 2-D
    assert count_macs(dyn.gate, channels_last)[0] == gate_macs(dyn, x.shape)


def test_costs_fall_with_each_option():
    conv = _conv("3x3x3")
    dyn = DynamicConv3d.from_conv(conv, OPTIONS_16)
    costs = [c.total for c in option_costs(dyn, (1, 16, 16, 28, 28))]
    full = costs[0]
    # main conv cost scales as r / R; the cheap ops stay a small fraction on top
    for (factor, k), cost in zip(OPTIONS_16, costs):
        assert cost >= full * k / 16 / factor
        assert cost <= full * (k / 16 / factor + 0.1)


@pytest.mark.parametrize("shape", [(2, 8, 6, 12, 12), (1, 4, 3, 7, 9), (2, 8, 1, 5, 5), (2, 8, 3, 40, 36)])
def test_gate_statistics_do_not_depend_on_the_memory_layout(shape):
    x = torch.randn(shape)
    channels_last = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(clip_statistics(channels_last), clip_statistics(x))
    step = sample_step(*shape[3:])  # 2 for the 40×36 map: every other row and column
    assert step == (2 if shape[3] == 40 else 1)
    sampled = x[..., ::step, ::step]
    expected = F.avg_pool3d(sampled, motion_cell(*sampled.shape[3:]))
    torch.testing.assert_close(grid_cells(channels_last), expected)
    # exports pool with a reshape and a mean (ONNX AveragePool is slow in ONNX Runtime): the same cells
    compiled = torch.compile(grid_cells, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected)


def test_gate_is_cheap_against_its_conv():
    conv = nn.Conv3d(64, 64, 3, padding=1)
    dyn = DynamicConv3d.from_conv(conv, [(1, 64), (1, 32), (2, 32)])
    assert gate_macs(dyn, (1, 64, 8, 28, 28)) < 0.01 * conv_macs(conv, (1, 64, 8, 28, 28))


def test_gate_cost_counts_the_sampled_pixels_it_reads():
    conv = _conv("3x3x3")
    dyn = DynamicConv3d.from_conv(conv, [(1, 16), (1, 8), (2, 8)]).eval()
    x = torch.randn(1, 16, 4, 40, 36)  # sampled every other row and column: the gate pools 20×18 pixels per frame
    for clip in (x, x.contiguous(memory_format=torch.channels_last_3d)):
        assert count_macs(dyn.gate, clip)[0] == gate_macs(dyn, x.shape)
    assert gate_macs(dyn, x.shape) == gate_macs(dyn, (1, 16, 4, 20, 18))  # what it reads of 40×36, no more
