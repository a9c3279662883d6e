"""The frame lowering of 3-D convs: exact against F.conv3d for any stride, padding, dilation and groups, and an
exported model that uses it follows PyTorch on every branch, with no 3-D kernel left where the lowering pays."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from test_export import SHAPE, adaptive_two_conv, assert_onnx_follows_every_branch, ort_session
from vared_convert.errors import VaredError
from vared_convert.export import export_model, lower_conv3d, static_policy
from vared_convert.nn import forced_policy
from vared_convert.nn.frame_conv import FrameConv3d, conv3d_over_frames, lowered_conv3d, lowering_pays


@pytest.mark.parametrize("kernel_t,stride_t,pad_t,dilation_t,groups",
                         list(itertools.product([1, 2, 3], [1, 2], [0, 1, 2], [1, 2], [1, 4])))
def test_over_frames_equals_conv3d(kernel_t, stride_t, pad_t, dilation_t, groups):
    generator = torch.Generator().manual_seed(kernel_t * 100 + stride_t * 10 + pad_t)
    x = torch.randn(2, 8, 9, 10, 11, generator=generator)
    weight = torch.randn(12, 8 // groups, kernel_t, 3, 3, generator=generator)
    bias = torch.randn(12, generator=generator)
    args = ((stride_t, 2, 1), (pad_t, 1, 0), (dilation_t, 1, 2), groups)
    if 9 + 2 * pad_t < dilation_t * (kernel_t - 1) + 1:
        pytest.skip("kernel longer than the padded clip")
    expected = F.conv3d(x, weight, bias, *args)
    got = conv3d_over_frames(x, weight, bias, *args)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_lowering_is_applied_only_where_it_pays():
    assert lowering_pays(torch.empty(8, 8, 3, 3, 3), groups=1)
    assert not lowering_pays(torch.empty(8, 8, 1, 1, 1), groups=1)  # pointwise: transposes cost more
    assert not lowering_pays(torch.empty(8, 1, 3, 3, 3), groups=8)  # depthwise: ORT's own kernel is faster
    x, pointwise = torch.randn(1, 8, 4, 5, 5), torch.randn(6, 8, 1, 1, 1)
    assert torch.equal(lowered_conv3d(x, pointwise), F.conv3d(x, pointwise))

    net = nn.Sequential(nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 8, 1), nn.Conv3d(8, 8, 3, groups=8))
    lowered = lower_conv3d(net)
    assert [type(m).__name__ for m in lowered] == ["FrameConv3d", "ReLU", "Conv3d", "Conv3d"]
    assert isinstance(net[0], nn.Conv3d)  # the original is left alone
    x = torch.randn(2, 3, 6, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(lowered(x), net(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="zero padding"):
        FrameConv3d(nn.Conv3d(3, 8, 3, padding=1, padding_mode="replicate"))


def _ungrouped_3d_convs(path) -> int:
    """How many ungrouped Conv nodes with a 3-D kernel the ONNX file holds, If branches included."""
    count = 0

    def visit(graph):
        nonlocal count
        for node in graph.node:
            attributes = {a.name: a for a in node.attribute}
            if node.op_type == "Conv" and len(attributes["kernel_shape"].ints) == 3:
                count += ("group" not in attributes) or attributes["group"].i == 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    visit(attribute.g)

    visit(onnx.load(path).graph)
    return count


def test_lowered_dynamic_export_follows_pytorch_on_every_branch(tmp_path):
    model = adaptive_two_conv()
    results = export_model(model, onnx=tmp_path / "m.onnx", lowering="frames")
    assert results[0].lowering == "frames" and results[0].max_abs_error <= 1e-4
    # every option of both 3×3×3 convs runs as 2-D convs (only the depthwise φ_t blend stays 3-D)
    assert _ungrouped_3d_convs(tmp_path / "m.onnx") == 0
    export_model(model, onnx=tmp_path / "plain.onnx", verify=False)
    assert _ungrouped_3d_convs(tmp_path / "plain.onnx") == 2 * 6
    assert_onnx_follows_every_branch(model, tmp_path / "m.onnx", [None, 0, 1, 2, 3])


def test_lowered_static_export_serves_batches(tmp_path):
    model = adaptive_two_conv()
    policy = static_policy(model, (1, 0.25))
    export_model(model, onnx=tmp_path / "s.onnx", policy=policy, lowering="frames")
    assert _ungrouped_3d_convs(tmp_path / "s.onnx") == 0
    session = ort_session(tmp_path / "s.onnx")
    clips = torch.randn(3, *SHAPE)
    with torch.no_grad(), forced_policy(model, (1, 0.25)):
        expected = model.eval()(clips)
    got = session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_unknown_lowering_is_a_clear_error(tmp_path):
    with pytest.raises(VaredError, match="--conv-lowering must be one of none, frames"):
        export_model(adaptive_two_conv(), onnx=tmp_path / "m.onnx", lowering="im2col")
    assert not (tmp_path / "m.onnx").exists()
