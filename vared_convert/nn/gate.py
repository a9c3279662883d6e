"""The soft modulation gate: a tiny policy that picks one option per video for one dynamic conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SoftModulationGate", "default_gate_hidden"]


def default_gate_hidden(in_channels: int) -> int:
    """Hidden width of a gate: a quarter of the input channels, at least 16, at most 128."""
    return max(16, min(128, in_channels // 4))


class SoftModulationGate(nn.Module):
    """Global average pool -> Linear(C_i, h) -> ReLU -> Linear(h, n_options).

    The last layer starts at zero weight with a bias that favours option 0 (the full conv), so a freshly
    converted model behaves exactly like the original until its gates are trained.
    """

    def __init__(self, in_channels: int, num_options: int, hidden: int | None = None, full_bias: float = 1.0):
        super().__init__()
        hidden = hidden or default_gate_hidden(in_channels)
        self.in_channels = in_channels
        self.num_options = num_options
        self.hidden = hidden
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, num_options)
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()
            self.fc2.bias[0] = full_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the option logits, shape (N, num_options), for a clip feature map (N, C, T, H, W)."""
        pooled = x.mean(dim=(2, 3, 4))
        return self.fc2(F.relu(self.fc1(pooled)))

    @staticmethod
    def straight_through(logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Gumbel-softmax sample: a hard one-hot forward with the soft sample's gradient."""
        return F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, hidden={self.hidden}, options={self.num_options}"
