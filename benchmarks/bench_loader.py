"""Decoded clips per second: the vared loader with 0, 1 and 2 workers against raw PyAV decoding of the same clips.

    python benchmarks/bench_loader.py                    # writes synthetic 128x128 videos to a temp folder
    python benchmarks/bench_loader.py --root kinetics/   # or any dataset vared can index (its val split)

Both sides decode the same files at the same times (evaluation clips, centred): raw PyAV seeks, decodes
forward and converts the frames shown at those times to RGB arrays, in one loop in this process; the loader
adds clip sampling, resizing, cropping, normalisation, collation and worker processes. Each figure is the
best of ``--repeat`` passes over all clips, after one warm-up pass; the configurations take turns.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from functools import partial
from typing import Callable

import av
import numpy as np
import torch
from torch.utils.data import DataLoader
from av.video.reformatter import VideoReformatter

from vared_convert.data.dataset import VideoClipDataset, make_loader
from vared_convert.data.decode import VideoReader
from vared_convert.data.layouts import VideoRecord, index_dataset
from vared_convert.data.sampling import clip_span, clip_starts, clip_times
from vared_convert.data.synthetic import write_synthetic_dataset


def raw_pyav(path: Path, times: list[float], thread_type: str) -> np.ndarray:
    """Seek, decode forward, and convert the frame on screen at each time to RGB at full size: plain PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        targets = [origin + t for t in times]
        if targets[0] > origin:
            container.seek(int(targets[0] / stream.time_base), stream=stream)
        shown: list[av.VideoFrame] = []
        previous = None
        for frame in container.decode(stream):
            while len(shown) < len(targets) and frame.time > targets[len(shown)] + 1e-6:
                shown.append(previous if previous is not None else frame)
            if len(shown) == len(targets):
                break
            previous = frame
        shown += [previous] * (len(targets) - len(shown))
        to_rgb = VideoReformatter()  # one scaler context for the clip, as the loader does
        arrays = {id(frame): to_rgb.reformat(frame, format="rgb24").to_ndarray() for frame in shown}
        return np.stack([arrays[id(frame)] for frame in shown])


def decode_plan(plan: list[tuple[Path, list[float]]], thread_type: str) -> None:
    """Raw PyAV over every clip of the plan, in this process."""
    for path, times in plan:
        raw_pyav(path, times, thread_type)


def load_all(loader: DataLoader, plan: list[tuple[Path, list[float]]]) -> None:
    """One pass of the loader; every clip must decode."""
    decoded = sum(len(batch["path"]) for batch in loader)
    assert decoded == len(plan), f"{len(plan) - decoded} clips failed"


def clip_plan(records: list[VideoRecord], frames: int, stride: int) -> list[tuple[Path, list[float]]]:
    """The times the loader decodes for each record's centred clip, from the same header values."""
    plan = []
    for record in records:
        with VideoReader(record.path) as reader:
            fps, duration = reader.fps, reader.duration
        end = duration if record.end is None else min(record.end, duration)
        begin = min(record.start or 0.0, end)
        start = clip_starts(begin, end, clip_span(frames, stride, fps), train=False)[0]
        plan.append((record.path, clip_times(start, frames, stride, fps, end=end)))
    return plan


def best_times(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Seconds of the fastest of ``repeat`` rounds per run, the runs taking turns so that a change in the
    machine's load hits them alike; one warm-up run each first (workers, page cache)."""
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, help="dataset to read (default: write synthetic videos)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--source-size", type=int, default=128, help="size of the synthetic videos")
    parser.add_argument("--videos", type=int, default=64, help="clips to decode per pass")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--size", type=int, default=112, help="crop size (short side resized to 128/112 of it)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            per_class = -(-args.videos // 8)
            write_synthetic_dataset(root, train_per_class=0, val_per_class=per_class, frames=64, size=args.source_size)
        index = index_dataset(root)
        records = index.split(args.split)[: args.videos]
        plan = clip_plan(records, args.frames, args.stride)
        with VideoReader(records[0].path) as reader:
            source = f"{reader.info.width}x{reader.info.height}"
        print(f"{len(plan)} clips of {args.frames} frames, stride {args.stride}, from {source} videos")

        runs: dict[str, Callable[[], object]] = {}
        for thread_type in ("SLICE", "AUTO"):  # the baseline is the faster of the two
            runs[f"raw PyAV {thread_type.lower()}"] = partial(decode_plan, plan, thread_type)
        dataset = VideoClipDataset(
            records, index.classes, train=False, frames=args.frames, stride=args.stride, size=args.size
        )
        for workers in (0, 1, 2):
            runs[f"loader {workers} workers"] = partial(load_all, make_loader(dataset, args.batch_size, workers), plan)
        best = best_times(runs, args.repeat)
        raw = min(seconds for name, seconds in best.items() if name.startswith("raw"))
        for name, seconds in best.items():
            versus = "" if name.startswith("raw") else f"  ({raw / seconds:.0%} of raw)"
            print(f"{name:>16}: {len(plan) / seconds:7.1f} clips/s{versus}")


if __name__ == "__main__":
    main()
