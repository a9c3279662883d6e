"""3-D convolutions written as 2-D convolutions over frames, for runtimes whose 3-D convolution is im2col + GEMM.

ONNX Runtime's CPU ``Conv`` runs a 3-D kernel by unfolding its input (im2col: a column per output voxel and
kernel tap) and one matrix product. The unfolding costs the same whatever the number of output channels, so a
conv that computes a quarter of its filters saves far less than three quarters of its time; its 2-D convolutions
run in direct kernels whose cost follows the output channels. A ``k_t × k_h × k_w`` conv is the sum, over its
``k_t`` temporal taps, of a ``k_h × k_w`` conv of the frames each tap reads, so it lowers exactly to ``k_t`` 2-D
convolutions with the frames as the batch, plus ``k_t − 1`` additions. The multiply-adds are the same.

It pays for ungrouped convs with a temporal extent (``3×3×3``: 10–25% faster in ONNX Runtime, 28% for a quarter of
the filters); pointwise and depthwise convs are faster as they are (the two transposes cost more than they save),
so :func:`lowered_conv3d` leaves them. Only exports use it
(``vared export --conv-lowering frames``); eager PyTorch runs its own 3-D kernels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrameConv3d", "conv3d_over_frames", "lowered_conv3d", "lowering_pays"]


def lowering_pays(weight: torch.Tensor, groups: int) -> bool:
    """Whether a conv runs faster as 2-D convs over frames (in ONNX Runtime): ungrouped, temporal kernel > 1."""
    return groups == 1 and weight.shape[2] > 1


def _zero_padded(conv: nn.Conv3d) -> bool:
    """Explicit zero padding: what the lowering reproduces (it pads with zeros by frame counts)."""
    return conv.padding_mode == "zeros" and not isinstance(conv.padding, str)


def conv3d_over_frames(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] = (0, 0, 0),
    dilation: Sequence[int] = (1, 1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv3d`` (zero padding) computed as one 2-D conv per temporal tap over the frames that tap reads.

    A tap whose frames run past the clip's ends (temporal padding) is computed for the output frames it reaches
    only and its output padded with zeros: padding the output, whose channels an option slices, rather than the
    input, which every option reads whole.
    """
    n, c, t, h, w = x.shape
    kt, st, pt, dt = weight.shape[2], stride[0], padding[0], dilation[0]
    frames_out = (t + 2 * pt - dt * (kt - 1) - 1) // st + 1
    by_frame = x.transpose(1, 2)  # (N, T, C, H, W): a tap's frames are then a slice of the batch
    out, bias_added = None, bias is None
    for tap in range(kt):
        offset = tap * dt - pt  # output frame j of this tap reads input frame j·stride + offset
        first = max(0, -(offset // st))  # the first output frame whose input frame exists
        last = min(frames_out - 1, (t - 1 - offset) // st)  # the last one
        if last < first:
            continue  # this tap reads padding only
        count, start = last - first + 1, first * st + offset
        frames = by_frame[:, start : start + st * (count - 1) + 1 : st].reshape(n * count, c, h, w)
        whole = count == frames_out
        y = F.conv2d(frames, weight[:, :, tap], bias if whole and not bias_added else None, stride[1:], padding[1:],
                     dilation[1:], groups)
        bias_added |= whole
        y = y.reshape(n, count, *y.shape[1:])
        if not whole:
            y = F.pad(y, (0, 0, 0, 0, 0, 0, first, frames_out - 1 - last))
        out = y if out is None else out + y
    if not bias_added:
        out = out + bias.view(1, 1, -1, 1, 1)
    return out.transpose(1, 2)


def lowered_conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: Sequence[int] = (1, 1, 1),
    padding: Sequence[int] = (0, 0, 0),
    dilation: Sequence[int] = (1, 1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv3d``, computed over frames where :func:`lowering_pays`."""
    if lowering_pays(weight, groups):
        return conv3d_over_frames(x, weight, bias, stride, padding, dilation, groups)
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


class FrameConv3d(nn.Module):
    """A :class:`torch.nn.Conv3d` (its own parameters, shared) run as 2-D convolutions over frames."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        if not _zero_padded(conv):
            raise ValueError("only explicit zero padding lowers to frame convolutions")
        self.conv = conv

    @staticmethod
    def pays_for(conv: nn.Conv3d) -> bool:
        """Whether ``conv`` can be lowered and runs faster so (:func:`lowering_pays`)."""
        return _zero_padded(conv) and lowering_pays(conv.weight, conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return conv3d_over_frames(x, c.weight, c.bias, c.stride, c.padding, c.dilation, c.groups)
