"""A small residual 3D CNN: the stand-in for "your pretrained model" in the demo, examples and tests.

Build it by name as ``--arch vared_convert.baseline:tiny_r3d`` (the same ``module.path:factory`` route as any
user architecture).
"""

from __future__ import annotations

from torch import nn

__all__ = ["TinyR3D", "tiny_r3d"]


class BasicBlock3d(nn.Module):
    """Two 3×3×3 convs with BatchNorm and a residual connection (1×1×1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != (1, 1, 1) or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm3d(out_channels)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class TinyR3D(nn.Module):
    """stem → three stages of basic blocks → global average pool → linear classifier."""

    def __init__(self, num_classes: int = 8, widths: tuple[int, int, int] = (16, 32, 64), in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], (3, 5, 5), (1, 2, 2), (1, 2, 2), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.layer1 = BasicBlock3d(widths[0], widths[0])
        self.layer2 = BasicBlock3d(widths[0], widths[1], (2, 2, 2))
        self.layer3 = BasicBlock3d(widths[1], widths[2], (1, 2, 2))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def tiny_r3d(num_classes: int = 8, width: int = 16) -> TinyR3D:
    """A TinyR3D whose stages are ``width``, ``2·width`` and ``4·width`` channels wide."""
    return TinyR3D(num_classes, (width, 2 * width, 4 * width))
