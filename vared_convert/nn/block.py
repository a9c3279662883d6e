"""AdaptiveBlock: one gate decides for a run of layers, and its option shrinks all the work inside the run.

A block runs the original modules of a linear chain in order (they stay where the network registered them, so
every parameter keeps its name; the block holds them by reference). Three kinds:

* ``"residual"``: the branch of a residual add, with at least two convs. Temporal option ``R``: the first conv's
  temporal stride is multiplied by ``R``, so the whole branch runs on every R-th frame, and φ_t rebuilds the
  frames once, at the branch's exit, before the add. Channel option ``r``: every conv but the last computes the
  first ``ceil(r·C)`` of its output channels; BatchNorm, depthwise convs, squeeze-excitation and activations run
  at that width; the last conv reads only those channels and writes the branch's full width, so nothing is
  rebuilt.
* ``"chain"``: in a plain chain, one conv and the per-channel ops after it (BatchNorm, activations), up to the
  next op that mixes what an option drops. The computed part is an exact slice of the chain's full output;
  φ_s and φ_t rebuild the rest at its exit, after BatchNorm and activation, which therefore shrink too.
* ``"run"``: two or more chain blocks in a row at one resolution (a plain network's stage: the first may stride,
  the others keep the frame count and the size). Options act as a residual block's do: the whole run works on every
  R-th frame and φ_t rebuilds the frames once at its exit; a channel option shrinks the widths between its convs and
  the last conv writes the run's full width. One gate, one rebuild and one decision for the whole run.

Weights are contiguous prefixes of the original ones: an output-channel prefix ``W[:k]`` is a view; an
input-channel prefix ``W[:, :k]`` is a copy, which inference makes once per weight version and reuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .dynamic_conv import ConvOption, channel_count, conv_output_frames
from .gate import SoftModulationGate, default_gate_hidden
from .layer import AdaptiveLayer
from .rebuild import ChannelRebuild, FrameRebuild, memory_format_of, tensor_stamp

__all__ = ["AdaptiveBlock", "BLOCK_KINDS", "op_kind", "block_problem", "keeps_frames", "shrinks_channels"]

BLOCK_KINDS = ("residual", "chain", "run")
Conv3dFunction = Callable[..., torch.Tensor]

_POINTWISE = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
              nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout3d)
_POINTWISE_NAMES = {"Swish"}  # pytorchvideo's Swish (x · sigmoid(x), an autograd Function)


def _is_squeeze_excitation(m: nn.Module) -> bool:
    """fvcore's (pytorchvideo's) 3-D squeeze-excitation: ``x * block(x.mean((2, 3, 4)))``, ``block`` being
    1×1×1 conv, activation, 1×1×1 conv, sigmoid."""
    block = getattr(m, "block", None)
    return (type(m).__name__ == "SqueezeExcitation" and getattr(m, "is_3d", False) and isinstance(block, nn.Sequential)
            and len(block) == 4 and isinstance(block[0], nn.Conv3d) and isinstance(block[2], nn.Conv3d)
            and isinstance(block[3], nn.Sigmoid) and block[0].groups == 1 and block[2].groups == 1)


def op_kind(m: nn.Module) -> str | None:
    """How a block runs ``m`` at a reduced width: ``"conv"``, ``"norm"``, ``"se"``, ``"pointwise"`` (any width
    and frame count), or ``None`` (it cannot)."""
    if isinstance(m, nn.Conv3d):
        return "conv"
    if isinstance(m, nn.BatchNorm3d):
        return "norm"
    if isinstance(m, _POINTWISE) or type(m).__name__ in _POINTWISE_NAMES:
        return "pointwise"
    if _is_squeeze_excitation(m):
        return "se"
    return None


def _depthwise(conv: nn.Conv3d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def block_problem(ops: Sequence[nn.Module], kind: str) -> str | None:
    """Why ``ops`` cannot run as a block of ``kind`` (``None`` when they can)."""
    if kind not in BLOCK_KINDS:
        return f"unknown block kind {kind!r}"
    for m in ops:
        if op_kind(m) is None:
            return f"{type(m).__name__} cannot be shrunk"
        if isinstance(m, nn.Conv3d) and (m.padding_mode != "zeros" or isinstance(m.padding, str)):
            return f"a conv with padding {m.padding!r} / padding_mode {m.padding_mode!r}"
    convs = [m for m in ops if isinstance(m, nn.Conv3d)]
    if not convs or not isinstance(ops[0], nn.Conv3d):
        return "a block starts with a conv"
    if kind in ("residual", "run") and len(convs) < 2:
        return f"a {kind} block needs two convs (an inner width to shrink)"
    if kind == "chain" and (len(convs) > 1 or any(op_kind(m) == "se" for m in ops)):
        return "a chain block is one conv and per-channel ops"
    return None


def keeps_frames(ops: Sequence[nn.Module]) -> bool:
    """Whether every conv after the first keeps the frame count (temporal stride 1, 'same' temporal padding), so
    that the block can run on every R-th frame and be rebuilt once at its exit."""
    convs = [m for m in ops if isinstance(m, nn.Conv3d)]
    return all(c.stride[0] == 1 and 2 * c.padding[0] == c.dilation[0] * (c.kernel_size[0] - 1) for c in convs[1:])


def shrinks_channels(ops: Sequence[nn.Module], kind: str) -> bool:
    """Whether a channel option can shrink the block: no grouped convs (depthwise ones shrink with the width),
    and, in a residual block or a run, a last conv that can read fewer channels than it writes."""
    convs = [m for m in ops if isinstance(m, nn.Conv3d)]
    if any(c.groups > 1 and not _depthwise(c) for c in convs):
        return False
    return not (kind != "chain" and _depthwise(convs[-1]))


def _relu_into(x: torch.Tensor, out: torch.Tensor) -> None:
    torch.clamp_min(x, 0, out=out)


class AdaptiveBlock(AdaptiveLayer):
    """A gate and the options of a run of the network's own modules (``ops``, held by reference)."""

    def __init__(
        self,
        ops: Sequence[nn.Module],
        kind: str,
        options: Sequence[ConvOption | Sequence[int]],
        gate_hidden: int | None = None,
        members: Sequence[str] = (),
    ):
        super().__init__()
        ops = list(ops)
        if (problem := block_problem(ops, kind)) is not None:
            raise ValueError(f"not a {kind} block: {problem}")
        self._ops = tuple(ops)  # registered by the network that owns them, not here: parameter names stay
        self.members = tuple(members)  # their names, relative to the module holding this block
        self.kind = kind
        self.derivable = kind == "chain"  # a chain's options are slices of its full output
        convs = [m for m in ops if isinstance(m, nn.Conv3d)]
        self._first, self._last = convs[0], convs[-1]
        self.in_channels, self.width = convs[0].in_channels, convs[0].out_channels
        self.out_channels = convs[-1].out_channels if kind != "chain" else self.width

        opts = [o if isinstance(o, ConvOption) else ConvOption(int(o[0]), int(o[1])) for o in options]
        opts = [ConvOption(o.temporal, o.channels or self.width) for o in opts]
        if opts[0] != ConvOption(1, self.width):
            raise ValueError(f"option 0 must be the full block (1, {self.width}), got {opts[0]}")
        if len(set(opts)) != len(opts):
            raise ValueError(f"duplicate options: {opts}")
        for o in opts:
            if o.temporal < 1 or not 0 < o.channels <= self.width:
                raise ValueError(f"invalid option {o} for a block of width {self.width}")
            if o.temporal > 1 and not keeps_frames(ops):
                raise ValueError("temporal options need every conv after the first to keep the frame count")
            if o.channels < self.width and not shrinks_channels(ops, kind):
                raise ValueError("channel options need ungrouped or depthwise convs (and a last conv that is not "
                                 "depthwise in a residual block)")
        self.options: tuple[ConvOption, ...] = tuple(opts)

        self.channel_counts = sorted({o.channels for o in opts if o.channels < self.width}, reverse=True)
        self.temporal_factors = sorted({o.temporal for o in opts if o.temporal > 1})
        counts = self.channel_counts if kind == "chain" else []  # residual blocks and runs keep their width: no φ_s
        self.rebuild_channels = nn.ModuleList(ChannelRebuild(k, self.width) for k in counts)
        self.rebuild_frames = nn.ModuleList(FrameRebuild(self.out_channels, r) for r in self.temporal_factors)
        self.gate = SoftModulationGate(self.in_channels, len(opts), gate_hidden or default_gate_hidden(self.in_channels))
        self._plans = [self._make_plan(o) for o in opts]
        self._cache: dict[tuple, tuple[tuple, torch.Tensor]] = {}

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def init_cheap_ops(self) -> None:
        """Data-free start of φ_s for a chain block: the conv with its BatchNorm folded in picks, for each missing
        channel, the computed one with the most similar filter and its least-squares scale."""
        if not self.rebuild_channels:
            return
        conv = self._first
        weight = conv.weight.detach().float()
        bias = conv.bias.detach().float() if conv.bias is not None else torch.zeros(conv.out_channels)
        norm = next((m for m in self._ops[1:] if isinstance(m, nn.BatchNorm3d)), None)
        if norm is not None and norm.running_var is not None:
            scale = torch.rsqrt(norm.running_var.float() + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight.float()
            shift = norm.bias.float() if norm.bias is not None else torch.zeros_like(scale)
            bias = (bias - norm.running_mean.float()) * scale + shift
            weight = weight * scale.view(-1, 1, 1, 1, 1)
        for rebuild in self.rebuild_channels:
            rebuild.init_from_conv(weight.to(rebuild.conv.weight.dtype), bias.to(rebuild.conv.weight.dtype),
                                   _depthwise(conv))

    def _make_plan(self, option: ConvOption) -> list[tuple]:
        """The steps of one option: per op, its kind and the widths it runs at."""
        ratio = option.channels / self.width
        convs = [m for m in self._ops if isinstance(m, nn.Conv3d)]
        plan: list[tuple] = []
        width = self.in_channels  # channels the current op receives
        for i, m in enumerate(self._ops):
            kind = op_kind(m)
            if kind == "conv":
                last = m is convs[-1] and self.kind != "chain"
                if _depthwise(m):  # its first k outputs read only its first k inputs
                    out = channel_count(ratio, m.out_channels) if m is convs[0] else width
                    width = out
                elif last:
                    out = m.out_channels
                else:
                    out = channel_count(ratio, m.out_channels)
                stride = m.stride
                if m is convs[0]:
                    stride = (m.stride[0] * option.temporal, m.stride[1], m.stride[2])
                groups = out if _depthwise(m) else m.groups
                plan.append(("conv", i, out, width, stride, groups))
                width = out
            elif kind in ("norm", "se"):
                plan.append((kind, i, width))
            else:
                plan.append(("pointwise", i))
        return plan

    def output_frames(self, frames: int) -> int:
        c = self._first
        return conv_output_frames(frames, c.kernel_size[0], c.stride[0], c.padding[0], c.dilation[0])

    # ------------------------------------------------------------------ running one option
    def _sliced(self, key: tuple, source: torch.Tensor, make: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``make(source)`` as a dense tensor, made once per version of ``source`` and kept."""
        stamp = tensor_stamp(source)
        entry = self._cache.get(key)
        if entry is not None and entry[0] == stamp:
            return entry[1]
        sliced = make(source.detach()).contiguous(memory_format=memory_format_of(source))
        self._cache[key] = (stamp, sliced)
        return sliced

    def _conv(self, x: torch.Tensor, step: tuple, conv3d: Conv3dFunction, cached: bool) -> torch.Tensor:
        _, i, out, width, stride, groups = step
        m = self._ops[i]
        if x.shape[1] > width:  # a depthwise first conv at a channel option: its first ``width`` inputs only
            x = x[:, :width]
        weight, bias = m.weight, m.bias
        if out < m.out_channels:
            bias = bias[:out] if bias is not None else None
        reads = weight.shape[1] if _depthwise(m) else width  # input channels per filter
        if reads < weight.shape[1]:  # an input-channel prefix: not contiguous, so sliced once and kept
            weight = (self._sliced(("conv", i, out, reads), m.weight, lambda w: w[:out, :reads]) if cached
                      else weight[:out, :reads])
        elif out < m.out_channels:
            weight = weight[:out]  # an output-channel prefix: a view
        return conv3d(x, weight, bias, stride, m.padding, m.dilation, groups)

    @staticmethod
    def _norm(norm: nn.BatchNorm3d, x: torch.Tensor, width: int) -> torch.Tensor:
        """``norm`` on the first ``width`` channels (its statistics and affine parameters sliced)."""
        if width == norm.num_features:
            return norm(x)
        factor = 0.0 if norm.momentum is None else norm.momentum
        if norm.training and norm.track_running_stats and norm.num_batches_tracked is not None:
            norm.num_batches_tracked.add_(1)
            factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        batch_stats = norm.training or (norm.running_mean is None and norm.running_var is None)
        track = not norm.training or norm.track_running_stats
        mean = norm.running_mean[:width] if track and norm.running_mean is not None else None
        var = norm.running_var[:width] if track and norm.running_var is not None else None
        weight = norm.weight[:width] if norm.weight is not None else None
        bias = norm.bias[:width] if norm.bias is not None else None
        return F.batch_norm(x, mean, var, weight, bias, batch_stats, factor, norm.eps)

    def _se(self, se: nn.Module, x: torch.Tensor, step: tuple, cached: bool) -> torch.Tensor:
        """Squeeze-excitation of the first ``width`` channels: the squeeze reads them, the excitation writes them."""
        _, i, width = step
        if width == se.block[0].in_channels:
            return se(x)
        reduce, act, expand, sigmoid = se.block
        squeezed = x.mean(dim=(2, 3, 4), keepdim=True)
        w1 = (self._sliced(("se", i, width), reduce.weight, lambda w: w[:, :width]) if cached
              else reduce.weight[:, :width])
        s = act(F.conv3d(squeezed, w1, reduce.bias))
        s = sigmoid(F.conv3d(s, expand.weight[:width], expand.bias[:width] if expand.bias is not None else None))
        return torch.mul(x, s)

    def computed_part(self, x: torch.Tensor, option: int, conv3d: Conv3dFunction = F.conv3d,
                      cached: bool = False, steps: int | None = None) -> torch.Tensor:
        """The block's ops run at ``option``'s widths and frames (before φ_s and φ_t); ``steps``: only the first
        ones."""
        for step in self._plans[option][:steps]:
            kind = step[0]
            if kind == "conv":
                x = self._conv(x, step, conv3d, cached)
            elif kind == "norm":
                x = self._norm(self._ops[step[1]], x, step[2])
            elif kind == "se":
                x = self._se(self._ops[step[1]], x, step, cached)
            else:
                x = self._ops[step[1]](x)
        return x

    def rebuild(self, computed: torch.Tensor, option: int, frames: int, fast: bool = False) -> torch.Tensor:
        """φ_s (chain blocks) then φ_t at the block's exit, restoring its output shape."""
        o = self.options[option]
        ci = self.channel_counts.index(o.channels) if self.kind == "chain" and o.channels < self.width else -1
        ti = self.temporal_factors.index(o.temporal) if o.temporal > 1 else -1
        if ti < 0:
            return self.rebuild_channels[ci](computed, fast) if ci >= 0 else computed
        blocks = [computed, self.rebuild_channels[ci].ghosts(computed, fast)] if ci >= 0 else [computed]
        return self.rebuild_frames[ti].expand(blocks, frames, fast)

    def run_option(self, x: torch.Tensor, option: int, conv3d: Conv3dFunction | None = None,
                   fast: bool | None = None) -> torch.Tensor:
        """Run only what ``option`` needs, then rebuild: the inference path of one decision."""
        fast = self.fast if fast is None else fast
        conv3d = conv3d or self.conv3d_function(fast)
        with torch.no_grad() if fast else contextlib.nullcontext():  # the fast routes are for inference only
            o, plan = self.options[option], self._plans[option]
            write = self._writer(plan[-1]) if fast and o.temporal > 1 and self._rebuilds_frames_only(o) else None
            if write is not None:  # the last op writes the computed frames straight into φ_t's output
                computed = self.computed_part(x, option, conv3d, cached=True, steps=len(plan) - 1)
                rebuild = self.rebuild_frames[self.temporal_factors.index(o.temporal)]
                return rebuild.expand_written(partial(write, computed), computed.shape, self.output_frames(x.shape[2]),
                                              computed.dtype, computed.device, memory_format_of(computed))
            computed = self.computed_part(x, option, conv3d, cached=fast)
            return self.rebuild(computed, option, self.output_frames(x.shape[2]), fast)

    def _rebuilds_frames_only(self, option: ConvOption) -> bool:
        return self.kind != "chain" or option.channels == self.width

    def _writer(self, step: tuple) -> Callable[[torch.Tensor, torch.Tensor], object] | None:
        """How the plan's last step can write its result into a given view (``None`` when it cannot): an inference
        BatchNorm as one multiply-add with its scale and shift folded (kept per version of its tensors), a ReLU as
        a clamp."""
        m = self._ops[step[1]]
        if step[0] == "norm" and not m.training and m.running_mean is not None and m.running_var is not None:
            return partial(self._norm_into, m, step[1], step[2])
        if step[0] == "pointwise" and type(m) is nn.ReLU:
            return _relu_into
        return None

    def _norm_into(self, norm: nn.BatchNorm3d, index: int, width: int, x: torch.Tensor, out: torch.Tensor) -> None:
        sources = (norm.running_mean, norm.running_var, norm.weight, norm.bias)
        key = ("norm", index, width, x.dtype)
        stamp = tuple(tensor_stamp(t) if t is not None else None for t in sources)
        entry = self._cache.get(key)
        if entry is None or entry[0] != stamp:
            scale = torch.rsqrt(norm.running_var[:width].detach() + norm.eps)
            if norm.weight is not None:
                scale = scale * norm.weight[:width].detach()
            shift = -norm.running_mean[:width].detach() * scale
            if norm.bias is not None:
                shift = shift + norm.bias[:width].detach()
            entry = (stamp, (scale.to(x.dtype).view(1, -1, 1, 1, 1), shift.to(x.dtype).view(1, -1, 1, 1, 1)))
            self._cache[key] = entry
        scale, shift = entry[1]
        torch.addcmul(shift, x, scale, out=out)

    # ------------------------------------------------------------------ training (chain blocks): options from the full output
    def _full(self, x: torch.Tensor) -> torch.Tensor:
        return self.computed_part(x, 0)

    def _derive(self, full: torch.Tensor, option: int, frames: int, fast: bool = False) -> torch.Tensor:
        if option == 0:
            return full
        o = self.options[option]
        part = full[:, : o.channels, :: o.temporal] if o.temporal > 1 else full[:, : o.channels]
        return self.rebuild(part, option, frames, fast)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    def extra_repr(self) -> str:
        opts = ", ".join(f"({o.temporal},{o.channels})" for o in self.options)
        ops = " → ".join(self.members) if self.members else f"{len(self._ops)} ops"
        return f"{self.kind}: {ops}; {self.in_channels}→{self.out_channels}, width {self.width}, options=[{opts}]"
