"""Where the demo's time goes: what separates the adaptive model's time ratio from its FLOPs ratio.

On the same validation clips (a seeded uniform sample, as ``vared profile --data --latency`` draws them), batch 1,
every model in the layout, conv kernel, threads and allocator rules of ``vared profile --latency``, all timed side by
side in interleaved rounds (median of ``--repeats``):

* ``original``: the original network;
* ``static bound``: the original network cut as the adaptive model's most frequent decisions cut it in time, with
  nothing added: the first block that skips frames runs with its temporal stride multiplied and every later block
  runs on those frames (no gates, no φ_t, no rebuild). What any method pays at that cost on this network; only for
  policies that cut frames alone, by one factor, in chain blocks or runs that keep the frame count after the first
  cut;
* ``most frequent, forced``: the adaptive model with every layer forced to its most frequent decision (rebuilds,
  no gates);
* ``own decisions, forced``: each clip forced to the decisions its gates take (rebuilds and the decision mix, no
  gates);
* ``adaptive``: the gates deciding, as deployed.

Each row prints its time ratio and FLOPs ratio (fvcore's count; gates included where they run). The differences
between consecutive rows are what the network, the rebuilds, the mix of decisions and the gates cost in time.

    python benchmarks/bench_demo_time.py DEMO_DIR [--clips 8] [--repeats 50] [--threads 1] [--json OUT]

``DEMO_DIR`` is a ``vared demo --out DIR`` folder (``adaptive.pth`` and ``data/``).
"""

from __future__ import annotations

import argparse
import copy
import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn


def static_bound(original: nn.Module, adaptive: nn.Module, policy: list[int]) -> nn.Module | None:
    """``original`` with the time cuts of ``policy`` (one option index per adaptive layer) and nothing added, or
    ``None`` when the policy is not a frame-skip from one chain block on (see the module's docstring)."""
    from vared_convert.nn import AdaptiveBlock, adaptive_layers

    bound = copy.deepcopy(original)
    factor = 1
    for (name, layer), index in zip(adaptive_layers(adaptive), policy):
        option = layer.options[index]
        if option.channels < layer.width or not isinstance(layer, AdaptiveBlock) or layer.kind == "residual":
            return None
        if option.temporal == 1:
            if factor > 1:
                return None  # a full-rate block after a cut: the bound would need a rebuild
            continue
        if factor > 1:
            if option.temporal != factor:
                return None
            continue
        factor = option.temporal
        owner = name.rpartition(".")[0]
        conv = bound.get_submodule(f"{owner}.{layer.members[0]}" if owner else layer.members[0])
        conv.stride = (conv.stride[0] * factor, *conv.stride[1:])
    return bound if factor > 1 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path, help="a `vared demo --out DIR` folder")
    parser.add_argument("--clips", type=int, default=8, help="validation clips timed per round")
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds (median)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from vared_convert.checkpoint import load_model
    from vared_convert.data.dataset import VideoClipDataset, make_loader
    from vared_convert.data.layouts import index_dataset
    from vared_convert.demo import FULL
    from vared_convert.flops import CostModel, count_macs
    from vared_convert.nn import adaptive_layers, recording
    from vared_convert.nn.kernels import resolve_kernel, set_conv_kernel
    from vared_convert.predict import inference_memory_format, layout_name
    from vared_convert.profile import Reservoir, original_network
    from vared_convert.timing import cpu_threads, measure_interleaved, retain_freed_memory

    malloc = "retain" if retain_freed_memory() else "system"
    device = torch.device("cpu")
    layout, kernel = inference_memory_format(device), resolve_kernel("auto", device)
    model = load_model(args.demo / "adaptive.pth").eval()
    layers = [layer for _, layer in adaptive_layers(model)]
    index = index_dataset(str(args.demo / "data"), "auto")
    val = VideoClipDataset.from_index(index, "val", train=False, seed=0, frames=FULL.frames, stride=FULL.stride,
                                      size=FULL.size, normalization="kinetics")  # the quick demo's clips are the same
    sample = Reservoir(args.clips)
    every: list[tuple[int, ...]] = []
    with torch.no_grad():
        for batch in make_loader(val, 32, 2, seed=0):
            with recording(model) as log:
                model(batch["clip"])
            choices = torch.stack(log.choices(layers), 1).tolist()
            for clip, decided in zip(batch["clip"], choices):
                every.append(tuple(decided))
                sample.offer((clip.unsqueeze(0), tuple(decided)))
    frequent = [Counter(d[i] for d in every).most_common(1)[0][0] for i in range(len(layers))]
    clips = [clip.contiguous(memory_format=layout) for clip, _ in sample.items]
    decisions = [decided for _, decided in sample.items]

    costs = CostModel(model, tuple(clips[0].shape[1:]))
    plain = original_network(model)
    original = set_conv_kernel(copy.deepcopy(plain).to(memory_format=layout).eval(), kernel)
    plain_bound = static_bound(plain, model, frequent)
    bound = None if plain_bound is None else set_conv_kernel(
        copy.deepcopy(plain_bound).to(memory_format=layout).eval(), kernel)
    gated = set_conv_kernel(copy.deepcopy(model).to(memory_format=layout).eval(), kernel)
    forced = copy.deepcopy(gated)
    forced_layers = [layer for _, layer in adaptive_layers(forced)]
    for layer, option in zip(forced_layers, frequent):
        layer.policy = option
    own = copy.deepcopy(gated)
    own_layers = [layer for _, layer in adaptive_layers(own)]

    def run(net: nn.Module):
        def call() -> None:
            for clip in clips:
                net(clip)
        return call

    def run_own() -> None:
        for clip, decided in zip(clips, decisions):
            for layer, option in zip(own_layers, decided):
                layer.policy = option
            own(clip)

    fns = {"original": run(original)}
    if bound is not None:
        fns["static bound"] = run(bound)
    fns.update({"most frequent, forced": run(forced), "own decisions, forced": run_own, "adaptive": run(gated)})
    with cpu_threads(args.threads):
        timings = measure_interleaved(fns, device, warmup=3, repeats=args.repeats)
    own_macs = sum(costs.forced_macs(d) for d in decisions) / len(decisions)
    flops = {
        "original": 1.0,
        "most frequent, forced": costs.forced_macs(frequent) / costs.original_macs,
        "own decisions, forced": own_macs / costs.original_macs,
        "adaptive": (own_macs + costs.gate_macs) / costs.original_macs,
    }
    if bound is not None:
        flops["static bound"] = count_macs(plain_bound, torch.zeros(1, *clips[0].shape[1:]))[0] / costs.original_macs

    timings = {name: timing.per_call(len(clips)) for name, timing in timings.items()}
    label = " ".join(f"{layer.options[o].temporal},{layer.options[o].channels / layer.width:g}"
                     for layer, o in zip(layers, frequent))
    base = timings["original"].median_ms
    print(f"# {args.demo / 'adaptive.pth'}: {len(clips)} validation clips of {len(every)} per round (seeded uniform "
          f"sample), batch 1, {args.threads} thread(s), {layout_name(layout)}, {kernel} convs, malloc {malloc}, "
          f"median of {args.repeats} interleaved rounds; torch {torch.__version__}")
    print(f"# most frequent decisions per layer (T,C): {label}; "
          f"{sum(d == tuple(frequent) for d in every)} of {len(every)} clips take all of them")
    print(f"{'':24} {'ms':>7} {'time ratio':>11} {'FLOPs ratio':>12} {'gap':>6}")
    rows = []
    for name, timing in timings.items():
        ratio = timing.median_ms / base
        rows.append(dict(row=name, ms=timing.median_ms, min_ms=timing.min_ms, time_ratio=ratio,
                         flops_ratio=flops[name]))
        print(f"{name:24} {timing.median_ms:>7.3f} {ratio:>11.3f} {flops[name]:>12.3f} {ratio - flops[name]:>+6.3f}")
    if bound is None:
        print("# static bound: not available for this policy (it cuts channels, or skips frames in several "
              "places or by several factors)")
    if args.json:
        args.json.write_text(json.dumps(dict(rows=rows, threads=args.threads, clips=len(clips), repeats=args.repeats,
                                             malloc=malloc, kernel=kernel, policy=label), indent=1))


if __name__ == "__main__":
    main()
