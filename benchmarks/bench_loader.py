"""Decoded clips per second: the vared loader with 0, 1 and 2 workers against raw PyAV decoding of the same clips.

    python benchmarks/bench_loader.py                    # writes synthetic 128x128 videos to a temp folder
    python benchmarks/bench_loader.py --root kinetics/   # or any dataset vared can index (its val split)
    python benchmarks/bench_loader.py --real-size        # 340x256 and 1280x720, 10 s, key frames 10 s apart

Both sides decode the same files at the same times (evaluation clips, ``--clips-per-video`` uniform ones):
raw PyAV seeks, decodes forward and converts the frames shown at those times to RGB arrays, in one loop in this
process; the loader adds clip sampling, resizing, cropping, normalisation, collation and worker processes.
Each figure is the best of ``--repeat`` passes over all clips, after one warm-up pass; the configurations
take turns.

Then, in this process: the decoder with and without skipping non-reference frames before each clip (wall and
CPU seconds, frames decoded; the frames are checked identical), and what `vared data check` costs per file
(first frame only, as it was, against first frame plus the packet scan that finds truncated files).
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


def clip_plan(records: list[VideoRecord], frames: int, stride: int, clips: int = 1) -> list[tuple[Path, list[float]]]:
    """The times the loader decodes for each record's ``clips`` evaluation clips, from the same header values."""
    plan = []
    for record in records:
        with VideoReader(record.path) as reader:
            fps, duration = reader.fps, reader.duration
        end = duration if record.end is None else min(record.end, duration)
        begin = min(record.start or 0.0, end)
        for start in clip_starts(begin, end, clip_span(frames, stride, fps), train=False, clips=clips):
            plan.append((record.path, clip_times(start, frames, stride, fps, end=end)))
    return plan


def write_real_size(root: Path, width: int, height: int, videos: int, seconds: float = 10.0, fps: int = 25) -> None:
    """``videos`` H.264 files of ``seconds`` at ``width`` x ``height`` in ``root/val/clip/``: a textured scene
    that pans, a moving block, camera noise; x264's default B-frames, a key frame every 10 s (x264's default
    interval of 250 frames)."""
    folder = root / "val" / "clip"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    count = round(seconds * fps)
    for i in range(videos):
        coarse = rng.integers(0, 256, (height // 16 + 8, (width + count * 2) // 16 + 8, 3), dtype=np.uint8)
        scene = np.repeat(np.repeat(coarse, 16, axis=0), 16, axis=1)  # a texture wide enough to pan across
        with av.open(str(folder / f"v{i}.mp4"), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.gop_size = 250
            for t in range(count):
                frame = scene[:height, 2 * t : 2 * t + width].astype(np.int16)
                y, x = (height // 3 + t) % (height - 64), (width // 4 + 3 * t) % (width - 64)
                frame[y : y + 64, x : x + 64] = 230
                frame += rng.integers(-4, 5, (height, width, 1), dtype=np.int16)
                image = av.VideoFrame.from_ndarray(frame.clip(0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(image):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def decoder_passes(plan: list[tuple[Path, list[float]]], short_side: int, repeat: int) -> None:
    """The decoder alone, with and without skipping non-reference frames: best wall and CPU seconds of
    ``repeat`` passes, frames decoded, and a check that both return the same frames."""
    results: dict[bool, tuple[float, float, int, list[torch.Tensor]]] = {}
    for _ in range(repeat):
        for skip in (False, True):
            wall, cpu = time.perf_counter(), time.process_time()
            clips, decoded = [], 0
            for path, times in plan:
                with VideoReader(path, skip_nonref=skip) as reader:
                    clips.append(reader.read(times, short_side=short_side))
                    decoded += reader.frames_decoded
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best = results.get(skip)
            results[skip] = (min(wall, best[0]) if best else wall, min(cpu, best[1]) if best else cpu, decoded, clips)
    (wall0, cpu0, decoded0, clips0), (wall1, cpu1, decoded1, clips1) = results[False], results[True]
    same = all(torch.equal(a, b) for a, b in zip(clips0, clips1))
    with VideoReader(plan[0][0]) as reader:
        fps = reader.fps
    in_clip = sum(round((times[-1] - times[0]) * fps) + 1 for _, times in plan)
    print(f"decoder, {len(plan)} clips (short side {short_side}), frames {'identical' if same else 'DIFFERENT'}:")
    print(f"  every frame: {wall0:6.2f} s wall, {cpu0:6.2f} s CPU, {decoded0 / len(plan):5.1f} frames decoded per clip "
          f"({1 - in_clip / decoded0:.0%} of them before the clip)")
    print(f"  skip nonref: {wall1:6.2f} s wall, {cpu1:6.2f} s CPU, {decoded1 / len(plan):5.1f} frames decoded per clip "
          f"({1 - cpu1 / cpu0:+.0%} CPU saved, {1 - wall1 / wall0:+.0%} wall)")
    assert same, "skipping non-reference frames changed the frames"


def check_cost(paths: list[Path], repeat: int) -> None:
    """Milliseconds per file of `vared data check`'s work: the first frame alone, and with the packet scan."""
    def first_frame() -> None:
        for path in paths:
            with VideoReader(path, threads=1) as reader:
                reader.first_frame()

    def verify() -> None:
        for path in paths:
            with VideoReader(path, threads=1) as reader:
                reader.verify()

    best = best_times({"first frame": first_frame, "verify": verify}, repeat)
    megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
    first, verified = (1000 * best[name] / len(paths) for name in ("first frame", "verify"))
    print(f"data check per file ({megabytes:.1f} MB): first frame only {first:.1f} ms, "
          f"first frame + packet scan {verified:.1f} ms")


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
    parser.add_argument("--real-size", action="store_true", help="write and read 340x256 and 1280x720 videos, 10 s")
    parser.add_argument("--split", default="val")
    parser.add_argument("--source-size", type=int, default=128, help="size of the synthetic videos")
    parser.add_argument("--videos", type=int, default=None, help="videos to read (default 64; 3 with --real-size)")
    parser.add_argument("--clips-per-video", type=int, default=None, help="uniform clips per video (default 1; 4 "
                        "with --real-size)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--size", type=int, default=112, help="crop size (short side resized to 128/112 of it)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    videos = args.videos or (3 if args.real_size else 64)
    clips = args.clips_per_video or (4 if args.real_size else 1)

    if not args.real_size:
        with tempfile.TemporaryDirectory() as tmp:
            root = args.root
            if root is None:
                root = Path(tmp)
                per_class = -(-videos // 8)
                write_synthetic_dataset(root, train_per_class=0, val_per_class=per_class, frames=64,
                                        size=args.source_size)
            bench(root, args, videos, clips)
        return
    for width, height in ((340, 256), (1280, 720)):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            write_real_size(Path(tmp), width, height, videos)
            print(f"\n(wrote {videos} videos of {width}x{height} in {time.perf_counter() - started:.0f} s)")
            bench(Path(tmp), args, videos, clips)


def bench(root: Path, args: argparse.Namespace, videos: int, clips: int) -> None:
    """Every figure for the videos of one dataset."""
    index = index_dataset(root)
    records = index.split(args.split)[:videos]
    plan = clip_plan(records, args.frames, args.stride, clips)
    with VideoReader(records[0].path) as reader:
        source = f"{reader.info.width}x{reader.info.height}"
    print(f"{len(plan)} clips of {args.frames} frames, stride {args.stride}, from {source} videos")

    runs: dict[str, Callable[[], object]] = {}
    for thread_type in ("SLICE", "AUTO"):  # the baseline is the faster of the two
        runs[f"raw PyAV {thread_type.lower()}"] = partial(decode_plan, plan, thread_type)
    dataset = VideoClipDataset(
        records, index.classes, train=False, frames=args.frames, stride=args.stride, size=args.size,
        clips_per_video=clips,
    )
    for workers in (0, 1, 2):
        runs[f"loader {workers} workers"] = partial(load_all, make_loader(dataset, args.batch_size, workers), plan)
    best = best_times(runs, args.repeat)
    raw = min(seconds for name, seconds in best.items() if name.startswith("raw"))
    for name, seconds in best.items():
        versus = "" if name.startswith("raw") else f"  ({raw / seconds:.0%} of raw)"
        print(f"{name:>16}: {len(plan) / seconds:7.1f} clips/s{versus}")
    decoder_passes(plan, dataset.transform.short_side, args.repeat)
    check_cost(sorted({path for path, _ in plan}), args.repeat)


if __name__ == "__main__":
    main()
