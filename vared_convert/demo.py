"""`vared demo`: the whole tool on an embedded default, end to end on a laptop CPU, no download.

1. write a synthetic action dataset (static classes: appearance; motion classes: movement);
2. train a small 3D CNN on it: the stand-in for "your pretrained model", saved as a plain state_dict;
3. convert it (verified), 4. finetune the gates to a FLOPs target, 5. evaluate and profile it on the
validation clips (FLOPs, latency, decisions per class), 6. export it to ONNX (verified with ONNX Runtime).

Every step calls the same library functions as the individual commands; the summary lists those commands.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .data.synthetic import STATIC_CLASSES
from .errors import OutputError
from .files import check_output_path

__all__ = ["DemoSettings", "DemoResult", "run_demo", "train_baseline", "conversion_options", "QUICK", "FULL",
           "STATIC_CLASSES"]

ARCH = "vared:demo_c3d"
MARKER = ".vared-demo"  # written into every demo folder: only such a folder's files are replaced by --force
DEMO_FILES = ("data", "run", "baseline.pth", "baseline_vared.pth", "adaptive.pth", "adaptive.onnx",
              "adaptive_static.onnx", "savings.png", "decisions.png")


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run (the full one reaches the finetune issue's goals; the quick one shows the flow)."""

    train_per_class: int
    val_per_class: int
    baseline_epochs: int
    baseline_clips: int  # random clips per training video per epoch
    finetune_epochs: int
    warmup_epochs: int
    finetune_clips: int
    target_flops: float = 0.6
    frames: int = 8
    stride: int = 2
    size: int = 56
    width: int = 16
    batch_size: int = 16
    lr: float = 3e-3
    flops_weight: float = 100.0
    tau_end: float = 0.1
    relaxation: str = "hard"  # straight-through learns the still/moving split; the soft mixture does not
    export_dynamic: bool = True
    granularity: str = "stage"  # vared convert --granularity: its two spatio-temporal blocks are one run, one gate
    time_aware: bool = True  # vared convert --time-aware: no gate where it cannot save time on this CPU
    temporal: tuple[int, ...] = (1, 2, 4)  # vared convert --temporal: a still scene loses nothing on every 4th frame
    latency_threads: int = 1  # batch-1 latency on one CPU thread, as benchmarks/bench_speed.py measures
    latency_repeats: int = 30  # interleaved rounds of the latency measurement (median)

    @property
    def clip(self) -> dict[str, Any]:
        """The clips every step reads: :meth:`VideoClipDataset.from_index`'s size arguments."""
        return dict(frames=self.frames, stride=self.stride, size=self.size, normalization="kinetics")


FULL = DemoSettings(train_per_class=24, val_per_class=24, baseline_epochs=12, baseline_clips=6, finetune_epochs=16,
                    warmup_epochs=2, finetune_clips=4)
QUICK = DemoSettings(train_per_class=16, val_per_class=4, baseline_epochs=10, baseline_clips=6, finetune_epochs=8,
                     warmup_epochs=1, finetune_clips=4)


@dataclass
class DemoResult:
    """What the demo measured, and where it wrote."""

    out: Path
    classes: list[str]
    original_top1: float
    adaptive_top1: float
    full_path_top1: float
    cheapest_top1: float
    original_gflops: float
    adaptive_gflops: float
    flops_ratio: float
    target_flops: float
    static_kind: str  # the best static alternative at the adaptive model's FLOPs (alternatives.best_static)
    static_detail: str
    static_top1: float
    static_flops_ratio: float
    latency: dict[str, Any]
    class_temporal_share: dict[str, float]
    class_option_share: dict[str, dict[str, float]]
    files: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def static_temporal_share(self) -> float:
        values = [v for c, v in self.class_temporal_share.items() if c in STATIC_CLASSES]
        return sum(values) / max(1, len(values))

    @property
    def motion_temporal_share(self) -> float:
        values = [v for c, v in self.class_temporal_share.items() if c not in STATIC_CLASSES]
        return sum(values) / max(1, len(values))

    def to_dict(self) -> dict[str, Any]:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        data.update(static_temporal_share=self.static_temporal_share, motion_temporal_share=self.motion_temporal_share)
        return data


Step = Callable[[str, str], None]  # (title, explanation)
Progress = Callable[[str, int], Callable[[int], None]]  # (label, total) -> advance(n)


def _quiet_step(title: str, explanation: str) -> None:
    return None


def _no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda n: None


def run_demo(
    out: str | os.PathLike,
    settings: DemoSettings = FULL,
    *,
    force: bool = False,
    on_step: Step = _quiet_step,
    progress: Progress = _no_progress,
    on_finetune_event: Callable[[str, dict[str, Any]], None] | None = None,
    seed: int = 0,
    json_out: str | os.PathLike | None = None,
) -> DemoResult:
    """Run every step into folder ``out``, and write the summary as JSON to ``json_out`` if given.

    ``out`` must be absent or empty; with ``force``, it may also be the folder of an earlier demo run, whose
    outputs (and nothing else in it) are replaced. Both outputs are checked before any work starts.
    """
    from .alternatives import best_static, static_alternatives
    from .api import convert_checkpoint
    from .checkpoint import load_model, save_torch_file
    from .data.dataset import VideoClipDataset, make_loader
    from .data.synthetic import write_synthetic_dataset
    from .export import export_model, static_policy
    from .nn import forced_policy
    from .plots import plot_class_decisions, plot_layer_savings
    from .predict import evaluate
    from .profile import profile_model
    from .timing import cpu_threads
    from .train.finetune import finetune
    from .train.supervised import top1

    started = time.time()
    out = Path(out)
    if json_out is not None:
        if Path(json_out).resolve().is_relative_to(out.resolve()):
            raise OutputError(f"--json {json_out} is inside --out {out}; write the summary elsewhere")
        check_output_path(json_out, force, what="--json")
    _prepare_folder(out, force)
    torch.manual_seed(seed)
    s = settings
    clip = s.clip
    data = out / "data"

    on_step("1. Data", f"writing a synthetic action dataset to {data}: 4 classes told apart by appearance alone "
                       "(a still textured square), 4 by motion (rise, fall, drift, shake)")
    total = 8 * (s.train_per_class + s.val_per_class)
    advance = progress("writing videos", total)
    index = write_synthetic_dataset(data, train_per_class=s.train_per_class, val_per_class=s.val_per_class,
                                    seed=seed, progress=lambda done, _total: advance(1))
    classes = index.classes

    on_step("2. Baseline", "training a small 3D CNN (appearance blocks, then spatio-temporal ones): it stands for "
                           "your pretrained model; saved as a plain state_dict")
    val_set = VideoClipDataset.from_index(index, "val", train=False, seed=seed, **clip)
    # decoded once, then reused by every measurement below (original, adaptive, full path, cheapest, profile)
    val_batches = [batch for batch in make_loader(val_set, 32, 2, seed=seed) if batch.get("clip") is not None]
    baseline = train_baseline(index, s, seed=seed, progress=progress)
    original_top1 = top1(baseline, val_batches, torch.device("cpu"))
    baseline_path = out / "baseline.pth"
    save_torch_file(baseline.state_dict(), baseline_path, force=True)

    runs = " (blocks in a row at one resolution share one gate)" if s.granularity == "stage" else ""
    on_step("3. Convert", f"rewriting its blocks into adaptive ones with torch.fx{runs} (each timed on this CPU: one "
                          "whose gate would cost more time than it can save stays static), and verifying that the "
                          "full path reproduces the original exactly")
    converted_path = out / "baseline_vared.pth"
    shape = (3, s.frames, s.size, s.size)
    convert_checkpoint(baseline_path, converted_path, ARCH, num_classes=len(classes), input_shape=shape,
                       class_names=classes, force=True, **conversion_options(s))

    on_step("4. Finetune", f"learning the gates and cheap ops to a FLOPs target of {s.target_flops} (CE + "
                           "distillation from the full path + λ·(F − τ)²), the backbone frozen")
    adaptive_path = out / "adaptive.pth"
    run_dir = out / "run"
    finetune(converted_path, dict(
        data=str(data), target_flops=s.target_flops, epochs=s.finetune_epochs, warmup_epochs=s.warmup_epochs,
        batch_size=s.batch_size, frames=s.frames, stride=s.stride, size=s.size, train_clips=s.finetune_clips,
        lr=s.lr, flops_weight=s.flops_weight, tau_end=s.tau_end, relaxation=s.relaxation, run_dir=str(run_dir),
        out=str(adaptive_path), seed=seed, device="cpu", log_every=5,
    ), on_event=on_finetune_event)

    on_step("5. Evaluate and profile", "measuring the adaptive model on the validation clips: accuracy, FLOPs per "
                                       "layer, what each class chose, CPU latency against the original, and the "
                                       "static policies a user could run instead at the same FLOPs")
    adaptive = load_model(adaptive_path)
    report = evaluate(adaptive, val_batches)
    # what a user would deploy instead at the same cost, on the same weights (no further training)
    policy_set = VideoClipDataset.from_index(index, "train", train=False, seed=seed, **clip)
    train_batches = [b for b in make_loader(policy_set, 32, 2, seed=seed) if b.get("clip") is not None]
    static = best_static(static_alternatives(adaptive, val_batches, train_batches, seed), report.flops_ratio)
    with forced_policy(adaptive, (1, 1.0)):
        full_path_top1 = top1(adaptive, val_batches, torch.device("cpu"))
    with forced_policy(adaptive, (max(adaptive.vared_info.recipe.temporal), min(adaptive.vared_info.recipe.channel))):
        cheapest_top1 = top1(adaptive, val_batches, torch.device("cpu"))
    adaptive = load_model(adaptive_path)  # contiguous layout for profiling and export
    with cpu_threads(s.latency_threads):
        profile = profile_model(adaptive, clips=((b["clip"], b["label"]) for b in val_batches), class_names=classes,
                                latency=True, repeats=s.latency_repeats, latency_clips=8)
    plot_layer_savings(profile, out / "savings.png")
    shares = _class_shares(profile.class_histograms)
    plot_class_decisions(profile.class_histograms, out / "decisions.png",
                         title="Options chosen per class (static classes left, motion classes right)",
                         order=[c for c in classes if c in STATIC_CLASSES] + [c for c in classes if c not in STATIC_CLASSES])

    on_step("6. Export", "writing ONNX and checking it against PyTorch with ONNX Runtime")
    files = {"dataset": str(data), "baseline": str(baseline_path), "converted": str(converted_path),
             "adaptive": str(adaptive_path), "run": str(run_dir), "savings_plot": str(out / "savings.png"),
             "decisions_plot": str(out / "decisions.png")}
    static_onnx = out / "adaptive_static.onnx"
    export_model(adaptive, onnx=static_onnx, policy=static_policy(adaptive, (1, 1.0)), force=True)
    files["onnx_static"] = str(static_onnx)
    if s.export_dynamic:
        torch._dynamo.reset()
        dynamic_onnx = out / "adaptive.onnx"
        export_model(adaptive, onnx=dynamic_onnx, force=True)
        files["onnx"] = str(dynamic_onnx)

    commands = [
        f"vared convert {baseline_path} --arch {ARCH} --num-classes {len(classes)} --input-shape "
        f"{','.join(map(str, shape))} --granularity {s.granularity}{' --time-aware' if s.time_aware else ''} "
        f"--temporal {','.join(map(str, s.temporal))} --out {converted_path}",
        f"vared finetune {converted_path} --data {data} --target-flops {s.target_flops} --epochs {s.finetune_epochs} "
        f"--warmup-epochs {s.warmup_epochs} --frames {s.frames} --stride {s.stride} --size {s.size} "
        f"--batch-size {s.batch_size} --train-clips {s.finetune_clips} --lr {s.lr} --flops-weight {s.flops_weight} "
        f"--tau-end {s.tau_end} --relaxation {s.relaxation} --out {adaptive_path}",
        f"vared evaluate {adaptive_path} --data {data} --stride {s.stride}",
        f"vared profile {adaptive_path} --latency --threads {s.latency_threads} --repeats {s.latency_repeats} "
        f"--plot {out / 'savings.png'}",
        f"vared export {adaptive_path} --onnx {out / 'adaptive.onnx'}",
    ]
    lat = profile.latency.to_dict() if profile.latency else {}
    result = DemoResult(
        out=out, classes=classes, original_top1=original_top1, adaptive_top1=report.clip_top1,
        full_path_top1=full_path_top1, cheapest_top1=cheapest_top1,
        original_gflops=report.original_gflops, adaptive_gflops=report.adaptive_gflops, flops_ratio=report.flops_ratio,
        target_flops=s.target_flops, static_kind=static.kind, static_detail=static.detail, static_top1=static.top1,
        static_flops_ratio=static.flops_ratio,
        latency=lat, class_temporal_share={c: v["temporal"] for c, v in shares.items()},
        class_option_share={c: v["options"] for c, v in shares.items()}, files=files, commands=commands,
        seconds=time.time() - started,
    )
    if json_out is not None:
        from .api import write_json

        write_json(json_out, result.to_dict(), force=force)
    return result


def train_baseline(index: Any, settings: DemoSettings = FULL, *, seed: int = 0, workers: int = 2,
                   progress: Progress = _no_progress) -> nn.Module:
    """The demo's stand-in for a pretrained model: ``demo_c3d`` trained on the training split of ``index`` (a
    :func:`~vared_convert.data.layouts.index_dataset` result) at the settings' clip size."""
    from .baseline import demo_c3d
    from .data.dataset import VideoClipDataset, make_loader
    from .train.supervised import train_classifier

    s = settings
    torch.manual_seed(seed)
    train_set = VideoClipDataset.from_index(index, "train", clips_per_video=s.baseline_clips, seed=seed, **s.clip)
    loader = make_loader(train_set, s.batch_size, workers, shuffle=True, drop_last=True, seed=seed)
    advance = progress("training the baseline", len(loader) * s.baseline_epochs)

    def epochs(epoch: int):
        loader.set_epoch(epoch)
        return loader

    model = demo_c3d(num_classes=len(index.classes), width=s.width)
    return train_classifier(model, epochs, len(loader), s.baseline_epochs, lr=3e-3,
                            on_step=lambda step, loss: advance(1))


def conversion_options(settings: DemoSettings = FULL) -> dict[str, Any]:
    """How the demo converts its baseline: :func:`~vared_convert.api.convert_checkpoint`'s keyword arguments."""
    return dict(granularity=settings.granularity, time_aware=settings.time_aware, temporal=settings.temporal)


def _prepare_folder(out: Path, force: bool) -> None:
    """Make ``out`` ready for a run: absent or empty, or (with ``force``) an earlier demo's folder, whose outputs
    are removed. A folder holding anything else is refused, with or without ``force``."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder")
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if entries:
        if not force:
            raise OutputError(f"--out {out} is not empty; choose another folder, or pass --force to replace an "
                              "earlier demo run in it")
        foreign = sorted(entries - set(DEMO_FILES) - {MARKER})
        if MARKER not in entries or foreign:
            shown = ", ".join(foreign[:3]) or "no .vared-demo marker"
            raise OutputError(f"--out {out} holds files that vared demo did not write ({shown}); --force only "
                              "replaces an earlier demo run: choose another folder")
        for name in entries & set(DEMO_FILES):
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if not out.parent.is_dir():
        raise OutputError(f"--out {out}: folder {out.parent} does not exist")
    out.mkdir(exist_ok=True)
    (out / MARKER).write_text("written by vared demo; `vared demo --force` replaces this folder's demo files\n")


def _class_shares(histograms: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per class: the share of layer decisions that skipped frames, and the share of each option."""
    shares = {}
    for cls, counts in histograms.items():
        total = max(1, sum(counts.values()))
        temporal = sum(n for label, n in counts.items() if int(label.split(",")[0]) > 1) / total
        shares[cls] = {"temporal": temporal, "options": {label: n / total for label, n in sorted(counts.items())}}
    return shares
