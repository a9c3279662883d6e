"""Does the input-dependent policy beat the static choices a user would make instead, at the same cost?

From one converted model and under one training budget for all (same epochs, data, seed and finetune settings),
for each FLOPs target:

* ``adaptive``: ``vared finetune --target-flops τ`` (calibrated after training);
* ``most frequent``: each layer's most frequent decision of that adaptive model over the training clips, as a
  static policy (``vared export --static-policy --data``), on the adaptive model's weights;
* ``searched``: every per-layer static policy within ±0.03 of the adaptive model's FLOPs tried on the training
  clips, the most accurate kept (an exhaustive search, for models of few layers), on the adaptive model's weights;
* ``random``: each clip's option drawn, layer by layer, from the adaptive model's decision frequencies on the
  training clips (the same mean cost, blind to the input), on the adaptive model's weights;
* ``uniform``: the search-space option whose FLOPs are nearest τ at every layer (each of them, when several cost
  the same), its cheap ops finetuned the same way (``--static-option T,C``);
* ``fewer frames`` / ``smaller crop``: the original network on the input size whose FLOPs are nearest τ (same time
  span), finetuned the same way (``--static-option 1,1 --train all``).

Every row is evaluated on the same validation videos (``--val-clips`` clips per video; video level averages a
video's clip logits) and timed side by side with the original, interleaved, at batch 1 on one thread, every model
with the same conv kernel (oneDNN on the CPU; median of ``--repeats`` passes over ``--timing-clips`` clips). The
FLOPs ratio is against the original on the reference clip.
Prints the table, writes ``policy.json`` and the accuracy-against-FLOPs plot ``policy.png`` into ``--out``.

    python benchmarks/bench_policy.py [DATA] [--model CONVERTED.pth] [--targets 0.5,0.55,0.75] [--epochs 16]
    python benchmarks/bench_policy.py --quick --out /tmp/bp     # a tiny end-to-end run (the test runs it)

Without DATA, the demo's synthetic dataset is written into ``--out``; without ``--model``, the demo's network
(``demo_c3d``) is trained on DATA and converted as ``vared demo`` converts it (stage granularity, time-aware,
temporal factors 1, 2 and 4).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from vared_convert.demo import FULL as DEMO

MARKER = ".bench-policy"


@dataclass(frozen=True)
class Budget:
    """The data, model and training budget every method shares."""

    targets: tuple[float, ...] = (0.5, 0.55, 0.75)
    train_per_class: int = DEMO.train_per_class  # synthetic dataset only
    val_per_class: int = DEMO.val_per_class
    video_frames: int = 32
    video_size: int = 64
    frames: int = DEMO.frames  # the rest as `vared demo` runs them
    stride: int = DEMO.stride
    size: int = DEMO.size
    width: int = DEMO.width
    baseline_epochs: int = DEMO.baseline_epochs
    baseline_clips: int = DEMO.baseline_clips
    epochs: int = DEMO.finetune_epochs
    warmup_epochs: int = DEMO.warmup_epochs
    train_clips: int = DEMO.finetune_clips
    batch_size: int = DEMO.batch_size
    lr: float = DEMO.lr
    flops_weight: float = DEMO.flops_weight
    tau_end: float = DEMO.tau_end
    relaxation: str = DEMO.relaxation
    time_aware: bool = DEMO.time_aware  # converting: no gate where it cannot save time on this CPU
    val_clips: int = 2
    policy_clips: int = 256  # training clips the most frequent and random policies are read from
    timing_clips: int = 16
    repeats: int = 5
    workers: int = 2
    seed: int = 0


QUICK = Budget(targets=(0.6,), train_per_class=3, val_per_class=1, video_frames=12, video_size=32, frames=4,
               size=32, width=8, baseline_epochs=2, baseline_clips=2, epochs=2, warmup_epochs=0, train_clips=1,
               batch_size=4, lr=2e-2, flops_weight=20.0, tau_end=0.5, time_aware=False, val_clips=1, policy_clips=24,
               timing_clips=2, repeats=2, workers=0)


@dataclass
class Row:
    """One method at one target: its FLOPs, measured time and accuracy."""

    target: float | None
    method: str
    detail: str
    flops_ratio: float
    clip_top1: float
    video_top1: float
    time_ratio: float = float("nan")
    ms: float = float("nan")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _prepare(out: Path, force: bool, keep_runs: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not (force or keep_runs) or not (out / MARKER).exists():
            sys.exit(f"--out {out} is not empty (with --force, only a folder this benchmark wrote is replaced)")
        if not keep_runs:
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by benchmarks/bench_policy.py\n")


def _baseline(index: Any, b: Budget, out: Path) -> Path:
    """The demo's stand-in for a pretrained model, trained on the data and converted as the demo converts it."""
    from vared_convert.arch import ArchSpec
    from vared_convert.checkpoint import save_model, save_torch_file
    from vared_convert.convert import convert
    from vared_convert.demo import ARCH, conversion_options, train_baseline

    settings = replace(DEMO, frames=b.frames, stride=b.stride, size=b.size, width=b.width, batch_size=b.batch_size,
                       baseline_epochs=b.baseline_epochs, baseline_clips=b.baseline_clips, time_aware=b.time_aware)
    model = train_baseline(index, settings, seed=b.seed, workers=b.workers)
    save_torch_file(model.state_dict(), out / "baseline.pth", force=True)
    result = convert(model, (3, b.frames, b.size, b.size), arch=ArchSpec(ARCH, len(index.classes), {"width": b.width}),
                     class_names=list(index.classes), **conversion_options(settings))
    return save_model(result.model, out / "converted.pth", force=True)


def _clips(index: Any, split: str, b: Budget, frames: int, stride: int, size: int, per_video: int,
           limit: int | None = None) -> list[dict[str, Any]]:
    """Evaluation clips (no augmentation) of one split, decoded once into batches."""
    from vared_convert.data.dataset import VideoClipDataset, make_loader

    dataset = VideoClipDataset.from_index(index, split, train=False, frames=frames, stride=stride, size=size,
                                          clips_per_video=per_video, normalization="kinetics", seed=b.seed)
    batches, count = [], 0
    for batch in make_loader(dataset, 32, b.workers, seed=b.seed):
        if batch.get("clip") is not None:
            batches.append(batch)
            count += len(batch["clip"])
        if limit is not None and count >= limit:
            break
    return batches


def run(data: str | None, model_path: str | None, out: Path, b: Budget) -> list[Row]:
    """Every method at every target; returns the rows (the original first)."""
    from vared_convert import alternatives as alt
    from vared_convert.checkpoint import load_model
    from vared_convert.data.layouts import index_dataset
    from vared_convert.data.synthetic import write_synthetic_dataset
    from vared_convert.export import most_frequent_policy, policy_labels
    from vared_convert.nn import adaptive_layers, runs_cheap_ops
    from vared_convert.predict import evaluate
    from vared_convert.profile import original_network
    from vared_convert.train.finetune import finetune

    started = time.time()
    if data is None and (out / "data").is_dir() and (out / "converted.pth").exists():
        data, model_path = str(out / "data"), model_path or str(out / "converted.pth")  # --keep-runs
    if data is None:
        _log(f"writing the synthetic dataset to {out / 'data'}")
        write_synthetic_dataset(out / "data", train_per_class=b.train_per_class, val_per_class=b.val_per_class,
                                frames=b.video_frames, size=b.video_size, seed=b.seed)
        data = str(out / "data")
    index = index_dataset(data)
    if model_path is None:
        _log("training the baseline and converting it")
        model_path = str(_baseline(index, b, out))
    converted = load_model(model_path)
    shape = (3, b.frames, b.size, b.size)
    common = dict(data=data, epochs=b.epochs, warmup_epochs=b.warmup_epochs, batch_size=b.batch_size,
                  frames=b.frames, stride=b.stride, size=b.size, train_clips=b.train_clips, lr=b.lr,
                  flops_weight=b.flops_weight, tau_end=b.tau_end, relaxation=b.relaxation, seed=b.seed, device="cpu",
                  workers=b.workers, log_every=10)
    val = {(b.frames, b.stride, b.size): _clips(index, "val", b, b.frames, b.stride, b.size, b.val_clips)}
    train_batches = _clips(index, "train", b, b.frames, b.stride, b.size, 1, b.policy_clips)
    train_clips = [batch["clip"] for batch in train_batches]
    reference_macs = alt.original_macs(converted, shape)
    timed: dict[str, Callable[[], None]] = {}
    timed_models: dict[int, Any] = {}
    rows: list[Row] = []
    layout = torch.channels_last_3d

    def timing_inputs(key: tuple[int, int, int]) -> list[torch.Tensor]:
        clips = torch.cat([batch["clip"] for batch in val[key]])[: b.timing_clips]
        return [c[None].contiguous(memory_format=layout) for c in clips]

    def add(target: float | None, method: str, detail: str, model: Any, policy: Any = None,
            key: tuple[int, int, int] | None = None) -> Row:
        key = key or (b.frames, b.stride, b.size)
        if key not in val:
            val[key] = _clips(index, "val", b, *key, b.val_clips)
        torch.manual_seed(b.seed)
        report = evaluate(model, val[key], policy=policy)
        scale = alt.original_macs(model, (3, key[0], key[2], key[2])) / reference_macs
        row = Row(target, method, detail, report.flops_ratio * scale, report.clip_top1, report.video_top1)
        rows.append(row)
        inputs = timing_inputs(key)

        def call() -> None:
            for name, layer in adaptive_layers(model):
                layer.policy = None if policy is None else policy[name]
            for x in inputs:
                model(x)

        timed[f"{len(rows) - 1}"] = call
        timed_models[id(model)] = model
        (out / "rows.partial.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
        _log(f"{method:>13} {detail:<24} FLOPs {row.flops_ratio:.3f}  top-1 {row.clip_top1:.1f} / "
             f"{row.video_top1:.1f}")
        return row

    original = original_network(converted).to(memory_format=layout).eval()
    rows.append(Row(None, "original", f"{b.frames} frames, {b.size} px", 1.0,
                    *(lambda r: (r.clip_top1, r.video_top1))(evaluate(converted, val[(b.frames, b.stride, b.size)],
                                                                      policy=alt.full_policy(converted)))))
    reference_inputs = timing_inputs((b.frames, b.stride, b.size))
    timed["0"] = lambda: [original(x) for x in reference_inputs]

    finetuned: dict[str, Any] = {}

    def trained(name: str, overrides: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The model finetuned as ``name`` (an earlier run's, when --keep-runs finds one) and its calibration."""
        run_dir = out / "runs" / name
        if not (run_dir / "final.pth").exists():
            _log(f"finetuning {name}")
            if run_dir.exists():
                shutil.rmtree(run_dir)  # an interrupted run of an earlier benchmark
            result = finetune(model_path, dict(common, **overrides, run_dir=str(run_dir)))
            calibration = asdict(result.calibration) if result.calibration else {}
            (run_dir / "calibration.json").write_text(json.dumps(calibration))
        calibration_file = run_dir / "calibration.json"
        calibration = json.loads(calibration_file.read_text()) if calibration_file.exists() else {}
        return load_model(run_dir / "final.pth").to(memory_format=layout), calibration

    def static_finetune(name: str, overrides: dict[str, Any]) -> Any:
        if name not in finetuned:
            finetuned[name] = trained(name, overrides)[0]
        return finetuned[name]

    uniform = alt.uniform_options(converted, shape)
    frames_sizes = alt.input_sizes(converted, shape, b.stride, "frames", b.video_frames)
    crop_sizes = alt.input_sizes(converted, shape, b.stride, "crop")
    for target in b.targets:
        _log(f"target {target}")
        adaptive, c = trained(f"adaptive_{target}", dict(target_flops=target))
        calibration = f"calibrated λ {c['strength']:+.3g}" if c else "not calibrated"
        adaptive_row = add(target, "adaptive", calibration, adaptive)
        frequent = most_frequent_policy(adaptive, train_clips)
        add(target, "most frequent", " ".join(policy_labels(adaptive, frequent).values()), adaptive, frequent)
        add(target, "random", "adaptive's frequencies", adaptive, alt.decision_frequencies(adaptive, train_clips))
        searched = alt.searched_policy(adaptive, train_batches, adaptive_row.flops_ratio)
        if searched is not None:
            add(target, "searched", " ".join(policy_labels(adaptive, searched).values()), adaptive, searched)
        for option in alt.nearest_uniform(uniform, target):
            label = f"{option[0]},{option[1]:g}"
            if runs_cheap_ops(converted, option):
                model = static_finetune(f"uniform_{label}", dict(static_option=label, target_flops=target))
                add(target, "uniform", f"every layer {label}", model, alt.uniform_policy(model, option))
            else:  # no cheap op runs at that option: finetuning the cheap ops (as every method does) changes nothing
                model = converted.to(memory_format=layout)
                add(target, "uniform", f"every layer {label}, nothing to finetune", model,
                    alt.uniform_policy(model, option))
        for kind, sizes in (("fewer frames", frames_sizes), ("smaller crop", crop_sizes)):
            size = alt.nearest(sizes, target)
            model = static_finetune(f"{size.kind}_{size.frames}x{size.stride}_{size.size}", dict(
                static_option="1,1", train="all", frames=size.frames, stride=size.stride, size=size.size))
            add(target, kind, size.label, model, alt.full_policy(model), (size.frames, size.stride, size.size))
    _log("timing every row side by side with the original (batch 1, one thread)")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from vared_convert.nn.kernels import set_conv_kernel
        from vared_convert.timing import measure_interleaved, retain_freed_memory

        retain_freed_memory()
        for m in [original, *timed_models.values()]:
            set_conv_kernel(m.eval(), "auto")  # the same conv kernel for every model (oneDNN on the CPU)
        timings = measure_interleaved(timed, torch.device("cpu"), warmup=2, repeats=b.repeats)
    finally:
        torch.set_num_threads(threads)
    base = timings["0"].median_ms
    for key, timing in timings.items():
        rows[int(key)].ms = timing.median_ms / len(reference_inputs)
        rows[int(key)].time_ratio = timing.median_ms / base
    _log(f"finished in {(time.time() - started) / 60:.1f} min")
    return rows


def verdict(rows: list[Row], tolerance: float = 0.03) -> list[str]:
    """Per target: the adaptive row against the best static alternative within ``tolerance`` of its FLOPs."""
    lines = []
    original = rows[0]
    for target in sorted({r.target for r in rows if r.target is not None}):
        adaptive = next(r for r in rows if r.target == target and r.method == "adaptive")
        others = [r for r in rows if r.method not in ("adaptive", "original")
                  and abs(r.flops_ratio - adaptive.flops_ratio) <= tolerance]
        # rows of any target count (a static alternative is one whatever target it was run for); a row repeated
        # under several targets (the same finetuned model) counts once
        others = list({(r.method, r.detail, r.flops_ratio, r.clip_top1): r for r in others}.values())
        line = (f"target {target}: adaptive {adaptive.clip_top1:.1f} at FLOPs {adaptive.flops_ratio:.3f} "
                f"(original {original.clip_top1:.1f})")
        if others:
            best = max(others, key=lambda r: r.clip_top1)
            line += (f"; best static within ±{tolerance}: {best.method} ({best.detail}) {best.clip_top1:.1f} at "
                     f"{best.flops_ratio:.3f}: {adaptive.clip_top1 - best.clip_top1:+.1f} points")
        else:
            line += f"; no static alternative within ±{tolerance} of its FLOPs"
        lines.append(line)
    return lines


def table(rows: list[Row]) -> str:
    lines = [f"| target | method | detail | FLOPs ratio | time ratio | top-1 clip | top-1 video |",
             "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        target = "" if r.target is None else f"{r.target:g}"
        lines.append(f"| {target} | {r.method} | {r.detail} | {r.flops_ratio:.3f} | {r.time_ratio:.2f} | "
                     f"{r.clip_top1:.1f} | {r.video_top1:.1f} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    """Top-1 (clip level) against FLOPs ratio, one series per method."""
    from vared_convert.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"adaptive": ("o", "-"), "most frequent": ("s", ""), "searched": ("P", ""), "random": ("x", ""),
               "uniform": ("^", ""), "fewer frames": ("v", ""), "smaller crop": ("D", "")}
    for method, (marker, line) in markers.items():
        points = sorted({(r.flops_ratio, r.clip_top1) for r in rows if r.method == method})
        if points:
            ax.plot(*zip(*points), marker=marker, linestyle=line or "none", label=method)
    ax.axhline(rows[0].clip_top1, color="grey", linestyle=":", label=f"original ({rows[0].clip_top1:.1f})")
    ax.set_xlabel("FLOPs ratio (against the original)")
    ax.set_ylabel("top-1, clip level (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", help="dataset root in a supported layout (default: the demo's synthetic "
                                                "dataset, written into --out)")
    parser.add_argument("--model", help="a converted model (default: the demo's baseline, trained on DATA)")
    parser.add_argument("--out", type=Path, default=Path("bench-policy"))
    parser.add_argument("--targets", help="comma-separated FLOPs targets")
    parser.add_argument("--epochs", type=int, help="finetune epochs of every method")
    parser.add_argument("--train-clips", type=int, help="random clips per training video per epoch")
    parser.add_argument("--quick", action="store_true", help="a tiny run that shows the flow")
    parser.add_argument("--force", action="store_true", help="replace an earlier run of this benchmark in --out")
    parser.add_argument("--keep-runs", action="store_true", help="continue an earlier run of this benchmark in "
                                                                 "--out: reuse the finetuned models it finished")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    b = QUICK if args.quick else Budget()
    if args.targets:
        b = replace(b, targets=tuple(float(t) for t in args.targets.split(",")))
    if args.epochs:
        b = replace(b, epochs=args.epochs, warmup_epochs=min(b.warmup_epochs, args.epochs - 1))
    if args.train_clips:
        b = replace(b, train_clips=args.train_clips)
    _prepare(args.out, args.force, args.keep_runs)
    rows = run(args.data, args.model, args.out, b)
    print(table(rows))
    for line in verdict(rows):
        print(line)
    (args.out / "policy.json").write_text(json.dumps({"budget": asdict(b), "rows": [asdict(r) for r in rows],
                                                      "verdict": verdict(rows)}, indent=1))
    plot(rows, args.out / "policy.png", f"{args.data or 'synthetic demo data'}: one model, {b.epochs} finetune "
                                        f"epochs for every method")
    print(f"wrote {args.out / 'policy.json'} and {args.out / 'policy.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
