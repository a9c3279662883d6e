"""The eager inference path: its fast cheap ops give the reference values in every layout, and a mixed batch of a
whole converted model gives each video what it gets alone."""

from __future__ import annotations

import copy
import pytest
import torch

from models_for_tests import tiny, tiny_res
from test_dynamic_conv import CONV_KINDS, OPTIONS_16, make
from vared_convert.convert import convert
from vared_convert.flops import count_macs, option_costs
from vared_convert.nn import INFER, FrameRebuild, adaptive_layers, decide, set_policy
from vared_convert.nn.kernels import set_conv_kernel
from vared_convert.nn.rebuild import memory_format_of

CHANNELS_LAST = torch.channels_last_3d


def _reference(dyn, x, option):
    """run_option with autograd on: the reference formulation of the cheap ops."""
    with torch.enable_grad():
        return dyn.run_option(x, option).detach()


@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
def test_fast_cheap_ops_equal_the_reference_formulation(kind, layout):
    conv, dyn = make(kind)
    with torch.no_grad():
        for module in [*dyn.rebuild_channels, *dyn.rebuild_frames]:
            for p in module.parameters():
                p.normal_()
    for frames in (8, 7):  # an odd frame count leaves the last rebuilt group partial
        x = torch.randn(3, 16, frames, 9, 9)
        if layout == "channels_last":
            dyn, x = dyn.to(memory_format=CHANNELS_LAST), x.contiguous(memory_format=CHANNELS_LAST)
        for option in range(len(OPTIONS_16)):
            dyn.eval()
            assert dyn.execution == INFER
            with torch.no_grad():
                fast = dyn.run_option(x, option)
            reference = _reference(dyn, x, option)
            assert fast.shape == reference.shape
            torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
            # the cheap ops keep the layout the conv gave (channels-last in, channels-last out, except where
            # PyTorch's own kernel choice returns NCDHW: a 1x1x1 conv on one thread)
            with torch.no_grad():
                computed = dyn.computed_part(x, option)
            assert memory_format_of(fast) == memory_format_of(computed), (kind, option)
            if layout == "channels_last" and torch.get_num_threads() > 1:
                assert fast.is_contiguous(memory_format=CHANNELS_LAST), (kind, option)
            elif layout == "ncdhw":
                assert fast.is_contiguous(), (kind, option)


def test_frame_rebuild_fast_path_is_exact_for_every_factor_length_and_layout():
    for factor in (2, 3, 4):
        rebuild = FrameRebuild(5, factor)
        with torch.no_grad():
            rebuild.blend.weight.normal_()
        for layout in (torch.contiguous_format, CHANNELS_LAST):
            computed = torch.randn(2, 5, 4, 3, 3).contiguous(memory_format=layout)
            for frames in range(3 * factor + 1, 4 * factor + 1):
                with torch.no_grad():
                    fast = rebuild(computed, frames, fast=True)
                    reference = rebuild(computed, frames)
                torch.testing.assert_close(fast, reference, rtol=1e-6, atol=1e-6)


def test_frame_rebuild_fast_path_follows_its_weights():
    """The fast route keeps its blend weights in a dense layout; a change of the weights must reach it."""
    rebuild = FrameRebuild(4, 2)
    computed = torch.randn(1, 4, 3, 5, 5)
    with torch.no_grad():
        before = rebuild(computed, 6, fast=True)
        rebuild.blend.weight.mul_(-2.0)
        after = rebuild(computed, 6, fast=True)
        torch.testing.assert_close(after, rebuild(computed, 6))
        assert not torch.allclose(before, after)
        rebuild.load_state_dict({"blend.weight": torch.randn_like(rebuild.blend.weight)})
        torch.testing.assert_close(rebuild(computed, 6, fast=True), rebuild(computed, 6))
        copied = copy.deepcopy(rebuild)
        copied.blend.weight.zero_()
        torch.testing.assert_close(copied(computed, 6, fast=True), copied(computed, 6))


def test_fvcore_counts_the_reference_formulation_even_without_autograd():
    conv, dyn = make("3x3x3")
    x = torch.randn(1, 16, 8, 10, 10)
    costs = option_costs(dyn, x.shape)
    for option in range(len(OPTIONS_16)):
        dyn.policy = option
        with torch.no_grad():
            assert count_macs(dyn, x)[0] == costs[option].total


@pytest.fixture(scope="module", params=["conv", "block"])
def tiny_adaptive(request):
    torch.manual_seed(0)
    result = convert(tiny(), (3, 8, 32, 32), granularity=request.param)
    with torch.no_grad():
        for _, layer in adaptive_layers(result.model):
            layer.gate.fc2.weight.normal_(0, 20.0)
            layer.gate.fc2.bias.normal_(0, 1.0)
    return result.model


@pytest.mark.parametrize("layout", ["ncdhw", "channels_last"])
def test_mixed_batch_of_a_whole_model_equals_each_video_alone(tiny_adaptive, layout):
    model = tiny_adaptive
    fmt = CHANNELS_LAST if layout == "channels_last" else torch.contiguous_format
    model.to(memory_format=fmt)
    clips = torch.randn(8, 3, 8, 32, 32) * torch.linspace(0.2, 4.0, 8).view(8, 1, 1, 1, 1)
    clips = clips.contiguous(memory_format=fmt)
    with torch.no_grad():
        result = decide(model, clips)
        batched = result.output
        choices = torch.stack(result.decisions.choices([layer for _, layer in adaptive_layers(model)]))  # (layers, videos)
        alone = torch.cat([model(clips[i : i + 1]) for i in range(len(clips))])
    assert any(len(set(row.tolist())) > 1 for row in choices), "the gates should split the batch somewhere"
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    model.to(memory_format=torch.contiguous_format)


def _read_as_channels_last(t: torch.Tensor) -> bool:
    """Whether PyTorch's kernels read ``t`` as channels-last: ATen's stride rule behind ``suggest_memory_format``
    (strides rising C, W, H, T, N; a size-1 dimension still ranked). ``is_contiguous(channels_last_3d)``
    ignores size-1 dimensions and so cannot tell; kernels such as ``max_pool3d`` that go by this rule copy a
    tensor it rejects to NCDHW and return NCDHW."""
    smallest = 0
    for dim in (1, 4, 3, 2, 0):
        if t.stride(dim) < smallest or (dim == 0 and smallest == t.stride(1)):
            return False
        smallest = t.stride(dim) * max(t.shape[dim], 1)
    return True


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN")
@pytest.mark.parametrize("granularity", ["conv", "block"])
@pytest.mark.parametrize("batch", [1, 2])
def test_channels_last_stays_channels_last_at_every_option(granularity, batch):
    """A channels-last clip keeps a channels-last layout through every layer at every option, at batch 1 too
    (where a rebuilt output once got a batch stride that made the next pool copy its whole input to NCDHW)."""
    for build in (tiny, tiny_res):
        torch.manual_seed(0)
        model = convert(build(), (3, 8, 32, 32), granularity=granularity).model.eval()
        model = set_conv_kernel(model.to(memory_format=CHANNELS_LAST), "onednn")
        layer = adaptive_layers(model)[0][1]
        for option in {(o.temporal, o.channels / layer.width) for o in layer.options}:
            set_policy(model, option)
            odd = []

            def check(module, inputs, output, name):
                if isinstance(output, torch.Tensor) and output.dim() == 5 and output.shape[1] > 1 \
                        and output.shape[2:].numel() > 1:  # a pooled (N, C, 1, 1, 1) map has no layout
                    if not _read_as_channels_last(output):
                        odd.append((name, tuple(output.shape), output.stride()))

            hooks = [m.register_forward_hook(lambda m, i, o, n=n: check(m, i, o, n)) for n, m in model.named_modules()]
            try:
                with torch.no_grad():
                    model(torch.randn(batch, 3, 8, 32, 32).contiguous(memory_format=CHANNELS_LAST))
            finally:
                for hook in hooks:
                    hook.remove()
            assert not odd, (build.__name__, option, odd[:3])
