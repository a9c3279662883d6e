"""A time budget, end to end on the demo's model and data: does ``vared finetune --cost latency --target-flops T``
land on a measured time ratio of T on the device whose latency table it used?

1. the demo's dataset and converted model: from a ``vared demo --out DIR`` folder (``--demo DIR``), or built here
   with the demo's settings and seed (``--quick``: the quick demo's sizes);
2. the latency table of the converted model on this CPU (``vared profile MODEL --latency-table OUT``'s
   measurement, at ``--threads``);
3. per target T: a finetune with the demo's settings and ``--cost latency``; with ``--flops-targets`` also the
   demo's finetune with the FLOPs budget at those FLOPs ratios, measured side by side;
4. each result on the validation clips: the time ratio the table predicts for its decisions (what the run budgeted),
   and the time ratio measured as ``vared profile --data --latency`` measures it (batch 1, the original network and
   the adaptive model interleaved, median of ``--repeats``, same threads and allocator rules as the table), the
   FLOPs ratio and top-1.

    python benchmarks/bench_latency_budget.py [--demo DIR | --out DIR [--quick]] [--targets 1.0]
        [--threads 1] [--repeats 30] [--flops-targets 0.6]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build_demo_model(out: Path, quick: bool, seed: int = 0) -> tuple[Path, Path]:
    """The demo's steps 1-3 (data, baseline, convert) with its settings: ``(dataset root, converted model)``."""
    from vared_convert.api import convert_checkpoint
    from vared_convert.checkpoint import save_torch_file
    from vared_convert.data.synthetic import write_synthetic_dataset
    from vared_convert.demo import ARCH, FULL, QUICK, conversion_options, train_baseline

    s = QUICK if quick else FULL
    torch.manual_seed(seed)
    data, converted = out / "data", out / "baseline_vared.pth"
    if converted.exists():
        return data, converted
    index = write_synthetic_dataset(data, train_per_class=s.train_per_class, val_per_class=s.val_per_class, seed=seed)
    baseline = train_baseline(index, s, seed=seed)
    save_torch_file(baseline.state_dict(), out / "baseline.pth", force=True)
    convert_checkpoint(out / "baseline.pth", converted, ARCH, num_classes=len(index.classes),
                       input_shape=(3, s.frames, s.size, s.size), class_names=index.classes, force=True,
                       **conversion_options(s))
    return data, converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="a `vared demo --out DIR` folder to take data/ and "
                                                  "baseline_vared.pth from")
    parser.add_argument("--out", type=Path, default=Path("bench_latency_budget"), help="work folder")
    parser.add_argument("--quick", action="store_true", help="build the quick demo's sizes (without --demo)")
    parser.add_argument("--targets", default="1.0", help="time-ratio targets, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every measurement")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds of every measurement (median)")
    parser.add_argument("--latency-clips", type=int, default=8, help="validation clips timed per round")
    parser.add_argument("--flops-targets", default="", help="also finetune with the FLOPs budget at these FLOPs "
                                                            "ratios (e.g. the demo's 0.6), measured the same way")
    parser.add_argument("--epochs", type=int, default=None, help="finetune epochs (default: the demo's)")
    args = parser.parse_args()

    from vared_convert.checkpoint import load_model
    from vared_convert.data.dataset import VideoClipDataset, make_loader
    from vared_convert.data.layouts import index_dataset
    from vared_convert.demo import FULL, QUICK
    from vared_convert.latency import LatencyCostModel, measure_latency_table
    from vared_convert.nn import recording
    from vared_convert.predict import evaluate
    from vared_convert.profile import Reservoir, profile_model
    from vared_convert.timing import cpu_threads, retain_freed_memory
    from vared_convert.train.finetune import finetune

    s = QUICK if args.quick else FULL
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if args.demo is not None:
        data, converted = args.demo / "data", args.demo / "baseline_vared.pth"
    else:
        data, converted = build_demo_model(args.out, args.quick)
    retain_freed_memory()  # as vared profile --latency does on glibc: for the table and every measurement below
    table = measure_latency_table(load_model(converted), threads=args.threads, repeats=args.repeats)
    table_path = table.save(args.out / "latency_table.json", force=True)
    base = LatencyCostModel.from_table(table, load_model(converted))
    print(f"# torch {torch.__version__}; latency table on {table.describe()}, fastest of {table.repeats}: original "
          f"{table.original_ms:.2f} ms, full path {table.full_ms:.2f} ms, static rest {table.static_ms:.2f} ms, gates "
          f"{table.gate_ms:.2f} ms; the table's cheapest policy is {base.min_macs() / base.original_macs:.3f} of the "
          "original's time", flush=True)

    index = index_dataset(str(data), "auto")
    val_set = VideoClipDataset.from_index(index, "val", train=False, seed=0, **s.clip)
    val_batches = [b for b in make_loader(val_set, 32, 2, seed=0) if b.get("clip") is not None]

    rows = []
    runs = [("latency", float(t)) for t in args.targets.split(",") if t]
    runs += [("flops", float(t)) for t in args.flops_targets.split(",") if t]
    for cost, target in runs:
        run_dir = args.out / f"{cost}_{target:g}"
        config = dict(data=str(data), target_flops=target, epochs=args.epochs or s.finetune_epochs,
                      warmup_epochs=s.warmup_epochs, batch_size=s.batch_size, frames=s.frames, stride=s.stride,
                      size=s.size, train_clips=s.finetune_clips, lr=s.lr, flops_weight=s.flops_weight,
                      tau_end=s.tau_end, relaxation=s.relaxation, run_dir=str(run_dir),
                      seed=0, device="cpu", log_every=5, cost=cost,
                      latency_table=str(table_path) if cost == "latency" else "")
        if not (run_dir / "final.pth").exists():
            finetune(converted, config, force=True)
        model = load_model(run_dir / "final.pth")
        top1 = evaluate(model, val_batches).clip_top1
        table_costs = LatencyCostModel.from_table(table, model)
        layers = [t.layer for t in table_costs.layers]
        per_clip: list[float] = []
        with torch.no_grad():
            for batch in val_batches:
                with recording(model) as log:
                    model(batch["clip"])
                per_clip += table_costs.per_sample_macs(log.choices(layers)).tolist()
        predicted = sum(per_clip) / len(per_clip) / table.original_ms
        sample = Reservoir(args.latency_clips)  # the clips profile_model times, drawn as it draws them
        for position in range(len(per_clip)):
            sample.offer(position)
        timed = [per_clip[position] for position in sample.items]
        predicted_timed = sum(timed) / len(timed) / table.original_ms
        with cpu_threads(args.threads):
            report = profile_model(load_model(run_dir / "final.pth"),
                                   clips=((b["clip"], b["label"]) for b in val_batches), latency=True,
                                   repeats=args.repeats, latency_clips=args.latency_clips)
        lat = report.latency
        rows.append(dict(cost=cost, target=target, predicted_time_ratio=predicted,
                         predicted_timed_time_ratio=predicted_timed, time_ratio=lat.time_ratio,
                         fastest_time_ratio=lat.adaptive.min_ms / lat.original.min_ms, miss=lat.time_ratio - target,
                         flops_ratio=report.flops_ratio, top1=top1,
                         original_ms=lat.original.median_ms, adaptive_ms=lat.adaptive.median_ms,
                         threads=lat.original.threads, malloc=lat.malloc, layout=lat.layout))
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n# measured: batch 1, {args.latency_clips} validation clips per round, original and adaptive interleaved, "
          f"median (and fastest) of {args.repeats}, {args.threads} thread(s); table predicted = the latency table's "
          "time for the gates' decisions on all validation clips, (on timed) on the clips that were timed")
    print(f"{'budget':>8} {'target':>7} {'table predicted':>16} {'(on timed)':>11} {'measured time ratio':>20} {'(fastest)':>10} "
          f"{'measured − target':>18} {'FLOPs ratio':>12} {'top-1':>6} {'orig ms':>8} {'adapt ms':>9}")
    for r in rows:
        print(f"{r['cost']:>8} {r['target']:>7.2f} {r['predicted_time_ratio']:>16.3f} "
              f"{r['predicted_timed_time_ratio']:>11.3f} {r['time_ratio']:>20.3f} "
              f"{r['fastest_time_ratio']:>10.3f} {r['miss']:>+18.3f} {r['flops_ratio']:>12.3f} {r['top1']:>6.1f} "
              f"{r['original_ms']:>8.2f} {r['adaptive_ms']:>9.2f}")
    print(f"# {len(val_set)} validation clips; finished in {(time.time() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
