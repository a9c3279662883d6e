"""The conv kernel choice: oneDNN for every 3-D conv of a model and of its original alike, explicitly."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from vared_convert.baseline import tiny_c3d
from vared_convert.convert import convert
from vared_convert.nn import adaptive_layers, forced_policy, set_execution
from vared_convert.nn.kernels import OneDNNConv3d, conv_kernel, onednn_available, onednn_conv3d, set_conv_kernel
from vared_convert.profile import profile_model

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


class ConvOps(TorchDispatchMode):
    """Counts the 3-D convs that run: ``mkldnn_convolution`` (oneDNN) and ``convolution`` (PyTorch's choice).

    2-D convs (φ_s's depthwise rebuild) are not counted: the kernel choice is about 3-D convs."""

    def __init__(self):
        super().__init__()
        self.counts = {"mkldnn": 0, "aten": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if len(args) < 2 or not isinstance(args[1], torch.Tensor) or args[1].dim() != 5:
            pass
        elif name == "mkldnn_convolution":
            self.counts["mkldnn"] += 1
        elif name in ("convolution", "_convolution", "slow_conv3d", "slow_conv3d_forward"):
            self.counts["aten"] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kwargs", [
    dict(stride=1, padding=1), dict(stride=(2, 1, 1), padding=(1, 0, 2)), dict(stride=2, padding=0, dilation=2),
    dict(stride=1, padding=1, groups=4), dict(stride=1, padding=1, groups=16),
], ids=["plain", "strided-asymmetric", "dilated", "grouped", "depthwise"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d], ids=["ncdhw", "cl"])
def test_onednn_conv3d_equals_f_conv3d(kwargs, layout):
    torch.manual_seed(0)
    groups = kwargs.get("groups", 1)
    x = torch.randn(1, 16, 5, 9, 11).contiguous(memory_format=layout)  # N·C·T·H = 720: PyTorch's own kernel path
    w = torch.randn(16, 16 // groups, 3, 3, 3)
    b = torch.randn(16)
    expected = F.conv3d(x, w, b, **kwargs)
    with ConvOps() as ops:
        got = onednn_conv3d(x, w, b, **kwargs)
    assert ops.counts["mkldnn"] == 1
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_onednn_conv3d_leaves_string_padding_to_f_conv3d():
    x, w = torch.randn(1, 4, 3, 6, 6), torch.randn(4, 4, 3, 3, 3)
    with ConvOps() as ops:
        got = onednn_conv3d(x, w, None, 1, "same")
    assert ops.counts["mkldnn"] == 0
    torch.testing.assert_close(got, F.conv3d(x, w, None, 1, "same"))


def test_set_conv_kernel_switches_every_conv_of_a_torchvision_net_and_back():
    model = torchvision.models.video.r3d_18(num_classes=5).eval()
    keys = list(model.state_dict())
    classes = [type(m) for m in model.modules()]
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        expected = model(x)
        with conv_kernel(model, "onednn"):
            assert all(isinstance(m, OneDNNConv3d) for m in model.modules() if isinstance(m, nn.Conv3d))
            assert list(model.state_dict()) == keys
            with ConvOps() as ops:
                got = model(x)
    convs = sum(isinstance(m, nn.Conv3d) for m in model.modules())
    assert convs == 20 and ops.counts == {"mkldnn": convs, "aten": 0}  # stem, 16 in blocks, 3 downsamples
    assert [type(m) for m in model.modules()] == classes
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_training_mode_and_custom_convs_keep_pytorchs_kernel():
    class OwnForward(nn.Conv3d):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(nn.Conv3d(3, 4, 3, padding=1), OwnForward(4, 4, 1))
    set_conv_kernel(model, "onednn")
    assert type(model[0]) is not nn.Conv3d and type(model[1]) is OwnForward
    x = torch.randn(1, 3, 4, 8, 8)
    with ConvOps() as ops:
        model.train()(x)
    assert ops.counts["mkldnn"] == 0
    with ConvOps() as ops, torch.no_grad():
        model.eval()(x)
    assert ops.counts == {"mkldnn": 1, "aten": 1}


@pytest.mark.parametrize("granularity", ["block", "conv"])
def test_adaptive_inference_runs_the_chosen_kernel_and_its_full_path_equals_the_original(granularity):
    torch.manual_seed(0)
    original = tiny_c3d(num_classes=4, width=8).eval()
    adaptive = convert(copy.deepcopy(original), (3, 8, 32, 32), arch="vared:tiny_c3d",
                       granularity=granularity).model.eval()
    x = torch.randn(2, 3, 8, 32, 32)
    set_conv_kernel(original, "onednn")
    set_conv_kernel(adaptive, "onednn")
    with torch.no_grad():
        expected = original(x)
        for option in [(1, 1.0), (2, 0.5)]:
            with forced_policy(adaptive, option), ConvOps() as ops:
                got = adaptive(x)
            assert ops.counts["aten"] == 0 and ops.counts["mkldnn"] > 0
            if option == (1, 1.0):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    set_execution(adaptive, "train")  # training is never switched: PyTorch's kernel and its gradient
    with forced_policy(adaptive, (2, 0.5)), ConvOps() as ops:
        layer_ops = sum(1 for _ in adaptive_layers(adaptive))
        adaptive(x)
    assert ops.counts["aten"] >= layer_ops


def test_profile_latency_times_both_models_with_one_kernel_and_leaves_the_callers_model_alone():
    model = convert(tiny_c3d(num_classes=8).eval(), (3, 8, 32, 32), arch="vared:tiny_c3d").model.eval()
    before = [type(m) for m in model.modules()]
    report = profile_model(model, latency=True, repeats=1, warmup=0, latency_clips=1)
    assert report.latency.conv_kernel == "onednn"
    assert report.to_dict()["latency"]["conv_kernel"] == "onednn"
    assert [type(m) for m in model.modules()] == before
    assert all(layer.conv_kernel == "aten" for _, layer in adaptive_layers(model))
    aten = profile_model(model, latency=True, repeats=1, warmup=0, latency_clips=1, conv_kernel="aten")
    assert aten.latency.conv_kernel == "aten"
