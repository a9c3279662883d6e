"""DynamicConv3d: a Conv3d that decides per video how many frames and output channels to compute.

An *option* ``(R, k)`` runs the original conv with its temporal stride multiplied by ``R`` and only its first
``k`` filters (the same weights, sliced), then rebuilds the missing channels (φ_s) and frames (φ_t) with cheap
ops, so the output has exactly the original shape. Option 0 is always ``(1, C_out)``: the original conv.

How it decides is its :attr:`~vared_convert.nn.layer.AdaptiveLayer.policy` (``None``: the gate; an ``int``: that
option for every video; ``"random"``: warm-up of the cheap ops); how it runs is its explicit ``execution``
(:mod:`vared_convert.nn.layer`): in training a Gumbel straight-through sample per video, with the full conv computed
once and every option derived from it; in inference the argmax per video, computing only the chosen slice, a
mixed batch being grouped by decision.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .gate import SoftModulationGate, default_gate_hidden
from .layer import AdaptiveLayer
from .rebuild import ChannelRebuild, FrameRebuild

__all__ = ["ConvOption", "DynamicConv3d", "conv_output_frames"]

Conv3dFunction = Callable[..., torch.Tensor]  # F.conv3d's signature


@dataclass(frozen=True)
class ConvOption:
    """One way to run a dynamic conv: temporal stride factor ``temporal`` (R) and ``channels`` (k) computed."""

    temporal: int
    channels: int

    def as_list(self) -> list[int]:
        return [self.temporal, self.channels]


def conv_output_frames(frames: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a conv along one axis."""
    return (frames + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def channel_count(ratio: float, total: int) -> int:
    """Channels computed for a channel ratio ``r``: ``ceil(r * total)``, at least 1."""
    return max(1, min(total, math.ceil(ratio * total - 1e-9)))


class DynamicConv3d(AdaptiveLayer):
    """An input-dependent drop-in for :class:`torch.nn.Conv3d` (same ``weight`` and ``bias`` names)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int] = (1, 1, 1),
        padding: Sequence[int] = (0, 0, 0),
        dilation: Sequence[int] = (1, 1, 1),
        groups: int = 1,
        bias: bool = True,
        options: Sequence[ConvOption | Sequence[int]] = (ConvOption(1, 0),),
        gate_hidden: int | None = None,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        # plain ints (some builders pass numpy integers, which must not leak into saved recipes)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride)
        self.padding = tuple(int(p) for p in padding)
        self.dilation = tuple(int(d) for d in dilation)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

        opts = [o if isinstance(o, ConvOption) else ConvOption(int(o[0]), int(o[1])) for o in options]
        opts = [ConvOption(o.temporal, o.channels or out_channels) for o in opts]
        if opts[0] != ConvOption(1, out_channels):
            raise ValueError(f"option 0 must be the full conv (1, {out_channels}), got {opts[0]}")
        if len(set(opts)) != len(opts):
            raise ValueError(f"duplicate options: {opts}")
        for o in opts:
            if o.temporal < 1 or not 0 < o.channels <= out_channels:
                raise ValueError(f"invalid option {o} for a conv with {out_channels} output channels")
            if o.channels < out_channels and not (self.depthwise or groups == 1):
                raise ValueError("channel options need an ungrouped or depthwise conv")
        self.options: tuple[ConvOption, ...] = tuple(opts)

        # One φ_s per distinct channel count, one φ_t per distinct temporal factor (shared across options).
        self.channel_counts = sorted({o.channels for o in opts if o.channels < out_channels}, reverse=True)
        self.temporal_factors = sorted({o.temporal for o in opts if o.temporal > 1})
        self.rebuild_channels = nn.ModuleList(ChannelRebuild(k, out_channels) for k in self.channel_counts)
        self.rebuild_frames = nn.ModuleList(FrameRebuild(out_channels, r) for r in self.temporal_factors)
        self.gate = SoftModulationGate(in_channels, len(opts), gate_hidden or default_gate_hidden(in_channels))

        # Per option: (R, k, index of φ_s or -1, index of φ_t or -1), resolved once for a lean forward.
        self._plan = [
            (
                o.temporal,
                o.channels,
                self.channel_counts.index(o.channels) if o.channels < out_channels else -1,
                self.temporal_factors.index(o.temporal) if o.temporal > 1 else -1,
            )
            for o in opts
        ]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv3d,
        options: Sequence[ConvOption | Sequence[int]],
        gate_hidden: int | None = None,
    ) -> "DynamicConv3d":
        """Wrap ``conv``, sharing its weight and bias tensors; cheap ops start from a data-free guess."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"padding_mode={conv.padding_mode!r} is not supported")
        if isinstance(conv.padding, str):
            raise ValueError(f"padding={conv.padding!r} is not supported; use explicit padding")
        dyn = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            options,
            gate_hidden,
        ).to(device=conv.weight.device, dtype=conv.weight.dtype)
        dyn.weight = conv.weight
        dyn.bias = conv.bias
        for rebuild in dyn.rebuild_channels:
            rebuild.init_from_conv(conv.weight, conv.bias, dyn.depthwise)
        return dyn

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def width(self) -> int:
        """The channel count a channel ratio applies to: the conv's output channels."""
        return self.out_channels

    def output_frames(self, frames: int) -> int:
        return conv_output_frames(frames, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])

    # ------------------------------------------------------------------ running one option
    def computed_part(self, x: torch.Tensor, option: int, conv3d: Conv3dFunction = F.conv3d) -> torch.Tensor:
        """The conv restricted to ``option``: frames 0, R, 2R, ... and channels 0..k-1 of the full output.

        ``conv3d`` computes it (an export may pass :func:`~vared_convert.nn.frame_conv.lowered_conv3d`).
        """
        factor, k, _, _ = self._plan[option]
        weight, bias, groups = self.weight, self.bias, self.groups
        if k < self.out_channels:
            weight = weight[:k]
            bias = bias[:k] if bias is not None else None
            if self.depthwise:
                x, groups = x[:, :k], k
        stride = (self.stride[0] * factor, self.stride[1], self.stride[2])
        return conv3d(x, weight, bias, stride, self.padding, self.dilation, groups)

    def rebuild(self, computed: torch.Tensor, option: int, frames: int, fast: bool = False) -> torch.Tensor:
        """Apply φ_s then φ_t to a computed part, restoring the full output shape (``fast``: eager inference)."""
        _, _, ci, ti = self._plan[option]
        if ti < 0:
            return self.rebuild_channels[ci](computed, fast) if ci >= 0 else computed
        blocks = [computed, self.rebuild_channels[ci].ghosts(computed, fast)] if ci >= 0 else [computed]
        return self.rebuild_frames[ti].expand(blocks, frames, fast)  # φ_s's channels go straight into φ_t's output

    def run_option(self, x: torch.Tensor, option: int, conv3d: Conv3dFunction | None = None,
                   fast: bool | None = None) -> torch.Tensor:
        """Compute only what ``option`` needs, then rebuild: the inference path of one decision."""
        fast = self.fast if fast is None else fast
        conv3d = conv3d or self.conv3d_function(fast)
        with torch.no_grad() if fast else contextlib.nullcontext():  # the fast routes are for inference only
            return self.rebuild(self.computed_part(x, option, conv3d), option, self.output_frames(x.shape[2]), fast)

    # ------------------------------------------------------------------ training: every option from the full conv
    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def _slice(self, full: torch.Tensor, option: int) -> torch.Tensor:
        """Frames 0, R, 2R, ... and channels 0..k-1 of a full output: what ``option`` computes."""
        factor, k, _, _ = self._plan[option]
        return full[:, :k, ::factor] if factor > 1 else full[:, :k]

    def _derive(self, full: torch.Tensor, option: int, frames: int, fast: bool = False) -> torch.Tensor:
        """An option's output derived from the full conv's output."""
        return full if option == 0 else self.rebuild(self._slice(full, option), option, frames, fast)

    def extra_repr(self) -> str:
        opts = ", ".join(f"({o.temporal},{o.channels})" for o in self.options)
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, options=[{opts}]"
        )
