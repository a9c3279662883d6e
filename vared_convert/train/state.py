"""A finetune run's resumable state: model, optimiser, scheduler, scaler, counters and RNG, in one safe file.

Everything is plain data and tensors, so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import FORMAT, model_payload, read_checkpoint, save_torch_file
from ..errors import VaredError

__all__ = ["TRAIN_FORMAT", "save_training_state", "load_training_state", "rng_state", "restore_rng_state"]

TRAIN_FORMAT = "vared-train"


def rng_state() -> dict[str, Any]:
    """Every random generator the loop draws from (Python's, torch's CPU and CUDA ones)."""
    state: dict[str, Any] = {"python": list(_python_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _python_state() -> tuple:
    version, internal, gauss = random.getstate()
    return version, list(internal), gauss


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | os.PathLike, model: torch.nn.Module, **state: Any) -> Path:
    """Write the model (vared format) plus the loop's state atomically."""
    return save_torch_file({"format": TRAIN_FORMAT, "model": model_payload(model), **state}, path, force=True)


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``last.pth`` written by :func:`save_training_state` (``weights_only=True``)."""
    raw = read_checkpoint(path)
    if not isinstance(raw, dict) or raw.get("format") != TRAIN_FORMAT or raw.get("model", {}).get("format") != FORMAT:
        raise VaredError(f"{path}: not a vared training checkpoint (last.pth of a finetune run)")
    return raw
