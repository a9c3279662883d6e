"""The cheap operations that rebuild what a dynamic conv did not compute.

* :class:`ChannelRebuild` (φ_s): GhostNet-style. Each missing output channel is a depthwise 1x3x3 conv of one
  computed channel. The computed channels pass through untouched.
* :class:`FrameRebuild` (φ_t): the conv ran with its temporal stride multiplied by ``R``, so it produced frames
  ``0, R, 2R, ...`` of the full output. The ``R - 1`` frames between two computed frames are a learnable
  per-channel two-tap blend of their neighbours, initialised to linear interpolation and clamped at the end.
  The computed frames pass through untouched.

Both are plain convolutions, so fvcore counts them, ONNX exports them and every backend runs them. Eager
inference (``fast=True``, which the owning layer passes when it runs in its ``"infer"`` execution) takes faster
routes to the same values: the channel gather is a row copy in the tensor's own memory layout, and φ_t writes
every frame straight into one preallocated output with two element-wise passes per phase instead of a padded
copy, a depthwise conv and an interleaving copy. Those routes write in place, so they are for inference only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ChannelRebuild", "FrameRebuild", "gather_channels", "ghost_sources", "memory_format_of", "tensor_stamp"]


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``channels_last_3d`` for a channels-last 5-D tensor, else ``contiguous_format``."""
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def tensor_stamp(t: torch.Tensor) -> tuple:
    """What identifies a tensor's current values: its storage, its version counter (bumped by every in-place
    write), dtype and device. A value derived from it and kept (a weight slice, a folded gate) is stale once the
    stamp changes."""
    return t.data_ptr(), t._version, t.dtype, t.device


def gather_channels(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x.index_select(1, index)`` as a copy of whole rows in ``x``'s own layout (channels-last stays so)."""
    n, c = x.shape[:2]
    if memory_format_of(x) == torch.channels_last_3d:  # channels are innermost: gather along the last axis
        rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)
        picked = torch.gather(rows, 1, index.expand(rows.shape[0], -1))
        return picked.view(n, *x.shape[2:], index.numel()).permute(0, 4, 1, 2, 3)
    if x.is_contiguous():  # each channel of each video is one contiguous row
        rows = index if n == 1 else (torch.arange(n, device=x.device).unsqueeze(1) * c + index).flatten()
        return x.flatten(0, 1).index_select(0, rows).view(n, index.numel(), *x.shape[2:])
    return x.index_select(1, index)


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

    def ghosts(self, computed: torch.Tensor, fast: bool = False) -> torch.Tensor:
        """The ``total - computed`` rebuilt channels alone, in ``computed``'s memory layout (``fast``: the eager
        inference route of the gather)."""
        gathered = gather_channels(computed, self.source) if fast else computed.index_select(1, self.source)
        if not gathered.is_contiguous():
            return self.conv(gathered)
        # NCDHW: a depthwise 1xkxk conv3d is a depthwise conv2d over (N, C·T, H, W), a shape that backends run
        # several times faster (the same multiply-adds; channels-last tensors are already fast as they are).
        n, c, t, h, w = gathered.shape
        weight = self.conv.weight.flatten(1, 2).repeat_interleave(t, dim=0)
        bias = self.conv.bias.repeat_interleave(t)
        out = F.conv2d(gathered.view(n, c * t, h, w), weight, bias, padding=self.conv.padding[1:], groups=c * t)
        return out.view(n, c, t, h, w)

    def forward(self, computed: torch.Tensor, fast: bool = False) -> torch.Tensor:
        return torch.cat([computed, self.ghosts(computed, fast)], dim=1)

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

    def forward(self, computed: torch.Tensor, frames: int, fast: bool = False) -> torch.Tensor:
        """``computed``: (N, C, n, H, W) holding frames 0, R, 2R, ...; returns (N, C, frames, H, W)."""
        return self.expand([computed], frames, fast)

    def expand(self, blocks: Sequence[torch.Tensor], frames: int, fast: bool = False) -> torch.Tensor:
        """:meth:`forward` of the channel blocks ``blocks`` concatenated (with ``fast``, the eager inference
        route: each block is written straight into its place in one preallocated output)."""
        if fast:
            return self._blend_into(blocks, frames)
        computed = torch.cat(list(blocks), dim=1) if len(blocks) > 1 else blocks[0]
        n, c, t, h, w = computed.shape
        padded = torch.cat([computed, computed[:, :, -1:]], dim=2)
        between = self.blend(padded).view(n, c, self.factor - 1, t, h, w).transpose(2, 3)
        full = torch.cat([computed.unsqueeze(3), between], dim=3).view(n, c, t * self.factor, h, w)
        return full if frames == t * self.factor else full[:, :, :frames]

    def _blend_into(self, blocks: Sequence[torch.Tensor], frames: int) -> torch.Tensor:
        """The same values, written phase by phase into one output in the first block's memory layout."""
        n, _, t, h, w = blocks[0].shape
        c = sum(block.shape[1] for block in blocks)

        def copy_blocks(computed: torch.Tensor) -> None:  # phase 0: the computed frames, block by block
            start = 0
            for block in blocks:
                computed[:, start : start + block.shape[1]] = block
                start += block.shape[1]

        return self.expand_written(copy_blocks, (n, c, t, h, w), frames, blocks[0].dtype, blocks[0].device,
                                   memory_format_of(blocks[0]))

    def expand_written(self, write: Callable[[torch.Tensor], object], computed_shape: Sequence[int], frames: int,
                       dtype: torch.dtype, device: torch.device, layout: torch.memory_format) -> torch.Tensor:
        """The eager inference route with the computed frames written by ``write(view)`` straight into their places
        in the output (a block's last op writes there, instead of into a map that is then copied): ``view`` is the
        output's frames 0, R, 2R, ... (shape ``computed_shape``); the frames between are blended from them."""
        n, c, t, h, w = computed_shape
        factor = self.factor
        # the output is allocated with the layout's own strides and the phases are views of it (frames p, R + p,
        # 2R + p, ...: the frame stride times R, offset by p frames): a view made the other way round gives a batch
        # of one an odd batch stride, and kernels that read the layout from the strides (max_pool3d) then copy the
        # whole map to NCDHW
        full = torch.empty((n, c, t * factor, h, w), dtype=dtype, device=device, memory_format=layout)
        size, (s_n, s_c, s_t, s_h, s_w) = (n, c, t, h, w), full.stride()
        every = (s_n, s_c, s_t * factor, s_h, s_w)
        computed = full.as_strided(size, every)
        write(computed)
        for p, (here, after) in enumerate(self._taps(), start=1):
            phase = full.as_strided(size, every, p * s_t)
            torch.mul(computed, here, out=phase)
            phase[:, :, :-1].addcmul_(computed[:, :, 1:], after)
            phase[:, :, -1:].addcmul_(computed[:, :, -1:], after)  # clamped: the last frame is its own next
        return full if frames == t * factor else full[:, :, :frames].contiguous(memory_format=layout)

    def _taps(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per phase, the blend's weights of the computed frame before it and of the one after it, each a dense
        (1, C, 1, 1, 1) tensor, made once per version of the weight (the weight's own layout would give the
        element-wise passes a strided operand, which keeps them off their vectorised loops, 3-4× slower; views
        made on every call would cost more than the blend of a small map)."""
        weight = self.blend.weight
        stamp = tensor_stamp(weight)
        cached = self.__dict__.get("_taps_cache")
        if cached is not None and cached[0] == stamp:
            return cached[1]
        taps = weight.detach().view(self.channels, self.factor - 1, 2).permute(1, 2, 0).contiguous()
        shape = (1, self.channels, 1, 1, 1)
        per_phase = [(taps[p, 0].view(shape), taps[p, 1].view(shape)) for p in range(self.factor - 1)]
        self.__dict__["_taps_cache"] = (stamp, per_phase)
        return per_phase

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_taps_cache", None)
        return state

    def extra_repr(self) -> str:
        return f"channels={self.channels}, factor={self.factor}"
