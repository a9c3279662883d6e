"""What one finetune step costs against one plain training step of the same network: time and peak memory.

* plain: the original network in train mode, forward, cross-entropy, backward, an AdamW step on every parameter
  (what training the model yourself costs);
* finetune: :meth:`vared_convert.train.trainer.Finetuner._train_step` as ``vared finetune`` runs it (the
  teacher forward of the full path, the gated student forward, CE + KD + λ·(F − τ)², backward, the optimiser
  step on the gates and cheap ops), at each granularity, with the straight-through (default) and soft relaxations.

Each kind of step runs in its own fresh process, so that its peak resident memory (``ru_maxrss``) is its own; the
memory of the process just before the first step (model built, converted, batch made) is subtracted, leaving what
the steps themselves hold. Times are the median of ``--steps`` steps after one warm-up step, on one thread.
Random weights and clips (the cost does not depend on them).

    python benchmarks/bench_train.py [--model torchvision:r3d_18] [--clip 3,8,112,112] [--batch 4] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(kind: str, arch: str, clip: tuple[int, ...], batch: int, steps: int, granularity: str,
            relaxation: str) -> dict:
    """One kind of step, ``steps + 1`` times, in this process."""
    from vared_convert.arch import ArchSpec, build_model
    from vared_convert.convert import convert

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    original = build_model(ArchSpec(arch, num_classes=10))
    x, y = torch.randn(batch, *clip), torch.randint(0, 10, (batch,))
    if kind == "plain":
        model = original.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        from vared_convert.train.config import FinetuneConfig
        from vared_convert.train.distributed import Runtime
        from vared_convert.train.trainer import Finetuner

        model = convert(original.eval(), clip, arch=ArchSpec(arch, num_classes=10), granularity=granularity).model
        with torch.no_grad():  # gates that spread their decisions, as they do while learning
            for _, layer in __import__("vared_convert").adaptive_layers(model):
                layer.gate.fc2.weight.normal_(0, 1.0)
        config = FinetuneConfig(relaxation=relaxation, target_flops=0.6, device="cpu", amp="off")
        finetuner = Finetuner(model, config, Runtime(torch.device("cpu")), lambda e, s: [], lambda: [], 1, clip,
                              [str(i) for i in range(10)], Path(tempfile.mkdtemp()))
        batch_data = {"clip": x, "label": y}

        def step() -> None:
            finetuner._train_step(batch_data, warmup=False)

    before = _rss_mb()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        step()
        if i:
            times.append((time.perf_counter() - start) * 1000)
    return {"kind": kind, "granularity": granularity, "relaxation": relaxation, "step_ms": statistics.median(times),
            "min_ms": min(times), "max_ms": max(times), "peak_mb": _rss_mb() - before}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="torchvision:r3d_18")
    parser.add_argument("--clip", default="3,8,112,112", help="C,T,H,W")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--granularity", default="block,conv")
    parser.add_argument("--relaxation", default="hard,soft")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one kind, print JSON
    args = parser.parse_args(argv)
    clip = tuple(int(v) for v in args.clip.split(","))
    if args.one:
        kind, granularity, relaxation = args.one.split(":")
        print(json.dumps(run_one(kind, args.model, clip, args.batch, args.steps, granularity, relaxation)))
        return 0
    kinds = [("plain", "-", "-")] + [("finetune", g, r) for g in args.granularity.split(",")
                                     for r in args.relaxation.split(",")]
    rows = []
    for kind, granularity, relaxation in kinds:
        out = subprocess.run([sys.executable, __file__, *(argv or sys.argv[1:]), "--one",
                              f"{kind}:{granularity}:{relaxation}"], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    plain = rows[0]
    print(f"# {args.model} clip {args.clip} batch {args.batch}, 1 thread, median of {args.steps} steps; "
          f"peak = max RSS growth during the steps")
    print(f"{'step':<10} {'granularity':<12} {'relaxation':<11} {'ms':>9} {'(min-max)':>17} {'× plain':>8} "
          f"{'peak MB':>9} {'× plain':>8}")
    for r in rows:
        print(f"{r['kind']:<10} {r['granularity']:<12} {r['relaxation']:<11} {r['step_ms']:>9.0f} "
              f"{'(' + format(r['min_ms'], '.0f') + '-' + format(r['max_ms'], '.0f') + ')':>17} "
              f"{r['step_ms'] / plain['step_ms']:>8.2f} {r['peak_mb']:>9.0f} {r['peak_mb'] / plain['peak_mb']:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
