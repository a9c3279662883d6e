"""From decoded uint8 frames ``(T, H, W, 3)`` to a normalised float32 clip ``(C, T, H, W)``.

Short side resized to ``short_side``, then a ``size`` x ``size`` crop (random in training, centred in
evaluation), an optional horizontal flip, and normalisation with the model family's mean and std.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from ..errors import VaredError

__all__ = ["NORMALIZATION", "ClipTransform", "default_short_side", "resize_short_side", "short_side_size"]

Stats = tuple[tuple[float, float, float], tuple[float, float, float]]

NORMALIZATION: dict[str, Stats] = {
    "kinetics": ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225)),  # pytorchvideo
    "torchvision": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),  # torchvision video models
}


def default_short_side(size: int) -> int:
    """The usual resize before cropping: 128 for a 112 crop, in proportion otherwise."""
    return round(size * 128 / 112)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` scaled so that the shorter one is ``short_side``."""
    scale = short_side / min(height, width)
    return max(short_side, round(height * scale)), max(short_side, round(width * scale))


def resize_short_side(frames: torch.Tensor, short_side: int) -> torch.Tensor:
    """Resize uint8 ``(T, H, W, C)`` frames (bilinear, antialiased) so their short side is ``short_side``."""
    height, width = short_side_size(frames.shape[1], frames.shape[2], short_side)
    if (height, width) == tuple(frames.shape[1:3]):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class ClipTransform:
    """Resize, crop, flip and normalise one clip; randomness comes from the ``rng`` given per call."""

    def __init__(
        self,
        size: int,
        short_side: int | None = None,
        *,
        train: bool,
        flip: bool | None = None,
        normalization: str | Stats = "kinetics",
    ):
        self.size = size
        self.short_side = short_side or default_short_side(size)
        if self.short_side < size:
            raise VaredError(f"short side {self.short_side} is smaller than the crop size {size}")
        self.train = train
        self.flip = train if flip is None else flip
        mean, std = (torch.tensor(v, dtype=torch.float64).view(3, 1, 1, 1) for v in _stats(normalization))
        self.scale = (1 / (255 * std)).float()  # (x / 255 - mean) / std == x * scale + shift
        self.shift = (-mean / std).float()

    def __call__(self, frames: torch.Tensor, rng: random.Random) -> torch.Tensor:
        """uint8 ``(T, H, W, 3)`` -> float32 ``(3, T, size, size)``."""
        frames = resize_short_side(frames, self.short_side)
        height, width = frames.shape[1:3]
        if self.train:
            top, left = rng.randint(0, height - self.size), rng.randint(0, width - self.size)
        else:
            top, left = (height - self.size) // 2, (width - self.size) // 2
        clip = frames[:, top : top + self.size, left : left + self.size].permute(3, 0, 1, 2)
        if self.flip and rng.random() < 0.5:
            clip = clip.flip(-1)
        return clip.contiguous().float().mul_(self.scale).add_(self.shift)  # one uint8 copy, then in place


def _stats(normalization: str | Stats) -> Stats:
    if isinstance(normalization, str):
        if normalization not in NORMALIZATION:
            raise VaredError(f"unknown normalization '{normalization}' (choose {', '.join(NORMALIZATION)})")
        return NORMALIZATION[normalization]
    return normalization
