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


class SamePadConv(nn.Module):
    """A conv with TensorFlow's "same" padding computed in forward from the input's size, as TF ports of I3D do:
    the conv reads a padded copy of its input (229 px for a 224 px clip), and the Python arithmetic on the sizes
    stops torch.fx."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(cin, cout, kernel, stride)

    def forward(self, x):
        pads: list[int] = []
        for size, k, s in zip(x.shape[2:], self.kernel, self.stride):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads = [total // 2, total - total // 2] + pads  # F.pad lists the last dimension first
        return self.conv(torch.nn.functional.pad(x, pads))


class PadsItsInput(nn.Module):
    """A stem that pads the clip itself before its conv (TF-style "same" padding), then two plain convs."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = SamePadConv(3, 8, (3, 7, 7), (1, 2, 2))
        self.body = nn.Sequential(SamePadConv(8, 16, (3, 3, 3), (1, 1, 1)), nn.ReLU(),
                                  SamePadConv(16, 16, (3, 3, 3), (1, 1, 1)), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.body(torch.relu(self.stem(x)))
        return self.head(x.mean(dim=(2, 3, 4)))


def pads_its_input(num_classes: int = 3) -> nn.Module:
    return PadsItsInput(num_classes)


class StreamConv(nn.Module):
    """A causal temporal conv that keeps the last frames of each clip on itself and prepends them to the next one,
    as streaming MoViNet's stream buffers do (a plain attribute assigned in forward)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=(0, 1, 1))
        self.stream = None

    def forward(self, x):
        past = self.stream if self.stream is not None else torch.zeros_like(x[:, :, :2])
        self.stream = x[:, :, -2:].detach()
        return torch.relu(self.conv(torch.cat([past, x], dim=2)))


class Streaming(nn.Module):
    """A stem, two stream-buffer convs and a head; ``untraceable=True`` adds a branch on a tensor's value, so that
    torch.fx fails after the stream buffers were assigned (as on MoViNet)."""

    def __init__(self, num_classes: int = 3, untraceable: bool = True):
        super().__init__()
        self.stem = nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1))
        self.stream1 = StreamConv(8)
        self.stream2 = StreamConv(8)
        self.tail = ValueBranch(8) if untraceable else nn.Identity()
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.tail(self.stream2(self.stream1(torch.relu(self.stem(x)))))
        return self.head(x.mean(dim=(2, 3, 4)))


def not_a_module(num_classes: int = 3):
    return "oops"


class Bottleneck(nn.Module):
    """X3D-style residual branch: 1×1×1 → BN → ReLU → depthwise 3×3×3 → BN → squeeze-excitation → SiLU →
    1×1×1 → BN, added to the input."""

    def __init__(self, channels: int, inner: int, se: bool = True):
        super().__init__()
        from fvcore.nn.squeeze_excitation import SqueezeExcitation

        self.conv_a = nn.Conv3d(channels, inner, 1, bias=False)
        self.norm_a = nn.BatchNorm3d(inner)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv3d(inner, inner, 3, padding=1, groups=inner, bias=False)
        self.norm_b = nn.BatchNorm3d(inner)
        self.se = SqueezeExcitation(inner, max(4, inner // 4), is_3d=True) if se else nn.Identity()
        self.act_b = nn.SiLU()
        self.conv_c = nn.Conv3d(inner, channels, 1, bias=False)
        self.norm_c = nn.BatchNorm3d(channels)

    def forward(self, x):
        y = self.act_b(self.se(self.norm_b(self.conv_b(self.act_a(self.norm_a(self.conv_a(x)))))))
        return x + self.norm_c(self.conv_c(y))


class TinyRes(nn.Module):
    """A stem, a 3×3×3 residual block (torchvision BasicBlock-like), two X3D-style bottlenecks, a head."""

    def __init__(self, num_classes: int = 4, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, width, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
                                  nn.BatchNorm3d(width), nn.ReLU())
        self.conv1 = nn.Sequential(nn.Conv3d(width, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv3d(width, width, 3, padding=1, bias=False), nn.BatchNorm3d(width))
        self.relu = nn.ReLU()
        self.blocks = nn.Sequential(Bottleneck(width, 3 * width), Bottleneck(width, 3 * width, se=False))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(x + self.conv2(self.conv1(x)))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3, 4)))


def tiny_res(num_classes: int = 4) -> nn.Module:
    model = TinyRes(num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that slicing them is tested
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return model.eval()


class PoolInBranch(nn.Module):
    """A residual branch with a max pool inside: a block cannot shrink it, so its convs fall back to per-conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(3, 16, 3, padding=1), nn.ReLU())
        self.branch = nn.Sequential(nn.Conv3d(16, 16, 3, padding=1), nn.MaxPool3d(3, 1, 1),
                                    nn.Conv3d(16, 16, 3, padding=1))
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.branch(x)
        return self.fc(x.mean(dim=(2, 3, 4)))
