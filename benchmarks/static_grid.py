"""Every static per-layer policy of a converted model over a few options: FLOPs, top-1, and top-1 per class.

What an input-dependent policy can gain over the best static one is visible here before any training: if some
classes keep their accuracy under a cheap option that ruins others, a gate that tells them apart beats every
static policy at the same mean cost.

    python benchmarks/static_grid.py MODEL DATA [--options 1,1 2,1 1,0.5] [--frames 8 --stride 2 --size 56]
"""

from __future__ import annotations

import argparse
import itertools
import warnings

import torch


def main() -> None:
    from vared_convert.checkpoint import load_model
    from vared_convert.data.dataset import VideoClipDataset, make_loader
    from vared_convert.data.layouts import index_dataset
    from vared_convert.flops import CostModel
    from vared_convert.nn import adaptive_layers, option_index
    from vared_convert.predict import predict
    from vared_convert.profile import parse_option

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("--options", nargs="+", default=["1,1", "2,1", "1,0.5"])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--size", type=int, default=56)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    model = load_model(args.model).eval()
    index = index_dataset(args.data, class_names=model.vared_info.class_names)
    dataset = VideoClipDataset.from_index(index, "val", train=False, frames=args.frames, stride=args.stride,
                                          size=args.size, normalization=model.vared_info.arch.normalization)
    batches = [b for b in make_loader(dataset, 32, 2) if b.get("clip") is not None]
    costs = CostModel(model, batches[0]["clip"].shape[1:])
    layers = adaptive_layers(model)
    options = [parse_option(o) for o in args.options]
    names = list(index.classes)
    print("| " + " | ".join(n for n, _ in layers) + " | FLOPs ratio | top-1 | " + " | ".join(names) + " |")
    print("|" + " --- |" * len(layers) + " ---: | ---: |" + " ---: |" * len(names))
    for combo in itertools.product(options, repeat=len(layers)):
        policy = {name: option_index(layer, *option) for (name, layer), option in zip(layers, combo)}
        hits, counts = torch.zeros(len(names)), torch.zeros(len(names))
        ratio = 0.0
        for batch in batches:
            out = predict(model, batch["clip"], costs, policy)
            hits.index_add_(0, batch["label"], (out.logits.argmax(1) == batch["label"]).float())
            counts.index_add_(0, batch["label"], torch.ones(len(batch["label"])))
            ratio += float(out.flops_ratio.sum())
        per_class = [100 * float(h / max(c, 1)) for h, c in zip(hits, counts)]
        print("| " + " | ".join(f"{t},{c:g}" for t, c in combo) + f" | {ratio / float(counts.sum()):.3f} | "
              f"{100 * float(hits.sum() / counts.sum()):.1f} | " + " | ".join(f"{v:.0f}" for v in per_class) + " |")


if __name__ == "__main__":
    main()
