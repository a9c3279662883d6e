"""The finetune loop: learn the input-dependent policy to a FLOPs target.

Per step: the teacher is the same network's full path (every gate forced to the full option, no gradient);
the student runs with Gumbel straight-through gates (each layer computes its full conv once and derives every
option from it); the loss is CE + α·KD + λ·(F̄ − τ)², F being the expected FLOPs ratio under the gates'
decisions. The Gumbel temperature is annealed exponentially. The loop is the same on the CPU, one GPU, or many
processes under torchrun (DistributedDataParallel; only rank 0 logs and saves).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..checkpoint import save_model
from ..errors import Terminated, VaredError
from ..flops import CostModel
from ..latency import cost_model
from ..nn import (AdaptiveLayer, adaptive_layers, channel_count, forced_policy, recording, runs_cheap_ops, set_policy,
                  set_temperature)
from ..recipe import model_info
from .config import FinetuneConfig
from .distributed import Runtime
from .calibrate import Calibration, calibrate_gates, clear_calibration
from .losses import Objective
from .state import load_training_state, restore_rng_state, rng_state, save_training_state

__all__ = ["Finetuner", "ValidationResult", "EventFn", "option_kinds"]

EventFn = Callable[[str, dict[str, Any]], None]
BatchesFn = Callable[[int, int], Iterable[dict[str, Any]]]  # (epoch, batches to skip) -> batches


def option_kinds(model: nn.Module) -> list[tuple[int, float]]:
    """The search space's (temporal factor, channel ratio) pairs: the columns of option histograms."""
    recipe = model_info(model).recipe
    return [(t, c) for t in recipe.temporal for c in recipe.channel]


def _layer_kind_index(layer: AdaptiveLayer, kinds: list[tuple[int, float]]) -> list[int]:
    """Map each of a layer's options to its (temporal, channel ratio) kind."""
    index = []
    for option in layer.options:
        matches = [i for i, (t, c) in enumerate(kinds)
                   if t == option.temporal and channel_count(c, layer.width) == option.channels]
        index.append(matches[0])
    return index


@dataclass
class ValidationResult:
    """One validation pass: adaptive and full-path top-1, FLOPs ratio, decisions per class."""

    top1: float
    top1_full: float
    flops_ratio: float
    clips: int
    kinds: list[tuple[int, float]]
    class_counts: list[list[int]]  # [class][kind] layer decisions
    class_names: list[str]
    per_class_top1: list[float] = field(default_factory=list)

    def temporal_share(self, class_index: int) -> float:
        """Share of a class's layer decisions that skipped frames (temporal factor > 1)."""
        counts = self.class_counts[class_index]
        total = sum(counts)
        return sum(n for n, (t, _) in zip(counts, self.kinds) if t > 1) / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1": self.top1,
            "top1_full": self.top1_full,
            "flops_ratio": self.flops_ratio,
            "clips": self.clips,
            "option_kinds": [f"{t},{c:g}" for t, c in self.kinds],
            "class_option_counts": {name: counts for name, counts in zip(self.class_names, self.class_counts)},
            "class_temporal_share": {name: self.temporal_share(i) for i, name in enumerate(self.class_names)},
            "per_class_top1": dict(zip(self.class_names, self.per_class_top1)),
        }


class _StopRequest:
    """Ctrl-C or SIGTERM sets a flag; the loop stops at the next step boundary (all ranks together) and saves.

    A second signal stops at once (as ``KeyboardInterrupt`` or ``Terminated``), saving nothing more.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopRequest":
        def handler(signum: int, frame: Any) -> None:
            if self.requested:  # a second signal: stop now
                raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()
            self.requested = True
            self.signal_name = signal.Signals(signum).name

        for signum in self.SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, handler)
            except ValueError:  # not the main thread: no handler, signals behave as usual
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


class Finetuner:
    """Trains the gates (and optionally the backbone) of a converted model to a FLOPs target."""

    def __init__(
        self,
        model: nn.Module,
        config: FinetuneConfig,
        runtime: Runtime,
        train_batches: BatchesFn,
        val_batches: Callable[[], Iterable[dict[str, Any]]],
        steps_per_epoch: int,
        clip_shape: tuple[int, ...],
        class_names: list[str],
        run_dir: Path,
        on_event: EventFn | None = None,
    ):
        self.cfg, self.runtime, self.run_dir = config, runtime, run_dir
        self.model = model.to(runtime.device)
        self.train_batches, self.val_batches = train_batches, val_batches
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = steps_per_epoch * config.epochs
        if config.max_steps:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.class_names = class_names
        self.on_event = on_event if (on_event and runtime.is_main) else (lambda kind, data: None)
        self.layers = [layer for _, layer in adaptive_layers(self.model)]
        if not self.layers:
            raise VaredError("the model has no adaptive layer: convert it with `vared convert` first")
        clear_calibration(self.model)  # the gates learn their own thresholds; calibration sets new ones after
        self.policy: tuple[int, float] | None = None  # a static option every layer runs (no gate learns)
        if config.static_option:
            from ..profile import check_option, parse_option

            self.policy = parse_option(config.static_option)
            try:
                check_option(self.model, self.policy)
            except VaredError as exc:
                raise VaredError(str(exc).replace("--option", "--static-option", 1)) from None
            if config.train != "all" and not config.reset_head and not runs_cheap_ops(self.model, self.policy):
                raise VaredError(
                    f"--static-option {config.static_option}: no layer of this model rebuilds frames or channels at "
                    f"that option, so --train {config.train} has nothing to learn (the model runs it as it is; "
                    f"--train all finetunes the network at that option)"
                )
        self.costs = cost_model(self.model, clip_shape, config.cost, config.latency_table)
        self.kinds = option_kinds(self.model)
        self.kind_index = [_layer_kind_index(layer, self.kinds) for layer in self.layers]
        cheapest = self.costs.min_macs() / self.costs.original_macs
        if config.target_flops <= cheapest and self.policy is None:
            raise VaredError(
                f"--target-flops {config.target_flops:g} is at or below the cheapest this model can run "
                f"({cheapest:.3f} with every gate at its cheapest option); choose a larger target"
            )
        self.objective = Objective(config.target_flops, config.flops_weight, config.distill_weight,
                                   config.distill_temperature)
        self._configure_trainable()
        self.optimizer = torch.optim.AdamW(self._param_groups(), weight_decay=config.weight_decay)
        total = max(1, self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        )
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(runtime.device.type, enabled=self.amp_dtype == torch.float16)
        self.ddp: nn.Module = self.model
        if runtime.distributed:
            device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            # A step's decisions leave the cheap ops of unchosen options (and, with hard gates, whole branches)
            # without gradient, and which ones differs between ranks and steps.
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids,
                                                           find_unused_parameters=True)
        self.epoch, self.step, self.step_in_epoch = 0, 0, 0
        self._saved_step = 0  # the step last.pth holds
        self.stopped_by: str | None = None  # the signal that stopped fit() early
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def _configure_trainable(self) -> None:
        for name, param in self.model.named_parameters():
            param.requires_grad = self.cfg.train == "all" or self._group_of(name) != "backbone"
        if self.cfg.reset_head:
            for param in self._head().parameters():
                param.requires_grad = True

    def _head(self) -> nn.Module:
        heads = [m for name, m in self.model.named_modules()
                 if isinstance(m, nn.Linear) and self._group_of(name) != "gates"]
        return heads[-1] if heads else nn.Identity()

    @staticmethod
    def _group_of(name: str) -> str:
        if ".gate." in f".{name}":
            return "gates"
        if ".rebuild_channels." in f".{name}" or ".rebuild_frames." in f".{name}":
            return "cheap_ops"
        return "backbone"

    def _param_groups(self) -> list[dict[str, Any]]:
        groups: dict[str, list[nn.Parameter]] = {"gates": [], "cheap_ops": [], "backbone": []}
        head = {id(p) for p in self._head().parameters()} if self.cfg.reset_head else set()
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                group = self._group_of(name)
                groups["cheap_ops" if id(param) in head else group].append(param)
        lrs = {"gates": self.cfg.lr, "cheap_ops": self.cfg.lr, "backbone": self.cfg.lr * self.cfg.backbone_lr_scale}
        return [{"params": ps, "lr": lrs[g], "name": g} for g, ps in groups.items() if ps]

    def _amp_dtype(self) -> torch.dtype | None:
        amp, device = self.cfg.amp, self.runtime.device
        if amp == "off" or (amp == "auto" and device.type != "cuda"):
            return None
        if amp == "fp16" and device.type != "cuda":
            raise VaredError("--amp fp16 needs a CUDA device; use bf16 or off on the CPU")
        return torch.float16 if amp == "fp16" else torch.bfloat16

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.runtime.device.type, dtype=self.amp_dtype)

    def _set_train_mode(self) -> None:
        """Train mode, with the backbone's BatchNorm statistics frozen unless asked (the gates' always learn)."""
        self.model.train()
        if not self.cfg.train_bn:
            for name, m in self.model.named_modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and self._group_of(name) != "gates":
                    m.eval()

    def temperature(self, step: int) -> float:
        """Exponential anneal from ``tau_start`` to ``tau_end`` over the run."""
        progress = min(1.0, step / max(1, self.total_steps - 1))
        return self.cfg.tau_start * (self.cfg.tau_end / self.cfg.tau_start) ** progress

    # ------------------------------------------------------------------ one step
    def _train_step(self, batch: dict[str, Any], warmup: bool) -> dict[str, float]:
        device = self.runtime.device
        clips = batch["clip"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        set_temperature(self.model, self.temperature(self.step), self.cfg.relaxation)
        set_policy(self.model, "random" if warmup and self.policy is None else self.policy)
        teacher = None
        if self.cfg.distill_weight > 0:
            self.model.eval()
            with torch.no_grad(), self._autocast(), forced_policy(self.model, (1, 1.0)):
                teacher = self.model(clips)
        self._set_train_mode()
        with self._autocast(), recording(self.model) as log:
            logits = self.ddp(clips)
            ratio = self.costs.expected_ratio([w.float() for w in log.weights(self.layers)])
            parts = self.objective(logits, labels, teacher, ratio.detach() if warmup else ratio)
        loss = parts.total if not warmup else parts.ce + self.cfg.distill_weight * parts.kd
        if not torch.isfinite(loss):
            raise self._diverged(f"the loss became {loss.item()} at step {self.step} (epoch {self.epoch + 1})")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        correct = (logits.argmax(1) == labels).sum().item()
        return {"loss": loss.item() * len(labels), "ce": parts.ce.item() * len(labels),
                "kd": parts.kd.item() * len(labels), "flops_ratio": ratio.detach().sum().item(),
                "correct": float(correct), "count": float(len(labels))}

    def _diverged(self, what: str) -> VaredError:
        """The error that stops a diverged run, naming the checkpoint to go back to if one was saved."""
        last = self.run_dir / "last.pth"
        if self.runtime.is_main and last.exists():
            kept = f"the last good checkpoint is {last} (step {self._saved_step}): resume it with a lower --lr"
        else:
            kept = "no checkpoint was saved before it: start again with a lower --lr"
        return VaredError(f"{what}; stopped, {kept} (or try --amp off)")

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> ValidationResult:
        """Adaptive (gates decide) and full-path top-1, mean FLOPs ratio and decisions per class, on every rank."""
        self.model.eval()
        set_policy(self.model, self.policy)
        n_cls, n_kinds = len(self.class_names), len(self.kinds)
        class_counts = torch.zeros(n_cls, n_kinds, dtype=torch.float64)
        per_class = torch.zeros(n_cls, 2, dtype=torch.float64)  # correct, count
        totals = torch.zeros(4, dtype=torch.float64)  # correct adaptive, correct full, flops ratio sum, count
        for batch in self.val_batches():
            if batch.get("clip") is None or len(batch["clip"]) == 0:
                continue
            clips = batch["clip"].to(self.runtime.device)
            labels = batch["label"].cpu()
            with self._autocast():
                with recording(self.model) as log:
                    logits = self.model(clips).float().cpu()
                choices = [c.cpu() for c in log.choices(self.layers)]
                with forced_policy(self.model, (1, 1.0)):
                    full_logits = self.model(clips).float().cpu()
            if not (torch.isfinite(logits).all() and torch.isfinite(full_logits).all()):
                raise self._diverged(f"the model's outputs became non-finite by the end of epoch {self.epoch + 1}")
            hit = logits.argmax(1) == labels
            totals += torch.tensor([hit.sum().item(), (full_logits.argmax(1) == labels).sum().item(),
                                    (self.costs.per_sample_macs(choices, with_gates=self.policy is None)
                                     / self.costs.original_macs).sum().item(),
                                    len(labels)], dtype=torch.float64)
            per_class.index_add_(0, labels, torch.stack([hit.double(), torch.ones(len(labels), dtype=torch.float64)], 1))
            for choice, kind_of in zip(choices, self.kind_index):
                kinds = torch.tensor(kind_of)[choice]
                class_counts.index_put_((labels, kinds), torch.ones(len(labels), dtype=torch.float64), accumulate=True)
        reduced = self.runtime.all_reduce_sum(totals.tolist() + class_counts.flatten().tolist() + per_class.flatten().tolist())
        totals = torch.tensor(reduced[:4])
        class_counts = torch.tensor(reduced[4 : 4 + n_cls * n_kinds]).view(n_cls, n_kinds)
        per_class = torch.tensor(reduced[4 + n_cls * n_kinds :]).view(n_cls, 2)
        count = max(1.0, float(totals[3]))
        return ValidationResult(
            top1=100 * float(totals[0]) / count,
            top1_full=100 * float(totals[1]) / count,
            flops_ratio=float(totals[2]) / count,
            clips=int(totals[3]),
            kinds=self.kinds,
            class_counts=[[int(v) for v in row] for row in class_counts.tolist()],
            class_names=self.class_names,
            per_class_top1=[100 * c / max(1.0, n) for c, n in per_class.tolist()],
        )

    # ------------------------------------------------------------------ calibration
    def calibrate(self, clips: list[torch.Tensor]) -> Calibration:
        """Shift the gates' thresholds so that the mean cost of their decisions on ``clips`` (this process's
        share of the calibration clips, batched) is the target (see :mod:`~vared_convert.train.calibrate`)."""
        set_policy(self.model, None)
        clips = [c.to(self.runtime.device) for c in clips]
        with self._autocast():
            return calibrate_gates(self.model, clips, self.costs, self.cfg.target_flops,
                                   reduce=self.runtime.all_reduce_sum)

    # ------------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "step_in_epoch": self.step_in_epoch,
            "best": dict(self.best),
            "history": list(self.history),
            "rng": rng_state(),
        }

    def save_last(self) -> Path | None:
        if not self.runtime.is_main:
            return None
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            raise self._diverged(f"the weights became non-finite by step {self.step}")
        path = save_training_state(self.run_dir / "last.pth", self.model, **self._state())
        self._saved_step = self.step
        self.on_event("saved", {"path": str(path), "step": self.step})
        return path

    def resume(self, path: str | Path) -> None:
        """Continue exactly where ``last.pth`` left off: weights, optimiser, scheduler, scaler, counters, RNG."""
        state = load_training_state(path)
        own = self.model.state_dict()
        saved = state["model"]["state_dict"]
        if set(saved) != set(own):
            raise VaredError(f"{path}: its model does not match this one (was the run made from another model?)")
        self.model.load_state_dict(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        self._saved_step = self.step
        self.best, self.history = dict(state.get("best") or {}), list(state.get("history") or [])
        restore_rng_state(state["rng"])
        self.on_event("resumed", {"path": str(path), "epoch": self.epoch, "step": self.step})

    def _log(self, record: dict[str, Any]) -> None:
        if self.runtime.is_main:
            with open(self.run_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _is_better(self, result: ValidationResult) -> bool:
        budget = self.cfg.target_flops + self.cfg.budget_slack
        meets = result.flops_ratio <= budget
        if not self.best:
            return True
        if meets != self.best["meets_budget"]:
            return meets
        if meets:
            return result.top1 > self.best["top1"]
        return result.flops_ratio < self.best["flops_ratio"]

    # ------------------------------------------------------------------ the loop
    def fit(self) -> ValidationResult | None:
        """Train to the end (or to Ctrl-C, which saves ``last.pth`` first); returns the last validation result."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        last: ValidationResult | None = None
        window: dict[str, float] = {}
        started = time.time()
        self.on_event("start", {"total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                                "epoch": self.epoch, "step": self.step})
        with _StopRequest() as stop:
            while self.epoch < self.cfg.epochs and self.step < self.total_steps:
                warmup = self.epoch < self.cfg.warmup_epochs
                interrupted = False
                for batch in self.train_batches(self.epoch, self.step_in_epoch):
                    if batch.get("clip") is None or len(batch["clip"]) == 0:
                        continue
                    stats = self._train_step(batch, warmup)
                    self.step += 1
                    self.step_in_epoch += 1
                    for k, v in stats.items():
                        window[k] = window.get(k, 0.0) + v
                    if self.step % self.cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                        self._log_window(window, warmup, started)
                        window = {}
                    else:
                        self.on_event("tick", {"step": self.step})
                    if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                        self.save_last()
                    if self.runtime.all_reduce_sum([float(stop.requested)])[0] > 0:
                        interrupted = True
                        break
                    if self.step >= self.total_steps:
                        break
                if interrupted:
                    self.stopped_by = stop.signal_name or "SIGINT"
                    self.save_last()
                    self.on_event("interrupted", {"step": self.step, "path": str(self.run_dir / "last.pth")})
                    return last
                last = self._end_epoch()
        return last

    def _log_window(self, window: dict[str, float], warmup: bool, started: float) -> None:
        agg = dict(zip(window, self.runtime.all_reduce_sum(list(window.values()))))
        n = max(1.0, agg["count"])
        record = {"kind": "train", "epoch": self.epoch + 1, "step": self.step, "loss": agg["loss"] / n,
                  "ce": agg["ce"] / n, "kd": agg["kd"] / n, "top1": 100 * agg["correct"] / n,
                  "flops_ratio": agg["flops_ratio"] / n, "tau": self.temperature(self.step),
                  "lr": self.scheduler.get_last_lr()[0], "warmup": warmup, "seconds": time.time() - started}
        self._log(record)
        self.on_event("step", record)

    def _end_epoch(self) -> ValidationResult:
        self.runtime.average_buffers(self.model)
        result = self.validate()
        self.epoch += 1
        self.step_in_epoch = 0
        record = {"kind": "val", "epoch": self.epoch, "step": self.step, **result.to_dict()}
        self.history.append({k: record[k] for k in ("epoch", "step", "top1", "top1_full", "flops_ratio")})
        self._log(record)
        better = self._is_better(result)
        if better:
            self.best = {"epoch": self.epoch, "top1": result.top1, "flops_ratio": result.flops_ratio,
                         "meets_budget": result.flops_ratio <= self.cfg.target_flops + self.cfg.budget_slack}
            if self.runtime.is_main:
                save_model(self.model, self.run_dir / "best.pth", force=True)
        self.on_event("epoch", {"epoch": self.epoch, "result": result, "best": better})
        self.save_last()
        return result

