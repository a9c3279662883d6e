"""What a granularity costs in accuracy at equal FLOPs: one small residual network, trained on the demo's synthetic
dataset, converted at each granularity and finetuned with the demo's settings to the same FLOPs targets.

The network (``tiny_resnet`` below: a stem and three stages of two 3×3×3 residual blocks, 16/32/64 channels) has
stages, which the demo's network has not, so ``stage`` can be compared with ``block`` (and ``conv``). Every run
has the same data, baseline, seed and training budget; the printed top-1 and FLOPs ratio are on the validation
clips after the finetune's calibration, as ``vared finetune`` reports them; the rows are also written to
``OUT/granularity_<granularities>.json``.

    python benchmarks/bench_granularity.py [--out DIR] [--targets 0.6,0.4] [--granularities block,stage]
        [--threads N] [--quick]

The full run takes about an hour on 2 CPU cores (``--quick``: a few minutes, for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

ARCH = "bench_granularity:tiny_resnet"  # this file, importable as a module while it runs as a script
CLIP = dict(frames=8, stride=2, size=56, normalization="kinetics")


class _Basic(nn.Module):
    """A 3×3×3 residual block; its ReLU module runs twice (in the branch and after the add)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, (1, stride, stride), 1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.down = (nn.Sequential(nn.Conv3d(cin, cout, 1, (1, stride, stride), bias=False), nn.BatchNorm3d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self, num_classes: int = 8, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv3d(3, w, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False), nn.BatchNorm3d(w),
                                  nn.ReLU())
        self.layer1 = nn.Sequential(_Basic(w, w), _Basic(w, w))
        self.layer2 = nn.Sequential(_Basic(w, 2 * w, 2), _Basic(2 * w, 2 * w))
        self.layer3 = nn.Sequential(_Basic(2 * w, 4 * w, 2), _Basic(4 * w, 4 * w))
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3, 4)))


def tiny_resnet(num_classes: int = 8, width: int = 16) -> TinyResNet:
    return TinyResNet(num_classes, width)


@dataclass
class Row:
    granularity: str
    target: float
    top1: float
    flops_ratio: float
    gates: int
    minutes: float


def baseline(out: Path, quick: bool, seed: int = 0) -> tuple[Path, float]:
    """The demo's dataset and the trained network (kept in ``out`` and reused by later runs)."""
    from vared_convert.checkpoint import save_torch_file
    from vared_convert.data.dataset import VideoClipDataset, make_loader
    from vared_convert.data.layouts import index_dataset
    from vared_convert.data.synthetic import write_synthetic_dataset
    from vared_convert.train.supervised import top1, train_classifier

    data, path, info = out / "data", out / "baseline.pth", out / "baseline.json"
    if not data.exists():
        write_synthetic_dataset(data, train_per_class=8 if quick else 24, val_per_class=4 if quick else 24, seed=seed)
    index = index_dataset(str(data))
    if path.exists() and info.exists():
        return path, json.loads(info.read_text())["top1"]
    torch.manual_seed(seed)
    train_set = VideoClipDataset.from_index(index, "train", clips_per_video=2 if quick else 6, seed=seed, **CLIP)
    val_set = VideoClipDataset.from_index(index, "val", train=False, seed=seed, **CLIP)
    loader = make_loader(train_set, 16, 2, shuffle=True, drop_last=True, seed=seed)
    val = [b for b in make_loader(val_set, 32, 2, seed=seed) if b.get("clip") is not None]
    model = tiny_resnet(len(index.classes))

    def epochs(epoch: int):
        loader.set_epoch(epoch)
        return loader

    train_classifier(model, epochs, len(loader), 2 if quick else 12, lr=3e-3)
    accuracy = top1(model, val, torch.device("cpu"))
    save_torch_file(model.state_dict(), path, force=True)
    info.write_text(json.dumps({"top1": accuracy}))
    return path, accuracy


def run(out: Path, base: Path, granularity: str, target: float, quick: bool, seed: int = 0) -> Row:
    from vared_convert.api import convert_checkpoint
    from vared_convert.nn import adaptive_layers
    from vared_convert.train.finetune import finetune

    start = time.perf_counter()
    converted = out / f"{granularity}.pth"
    convert_checkpoint(base, converted, ARCH, num_classes=8, input_shape=(3, 8, 56, 56), granularity=granularity,
                       force=True)
    result = finetune(converted, dict(
        data=str(out / "data"), target_flops=target, epochs=2 if quick else 16, warmup_epochs=1 if quick else 2,
        batch_size=16, frames=8, stride=2, size=56, train_clips=1 if quick else 4, lr=3e-3, flops_weight=100.0,
        tau_end=0.1, relaxation="hard", seed=seed, device="cpu", run_dir=str(out / f"run_{granularity}_{target:g}"),
        out=str(out / f"{granularity}_{target:g}.pth"), log_every=1000,
    ), arch=ARCH, force=True)
    final = result.final or result.last
    return Row(granularity, target, final.top1, final.flops_ratio, len(adaptive_layers(result.model)),
               (time.perf_counter() - start) / 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench-granularity", help="folder for the data, the models and the runs")
    parser.add_argument("--targets", default="0.6,0.4", help="comma-separated FLOPs targets")
    parser.add_argument("--granularities", default="block,stage", help="comma-separated: block, stage, conv")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a small dataset, 2 epochs each")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base, original = baseline(out, args.quick)
    print(f"# tiny_resnet on the demo's dataset ({out / 'data'}): original top-1 {original:.1f}", flush=True)
    print(f"{'granularity':<12} {'target':>6} {'top-1':>6} {'FLOPs ratio':>11} {'gates':>5} {'minutes':>7}", flush=True)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        for granularity in args.granularities.split(","):
            r = run(out, base, granularity, target, args.quick)
            rows.append(r)
            print(f"{r.granularity:<12} {r.target:>6g} {r.top1:>6.1f} {r.flops_ratio:>11.3f} {r.gates:>5} "
                  f"{r.minutes:>7.1f}", flush=True)
    summary = out / f"granularity_{'_'.join(args.granularities.split(','))}.json"
    summary.write_text(json.dumps({"original_top1": original, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"# wrote {summary}")


if __name__ == "__main__":
    main()
