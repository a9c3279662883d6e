"""The static alternatives to an adaptive model at the same cost: what a user would otherwise deploy.

* a **uniform** static option: every layer at one option of the search space (``--static-option T,C``);
* the **searched** per-layer policy: every combination of each layer's options within a FLOPs band, the one most
  accurate on labelled training clips (what a user could pick by trying static policies on their own data);
* the **most frequent** decision of each layer over some clips (:func:`~vared_convert.export.most_frequent_policy`,
  what ``vared export --static-policy --data`` writes);
* a **random** policy with the adaptive model's mean cost: each clip's option in each layer drawn from that
  layer's decision frequencies, whatever the clip (the same cost, without looking at the input);
* the **original** network on a smaller input: fewer frames over the same time span, or a smaller crop.

Each alternative's FLOPs ratio is against the original network on the reference clip.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .flops import CostModel
from .nn import adaptive_layers, option_index, recording
from .recipe import model_info

__all__ = ["InputSize", "StaticResult", "best_static", "decision_frequencies", "full_policy", "input_sizes",
           "nearest", "nearest_uniform", "original_macs", "searched_policy", "static_alternatives", "uniform_options",
           "uniform_policy"]


def original_macs(model: nn.Module, clip_shape: Sequence[int]) -> int:
    """The original network's MACs (every gate at the full option) on one clip of ``clip_shape`` (C, T, H, W)."""
    return CostModel(model, clip_shape).original_macs


def uniform_options(model: nn.Module, clip_shape: Sequence[int]) -> dict[tuple[int, float], float]:
    """Every option of the search space with the FLOPs ratio of the model forced to it everywhere (no gate)."""
    costs = CostModel(model, clip_shape)
    layers = [layer for _, layer in adaptive_layers(model)]
    recipe = model_info(model).recipe
    ratios = {}
    for temporal in recipe.temporal:
        for channel in recipe.channel:
            options = [option_index(layer, temporal, channel) for layer in layers]
            ratios[(temporal, channel)] = costs.forced_macs(options) / costs.original_macs
    return ratios


@dataclass(frozen=True)
class InputSize:
    """A smaller input for the original network: ``frames`` at ``stride``, ``size`` crop, and its FLOPs ratio."""

    kind: str  # "frames" or "crop"
    frames: int
    stride: int
    size: int
    flops_ratio: float

    @property
    def label(self) -> str:
        return f"{self.frames} frames at stride {self.stride}" if self.kind == "frames" else f"{self.size} px crop"


def input_sizes(model: nn.Module, clip_shape: Sequence[int], stride: int, kind: str,
                video_frames: int | None = None) -> list[InputSize]:
    """The original network's smaller inputs of one ``kind``: ``frames`` (fewer frames over about the same time
    span, no longer than ``video_frames``) or ``crop`` (smaller crops, whole multiples of 4 pixels), each with its
    FLOPs ratio against ``clip_shape``; sizes the network cannot run are left out."""
    from .errors import VaredError
    from .shapes import check_clip_shape

    channels, frames, size = int(clip_shape[0]), int(clip_shape[1]), int(clip_shape[2])
    reference = original_macs(model, clip_shape)
    if kind == "frames":
        candidates = []
        for f in range(1, frames):
            s = max(1, round(frames * stride / f))
            if video_frames is not None and f > 1:
                s = max(1, min(s, (video_frames - 1) // (f - 1)))
            candidates.append((f, s, size))
    elif kind == "crop":
        candidates = [(frames, stride, s) for s in range(size - 4, 3, -4)]
    else:
        raise ValueError(f"kind must be frames or crop, got {kind!r}")
    sizes = []
    for f, s, crop in candidates:
        shape = (channels, f, crop, crop)
        try:
            check_clip_shape(model, shape)
        except VaredError:
            continue
        sizes.append(InputSize(kind, f, s, crop, original_macs(model, shape) / reference))
    return sizes


def nearest(items: Iterable, target: float, ratio=lambda item: item.flops_ratio):
    """The item whose FLOPs ratio is closest to ``target``."""
    return min(items, key=lambda item: abs(ratio(item) - target))


def nearest_uniform(options: Mapping[tuple[int, float], float], target: float,
                    tie: float = 0.005) -> list[tuple[int, float]]:
    """The uniform options (:func:`uniform_options`) whose FLOPs ratio is nearest ``target``: every one within
    ``tie`` of the nearest, since options of one cost (fewer frames, or fewer channels) may differ in accuracy."""
    best = abs(nearest(options.items(), target, ratio=lambda item: item[1])[1] - target)
    return [option for option, ratio in options.items() if abs(ratio - target) <= best + tie]


@torch.no_grad()
def decision_frequencies(model: nn.Module, clips: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each layer's share of clips that its gate sent to each option (the probabilities of a random policy with
    the model's mean cost)."""
    layers = adaptive_layers(model)
    counts = {name: torch.zeros(layer.num_options, dtype=torch.float64) for name, layer in layers}
    saved = [(layer, layer.policy) for _, layer in layers]
    was_training = model.training
    model.eval()
    try:
        for _, layer in layers:
            layer.policy = None
        for batch in clips:
            with recording(model) as log:
                model(batch)
            for name, layer in layers:
                counts[name] += torch.bincount(log[layer].choice.cpu(), minlength=layer.num_options).double()
    finally:
        for layer, policy in saved:
            layer.policy = policy
        model.train(was_training)
    return {name: c / c.sum().clamp(min=1) for name, c in counts.items()}


def searched_policy(model: nn.Module, batches: Sequence[Mapping], flops_ratio: float, tolerance: float = 0.03,
                    max_policies: int = 4096) -> dict[str, int] | None:
    """The static per-layer policy most accurate on ``batches`` (labelled clips, e.g. training clips) among every
    combination of the layers' options whose FLOPs ratio lies within ``tolerance`` of ``flops_ratio``; ties go to
    the cheaper one. ``None`` when no combination lies in the band, or when there are more than ``max_policies``
    combinations to try (the search is exhaustive)."""
    from .predict import evaluate

    layers = adaptive_layers(model)
    if not layers or math.prod(layer.num_options for _, layer in layers) > max_policies:
        return None
    costs = CostModel(model, next(iter(batches))["clip"].shape[1:])
    candidates = []
    for options in itertools.product(*(range(layer.num_options) for _, layer in layers)):
        ratio = costs.forced_macs(options) / costs.original_macs
        if abs(ratio - flops_ratio) <= tolerance:
            candidates.append((ratio, options))
    best: tuple[float, dict[str, int]] | None = None
    for _, options in sorted(candidates):  # cheapest first: a later policy must be more accurate to replace it
        policy = {name: o for (name, _), o in zip(layers, options)}
        top1 = evaluate(model, batches, policy=policy).clip_top1
        if best is None or top1 > best[0]:
            best = (top1, policy)
    return None if best is None else best[1]


def uniform_policy(model: nn.Module, option: tuple[int, float]) -> dict[str, int]:
    """Every layer's index of ``option`` (a policy for :func:`~vared_convert.predict.evaluate`)."""
    return {name: option_index(layer, *option) for name, layer in adaptive_layers(model)}


def full_policy(model: nn.Module) -> Mapping[str, int]:
    """The original network: every layer at the full option."""
    return uniform_policy(model, (1, 1.0))



@dataclass(frozen=True)
class StaticResult:
    """One static alternative evaluated: its kind, what it runs, its top-1 (clip level) and FLOPs ratio."""

    kind: str  # "searched", "most frequent", "random" or "uniform"
    detail: str
    top1: float
    flops_ratio: float


def static_alternatives(model: nn.Module, val_batches: Sequence[Mapping], train_batches: Sequence[Mapping],
                        seed: int = 0) -> list[StaticResult]:
    """The static alternatives that run on the adaptive model's own weights, evaluated on ``val_batches``: the
    per-layer policy searched on ``train_batches`` (labelled clips) within ±0.03 of the model's mean FLOPs, each
    layer's most frequent decision over those clips, a random policy with their decision frequencies, and the
    uniform options nearest the model's mean FLOPs (their cheap ops as the adaptive model trained them)."""
    from .export import most_frequent_policy, policy_labels
    from .predict import evaluate

    results = []

    def run(kind: str, detail: str, policy: Mapping) -> None:
        torch.manual_seed(seed)
        report = evaluate(model, val_batches, policy=policy)
        results.append(StaticResult(kind, detail, report.clip_top1, report.flops_ratio))

    adaptive = evaluate(model, val_batches)
    train_clips = [batch["clip"] for batch in train_batches]
    searched = searched_policy(model, train_batches, adaptive.flops_ratio)
    if searched is not None:
        run("searched", " ".join(policy_labels(model, searched).values()), searched)
    frequent = most_frequent_policy(model, train_clips)
    run("most frequent", " ".join(policy_labels(model, frequent).values()), frequent)
    run("random", "the gates' decision frequencies", decision_frequencies(model, train_clips))
    shape = next(iter(val_batches))["clip"].shape[1:]
    for option in nearest_uniform(uniform_options(model, shape), adaptive.flops_ratio):
        run("uniform", f"every layer {option[0]},{option[1]:g}", uniform_policy(model, option))
    return results


def best_static(results: Sequence[StaticResult], flops_ratio: float, tolerance: float = 0.03) -> StaticResult:
    """The most accurate alternative within ``tolerance`` of ``flops_ratio`` (else the one nearest in FLOPs)."""
    close = [r for r in results if abs(r.flops_ratio - flops_ratio) <= tolerance]
    return max(close, key=lambda r: r.top1) if close else nearest(results, flops_ratio)
