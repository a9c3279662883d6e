"""Plain supervised training of a video classifier: how the demo makes its stand-in "pretrained model"."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["train_classifier", "top1"]


@torch.no_grad()
def top1(model: nn.Module, batches: Iterable[dict[str, Any]], device: torch.device) -> float:
    """Clip-level top-1 accuracy (percent) of ``model`` in eval mode."""
    model.eval()
    correct = count = 0
    for batch in batches:
        if batch.get("clip") is None:
            continue
        logits = model(batch["clip"].to(device))
        correct += int((logits.argmax(1).cpu() == batch["label"]).sum())
        count += len(batch["label"])
    return 100.0 * correct / max(1, count)


def train_classifier(
    model: nn.Module,
    train_batches: Callable[[int], Iterable[dict[str, Any]]],
    steps_per_epoch: int,
    epochs: int,
    *,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    label_smoothing: float = 0.1,
    device: torch.device = torch.device("cpu"),
    on_step: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """AdamW with a cosine schedule over ``epochs``; ``train_batches(epoch)`` yields collated batches."""
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = max(1, steps_per_epoch * epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    step = 0
    for epoch in range(epochs):
        model.train()
        for batch in train_batches(epoch):
            if batch.get("clip") is None:
                continue
            logits = model(batch["clip"].to(device))
            loss = F.cross_entropy(logits, batch["label"].to(device), label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if on_step:
                on_step(step, loss.item())
    return model.eval()
