"""The soft modulation gate: a tiny policy that picks one option per video for one dynamic conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rebuild import memory_format_of

__all__ = ["MOTION_GRID", "SoftModulationGate", "RunningNorm", "default_gate_hidden", "clip_statistics", "grid_cells",
           "motion_cell"]


def default_gate_hidden(in_channels: int) -> int:
    """Hidden width of a gate: a quarter of the input channels, at least 16, at most 128."""
    return max(16, min(128, in_channels // 4))


MOTION_GRID = 4  # motion is measured on a MOTION_GRID × MOTION_GRID grid of cells


def motion_cell(height: int, width: int) -> tuple[int, int, int]:
    """The pooling window of one grid cell: the map split into MOTION_GRID × MOTION_GRID cells (edge remainder
    dropped), one frame deep."""
    return 1, max(1, height // MOTION_GRID), max(1, width // MOTION_GRID)


def grid_cells(x: torch.Tensor) -> torch.Tensor:
    """The feature map averaged over each cell of the motion grid, frame by frame: (N, C, T, rows, columns).

    Pooling windows rather than adaptive pooling, so that the graph exports to ONNX. A channels-last map is
    pooled frame by frame as 2-D channels-last images (a view, no copy): PyTorch's 3-D pooling on that layout
    is 10-40× slower than its 2-D one, and it made the gates cost more than the convs they steer. Exports take a
    reshape and a mean instead: ONNX's ``AveragePool`` from opset 19 on runs 4× slower in ONNX Runtime than a
    ``ReduceMean`` of the same cells (9.5 against 2.0 ms on a 64×16×56×56 map), which made the gates a fifth of
    an exported model's time at its cheapest option.
    """
    window = motion_cell(x.shape[3], x.shape[4])
    if torch.compiler.is_compiling():
        rows, columns = x.shape[3] // window[1], x.shape[4] // window[2]
        cells = x[..., : rows * window[1], : columns * window[2]]
        return cells.unflatten(4, (columns, window[2])).unflatten(3, (rows, window[1])).mean(dim=(4, 6))
    if memory_format_of(x) == torch.channels_last_3d:
        n, c, t, h, w = x.shape
        cells = F.avg_pool2d(x.transpose(1, 2).reshape(n * t, c, h, w), window[1:])
        return cells.reshape(n, t, c, *cells.shape[2:]).transpose(1, 2)
    return F.avg_pool3d(x, window)


def clip_statistics(x: torch.Tensor) -> torch.Tensor:
    """Per channel: the mean activation, and the mean absolute change between consecutive frames of the feature
    map averaged over a coarse grid of cells, (N, 2C).

    The second half measures temporal redundancy directly: near zero for a still scene, large when something
    moves, which a global average alone cannot see (a still and a moving object have the same average).
    Averaging within cells first cancels per-pixel sensor noise, which changes every frame even in a still scene.
    Both halves come from the one pooled grid, so the gate reads its input once; the mean covers the grid's
    area (when the map does not divide into cells, the thin edge remainder is left out of both).
    """
    cells = grid_cells(x)
    appearance = cells.mean(dim=(2, 3, 4))
    if x.shape[2] < 2:
        return torch.cat([appearance, torch.zeros_like(appearance)], dim=1)
    motion = (cells[:, :, 1:] - cells[:, :, :-1]).abs().mean(dim=(2, 3, 4))
    return torch.cat([appearance, motion], dim=1)


class RunningNorm(nn.BatchNorm1d):
    """Standardise each statistic with running estimates only, in training too: a video's decision then depends
    on that video alone (never on the others in its batch), and training works at batch 1.

    Training updates the estimates from each batch without using the batch's own statistics: a running mean, and
    a running mean square deviation from it (defined for one video too). The initial (0, 1) counts as one
    observation, and the first updates average cumulatively, so that early steps see sensible scales. The
    forward is an inference BatchNorm, which is what fvcore counts and ONNX exports.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=False, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.batch_norm(x, self.running_mean.clone() if self.training else self.running_mean,
                           self.running_var.clone() if self.training else self.running_var, None, None, False, 0.0,
                           self.eps)
        if self.training:  # after normalising: this batch's statistics never reach its own decisions
            self._update(x.detach().float())
        return out

    @torch.no_grad()
    def _update(self, x: torch.Tensor) -> None:
        rate = max(self.momentum or 0.0, 1.0 / (int(self.num_batches_tracked) + 2))
        mean = torch.lerp(self.running_mean, x.mean(0), rate)
        spread = (x - mean).square().mean(0)
        self.running_mean.copy_(mean)
        self.running_var.lerp_(spread, rate)
        self.num_batches_tracked.add_(1)


class SoftModulationGate(nn.Module):
    """Clip statistics (mean and temporal change per channel) -> RunningNorm -> Linear(2·C_i, h) -> ReLU ->
    Linear(h, n_options) -> + logit offset.

    The norm (no affine) puts appearance and motion statistics on one scale; its running statistics are learned
    while the gates train, and only they are used, so each video is decided from itself alone. The last layer starts at zero weight with a bias that favours option 0 (the
    full conv), so a freshly converted model behaves exactly like the original until its gates are trained.
    The logit offset (a buffer, zero until :func:`~vared_convert.train.calibrate.calibrate_gates` sets it after
    training) shifts the decision thresholds toward cheaper or dearer options so that the model meets its cost
    target; it is saved and loaded with the weights.
    """

    def __init__(self, in_channels: int, num_options: int, hidden: int | None = None, full_bias: float = 1.0):
        super().__init__()
        hidden = hidden or default_gate_hidden(in_channels)
        self.in_channels = in_channels
        self.num_options = num_options
        self.hidden = hidden
        self.norm = RunningNorm(2 * in_channels)
        self.fc1 = nn.Linear(2 * in_channels, hidden)
        self.fc2 = nn.Linear(hidden, num_options)
        with torch.no_grad():
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()
            self.fc2.bias[0] = full_bias
        self.register_buffer("logit_offset", torch.zeros(num_options))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the option logits, shape (N, num_options), for a clip feature map (N, C, T, H, W)."""
        return self.fc2(F.relu(self.fc1(self.norm(clip_statistics(x))))) + self.logit_offset

    @staticmethod
    def straight_through(logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Gumbel-softmax sample: a hard one-hot forward with the soft sample's gradient."""
        return F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, hidden={self.hidden}, options={self.num_options}"
