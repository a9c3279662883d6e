"""`vared finetune`: a converted model, a dataset and a FLOPs target in; a finetuned adaptive model out."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import yaml
from torch import nn
from torch.utils.data import DistributedSampler

from ..checkpoint import load_model, read_checkpoint, save_model
from ..errors import NotConvertedError, OutputError, VaredError
from ..files import atomic_output, check_output_path
from ..latency import label_cost
from ..recipe import model_info
from .config import FinetuneConfig, load_config
from .distributed import Runtime, setup_runtime, teardown_runtime
from .calibrate import Calibration
from .state import load_training_state
from .trainer import EventFn, Finetuner, ValidationResult

__all__ = ["FinetuneResult", "finetune", "replace_head"]


@dataclass
class FinetuneResult:
    """Where the run went and how it ended."""

    run_dir: Path
    out: Path | None  # the finetuned model (the best epoch), None when interrupted
    last: ValidationResult | None
    best: dict[str, Any]
    interrupted: bool
    model: nn.Module
    config: FinetuneConfig
    stopped_by: str | None = None  # "SIGINT" or "SIGTERM" when interrupted
    calibration: Calibration | None = None  # how the gates' thresholds were shifted (None: not calibrated)
    final: ValidationResult | None = None  # the written model's validation (after calibration)


class _SkippingSampler(DistributedSampler):
    """A DistributedSampler (one replica by default) that can start an epoch after its first ``skip`` samples."""

    def __init__(self, dataset: Any, runtime: Runtime, shuffle: bool, seed: int, drop_last: bool):
        super().__init__(dataset, num_replicas=runtime.world_size, rank=runtime.rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Swap the last ``nn.Linear`` (outside the gates) for a fresh one with ``num_classes`` outputs."""
    from ..nn import AdaptiveLayer
    from ..recipe import replace_module

    gate_modules = {id(m) for layer in model.modules() if isinstance(layer, AdaptiveLayer) for m in layer.gate.modules()}
    heads = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in gate_modules]
    if not heads:
        raise VaredError("--reset-head: the model has no nn.Linear classifier to replace")
    name, old = heads[-1]
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None).to(old.weight.device)
    replace_module(model, name, new)
    model_info(model).arch.num_classes = num_classes
    return model


def _load_converted(path: str | os.PathLike, arch: str | None = None) -> nn.Module:
    """The converted model at ``path``; a plain checkpoint (or a model without a recipe) names `vared convert`."""
    not_converted = VaredError(
        f"{path} is not a converted vared model; convert it first: vared convert {path} "
        f"--out {Path(path).stem}_vared.pth (add --arch module.path:factory for a network of your own)"
    )
    try:
        model = load_model(path, arch)
    except NotConvertedError:
        raise not_converted from None
    info = model_info(model)
    if info is None or info.recipe is None:
        raise not_converted
    return model


def _check_outputs(model_path: str | os.PathLike, run_dir: Path, out: Path | None,
                   resume: str | os.PathLike | None, force: bool) -> Path:
    """Before any work: the run folder takes a new run (or is the one resumed) and can be written; ``out`` (default
    ``run_dir/final.pth``) is not the model and exists only with ``force``. Returns where the model will go."""
    if not resume and (run_dir / "last.pth").exists():
        raise OutputError(f"{run_dir} already holds a run; continue it with --resume {run_dir / 'last.pth'} "
                          "or choose another --run-dir")
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"--run-dir {run_dir} is a file, not a folder")
    existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
    check_output_path(existing / ".vared-check", what="--run-dir")  # its nearest existing folder is writable
    if out is None:
        out = run_dir / "final.pth"
        if out.exists() and not force:
            raise OutputError(f"{out} exists; pass --force to overwrite it, or choose another --out")
        return out
    inputs = [model_path] + ([resume] if resume else [])
    check_output_path(out, force, inputs=inputs, what="--out")
    return out


def _head_size(model: nn.Module, clip_shape: tuple[int, ...], device: torch.device) -> int:
    with torch.no_grad():
        return int(model.eval()(torch.zeros(1, *clip_shape, device=device)).shape[1])


def _calibration_clips(index: Any, cfg: FinetuneConfig, common: dict[str, Any], runtime: Runtime
                       ) -> list[torch.Tensor]:
    """This process's share of ``cfg.calibrate_clips`` training clips (a seeded choice of videos, one centred clip
    each, no augmentation), decoded once into batches."""
    from ..data.dataset import VideoClipDataset, make_loader

    dataset = VideoClipDataset.from_index(index, "train", train=False, clips_per_video=1, **common)
    sampler = _SkippingSampler(dataset, runtime, shuffle=True, seed=cfg.seed, drop_last=False)
    wanted = -(-cfg.calibrate_clips // runtime.world_size)
    batches, count = [], 0
    for batch in make_loader(dataset, cfg.batch_size, cfg.workers, sampler=sampler, seed=cfg.seed):
        if count >= wanted:
            break
        if batch.get("clip") is None:
            continue
        batches.append(batch["clip"][: wanted - count])
        count += len(batches[-1])
    if not count:
        raise VaredError("calibration: none of the training videos could be decoded")
    return batches


def finetune(
    model_path: str | os.PathLike,
    overrides: dict[str, Any] | None = None,
    *,
    config_file: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    on_event: EventFn | None = None,
    arch: str | None = None,
    force: bool = False,
) -> FinetuneResult:
    """Learn the policy of a converted model to ``target_flops`` on ``data`` (see :class:`FinetuneConfig`).

    Runs in one process, or in each process of a torchrun launch (DistributedDataParallel); only rank 0 logs
    and writes files. ``resume`` continues a run from its ``last.pth`` exactly. ``arch`` names the architecture
    to build when the model records user code (see :func:`~vared_convert.checkpoint.load_model`). An existing
    ``out`` is replaced only with ``force``; every argument and output is checked before training starts, and
    the run folder is created only then.
    """
    from ..data.dataset import FailureLog, VideoClipDataset, make_loader
    from ..data.layouts import index_dataset

    overrides = dict(overrides or {})
    state = load_training_state(resume) if resume else None
    cfg = load_config(config_file, overrides, base=state["config"] if state else None)
    if not cfg.data:
        raise VaredError("say where the videos are with --data DIR")
    run_dir = Path(resume).parent if resume else Path(cfg.run_dir or Path("runs") / Path(model_path).stem)
    out = _check_outputs(model_path, run_dir, Path(cfg.out) if cfg.out else None, resume, force)
    runtime = setup_runtime(cfg.device)
    emit: EventFn = on_event if (on_event and runtime.is_main) else (lambda kind, data: None)
    try:
        torch.manual_seed(cfg.seed)
        model = _load_converted(model_path, arch)
        info = model_info(model)
        model.to(runtime.device)
        clip_shape = (3, cfg.frames, cfg.size, cfg.size)
        index = index_dataset(cfg.data, cfg.layout, class_names=None if cfg.reset_head else info.class_names)
        classes = index.classes
        head = _head_size(model, clip_shape, runtime.device)
        if cfg.reset_head and head != len(classes):
            replace_head(model, len(classes))
        elif head != len(classes):
            raise VaredError(
                f"the dataset has {len(classes)} classes but the model's head has {head} outputs; pass --reset-head "
                "to train a new classifier (with --train all for best results)"
            )
        info.class_names = list(classes)

        common = dict(frames=cfg.frames, stride=cfg.stride, size=cfg.size, normalization=info.arch.normalization,
                      seed=cfg.seed)
        train_set = VideoClipDataset.from_index(index, "train", train=True, clips_per_video=cfg.train_clips, **common)
        val_set = VideoClipDataset.from_index(index, "val", train=False, clips_per_video=cfg.val_clips, **common)
        if len(train_set) < cfg.batch_size * runtime.world_size:
            raise VaredError(f"{len(train_set)} training videos are fewer than one batch "
                             f"({cfg.batch_size} × {runtime.world_size} processes); lower --batch-size")
        train_sampler = _SkippingSampler(train_set, runtime, shuffle=True, seed=cfg.seed, drop_last=True)
        train_loader = make_loader(train_set, cfg.batch_size, cfg.workers, sampler=train_sampler, seed=cfg.seed,
                                   drop_last=True, pin_memory=runtime.device.type == "cuda")
        val_sampler = _SkippingSampler(val_set, runtime, shuffle=False, seed=cfg.seed, drop_last=False)
        val_loader = make_loader(val_set, cfg.batch_size, cfg.workers, sampler=val_sampler, seed=cfg.seed)
        train_failures, val_failures = FailureLog(train_set.num_videos), FailureLog(val_set.num_videos)

        def report_failures(log: FailureLog, batch: dict[str, Any]) -> None:
            new = log.update(batch)
            if new:
                emit("failed", {"files": new, "count": log.count})

        def train_batches(epoch: int, skip_batches: int) -> Iterator[dict[str, Any]]:
            train_sampler.skip = skip_batches * cfg.batch_size
            train_loader.set_epoch(epoch)
            for batch in train_loader:
                report_failures(train_failures, batch)
                yield batch

        def val_batches() -> Iterator[dict[str, Any]]:
            val_loader.set_epoch(0)
            for batch in val_loader:
                report_failures(val_failures, batch)
                yield batch

        trainer = Finetuner(model, cfg, runtime, train_batches, val_batches, len(train_loader), clip_shape, classes,
                            run_dir, emit)
        if state is not None:
            trainer.resume(resume)
        new_folder = not run_dir.exists()
        if runtime.is_main:  # every check passed: the run's files may be written now
            run_dir.mkdir(parents=True, exist_ok=True)
            with atomic_output(run_dir / "config.yaml", force=True) as tmp:
                tmp.write_text(yaml.safe_dump({**cfg.to_dict(), "model": str(model_path), "classes": classes},
                                              sort_keys=False))
        label_cost(model, trainer.costs, run_dir if runtime.is_main else None)  # the device a time budget is for
        try:
            last = trainer.fit()
        except VaredError:
            if runtime.is_main and new_folder and trainer.step == 0 and not resume:
                shutil.rmtree(run_dir, ignore_errors=True)  # it failed before training anything: leave nothing
            raise
        interrupted = trainer.epoch < cfg.epochs and trainer.step < trainer.total_steps
        written, calibration, final = None, None, None
        runtime.barrier()
        best_path = run_dir / "best.pth"
        if not interrupted and best_path.exists() and cfg.calibrate and trainer.policy is None:
            model.load_state_dict(read_checkpoint(best_path)["state_dict"])
            emit("calibrating", {"target": cfg.target_flops})
            calibration = trainer.calibrate(_calibration_clips(index, cfg, common, runtime))
            final = trainer.validate()
            emit("calibrated", {"calibration": calibration, "result": final})
            if runtime.is_main:
                save_model(model, out, force=True, inputs=[model_path])
                written = out
        elif runtime.is_main and not interrupted and best_path.exists():
            with atomic_output(out, force=True, inputs=[model_path]) as tmp:
                shutil.copyfile(best_path, tmp)
            written = out
        runtime.barrier()
        result = FinetuneResult(run_dir, written, last, trainer.best, interrupted, model, cfg, trainer.stopped_by,
                                calibration, final)
        emit("done", {"result": result})
        return result
    finally:
        teardown_runtime(runtime)
