"""The finetune configuration: every hyper-parameter with its default, from a YAML file and flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..errors import VaredError

__all__ = ["FinetuneConfig", "load_config"]


@dataclass
class FinetuneConfig:
    """What `vared finetune` does. Field docs double as the CLI's help lines."""

    data: str = ""  # dataset root (any layout the data pipeline reads)
    layout: str = "auto"  # auto, folders, lists or kinetics
    target_flops: float = 0.6  # τ: the FLOPs ratio to reach, adaptive over original
    epochs: int = 10
    batch_size: int = 8
    workers: int = 2  # DataLoader worker processes per rank
    frames: int = 16  # frames per clip
    stride: int = 4  # frames between sampled frames
    size: int = 112  # crop size (short side resized to 128/112 of it)
    val_clips: int = 1  # clips per video for validation (uniformly spread)
    train: str = "gates"  # gates: gates and cheap ops; all: the backbone too
    lr: float = 1e-3  # learning rate of gates and cheap ops
    backbone_lr_scale: float = 0.1  # backbone lr = lr × this (with train=all)
    weight_decay: float = 0.0
    flops_weight: float = 4.0  # λ in λ·(F − τ)²
    distill_weight: float = 1.0  # α in α·KD(student, full path)
    distill_temperature: float = 1.0
    tau_start: float = 5.0  # Gumbel-softmax temperature, annealed exponentially ...
    tau_end: float = 0.5  # ... to this at the end of training
    warmup_epochs: int = 0  # epochs training the cheap ops with random options before the gates learn
    train_bn: bool = False  # update BatchNorm statistics (frozen by default)
    reset_head: bool = False  # replace the classifier to fit the dataset's classes
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU), bf16, fp16 or off
    seed: int = 0
    run_dir: str = ""  # default: runs/<model name>
    out: str = ""  # the finetuned model (default: <run_dir>/final.pth)
    log_every: int = 10  # steps between metrics.jsonl lines
    save_every: int = 0  # steps between last.pth saves (0: at epoch ends and on Ctrl-C only)
    budget_slack: float = 0.05  # best.pth: highest top-1 with FLOPs ratio ≤ target + slack
    max_steps: int = 0  # stop after this many steps in total (0: no limit; for smoke runs)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "FinetuneConfig":
        if not 0 < self.target_flops <= 1:
            raise VaredError(f"--target-flops must be in (0, 1], got {self.target_flops}")
        if self.train not in ("gates", "all"):
            raise VaredError(f"--train must be gates or all, got {self.train!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise VaredError(f"--amp must be auto, bf16, fp16 or off, got {self.amp!r}")
        for name in ("epochs", "batch_size", "frames", "stride", "size", "val_clips"):
            if getattr(self, name) < 1:
                raise VaredError(f"--{name.replace('_', '-')} must be at least 1")
        if self.warmup_epochs >= self.epochs:
            raise VaredError("--warmup-epochs must be smaller than --epochs")
        return self


FIELD_NAMES = {f.name for f in fields(FinetuneConfig)}


def load_config(path: str | os.PathLike | None, overrides: dict[str, Any],
                base: dict[str, Any] | None = None) -> FinetuneConfig:
    """Defaults (or ``base``, a resumed run's), then the YAML file, then the flags given (``None``: not given)."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise VaredError(f"--config {path}: no such file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise VaredError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(loaded, dict):
            raise VaredError(f"--config {path}: expected a mapping of option: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise VaredError(f"unknown finetune option(s): {', '.join(unknown)}")
    try:
        return FinetuneConfig(**values).validate()
    except TypeError as exc:
        raise VaredError(f"bad finetune configuration: {exc}") from exc
