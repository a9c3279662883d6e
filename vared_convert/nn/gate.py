"""The soft modulation gate: a tiny policy that picks one option per video for one dynamic conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .rebuild import memory_format_of, tensor_stamp

__all__ = ["MOTION_GRID", "SoftModulationGate", "RunningNorm", "default_gate_hidden", "clip_statistics", "grid_cells",
           "motion_cell", "sample_step", "sampled_size"]


def default_gate_hidden(in_channels: int) -> int:
    """Hidden width of a gate: a quarter of the input channels, at least 16, at most 128."""
    return max(16, min(128, in_channels // 4))


MOTION_GRID = 4  # motion is measured on a MOTION_GRID × MOTION_GRID grid of cells
CELL_SAMPLES = 4  # a cell is read on about CELL_SAMPLES × CELL_SAMPLES pixels once the map is large enough


def sample_step(height: int, width: int) -> int:
    """The gate reads every ``step``-th row and column of its input: 1 up to maps of 31 pixels, 3 at 56, 7 at 112,
    so that each grid cell keeps about CELL_SAMPLES × CELL_SAMPLES pixels and a gate's read of a large map costs
    a few percent of the map instead of all of it (a cell's mean over a regular sample of its pixels)."""
    return max(1, min(height, width) // (MOTION_GRID * CELL_SAMPLES))


def motion_cell(height: int, width: int) -> tuple[int, int, int]:
    """The pooling window of one grid cell on a ``height`` × ``width`` map already sampled by
    :func:`sample_step`: the map split into MOTION_GRID × MOTION_GRID cells (edge remainder dropped), one frame
    deep."""
    return 1, max(1, height // MOTION_GRID), max(1, width // MOTION_GRID)


def sampled_size(height: int, width: int) -> tuple[int, int]:
    """The map's size after the gate's sampling (every :func:`sample_step`-th row and column)."""
    step = sample_step(height, width)
    return -(-height // step), -(-width // step)


def grid_cells(x: torch.Tensor) -> torch.Tensor:
    """The feature map sampled every :func:`sample_step`-th row and column, then averaged over each cell of the
    motion grid, frame by frame: (N, C, T, rows, columns).

    Pooling windows rather than adaptive pooling, so that the graph exports to ONNX. A channels-last map is
    sampled and pooled frame by frame as 2-D channels-last images: PyTorch's 3-D pooling on that layout is
    10-40× slower than its 2-D one, and 2-D pooling of a strided view is itself slow, so the sample is copied
    into a small dense image first (on i3d_r50's 256×8×56×56 maps: 0.12 ms against 1.4 ms for the whole map).
    Exports take a reshape and a mean instead: ONNX's ``AveragePool`` from opset 19 on runs 4× slower in ONNX
    Runtime than a ``ReduceMean`` of the same cells (9.5 against 2.0 ms on a 64×16×56×56 map).
    """
    step = sample_step(x.shape[3], x.shape[4])
    if torch.compiler.is_compiling():
        x = x[..., ::step, ::step] if step > 1 else x
        window = motion_cell(x.shape[3], x.shape[4])
        rows, columns = x.shape[3] // window[1], x.shape[4] // window[2]
        cells = x[..., : rows * window[1], : columns * window[2]]
        return cells.unflatten(4, (columns, window[2])).unflatten(3, (rows, window[1])).mean(dim=(4, 6))
    if memory_format_of(x) == torch.channels_last_3d:
        n, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)  # a view: channels-last images, one per frame
        if step > 1:
            frames = frames[..., ::step, ::step].contiguous(memory_format=torch.channels_last)
        cells = F.avg_pool2d(frames, motion_cell(*frames.shape[2:])[1:])
        return cells.reshape(n, t, c, *cells.shape[2:]).transpose(1, 2)
    x = x[..., ::step, ::step] if step > 1 else x
    return F.avg_pool3d(x, motion_cell(x.shape[3], x.shape[4]))


def _cells_by_frame(x: torch.Tensor) -> torch.Tensor:
    """:func:`grid_cells` laid out (N, T, cells, C) for the gate's inference route, with as few ops as the layout
    allows: on a channels-last map sampled whole, the frames as channels-last images and the pooled cells back
    are strided views of the same memory (three ops)."""
    if memory_format_of(x) != torch.channels_last_3d or sample_step(x.shape[3], x.shape[4]) > 1:
        return grid_cells(x).flatten(3).permute(0, 2, 3, 1)
    n, c, t, h, w = x.shape
    pooled = F.avg_pool2d(x.as_strided((n * t, c, h, w), (h * w * c, 1, w * c, c)), motion_cell(h, w)[1:])
    rows, columns = pooled.shape[2:]
    if not pooled.is_contiguous(memory_format=torch.channels_last):
        return pooled.permute(0, 2, 3, 1).reshape(n, t, rows * columns, c)
    return pooled.as_strided((n, t, rows * columns, c), (t * rows * columns * c, rows * columns * c, c, 1))


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

    @torch.no_grad()
    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward`'s logits by the eager inference route (no autograd): the norm and the statistics'
        averaging folded into the first linear, the logit offset into the last bias (made once per version of the
        weights and per grid size), so the statistics are two sums over the pooled grid. A gate runs between two
        large layers, where each op of its own costs several times what it costs in a tight loop (caches hold the
        layers' data, not the gate's code), so the route keeps its op count low: about a dozen."""
        cells = _cells_by_frame(x)
        frames, count = cells.shape[1], cells.shape[2]
        w_appearance, w_motion, b1, w2, b2 = self._folded(frames, count)
        hidden = torch.addmm(b1, cells.sum(dim=(1, 2)), w_appearance)
        if frames > 1:
            hidden.addmm_(torch.diff(cells, dim=1).abs_().sum(dim=(1, 2)), w_motion)
        return torch.addmm(b2, hidden.relu_(), w2)

    def _folded(self, frames: int, cells: int) -> tuple[torch.Tensor, ...]:
        """``(W1ᵀ for the appearance sums, W1ᵀ for the motion sums, b1, W2ᵀ, b2)`` with the norm, the means' divisors
        and the logit offset folded in, for a grid of ``frames`` × ``cells``; kept until a source changes."""
        sources = (self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias, self.norm.running_mean,
                   self.norm.running_var, self.logit_offset)
        stamp = (frames, cells, *map(tensor_stamp, sources))
        cached = self.__dict__.get("_folded_cache")
        if cached is not None and cached[0] == stamp:
            return cached[1]
        scale = torch.rsqrt(self.norm.running_var + self.norm.eps)
        w1 = self.fc1.weight.detach() * scale
        b1 = self.fc1.bias.detach() - w1 @ self.norm.running_mean
        c = self.in_channels
        w_appearance = (w1[:, :c] / (frames * cells)).t().contiguous()
        w_motion = (w1[:, c:] / max(1, (frames - 1) * cells)).t().contiguous()
        folded = (w_appearance, w_motion, b1, self.fc2.weight.detach().t().contiguous(),
                  self.fc2.bias.detach() + self.logit_offset)
        self.__dict__["_folded_cache"] = (stamp, folded)
        return folded

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_folded_cache", None)
        return state

    @staticmethod
    def straight_through(logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Gumbel-softmax sample: a hard one-hot forward with the soft sample's gradient."""
        return F.gumbel_softmax(logits, tau=temperature, hard=True, dim=-1)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, hidden={self.hidden}, options={self.num_options}"
