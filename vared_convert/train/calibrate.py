"""Calibration: after training, shift the gates' decision thresholds so that the model meets its cost target.

Training meets the target only on average over the relaxed (Gumbel) decisions; the argmax decisions at inference
land a few hundredths away. Calibration adds to every gate's logits an offset proportional to each option's cost,
``offset[o] = −λ · cost[o] / original cost`` (one ``λ`` for the whole model: the Lagrange multiplier of the cost
budget, in logits per unit of cost ratio), and searches ``λ`` by bisection so that the mean cost ratio of the
argmax decisions over training clips is the target. ``λ > 0`` makes cheaper options likelier, ``λ < 0`` dearer
ones. The offsets live in each gate's ``logit_offset`` buffer, so they are saved, loaded and exported with the
weights; a forced option never runs the gate, so the full path stays the original.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..nn import adaptive_layers, recording

__all__ = ["Calibration", "calibrate_gates", "clear_calibration", "mean_cost_ratio", "set_strength"]

Reduce = Callable[[list[float]], list[float]]  # sums across processes (identity in one process)


@dataclass
class Calibration:
    """What calibration found: ``strength`` (λ) and the mean cost ratio on its clips before and after."""

    target: float
    strength: float
    before: float
    reached: float
    clips: int
    steps: int  # cost evaluations made

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_strength(costs: Any, strength: float) -> None:
    """Set every gate's offsets to ``−strength · option cost / original cost`` (``costs``: a
    :class:`~vared_convert.flops.CostModel`, or any cost table with ``layers[i].layer``, ``layers[i].option_macs``
    and ``original_macs``)."""
    for table in costs.layers:
        gate = table.layer.gate
        share = torch.tensor(table.option_macs, dtype=torch.float64) / float(costs.original_macs)
        gate.logit_offset.copy_((-strength * share).to(gate.logit_offset))


def clear_calibration(model: nn.Module) -> None:
    """Zero every gate's offsets: decisions are the trained gates' own."""
    for _, layer in adaptive_layers(model):
        layer.gate.logit_offset.zero_()


@torch.no_grad()
def mean_cost_ratio(model: nn.Module, clips: Sequence[torch.Tensor], costs: Any, reduce: Reduce | None = None
                    ) -> float:
    """Mean cost ratio (gates included) of the gates' argmax decisions over batches of ``clips``."""
    layers = [table.layer for table in costs.layers]
    total = count = 0.0
    model.eval()
    for batch in clips:
        with recording(model) as log:
            model(batch)
        total += float((costs.per_sample_macs(log.choices(layers)) / costs.original_macs).sum())
        count += len(batch)
    if reduce is not None:
        total, count = reduce([total, count])
    return total / max(1.0, count)


def calibrate_gates(model: nn.Module, clips: Sequence[torch.Tensor], costs: Any, target: float, *,
                    tolerance: float = 0.01, max_steps: int = 30, reduce: Reduce | None = None) -> Calibration:
    """Find ``λ`` so that the mean cost ratio over ``clips`` (batches, on the model's device) is ``target``
    within ``tolerance``, and leave the gates set to it; when no ``λ`` gets that close in ``max_steps``
    evaluations (a few clips make the cost a step function), the closest one found is kept. Gates already within
    ``tolerance`` are left as trained: every shift moves some clips off the option their gate learned for them.

    The gates' own policies are left as they were (every layer must decide by its gate).
    """
    saved = [(layer, layer.policy) for _, layer in adaptive_layers(model)]
    was_training = model.training
    for layer, _ in saved:
        layer.policy = None
    steps = 0
    tried: dict[float, float] = {}

    def cost(strength: float) -> float:
        nonlocal steps
        set_strength(costs, strength)
        steps += 1
        tried[strength] = mean_cost_ratio(model, clips, costs, reduce)
        return tried[strength]

    try:
        before = cost(0.0)
        clip_count = int(reduce([float(sum(len(b) for b in clips))])[0] if reduce else sum(len(b) for b in clips))
        if abs(before - target) > tolerance:
            # bracket: dear (cost ≥ target) at `dear`, cheap (cost ≤ target) at `cheap`
            direction = 1.0 if before > target else -1.0
            dear, cheap = (0.0, direction) if direction > 0 else (direction, 0.0)
            bound = direction
            while steps < max_steps:
                value = cost(bound)
                if abs(value - target) <= tolerance or (value <= target if direction > 0 else value >= target):
                    break
                (dear, cheap) = (bound, cheap) if direction > 0 else (dear, bound)
                bound *= 2.0
            if direction > 0:
                cheap = bound
            else:
                dear = bound
            while steps < max_steps and min(abs(v - target) for v in tried.values()) > tolerance:
                middle = 0.5 * (dear + cheap)
                if cost(middle) > target:
                    dear = middle
                else:
                    cheap = middle
        best = min(tried, key=lambda s: (abs(tried[s] - target), abs(s)))
        set_strength(costs, best)
        return Calibration(target, best, before, tried[best], clip_count, steps)
    finally:
        for layer, policy in saved:
            layer.policy = policy
        model.train(was_training)
