"""FLOP counting. Convention: one multiply-add = one FLOP (fvcore's, and what video papers report as FLOPs).

* :func:`count_macs` runs fvcore's ``FlopCountAnalysis`` (with handles for the ops vared's layers add, so
  nothing of ours counts as zero) and returns the total and the per-module counts.
* :func:`option_costs` and :func:`gate_macs` give an adaptive layer's cost in each option analytically, from the
  input shape alone (a dynamic conv: main conv × r/R plus φ_s and φ_t; an adaptive block: every conv,
  BatchNorm and squeeze-excitation inside it at the option's widths and frames, plus its rebuild); tests check
  every formula against fvcore on the module forced to that option.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .nn import AdaptiveBlock, AdaptiveLayer, DynamicConv3d, conv_output_frames
from .nn.stage import AdaptiveStage

__all__ = ["OptionCost", "PolicyCosts", "CostModel", "LayerCostTable", "count_macs", "conv_macs", "option_costs",
           "gate_macs", "VARED_HANDLES"]


def _mean_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::mean`` (the gate's averages): one add per input element."""
    shape = inputs[0].type().sizes()
    return math.prod(shape) if shape else 0


def _sub_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::sub`` (the gate's frame differences): one op per output element."""
    shape = outputs[0].type().sizes()
    return math.prod(shape) if shape else 0


def _avg_pool_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::avg_pool3d``/``2d`` with stride = window (the gate's grid cells): one add per pooled
    input element. Under jit tracing the window is not a constant, so it is read off the shapes."""
    in_shape, out_shape = inputs[0].type().sizes(), outputs[0].type().sizes()
    if not in_shape or not out_shape:
        return 0
    window = [i // o for i, o in zip(in_shape[2:], out_shape[2:])]
    return math.prod(out_shape) * math.prod(window)


# Ops that vared's layers introduce and fvcore does not count by default (abs is a sign flip: not counted).
VARED_HANDLES = {"aten::mean": _mean_macs, "aten::sub": _sub_macs, "aten::avg_pool3d": _avg_pool_macs,
                 "aten::avg_pool2d": _avg_pool_macs}  # 2-D: the grid of a channels-last map, frame by frame


def count_macs(model: nn.Module, inputs: torch.Tensor | tuple, vared_handles: bool = True) -> tuple[int, dict[str, int]]:
    """fvcore's count of ``model`` on ``inputs``: ``(total, {module name: MACs})``.

    With ``vared_handles=False`` this is exactly fvcore's default count (what the original model reports).
    """
    from .nn import TRACE, execution

    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    with warnings.catch_warnings(), execution(model, TRACE):
        warnings.simplefilter("ignore")  # fvcore's jit tracing warns about deprecations and tracer details
        from fvcore.nn import FlopCountAnalysis

        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        if vared_handles:
            analysis.set_op_handle(**VARED_HANDLES)
        return int(analysis.total()), {k: int(v) for k, v in analysis.by_module().items()}


def _spatial_out(shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                 dilation: Sequence[int]) -> list[int]:
    return [int(conv_output_frames(shape[i], kernel[i], stride[i], padding[i], dilation[i])) for i in range(3)]


def conv_macs(conv: nn.Conv3d | DynamicConv3d, input_shape: Sequence[int]) -> int:
    """MACs of the full (original) conv on an input of shape (N, C, T, H, W); bias not counted (as fvcore)."""
    n = int(input_shape[0])
    out = _spatial_out(input_shape[2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    return int(n * conv.out_channels * (conv.in_channels // conv.groups) * math.prod(conv.kernel_size) * math.prod(out))


@dataclass(frozen=True)
class OptionCost:
    """The MACs of one option of a dynamic conv, by part."""

    conv: int  # the sliced, strided main conv (a block: every conv inside it, squeeze-excitation's included)
    channel_rebuild: int  # φ_s
    frame_rebuild: int  # φ_t
    other: int = 0  # a block's BatchNorms (fvcore: one op per element, two with affine parameters)

    @property
    def total(self) -> int:
        return self.conv + self.channel_rebuild + self.frame_rebuild + self.other


def option_costs(layer: AdaptiveLayer, input_shape: Sequence[int]) -> list[OptionCost]:
    """Analytic cost of every option of ``layer`` (gate excluded) for an input (N, C, T, H, W)."""
    if isinstance(layer, AdaptiveBlock):
        return block_option_costs(layer, input_shape)
    if isinstance(layer, AdaptiveStage):
        return stage_option_costs(layer, input_shape)
    n = input_shape[0]
    _, h_out, w_out = _spatial_out(input_shape[2:], layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    plane = h_out * w_out
    k_volume = math.prod(layer.kernel_size)
    per_filter = layer.in_channels // layer.groups  # 1 for depthwise, sliced or not
    costs = []
    for option in layer.options:
        frames = conv_output_frames(
            input_shape[2], layer.kernel_size[0], layer.stride[0] * option.temporal, layer.padding[0], layer.dilation[0]
        )
        voxels = n * frames * plane
        missing = layer.out_channels - option.channels
        kernel_s = 0
        if missing:
            rebuild = layer.rebuild_channels[layer.channel_counts.index(option.channels)]
            kernel_s = math.prod(rebuild.conv.kernel_size)
        costs.append(
            OptionCost(
                conv=option.channels * per_filter * k_volume * voxels,
                channel_rebuild=missing * kernel_s * voxels,
                frame_rebuild=layer.out_channels * (option.temporal - 1) * 2 * voxels,
            )
        )
    return costs


def block_option_costs(block: AdaptiveBlock, input_shape: Sequence[int]) -> list[OptionCost]:
    """Analytic cost of every option of an adaptive block for an input (N, C, T, H, W): its ops at the option's
    widths and frames (what fvcore counts of them: convs, squeeze-excitation's convs and BatchNorms; its means
    and element-wise ops count nothing, as in fvcore's default), then φ_s (chain blocks) and φ_t at its exit."""
    n = int(input_shape[0])
    costs = []
    for index, option in enumerate(block.options):
        conv = other = 0
        size = [int(s) for s in input_shape[2:]]
        for step in block._plans[index]:
            kind, module = step[0], block._ops[step[1]]
            if kind == "conv":
                _, _, out, width, stride, groups = step
                size = _spatial_out(size, module.kernel_size, stride, module.padding, module.dilation)
                conv += n * out * (width // groups) * math.prod(module.kernel_size) * math.prod(size)
            elif kind == "norm":
                other += n * step[2] * math.prod(size) * (2 if module.weight is not None else 1)
            elif kind == "se":
                conv += 2 * n * step[2] * module.block[0].out_channels
        voxels = n * math.prod(size)  # the computed frames at the exit
        missing = block.width - option.channels
        channel_rebuild = 0
        if block.kind == "chain" and missing:
            rebuild = block.rebuild_channels[block.channel_counts.index(option.channels)]
            channel_rebuild = missing * math.prod(rebuild.conv.kernel_size) * voxels
        frame_rebuild = block.out_channels * (option.temporal - 1) * 2 * voxels
        costs.append(OptionCost(conv, channel_rebuild, frame_rebuild, other))
    return costs


def stage_option_costs(stage: AdaptiveStage, input_shape: Sequence[int]) -> list[OptionCost]:
    """Analytic cost of every option of an adaptive stage for an input (N, C, T, H, W): each branch at the
    option's width (as a block's), the convs and BatchNorms outside the branches in full, all on the option's
    frames, then φ_t at the stage's exit."""
    n, frames = int(input_shape[0]), int(input_shape[2])
    shapes = stage.input_shapes(input_shape)
    branches = dict(zip(stage.branch_names, stage.branches()))
    static = stage.static_modules()
    last = shapes[stage.branch_names[-1]]
    plane = last[3:]
    for m in (m for m in branches[stage.branch_names[-1]]._run._ops if isinstance(m, nn.Conv3d)):
        plane = _spatial_out([1, *plane], m.kernel_size, m.stride, m.padding, m.dilation)[1:]  # the exit's H×W
    costs = []
    for index, option in enumerate(stage.options):
        r = option.temporal

        def at(shape: tuple[int, ...]) -> tuple[int, ...]:  # every op runs on every R-th frame of its full input
            return (shape[0], shape[1], -(-shape[2] // r), *shape[3:])

        conv = other = 0
        for name, branch_index in zip(stage.branch_names, stage._branch_index[index]):
            cost = block_option_costs(branches[name]._run, at(shapes[name]))[branch_index]
            conv, other = conv + cost.conv, other + cost.other
        for name, module in static:
            if name not in shapes:
                continue
            shape = at(shapes[name])
            if isinstance(module, nn.Conv3d):
                conv += conv_macs(module, shape)
            else:
                other += math.prod(shape) * (2 if module.weight is not None else 1)
        computed = -(-stage.output_frames(frames) // r)
        frame_rebuild = stage.out_channels * (r - 1) * 2 * n * computed * math.prod(plane)
        costs.append(OptionCost(conv, 0, frame_rebuild, other))
    return costs


def gate_macs(layer: AdaptiveLayer, input_shape: Sequence[int]) -> int:
    """Analytic cost of a layer's gate: its clip statistics (the grid pooling: one add per sampled input element
    it pools; on the grid, the mean: one per cell, and frame differences with their mean: two per difference),
    the normalisation (one per statistic, as fvcore counts an inference BatchNorm) and its two linears."""
    from .nn.gate import motion_cell, sampled_size

    gate = layer.gate
    n, c, t, h, w = (int(s) for s in input_shape)
    h, w = sampled_size(h, w)
    _, kh, kw = motion_cell(h, w)
    cells = (h // kh) * (w // kw)
    statistics = n * c * t * cells * kh * kw + n * c * t * cells
    if t > 1:
        statistics += 2 * n * c * (t - 1) * cells
    norm = n * 2 * gate.in_channels
    return statistics + norm + n * (2 * gate.in_channels * gate.hidden + gate.hidden * gate.num_options)


def _adaptive_layer_shapes(model: nn.Module, clip: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Run ``model`` once on ``clip`` (batch 1) with every gate forced to full; each adaptive layer's input shape."""
    from .nn import adaptive_layers, forced_policy, recording

    with torch.no_grad(), forced_policy(model, (1, 1.0)), recording(model) as log:
        model(clip)
    return {name: log[layer].input_shape for name, layer in adaptive_layers(model)}


@dataclass
class LayerCostTable:
    """An adaptive layer's costs at one clip shape (batch 1): every option's cost and its gate's (MACs in a
    :class:`CostModel`, milliseconds in a :class:`~vared_convert.latency.LatencyCostModel`)."""

    name: str
    layer: AdaptiveLayer
    input_shape: tuple[int, ...]
    option_macs: list[int] | list[float]
    gate_macs: int | float

    @property
    def full_macs(self) -> int | float:
        return self.option_macs[0]


class PolicyCosts:
    """A converted model's cost under a policy: a static part plus, for each adaptive layer, the chosen option's
    cost and its gate's. Subclasses fill ``clip_shape``, ``layers`` (in :func:`~vared_convert.nn.adaptive_layers`
    order), ``static_macs`` and ``original_macs`` (the original network, the denominator of every ratio) in one
    unit: multiply-adds (:class:`CostModel`) or milliseconds (:class:`~vared_convert.latency.LatencyCostModel`)."""

    unit = "MACs"
    clip_shape: tuple[int, ...]
    layers: list[LayerCostTable]
    static_macs: int | float
    original_macs: int | float

    @property
    def gate_macs(self) -> int | float:
        return sum(t.gate_macs for t in self.layers)

    def min_macs(self, with_gates: bool = True) -> int | float:
        """The cheapest the model can be: every adaptive layer in its cheapest option."""
        return self.static_macs + sum(min(t.option_macs) + (t.gate_macs if with_gates else 0) for t in self.layers)

    def forced_macs(self, options: Sequence[int]) -> int | float:
        """The model's cost with layer ``i`` forced to option ``options[i]`` (no gates run)."""
        return self.static_macs + sum(t.option_macs[o] for t, o in zip(self.layers, options))

    def per_sample_macs(self, choices: Sequence[torch.Tensor], with_gates: bool = True) -> torch.Tensor:
        """Per-video cost of a forward in gate mode, from each layer's decisions (same order as ``layers``)."""
        total = torch.full((len(choices[0]),), float(self.static_macs), dtype=torch.float64)
        for table, choice in zip(self.layers, choices):
            costs = torch.tensor(table.option_macs, dtype=torch.float64)
            total += costs[choice.cpu()] + (table.gate_macs if with_gates else 0)
        return total

    def expected_ratio(self, weights: Sequence[torch.Tensor]) -> torch.Tensor:
        """Differentiable cost ratio per video from each layer's option weights (N, n_options), gates included."""
        total = None
        for table, w in zip(self.layers, weights):
            costs = torch.tensor(table.option_macs, dtype=w.dtype, device=w.device)
            layer = w @ costs + table.gate_macs
            total = layer if total is None else total + layer
        assert total is not None, "the model has no dynamic conv"
        return (total + self.static_macs) / self.original_macs


class CostModel(PolicyCosts):
    """Costs of a (converted or plain) model at one clip shape, from one fvcore count and the analytic formulas.

    ``original_macs`` is fvcore's count of the original network (every gate forced to full; fvcore's default
    handles only). A clip's adaptive cost is the static part plus, for each adaptive layer, the chosen option's
    MACs and its gate's.
    """

    def __init__(self, model: nn.Module, clip_shape: Sequence[int]):
        from .nn import adaptive_layers, forced_policy

        self.clip_shape = tuple(int(s) for s in clip_shape)
        param = next(model.parameters(), None)
        clip = torch.zeros(1, *self.clip_shape, device=param.device if param is not None else "cpu")
        was_training = model.training
        model.eval()
        try:
            shapes = _adaptive_layer_shapes(model, clip)
            with forced_policy(model, (1, 1.0)):
                self.original_macs, self.by_module = count_macs(model, clip, vared_handles=False)
        finally:
            model.train(was_training)
        self.layers = [
            LayerCostTable(name, layer, shapes[name], [c.total for c in option_costs(layer, shapes[name])],
                           gate_macs(layer, shapes[name]))
            for name, layer in adaptive_layers(model)
        ]
        self.static_macs = self.original_macs - sum(t.full_macs for t in self.layers)
