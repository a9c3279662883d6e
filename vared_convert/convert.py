"""Turning a pretrained 3D CNN into its adaptive (VA-RED²) form, and proving the conversion exact.

1. **Analyse** with torch.fx: trace the model, propagate the clip's shape through the graph, and find every
   ``Conv3d`` call site with its input and output shapes and whether a conv precedes it (the stem reads the
   clip). A model that fx cannot trace (Python control flow on values, list inputs as in SlowFast, "same" padding
   computed from the input's size) or that stores tensors on itself in forward (stream buffers) is analysed with
   forward hooks instead, and the report says why; the stems are then found by data flow (a conv whose input was
   computed from the clip with no conv in between), whatever the shape of that input. Every analysis step runs
   on a throwaway copy: the user's model is never run, traced or changed.
2. **Decide** per conv with explicit, overridable rules (``only``/``skip`` patterns, stem, cost share, gate
   overhead, which options make sense for its shape and grouping).
3. **Rewrite**: each chosen call site's module is replaced by a :class:`DynamicConv3d` that shares its weight
   and bias under the same names, so every original state_dict key survives. At ``granularity="block"`` the
   blocks (residual branches, conv + per-channel chains: :mod:`vared_convert.blocks`) become one
   :class:`~vared_convert.nn.AdaptiveBlock` each, the modules holding them rewritten with torch.fx; convs
   outside any converted block (and those of blocks that cannot shrink, with the reason) get per-conv gates.
4. **Verify**: with every gate forced to the full option the converted model must reproduce the original.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .arch import ArchSpec
from .checks import number
from .errors import VaredError
from .flops import block_option_costs, conv_macs, count_macs, gate_macs, option_costs
from .nn import (AdaptiveBlock, AdaptiveLayer, ConvOption, DynamicConv3d, channel_count, conv_output_frames,
                 default_gate_hidden, forced_policy)
from .nn.block import keeps_frames, shrinks_channels
from .nn.kernels import conv_kernel, resolve_kernel, set_conv_kernel
from .recipe import BlockRecipe, LayerRecipe, ModelInfo, Recipe, model_info, replace_module

__all__ = [
    "ConvSite",
    "LayerDecision",
    "BlockDecision",
    "GRANULARITIES",
    "ConversionReport",
    "Conversion",
    "analyse_convs",
    "convert",
    "verify_full_path",
    "DEFAULT_TEMPORAL",
    "DEFAULT_CHANNEL",
]

DEFAULT_TEMPORAL: tuple[int, ...] = (1, 2)
DEFAULT_CHANNEL: tuple[float, ...] = (1.0, 0.5, 0.25)
DEFAULT_MIN_SHARE = 0.002  # a conv under 0.2% of the model's FLOPs is not worth a gate
DEFAULT_MAX_GATE_OVERHEAD = 0.05  # nor one whose gate would cost more than 5% of the conv itself
DEFAULT_MIN_OPTION_SAVING = 0.5  # nor one whose cheapest option, gate and rebuild included, saves under half
DEFAULT_MIN_TIME_SAVING = 0.1  # time-aware rule: the cheapest option, gate included, must save 10% of the conv's time
VERIFY_ATOL = 1e-5
GRANULARITIES = ("block", "conv", "stage")
DEFAULT_GRANULARITY = "block"


# ---------------------------------------------------------------------------------------------- analysis
@dataclass
class ConvSite:
    """A Conv3d as the analysis saw it: every call's input/output shape, and whether it reads the clip."""

    name: str
    conv: nn.Conv3d
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    is_stem: bool = False


class _NamingTracer(fx.Tracer):
    """An fx tracer that remembers the innermost module it was tracing when tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # Subclasses of Conv3d (torchvision's Conv3DSimple, ...) are convs too: keep them as call sites.
        return isinstance(m, (nn.Conv3d, DynamicConv3d)) or super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise


# Convolutions end the clip's data flow: a conv reading their output does not read the clip.
_CONV_FUNCTIONS = {torch.conv1d, torch.conv2d, torch.conv3d, torch.conv_transpose1d, torch.conv_transpose2d,
                   torch.conv_transpose3d, torch.convolution}


def _scratch(model: nn.Module) -> nn.Module:
    """A throwaway copy of ``model`` in eval mode, to trace or run: the user's model is never touched."""
    return copy.deepcopy(model).eval()


def _stored_proxy(model: nn.Module) -> str | None:
    """``module.attribute`` where a trace left an fx Proxy on the model (forward assigned a traced value to the
    module: a stream buffer or cache, which an fx graph would not keep), or None."""
    for name, module in model.named_modules():
        for key, value in vars(module).items():
            items = value.items() if key in ("_parameters", "_buffers") else [(key, value)]
            for attr, v in items:
                held = v if isinstance(v, (list, tuple)) else [v]
                if any(isinstance(e, fx.Proxy) for e in held):
                    return f"{name}.{attr}" if name else attr
    return None


def _analyse_fx(model: nn.Module, example: torch.Tensor) -> list[ConvSite]:
    model = _scratch(model)
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        where = f"module {tracer.failed_in!r}" if tracer.failed_in else "the top-level forward"
        raise _TraceFailure(f"fx could not trace {where}: {type(exc).__name__}: {_one_line(exc)}") from exc
    if (stored := _stored_proxy(model)) is not None:
        raise _TraceFailure(f"fx cannot be used: forward stores tensors on the model ({stored}), which a traced "
                            "graph would not keep")
    gm = fx.GraphModule(tracer.root, graph)
    ShapeProp(gm).propagate(example)
    sites: dict[str, ConvSite] = {}
    after_conv: dict[fx.Node, bool] = {}
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        preceded = any(after_conv[i] for i in inputs)
        is_conv = node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Conv3d)
        after_conv[node] = preceded or is_conv or (node.op == "call_function" and node.target in _CONV_FUNCTIONS)
        if not is_conv:
            continue
        site = sites.setdefault(node.target, ConvSite(node.target, model.get_submodule(node.target)))
        site.input_shapes.append(tuple(node.args[0].meta["tensor_meta"].shape))
        site.output_shapes.append(tuple(node.meta["tensor_meta"].shape))
        site.is_stem = site.is_stem or not preceded
    return list(sites.values())


class _ClipFlow(TorchFunctionMode):
    """Follows the clip's data flow through every torch function: a tensor computed from the clip (or from such a
    tensor) is *raw* unless a convolution made it. Padding, slicing, concatenation or a copy keep it raw, whatever
    its shape becomes."""

    def __init__(self, clip: torch.Tensor):
        super().__init__()
        self._raw: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()
        self.mark(clip)

    def mark(self, tensor: torch.Tensor) -> None:
        self._raw[id(tensor)] = tensor

    def is_raw(self, value: Any) -> bool:
        return isinstance(value, torch.Tensor) and self._raw.get(id(value)) is value

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in _CONV_FUNCTIONS:
            return out
        leaves, _ = tree_flatten((args, kwargs))
        if any(self.is_raw(v) for v in leaves):
            for v in tree_flatten(out)[0]:
                if isinstance(v, torch.Tensor):
                    self.mark(v)
            name = getattr(func, "__name__", "")
            if args and isinstance(args[0], torch.Tensor) and (name == "__setitem__" or name.endswith("_")):
                self.mark(args[0])  # written in place with the clip's values
        return out


def _analyse_hooks(model: nn.Module, example: torch.Tensor) -> list[ConvSite]:
    """Fallback: record every Conv3d call with hooks; a conv whose input derives from the clip with no conv in
    between (followed by :class:`_ClipFlow`) is a stem."""
    model = _scratch(model)
    sites: dict[str, ConvSite] = {}
    handles = []
    flow = _ClipFlow(example)

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            site = sites.setdefault(name, ConvSite(name, module))
            site.input_shapes.append(tuple(args[0].shape))
            site.output_shapes.append(tuple(output.shape))
            site.is_stem = site.is_stem or flow.is_raw(args[0])

        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv3d):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), flow:
            model(example)
    finally:
        for h in handles:
            h.remove()
    return list(sites.values())


class _TraceFailure(Exception):
    pass


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


def analyse_convs(model: nn.Module, example: torch.Tensor) -> tuple[list[ConvSite], str, str | None]:
    """Find every Conv3d call site with shapes. Returns ``(sites, method, trace_failure)``.

    ``method`` is ``"fx"`` or ``"hooks"``; ``trace_failure`` says why fx could not be used. Both run on throwaway
    copies of ``model``, which is left as it was.
    """
    try:
        return _analyse_fx(model, example), "fx", None
    except _TraceFailure as failure:
        reason = str(failure)
    try:
        return _analyse_hooks(model, example), "hooks", reason
    except Exception as exc:
        raise VaredError(
            f"{reason}; and the model does not run on a clip of shape {tuple(example.shape)} "
            f"({type(exc).__name__}: {_one_line(exc)}); check --input-shape"
        ) from exc


# ---------------------------------------------------------------------------------------------- decisions
@dataclass
class LayerDecision:
    """One conv's fate: converted (with options) or left static (with the reason)."""

    name: str
    kernel: tuple[int, ...]
    in_channels: int
    out_channels: int
    groups: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    share: float
    options: list[list[int]] | None = None
    reason: str | None = None
    gate_hidden: int = 0

    @property
    def converted(self) -> bool:
        return self.options is not None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "kernel": list(self.kernel),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "groups": self.groups,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "gflops": self.macs / 1e9,
            "flops_share": self.share,
        }
        data.update({"options": self.options} if self.converted else {"reason": self.reason})
        return data


@dataclass
class BlockDecision:
    """One block's fate: adaptive (with options), or its convs left to the per-conv rules (with the reason)."""

    name: str  # the adaptive block's qualified name (set when converted)
    owner: str
    ops: list[str]
    kind: str
    convs: list[str]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    share: float
    options: list[list[int]] | None = None
    reason: str | None = None
    gate_hidden: int = 0
    width: int = 0
    branches: list[list[str]] = field(default_factory=list)  # a stage's residual branches

    @property
    def converted(self) -> bool:
        return self.options is not None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "name": self.name or self.owner,
            "owner": self.owner,
            "kind": self.kind,
            "ops": list(self.ops),
            "convs": list(self.convs),
            "width": self.width,
            "input_shape": list(self.input_shape),
            "output_shape": list(self.output_shape),
            "gflops": self.macs / 1e9,
            "flops_share": self.share,
        }
        data.update({"options": self.options} if self.converted else {"reason": self.reason})
        return data


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    for pattern in patterns:
        if fnmatch.fnmatchcase(name, pattern) or name == pattern or name.startswith(pattern + "."):
            return pattern
    return None


def _layer_options(conv: nn.Conv3d, out_frames: int, temporal: Sequence[int], channel: Sequence[float]) -> list[ConvOption]:
    """The options that make sense for ``conv``: distinct computed frame counts and channel counts."""
    factors, seen_frames = [], set()
    for factor in sorted(set(temporal)):
        frames = math.ceil(out_frames / factor)
        if frames not in seen_frames:
            seen_frames.add(frames)
            factors.append(factor)
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    counts = [conv.out_channels]
    if conv.groups == 1 or depthwise:
        counts = sorted({channel_count(r, conv.out_channels) for r in channel}, reverse=True)
    return [ConvOption(f, k) for f in factors for k in counts]


def _decide(
    site: ConvSite,
    total_macs: int,
    temporal: Sequence[int],
    channel: Sequence[float],
    only: Sequence[str],
    skip: Sequence[str],
    min_share: float,
    max_gate_overhead: float,
    convert_stem: bool,
    min_option_saving: float = DEFAULT_MIN_OPTION_SAVING,
) -> LayerDecision:
    conv = site.conv
    macs = sum(conv_macs(conv, shape) for shape in site.input_shapes)
    decision = LayerDecision(
        site.name,
        tuple(int(k) for k in conv.kernel_size),
        conv.in_channels,
        conv.out_channels,
        conv.groups,
        site.input_shapes[0][1:],
        site.output_shapes[0][1:],
        macs,
        macs / total_macs if total_macs else 0.0,
    )
    chosen = _matches(site.name, only) if only else None

    def static(reason: str) -> LayerDecision:
        decision.reason = reason
        return decision

    if only and chosen is None:
        return static("not selected by --only")
    if (pattern := _matches(site.name, skip)) is not None:
        return static(f"skipped by --skip {pattern}")
    if conv.padding_mode != "zeros":
        return static(f"padding_mode={conv.padding_mode!r} is not supported")
    if isinstance(conv.padding, str):
        return static(f"padding={conv.padding!r} is not supported")
    if site.is_stem and not (convert_stem or chosen):
        return static("stem: reads the input clip")
    if decision.share < min_share and not chosen:
        return static(f"too cheap (under {100 * min_share:.2g}% of the model's FLOPs)")
    out_frames = min(shape[2] for shape in site.output_shapes)
    options = _layer_options(conv, out_frames, temporal, channel)
    if len(options) == 1:
        return static("no cheaper option (one output frame, grouped conv)")
    hidden = default_gate_hidden(conv.in_channels)
    probe = DynamicConv3d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          conv.dilation, conv.groups, conv.bias is not None, options, hidden)
    gate = sum(gate_macs(probe, shape) for shape in site.input_shapes)
    overhead = gate / max(macs, 1)
    if overhead > max_gate_overhead and not chosen:
        return static(f"gate would cost {100 * overhead:.1f}% of the conv (> {100 * max_gate_overhead:.2g}%)")
    cheapest = sum(min(c.total for c in option_costs(probe, shape)) for shape in site.input_shapes)
    if (saving := _saving(cheapest + gate, macs)) < min_option_saving and not chosen:
        return static(f"its cheapest option would save {100 * saving:.0f}% of the conv, gate and rebuild included "
                      f"(< {100 * min_option_saving:.0f}%)")
    decision.options = [o.as_list() for o in options]
    decision.gate_hidden = hidden
    return decision


def _saving(cheapest: int, full: int) -> float:
    """The share of a layer's multiply-adds its cheapest option saves (the cheapest option's ``cheapest`` MACs
    include its rebuild and the gate): a cheap conv on a large map (a depthwise conv, a 1×1×1 conv of a few
    channels) saves little once φ_s and φ_t rebuild what it skipped."""
    return 1.0 - cheapest / max(full, 1)


def _block_options(ops: Sequence[nn.Module], kind: str, out_frames: int, temporal: Sequence[int],
                   channel: Sequence[float]) -> list[ConvOption]:
    """A block's options: distinct computed frame counts (if its convs after the first keep the frame count) and
    channel counts of its width (if it can shrink)."""
    first = next(m for m in ops if isinstance(m, nn.Conv3d))
    factors, seen = [], set()
    for factor in sorted(set(temporal)) if keeps_frames(ops) else [1]:
        frames = math.ceil(out_frames / factor)
        if frames not in seen:
            seen.add(frames)
            factors.append(factor)
    counts = [first.out_channels]
    if shrinks_channels(ops, kind):
        counts = sorted({channel_count(r, first.out_channels) for r in channel}, reverse=True)
    return [ConvOption(f, k) for f in factors for k in counts]


def _decide_block(
    site: Any,
    model: nn.Module,
    total_macs: int,
    temporal: Sequence[int],
    channel: Sequence[float],
    only: Sequence[str],
    skip: Sequence[str],
    min_share: float,
    max_gate_overhead: float,
    min_option_saving: float = DEFAULT_MIN_OPTION_SAVING,
    fallback: str = "per-conv",
) -> BlockDecision:
    """A block's fate; one that fails a rule leaves its ops to the ``fallback`` rules (a run's: its blocks')."""
    ops = [model.get_submodule(name) for name in site.ops]
    decision = BlockDecision("", site.owner, list(site.ops), site.kind, list(site.conv_names), site.input_shape[1:],
                             site.output_shape[1:], 0, 0.0)
    chosen = next((p for name in [site.owner, *site.ops] if (p := _matches(name, only))), None) if only else None

    def fall_back(reason: str) -> BlockDecision:
        decision.reason = f"{fallback}: {reason}"
        return decision

    if site.problem is not None:
        return fall_back(site.problem)
    first = ops[0]
    decision.width = first.out_channels
    out_frames = conv_output_frames(site.input_shape[2], first.kernel_size[0], first.stride[0], first.padding[0],
                                    first.dilation[0])
    options = _block_options(ops, site.kind, out_frames, temporal, channel)
    probe = AdaptiveBlock(ops, site.kind, options, default_gate_hidden(first.in_channels))
    costs = block_option_costs(probe, site.input_shape)
    decision.macs = costs[0].total
    decision.share = decision.macs / total_macs if total_macs else 0.0
    if only and chosen is None:
        return fall_back("not selected by --only")
    for name in [site.owner, *site.ops]:
        if (pattern := _matches(name, skip)) is not None:
            return fall_back(f"skipped by --skip {pattern}")
    if decision.share < min_share and not chosen:
        return fall_back(f"too cheap (under {100 * min_share:.2g}% of the model's FLOPs)")
    if len(options) == 1:
        return fall_back("no cheaper option (one output frame, grouped convs)")
    gate = gate_macs(probe, site.input_shape)
    overhead = gate / max(decision.macs, 1)
    if overhead > max_gate_overhead and not chosen:
        return fall_back(f"gate would cost {100 * overhead:.1f}% of the block (> {100 * max_gate_overhead:.2g}%)")
    if (saving := _saving(min(c.total for c in costs) + gate, decision.macs)) < min_option_saving and not chosen:
        return fall_back(f"its cheapest option would save {100 * saving:.0f}% of the block, gate and rebuild "
                        f"included (< {100 * min_option_saving:.0f}%)")
    decision.options = [o.as_list() for o in options]
    decision.gate_hidden = probe.gate.hidden
    return decision


def _stage_options(site: Any, first_width: int, shrinks: bool, temporal: Sequence[int],
                   channel: Sequence[float]) -> list[ConvOption]:
    """A stage's options: distinct computed output frame counts (if every R-th frame in gives every R-th frame out)
    and channel counts of its first branch's width (if a branch can shrink)."""
    frames = site.output_shape[2]
    factors, seen = [], set()
    for factor in sorted(set(temporal)) if site.keeps_frames else [1]:
        computed = math.ceil(frames / factor)
        if computed not in seen:
            seen.add(computed)
            factors.append(factor)
    counts = sorted({channel_count(r, first_width) for r in channel}, reverse=True) if shrinks else [first_width]
    return [ConvOption(f, k) for f in factors for k in counts]


def _decide_stages(original: nn.Module, example: torch.Tensor, block_sites: list[Any], total_macs: int,
                   temporal: Sequence[int], channel: Sequence[float], only: Sequence[str], skip: Sequence[str],
                   min_share: float, max_gate_overhead: float, min_option_saving: float) -> list[BlockDecision]:
    """Every stage's fate (``granularity="stage"``): the stages are placed on a scratch copy to cost them; one that
    cannot run as a stage, or fails the rules, leaves its blocks to the block rules (with the reason)."""
    from .blocks import find_stages, place_stage
    from .flops import stage_option_costs

    scratch = _scratch(original)
    stages = find_stages(scratch, example, block_sites, factors=[t for t in temporal if t > 1])
    decisions = []
    for site in stages:
        branches = [list(b.ops) for b in site.branches]
        convs = [f"{site.name}.{n}" for n, m in original.get_submodule(site.name).named_modules()
                 if isinstance(m, nn.Conv3d)]
        decision = BlockDecision("", site.name, [op for b in branches for op in b], "stage", convs,
                                 site.input_shape[1:], site.output_shape[1:], 0, 0.0, branches=branches)
        decisions.append(decision)
        if site.problem is not None:
            decision.reason = f"per-block: {site.problem}"
            continue
        ops = [[scratch.get_submodule(op) for op in b] for b in branches]
        first = next(m for m in ops[0] if isinstance(m, nn.Conv3d))
        shrinks = any(shrinks_channels(b, "residual") for b in ops)
        options = _stage_options(site, first.out_channels, shrinks, temporal, channel)
        decision.width = first.out_channels
        if len(options) == 1:
            decision.reason = "per-block: no cheaper option (the frame count changes inside, and no branch shrinks)"
            continue
        try:
            place_stage(scratch, site.name, branches, [o.as_list() for o in options], None)
        except (ValueError, TypeError, AttributeError, RuntimeError) as exc:
            decision.reason = f"per-block: it could not be rewritten ({type(exc).__name__}: {_one_line(exc)})"
            continue
        probe = scratch.get_submodule(site.name)
        if probe.output_frames(site.input_shape[2]) != site.output_shape[2]:
            decision.reason = "per-block: its frame count does not follow its first residual branch"
            continue
        costs = stage_option_costs(probe, (1, *site.input_shape[1:]))
        decision.macs = costs[0].total
        decision.share = decision.macs / total_macs if total_macs else 0.0
        chosen = next((p for name in [site.name, *decision.ops] if (p := _matches(name, only))), None)
        if only and chosen is None:
            decision.reason = "per-block: not selected by --only"
            continue
        if (pattern := next((p for name in [site.name, *decision.ops] if (p := _matches(name, skip))), None)):
            decision.reason = f"per-block: skipped by --skip {pattern}"
            continue
        if decision.share < min_share and not chosen:
            decision.reason = f"per-block: too cheap (under {100 * min_share:.2g}% of the model's FLOPs)"
            continue
        gate = gate_macs(probe, (1, *site.input_shape[1:]))
        if gate / max(decision.macs, 1) > max_gate_overhead and not chosen:
            decision.reason = f"per-block: gate would cost more than {100 * max_gate_overhead:.2g}% of the stage"
            continue
        if (saving := _saving(min(c.total for c in costs) + gate, decision.macs)) < min_option_saving and not chosen:
            decision.reason = (f"per-block: its cheapest option would save {100 * saving:.0f}% of the stage "
                               f"(< {100 * min_option_saving:.0f}%)")
            continue
        decision.options = [o.as_list() for o in options]
        decision.gate_hidden = probe.gate.hidden
    return decisions


def _place_stages(adaptive: nn.Module, decisions: list[BlockDecision]) -> None:
    from .blocks import place_stage

    for d in decisions:
        if d.converted:
            d.name = place_stage(adaptive, d.owner, d.branches, d.options, d.gate_hidden)


def _find_blocks(model: nn.Module, example: torch.Tensor) -> tuple[list[Any], str | None]:
    """The model's blocks, found on a throwaway copy; none (with the reason) where fx cannot trace it or where its
    forward stores tensors on the model (a rewritten module would no longer keep them)."""
    from .blocks import find_blocks

    model = _scratch(model)
    try:
        sites = find_blocks(model, example)
    except Exception as exc:  # fx fails in many ways; each means "no blocks for this model"
        return [], f"blocks need torch.fx, which could not trace the model ({type(exc).__name__}: {_one_line(exc)})"
    if (stored := _stored_proxy(model)) is not None:
        return [], f"blocks need torch.fx, and forward stores tensors on the model ({stored}), which fx would not keep"
    return sites, None


def _place_blocks(adaptive: nn.Module, decisions: list[BlockDecision]) -> nn.Module:
    """Rewrite each owner of converted blocks (see :func:`~vared_convert.blocks.group_by_owner`); an owner that
    cannot be rewritten sends its blocks back to the per-conv rules, with the reason. Returns the model (a new one
    where the model itself holds a block)."""
    from .blocks import group_by_owner, place_owner

    for owner, group in group_by_owner([d for d in decisions if d.converted]).items():
        specs = [BlockRecipe("", owner, d.ops, d.kind, d.options, d.gate_hidden) for d in group]
        try:
            adaptive, names = place_owner(adaptive, owner, specs)
        except Exception as exc:
            where = owner or f"the model's own forward ({type(adaptive).__name__})"
            for d in group:
                d.options, d.gate_hidden = None, 0
                d.reason = f"per-conv: {where} could not be rewritten ({type(exc).__name__}: {_one_line(exc)})"
            continue
        for d, name in zip(group, names):
            d.owner, d.name = owner, name
    return adaptive


def _time_rule(
    adaptive: nn.Module, original: nn.Module, decisions: list[LayerDecision], min_saving: float,
    device: torch.device, only: Sequence[str],
) -> None:
    """The time-aware rule: a converted conv goes back to static where, measured on ``device`` at its input
    shape (batch 1; channels-last on the CPU), its gate plus its cheapest option does not save ``min_saving`` of
    the full conv's time. FLOPs are not time: a 1×1×1 conv is one fast GEMM, while rebuilding its skipped frames
    and channels are passes over memory that can cost more than the conv (X3D on the CPU). On the CPU freed memory
    is kept for reuse while timing, as ``vared profile --latency`` and latency tables time: with glibc's defaults a
    process's first calls page-fault every large buffer in, which made a 0.3 ms conv take 24 ms here."""
    for d in decisions:
        if not d.converted or _matches(d.name, only):
            continue
        layer = adaptive.get_submodule(d.name)
        home = layer.weight.device
        layer.to(device).eval()  # in place: moved back below
        with conv_kernel(layer, resolve_kernel("auto", device)):  # the rebuilds' convs too, restored after
            conv3d = layer.conv3d_function(fast=True)

            def full_call(x: torch.Tensor) -> None:
                conv3d(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)

            timed = _time_cheapest(layer, option_costs, full_call, d.input_shape, device, min_saving)
        layer.to(home)
        if timed is not None:
            replace_module(adaptive, d.name, copy.deepcopy(original.get_submodule(d.name)))
            d.options, d.gate_hidden = None, 0
            d.reason = (f"no time to save on {device.type}: gate + cheapest option {timed[1]:.2f} ms vs the conv "
                        f"{timed[0]:.2f} ms")


def _time_cheapest(layer: AdaptiveLayer, costs_of: Callable[..., list], full_call: Callable[[torch.Tensor], object],
                   input_shape: Sequence[int], device: torch.device, min_saving: float) -> tuple[float, float] | None:
    """Time ``layer``'s gate plus its cheapest option against ``full_call`` (the original computation) at batch 1 on
    ``device``; ``(full ms, cheapest ms)`` where that saves under ``min_saving`` of the time, else ``None``."""
    from .predict import inference_memory_format
    from .timing import measure_interleaved, retain_freed_memory

    if device.type == "cpu":
        retain_freed_memory()
    x = torch.randn(1, *input_shape, device=device).contiguous(memory_format=inference_memory_format(device))
    costs = costs_of(layer, x.shape)
    cheapest = min(range(layer.num_options), key=lambda o: costs[o].total)

    def adaptive_call() -> None:
        layer.gate.infer(x)  # as eager inference runs it
        layer.run_option(x, cheapest)

    timings = measure_interleaved({"full": lambda: full_call(x), "cheapest": adaptive_call}, device, warmup=2,
                                  repeats=7)
    # the fastest round of each: background load only ever adds time, and adds it unevenly to short calls
    full_ms, cheapest_ms = timings["full"].min_ms, timings["cheapest"].min_ms
    return (full_ms, cheapest_ms) if cheapest_ms > (1 - min_saving) * full_ms else None


def _block_time_rule(original: nn.Module, decisions: list[BlockDecision], min_saving: float, device: torch.device,
                     only: Sequence[str], fallback: str = "per-conv") -> None:
    """The time-aware rule for blocks: a block whose gate plus cheapest option does not save ``min_saving`` of its
    ops' time (measured as :func:`_time_rule` measures a conv) goes back to the ``fallback`` rules (a run's: its
    blocks'), with the reason."""
    from .predict import inference_memory_format

    candidates = [d for d in decisions
                  if d.converted and d.kind != "stage" and not any(_matches(c, only) for c in d.convs)]
    if not candidates:  # nothing to time: no scratch copy of the model
        return
    scratch = _scratch(original).to(device=device, memory_format=inference_memory_format(device)).eval()
    kernel = resolve_kernel("auto", device)
    set_conv_kernel(scratch, kernel)
    for d in candidates:
        ops = [scratch.get_submodule(op) for op in d.ops]
        param = next(ops[0].parameters())
        block = AdaptiveBlock(ops, d.kind, d.options, d.gate_hidden).to(device=device, dtype=param.dtype)
        block.init_cheap_ops()
        block.eval().conv_kernel = kernel

        def full_call(x: torch.Tensor) -> None:
            with torch.no_grad():
                for op in ops:
                    x = op(x)

        timed = _time_cheapest(block, block_option_costs, full_call, d.input_shape, device, min_saving)
        if timed is not None:
            d.options, d.gate_hidden = None, 0
            d.reason = (f"{fallback}: no time to save on {device.type}: gate + cheapest option {timed[1]:.2f} ms vs "
                        f"the block {timed[0]:.2f} ms")


# ---------------------------------------------------------------------------------------------- conversion
@dataclass
class ConversionReport:
    """What :func:`convert` did, for people (the CLI's tables) and scripts (``to_dict``)."""

    layers: list[LayerDecision]  # the convs not inside a converted block
    analysis: str  # "fx" or "hooks"
    trace_failure: str | None
    original_macs: int
    input_shape: tuple[int, ...]
    max_abs_error: float | None = None
    granularity: str = "conv"
    blocks: list[BlockDecision] = field(default_factory=list)
    block_failure: str | None = None  # why no block could be found (the model fell back to per-conv)

    @property
    def converted(self) -> list[LayerDecision]:
        return [d for d in self.layers if d.converted]

    @property
    def static(self) -> list[LayerDecision]:
        return [d for d in self.layers if not d.converted]

    @property
    def converted_blocks(self) -> list[BlockDecision]:
        return [d for d in self.blocks if d.converted]

    @property
    def converted_flops_share(self) -> float:
        return sum(d.share for d in self.converted) + sum(d.share for d in self.converted_blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "granularity": self.granularity,
            "converted": [d.name for d in self.converted],
            "converted_blocks": [d.name for d in self.converted_blocks],
            "static": [d.name for d in self.static],
            "converted_flops_share": self.converted_flops_share,
            "max_abs_error": self.max_abs_error,
            "original_gflops": self.original_macs / 1e9,
            "input_shape": list(self.input_shape),
            "analysis": self.analysis,
            "trace_failure": self.trace_failure,
            "layers": [d.to_dict() for d in self.layers],
            "blocks": [d.to_dict() for d in self.blocks],
            "block_failure": self.block_failure,
        }


@dataclass
class Conversion:
    """The result of :func:`convert`: the adaptive model, its recipe and the report."""

    model: nn.Module
    recipe: Recipe
    report: ConversionReport
    loaded: Any = None  # how ``api.convert_checkpoint`` read the weights (a ``checkpoint.LoadReport``), if it did


def _parse_input_shape(model: nn.Module, input_shape: Sequence[int] | None,
                       arch: ArchSpec | None) -> tuple[int, int, int, int]:
    """The analysis clip: given, or the architecture's usual one; checked against the network first."""
    from .shapes import check_clip_shape, resolve_clip_shape

    shape = resolve_clip_shape(model, input_shape, arch=arch)
    check_clip_shape(model, shape, arch=arch)
    return shape


def _validate_space(temporal: Sequence[int], channel: Sequence[float]) -> tuple[list[int], list[float]]:
    temporal, channel = [int(t) for t in temporal], [float(c) for c in channel]
    if 1 not in temporal or any(not 1 <= t <= 64 for t in temporal):
        raise VaredError(f"--temporal must hold 1 (the full frame rate) and factors from 1 to 64, got {temporal}")
    if 1.0 not in channel or any(not 0 < c <= 1 for c in channel):
        raise VaredError(f"--channel must hold 1 (every channel) and ratios in (0, 1], got {channel}")
    return sorted(set(temporal)), sorted(set(channel), reverse=True)


def _example(shape: Sequence[int], like: nn.Module, batch: int = 1) -> torch.Tensor:
    param = next(like.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *shape, generator=generator).to(device)


@torch.no_grad()
def verify_full_path(original: nn.Module, adaptive: nn.Module, example: torch.Tensor) -> float:
    """Max abs difference between the original and the adaptive model with every gate forced to full, each run
    as a throwaway copy (so that neither model's cached state, such as stream buffers, moves)."""
    expected = _scratch(original)(example)
    adaptive = _scratch(adaptive)
    with forced_policy(adaptive, (1, 1.0)):
        got = adaptive(example)
    return float((expected - got).abs().max())


def convert(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    arch: ArchSpec | str | None = None,
    temporal: Sequence[int] = DEFAULT_TEMPORAL,
    channel: Sequence[float] = DEFAULT_CHANNEL,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    min_flops_share: float = DEFAULT_MIN_SHARE,
    max_gate_overhead: float = DEFAULT_MAX_GATE_OVERHEAD,
    min_option_saving: float = DEFAULT_MIN_OPTION_SAVING,
    convert_stem: bool = False,
    class_names: Sequence[str] | None = None,
    verify: bool = True,
    time_aware: bool = False,
    min_time_saving: float = DEFAULT_MIN_TIME_SAVING,
    time_device: str | torch.device = "cpu",
    granularity: str = DEFAULT_GRANULARITY,
) -> Conversion:
    """Make an adaptive copy of ``model`` (the original is left untouched) and verify it.

    Args:
        model: a network whose ``Conv3d`` layers should become input-dependent.
        input_shape: clip shape ``(C, T, H, W)`` for analysis and verification (default: the arch's usual one).
        arch: how to rebuild the network later (stored in the recipe's checkpoint); ``None`` for a model you
            will only use in this process.
        temporal: temporal stride factors ``R`` to offer (must include 1).
        channel: output-channel ratios ``r`` to offer (must include 1).
        only, skip: fnmatch patterns (or module prefixes) choosing which convs to convert; ``only`` also
            overrides the stem and cost rules for the convs it names.
        min_flops_share: convs below this share of the model's FLOPs stay static.
        max_gate_overhead: convs whose gate would cost more than this fraction of the conv stay static (blocks
            fall back to per-conv).
        min_option_saving: so do those whose cheapest option, gate and rebuild included, saves less than this
            fraction of their multiply-adds (a cheap conv on a large map, whose rebuild costs what it skips).
        convert_stem: also convert convs that read the input clip.
        class_names: what the model's outputs mean, stored with it.
        verify: check that the full path reproduces the original (raises if it does not).
        time_aware: also time each converted block and conv on ``time_device`` and keep it static where its gate
            plus its cheapest option does not save ``min_time_saving`` of its time (a block goes back to the
            per-conv rules; those named by ``only`` stay).
        granularity: ``"block"``: one gate per block (residual branch, or conv + per-channel ops), whose option
            shrinks everything inside it; convs outside converted blocks get their own gates. ``"conv"``: one
            gate per conv (the paper's form).
    """
    arch_spec = ArchSpec(arch) if isinstance(arch, str) else arch
    if arch_spec is None and (info := model_info(model)) is not None:
        arch_spec = info.arch
    if any(isinstance(m, AdaptiveLayer) for m in model.modules()):
        raise VaredError("the model is already converted (it holds adaptive layers)")
    if granularity not in GRANULARITIES:
        raise VaredError(f"--granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    number("min_share", min_flops_share, 0, 1)
    temporal, channel = _validate_space(temporal, channel)
    shape = _parse_input_shape(model, input_shape, arch_spec)
    original = model  # read, never run: every run and trace below is on a throwaway copy
    example = _example(shape, original)
    sites, analysis, trace_failure = analyse_convs(original, example)
    if not sites:
        raise VaredError("the model has no Conv3d layer to make adaptive")
    total_macs, _ = count_macs(_scratch(original), example, vared_handles=False)
    block_decisions: list[BlockDecision] = []
    block_failure = None
    adaptive = _scratch(original)
    if granularity in ("block", "stage"):
        from .timing import resolve_device

        block_sites, block_failure = _find_blocks(original, example)
        rules = (total_macs, temporal, channel, only, skip, min_flops_share, max_gate_overhead, min_option_saving)
        stages: tuple[str, ...] = ()  # the converted stages' prefixes: their blocks are theirs
        if granularity == "stage" and block_sites:
            from .blocks import find_runs

            block_decisions = _decide_stages(original, example, block_sites, *rules)
            _place_stages(adaptive, block_decisions)
            stages = tuple(d.owner + "." for d in block_decisions if d.converted)
            runs = [_decide_block(r, original, *rules, fallback="per-block") for r in find_runs(original, block_sites)
                    if not any(op.startswith(stages) for op in r.ops)]
            if time_aware:
                _block_time_rule(original, runs, min_time_saving, resolve_device(str(time_device)), only, "per-block")
            block_decisions += runs
        in_runs = {op for d in block_decisions if d.converted and d.kind == "run" for op in d.ops}
        blocks = [_decide_block(b, original, *rules) for b in block_sites
                  if not b.is_stem and not any(op.startswith(stages) or op in in_runs for op in b.ops)]
        if time_aware:
            _block_time_rule(original, blocks, min_time_saving, resolve_device(str(time_device)), only)
        block_decisions += blocks
        graph_order = {op: i for i, site in enumerate(block_sites) for op in site.ops}
        block_decisions.sort(key=lambda d: graph_order.get(d.ops[0], -1) if d.ops else -1)
        adaptive = _place_blocks(adaptive, [d for d in block_decisions if d.kind != "stage"])
    in_blocks = {f"{op}.{sub}" if sub else op for d in block_decisions if d.converted
                 for op in (d.ops if d.kind != "stage" else [d.owner])
                 for sub, m in original.get_submodule(op).named_modules() if isinstance(m, nn.Conv3d)}
    decisions = [
        _decide(site, total_macs, temporal, channel, only, skip, min_flops_share, max_gate_overhead, convert_stem,
                min_option_saving)
        for site in sites if site.name not in in_blocks
    ]
    if only and not any(d.converted for d in decisions) and not in_blocks:
        raise VaredError(f"--only {' '.join(only)} selects no convertible conv")
    for d in decisions:
        if d.converted:
            conv = adaptive.get_submodule(d.name)
            replace_module(adaptive, d.name, DynamicConv3d.from_conv(conv, d.options, d.gate_hidden))
    if time_aware:
        from .timing import resolve_device

        _time_rule(adaptive, original, decisions, min_time_saving, resolve_device(str(time_device)), only)
    report = ConversionReport(decisions, analysis, trace_failure, total_macs, shape, granularity=granularity,
                              blocks=block_decisions, block_failure=block_failure)
    if verify:
        report.max_abs_error = verify_full_path(original, adaptive, example)
        if not report.max_abs_error <= VERIFY_ATOL:
            raise VaredError(
                f"verification failed: the full path differs from the original by {report.max_abs_error:.3g} "
                f"(> {VERIFY_ATOL}); please report this model"
            )
    recipe = Recipe(
        input_shape=list(shape),
        temporal=temporal,
        channel=channel,
        layers=[LayerRecipe(d.name, d.options, d.gate_hidden, d.macs) for d in decisions if d.converted],
        original_macs=total_macs,
        granularity=granularity,
        blocks=[BlockRecipe(d.name, d.owner, d.ops, d.kind, d.options, d.gate_hidden, d.macs, d.branches)
                for d in block_decisions if d.converted],
    )
    adaptive.vared_info = ModelInfo(
        arch_spec or ArchSpec("unknown:model"), recipe, list(class_names) if class_names else None
    )
    return Conversion(adaptive.eval(), recipe, report)
