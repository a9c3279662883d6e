"""Small architectures for tests, importable as `--arch models_for_tests:NAME` (tests put this folder on the path)."""

from __future__ import annotations

import torch
from torch import nn

from vared_convert.baseline import tiny_c3d


def tiny(num_classes: int = 4) -> nn.Module:
    return tiny_c3d(num_classes=num_classes, width=8)


class ValueBranch(nn.Module):
    """Python control flow on a tensor's value: torch.fx cannot trace this."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x):
        if x.abs().mean() > 1e6:
            return x
        return torch.relu(self.conv(x)) + x


class Untraceable(nn.Module):
    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Conv3d(3, 8, 3, padding=1)
        self.body = ValueBranch(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3, 4)))


def untraceable(num_classes: int = 3) -> nn.Module:
    return Untraceable(num_classes)


def not_a_module(num_classes: int = 3):
    return "oops"
