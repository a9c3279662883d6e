"""The finetune configuration: every hyper-parameter with its default, from a YAML file and flags."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..checks import flag_name, integer, number
from ..errors import ArgumentError, VaredError

__all__ = ["FinetuneConfig", "load_config"]


@dataclass
class FinetuneConfig:
    """What `vared finetune` does. Field docs double as the CLI's help lines."""

    data: str = ""  # dataset root (any layout the data pipeline reads)
    layout: str = "auto"  # auto, folders, lists, kinetics, ucf101[:N], hmdb51[:N] or ssv2 (checked by the index)
    target_flops: float = 0.6  # τ: the FLOPs ratio to reach, adaptive over original (a time ratio with cost=latency)
    cost: str = "flops"  # what the target budgets: flops, or latency (the times of latency_table's device)
    latency_table: str = ""  # with cost=latency: a table from `vared profile MODEL --latency-table OUT`
    epochs: int = 10
    batch_size: int = 8
    workers: int = 2  # DataLoader worker processes per rank
    frames: int = 16  # frames per clip
    stride: int = 4  # frames between sampled frames
    size: int = 112  # crop size (short side resized to 128/112 of it)
    train_clips: int = 1  # random clips per video per epoch (more steps per epoch on small datasets)
    val_clips: int = 1  # clips per video for validation (uniformly spread)
    train: str = "gates"  # gates: gates and cheap ops; all: the backbone too
    lr: float = 1e-3  # learning rate of gates and cheap ops
    backbone_lr_scale: float = 0.1  # backbone lr = lr × this (with train=all)
    weight_decay: float = 0.0
    flops_weight: float = 4.0  # λ in λ·(F − τ)²
    distill_weight: float = 1.0  # α in α·KD(student, full path)
    distill_temperature: float = 1.0
    relaxation: str = "hard"  # hard: straight-through one-hot; soft: the Gumbel-softmax mixture of options
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
    calibrate: bool = True  # after training, shift the gates' thresholds so training clips meet the target
    calibrate_clips: int = 256  # training clips (deterministic, one per video) that calibration decides on
    static_option: str = ""  # T,C: every layer fixed at this option, only cheap ops (and backbone) train
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "FinetuneConfig":
        """Check every value's type and range; raises :class:`~vared_convert.errors.ArgumentError` naming the flag."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float", "bool", "str") and value is not None:
                setattr(self, f.name, _typed(f.name, value, f.type))
        for name in ("epochs", "batch_size", "frames", "stride", "size", "train_clips", "val_clips", "log_every",
                     "calibrate_clips"):
            integer(name, getattr(self, name), 1)
        for name in ("workers", "warmup_epochs", "save_every", "max_steps", "seed"):
            integer(name, getattr(self, name), 0)
        # a time ratio may exceed 1 where the gates' fixed costs outweigh what their layers save (small networks)
        number("target_flops", self.target_flops, maximum=2 if self.cost == "latency" else 1, above=0)
        number("lr", self.lr, above=0)
        for name in ("backbone_lr_scale", "weight_decay", "flops_weight", "distill_weight", "budget_slack"):
            number(name, getattr(self, name), 0)
        for name in ("distill_temperature", "tau_start", "tau_end"):
            number(name, getattr(self, name), above=0)
        for name, allowed in (("train", ("gates", "all")), ("relaxation", ("hard", "soft")),
                              ("amp", ("auto", "bf16", "fp16", "off"))):
            if getattr(self, name) not in allowed:
                raise ArgumentError(flag_name(name), getattr(self, name), f"must be one of {', '.join(allowed)}")
        if self.cost not in ("flops", "latency"):
            raise ArgumentError("--cost", self.cost, "must be one of flops, latency")
        if self.cost == "latency" and not self.latency_table:
            raise VaredError("--cost latency needs --latency-table PATH (write one with vared profile MODEL "
                             "--latency-table OUT on the deployment device)")
        if self.cost == "flops" and self.latency_table:
            raise VaredError("--latency-table is read only with --cost latency; add --cost latency or drop it")
        if self.static_option:
            from ..profile import parse_option

            try:
                parse_option(self.static_option)
            except VaredError:
                raise ArgumentError("--static-option", self.static_option,
                                    "expected T,C such as 2,0.5 (temporal factor, channel ratio)") from None
        if self.warmup_epochs >= self.epochs:
            raise ArgumentError("--warmup-epochs", self.warmup_epochs, f"must be smaller than --epochs ({self.epochs})")
        return self


def _typed(name: str, value: Any, kind: str) -> Any:
    """A value from YAML or a flag as the field's type: ``1e-3`` (a string to YAML) is a number, ``abc`` is not."""
    if kind == "str":
        if not isinstance(value, str):
            raise ArgumentError(flag_name(name), value, "expected a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ArgumentError(flag_name(name), value, "expected true or false")
        return value
    if isinstance(value, str):
        try:
            value = float(value) if kind == "float" else int(value)
        except ValueError:
            raise ArgumentError(flag_name(name), value, f"expected {'a number' if kind == 'float' else 'an integer'}")
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


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
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise VaredError(f"--config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        except yaml.YAMLError as exc:
            raise VaredError(f"--config {path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
        if not isinstance(loaded, dict):
            raise VaredError(f"--config {path}: expected a mapping of option: value")
        values.update({str(k).replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - FIELD_NAMES)
    if unknown:
        raise VaredError(f"unknown finetune option(s): {', '.join(unknown)}")
    return FinetuneConfig(**values).validate()
