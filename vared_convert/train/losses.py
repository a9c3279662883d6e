"""The finetune objective: L = CE(logits, y) + α·KD(logits, full path) + λ·(F − τ)²."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss", "flops_loss", "Objective", "LossParts"]


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened distributions, scaled by T² (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), reduction="batchmean",
                    log_target=True) * (t * t)


def flops_loss(ratio: torch.Tensor, target: float) -> torch.Tensor:
    """(F̄ − τ)² on the batch's mean FLOPs ratio: videos may differ, the average must meet the budget."""
    return (ratio.mean() - target) ** 2


@dataclass
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor
    kd: torch.Tensor
    flops: torch.Tensor


@dataclass
class Objective:
    target: float
    flops_weight: float = 4.0
    distill_weight: float = 1.0
    distill_temperature: float = 1.0

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None,
                 ratio: torch.Tensor) -> LossParts:
        logits = logits.float()
        ce = F.cross_entropy(logits, labels)
        kd = (distillation_loss(logits, teacher.float(), self.distill_temperature)
              if teacher is not None and self.distill_weight > 0 else torch.zeros((), device=logits.device))
        fl = flops_loss(ratio, self.target)
        return LossParts(ce + self.distill_weight * kd + self.flops_weight * fl, ce, kd, fl)
