"""The cheap operations that rebuild what a dynamic conv did not compute.

* :class:`ChannelRebuild` (φ_s): GhostNet-style. Each missing output channel is a depthwise 1x3x3 conv of one
  computed channel. The computed channels pass through untouched.
* :class:`FrameRebuild` (φ_t): the conv ran with its temporal stride multiplied by ``R``, so it produced frames
  ``0, R, 2R, ...`` of the full output. The ``R - 1`` frames between two computed frames are a learnable
  per-channel two-tap blend of their neighbours, initialised to linear interpolation and clamped at the end.
  The computed frames pass through untouched.

Both are plain convolutions, so fvcore counts them, ONNX exports them and every backend runs them fast.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ChannelRebuild", "FrameRebuild", "ghost_sources"]


def ghost_sources(weight: torch.Tensor, computed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each channel ``j >= computed`` pick the computed channel whose filter is most like ``W[j]``.

    Returns ``(sources, scales)``: the index of the chosen channel and the least-squares scale
    ``<W_j, W_s> / <W_s, W_s>``, a data-free first guess that training refines.
    """
    flat = weight.detach().flatten(1).float()
    kept, missing = flat[:computed], flat[computed:]
    dots = missing @ kept.T  # (C - k, k)
    norms = kept.norm(dim=1).clamp_min(1e-12)
    cosine = dots / (norms[None, :] * missing.norm(dim=1).clamp_min(1e-12)[:, None])
    sources = cosine.abs().argmax(dim=1)
    scales = dots.gather(1, sources[:, None]).squeeze(1) / norms[sources].square()
    return sources, scales


class ChannelRebuild(nn.Module):
    """φ_s: make ``total - computed`` channels from ``computed`` ones with a depthwise 1x3x3 conv."""

    def __init__(self, computed: int, total: int, kernel: int = 3):
        super().__init__()
        if not 0 < computed < total:
            raise ValueError(f"need 0 < computed < total, got {computed} and {total}")
        self.computed, self.total = computed, total
        missing = total - computed
        self.register_buffer("source", torch.arange(missing) % computed)
        self.conv = nn.Conv3d(
            missing, missing, (1, kernel, kernel), padding=(0, kernel // 2, kernel // 2), groups=missing
        )
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()

    @torch.no_grad()
    def init_from_conv(self, weight: torch.Tensor, bias: torch.Tensor | None, depthwise: bool) -> None:
        """Data-free start: copy a scaled, similar computed channel into each missing one.

        For a depthwise conv the channels see different inputs, so the missing ones start at their bias.
        """
        k, kc = self.computed, self.conv.weight.shape[-1] // 2
        if depthwise:
            sources = torch.arange(self.total - k, device=weight.device) % k
            scales = torch.zeros(self.total - k, device=weight.device)
        else:
            sources, scales = ghost_sources(weight, k)
        self.source.copy_(sources)
        self.conv.weight.zero_()
        self.conv.weight[:, 0, 0, kc, kc] = scales.to(self.conv.weight.dtype)
        if bias is not None:
            self.conv.bias.copy_(bias[k:] - scales * bias[:k][sources])

    def forward(self, computed: torch.Tensor) -> torch.Tensor:
        ghosts = self.conv(computed.index_select(1, self.source))
        return torch.cat([computed, ghosts], dim=1)

    def extra_repr(self) -> str:
        return f"computed={self.computed}, total={self.total}"


class FrameRebuild(nn.Module):
    """φ_t: rebuild ``R - 1`` frames after each computed frame from it and the next one (the last is clamped)."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        if factor < 2:
            raise ValueError(f"temporal factor must be >= 2, got {factor}")
        self.channels, self.factor = channels, factor
        phases = factor - 1
        self.blend = nn.Conv3d(channels, channels * phases, (2, 1, 1), groups=channels, bias=False)
        with torch.no_grad():
            for p in range(1, factor):
                self.blend.weight[p - 1 :: phases, 0, :, 0, 0] = torch.tensor([1 - p / factor, p / factor])

    def forward(self, computed: torch.Tensor, frames: int) -> torch.Tensor:
        """``computed``: (N, C, n, H, W) holding frames 0, R, 2R, ...; returns (N, C, frames, H, W)."""
        n, c, t, h, w = computed.shape
        padded = torch.cat([computed, computed[:, :, -1:]], dim=2)
        between = self.blend(padded).view(n, c, self.factor - 1, t, h, w).transpose(2, 3)
        full = torch.cat([computed.unsqueeze(3), between], dim=3).view(n, c, t * self.factor, h, w)
        return full if frames == t * self.factor else full[:, :, :frames]

    def extra_repr(self) -> str:
        return f"channels={self.channels}, factor={self.factor}"
