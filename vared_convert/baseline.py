"""A small plain 3D CNN: the stand-in for "your pretrained model" in the demo, examples and tests.

Build it by name as ``--arch vared:tiny_c3d`` (a registry architecture, like ``torchvision:r3d_18``), or the demo's
larger variant as ``--arch vared:demo_c3d``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["TinyC3D", "tiny_c3d", "demo_c3d"]

Stride = tuple[int, int, int]
TINY_STRIDES: tuple[Stride, ...] = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 1, 1))
# the demo's: the two spatio-temporal blocks at every frame of the clip and 14×14 on a 56×56 clip
DEMO_STRIDES: tuple[Stride, ...] = ((1, 2, 2), (1, 1, 1), (1, 2, 2), (1, 1, 1))


class ConvBlock(nn.Sequential):
    """Conv3d (k_t×3×3) → BatchNorm → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int], temporal_kernel: int = 3):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, (temporal_kernel, 3, 3), stride, (temporal_kernel // 2, 1, 1),
                      bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
        )


class TinyC3D(nn.Module):
    """Four conv blocks, global average pool, linear classifier.

    Like SlowOnly and I3D-style networks, the first two blocks look at appearance only (1×3×3) and the last two
    model time (3×3×3): motion is first seen after frames have been processed one by one, which is what
    makes skipping frames early cheap for a still scene and costly for fast motion.
    """

    def __init__(self, num_classes: int = 8, widths: tuple[int, int, int, int] = (16, 32, 64, 64),
                 strides: Sequence[Stride] = TINY_STRIDES):
        super().__init__()
        strides = [tuple(s) for s in strides]
        if len(strides) != 4:
            raise ValueError(f"strides: one (t, h, w) per block (4), got {len(strides)}")
        self.stem = ConvBlock(3, widths[0], strides[0], temporal_kernel=1)
        self.block1 = ConvBlock(widths[0], widths[1], strides[1], temporal_kernel=1)
        self.block2 = ConvBlock(widths[1], widths[2], strides[2])
        self.block3 = ConvBlock(widths[2], widths[3], strides[3])
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_c3d(num_classes: int = 8, width: int = 16) -> TinyC3D:
    """A TinyC3D whose blocks are ``width``, ``2·width``, ``4·width`` and ``4·width`` channels wide."""
    return TinyC3D(num_classes, (width, 2 * width, 4 * width, 4 * width))


def demo_c3d(num_classes: int = 8, width: int = 16) -> TinyC3D:
    """The demo's baseline: a TinyC3D with less downsampling, so that its two spatio-temporal blocks run on every
    frame at 14×14 (on a 3×8×56×56 clip) and hold most of its work, as the later stages of real video networks do;
    blocks ``width``, ``2·width``, ``4·width`` and ``5·width`` channels wide (its last block is wider than
    :func:`tiny_c3d`'s, so that its weights tell the two apart). About 8× tiny_c3d's FLOPs (0.33 GFLOPs per clip
    at width 16)."""
    return TinyC3D(num_classes, (width, 2 * width, 4 * width, 5 * width), DEMO_STRIDES)
