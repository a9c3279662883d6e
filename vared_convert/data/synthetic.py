"""A small synthetic action dataset whose temporal redundancy differs between videos.

Every video shows a textured square (the actor, 20 px at 64 px) among two or three smaller discs that never
move (diagonal stripes or plain), on a background of random colour, waves and grain, with fresh camera noise
on every frame. The square's texture is horizontal stripes, vertical stripes, a checkerboard or dots, with a
period of 4.5 to 6 px and random colours: telling them apart takes fine spatial detail.

* Static classes (``STATIC_CLASSES``): the square stands still; the class is its texture. Every frame carries
  the same information, so most frames can be dropped.
* Motion classes (``MOTION_CLASSES``): the square has a random texture; the class is how it moves: ``rise``
  and ``fall`` (1 px per frame), ``drift`` (0.75 px per frame, left or right) and ``shake`` (3 px left and
  right, switching every 4 frames). ``shake`` needs dense frames: sampled every 8 frames it stands still.

Meant for clips of 8 frames at stride 2 (or 16 at stride 1), short side 64, crop 56. Every class is unchanged
by a horizontal flip, so flip augmentation is safe. Frames are a function of the seed alone.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

from .layouts import VideoIndex, VideoRecord

__all__ = ["CLASSES", "MOTION_CLASSES", "STATIC_CLASSES", "TEXTURES", "render_video", "write_synthetic_dataset"]

TEXTURES = ("stripes_h", "stripes_v", "checker", "dots")
STATIC_CLASSES = TEXTURES
MOTION_CLASSES = ("rise", "fall", "drift", "shake")
CLASSES = tuple(sorted(STATIC_CLASSES + MOTION_CLASSES))

SUPERSAMPLE = 2  # anti-aliased edges and sub-pixel motion
NOISE = 6.0  # camera noise, std in grey levels
ACTOR_RADIUS = 10.0  # half the side of the square, px at 64
DISTRACTORS = (2, 3)  # how many discs, inclusive range
DISTRACTOR_TEXTURES = ("diagonal", "plain")
SLIDE_SPEED = 1.0  # rise, fall: px per frame at 64
DRIFT_SPEED = 0.75  # drift: px per frame at 64
SHAKE_AMPLITUDE = 3.0  # shake: px either side at 64 ...
SHAKE_HOLD = 4  # ... held for this many frames


def render_video(label: str, rng: np.random.Generator, *, frames: int = 32, size: int = 64) -> np.ndarray:
    """Frames ``(T, size, size, 3)`` uint8 of one video of class ``label``."""
    if label not in CLASSES:
        raise ValueError(f"unknown synthetic class {label!r}")
    unit = size / 64  # sizes and speeds are given at 64 px
    scene = _background(rng, size)
    for _ in range(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1)):
        radius = rng.uniform(5, 7.5) * unit
        centre = rng.uniform(radius, size - radius, 2)
        texture = DISTRACTOR_TEXTURES[rng.integers(len(DISTRACTOR_TEXTURES))]
        _paint(scene, _object("disc", centre, radius, texture, _look(rng), size))

    texture = label if label in STATIC_CLASSES else TEXTURES[rng.integers(len(TEXTURES))]
    radius = ACTOR_RADIUS * unit
    path = _trajectory(label, rng, frames, size, radius + 1, unit)
    look = _look(rng)
    video = np.empty((frames, size, size, 3), np.uint8)
    actor, actor_at = None, None
    for t, centre in enumerate(path):
        if actor is None or not np.array_equal(centre, actor_at):
            actor, actor_at = _object("square", centre, radius, texture, look, size), centre
        frame = scene.copy()
        _paint(frame, actor)
        frame += rng.normal(0.0, NOISE, frame.shape)
        video[t] = np.clip(frame, 0, 255).round().astype(np.uint8)
    return video


def write_synthetic_dataset(
    root: str | Path,
    *,
    train_per_class: int = 24,
    val_per_class: int = 8,
    frames: int = 32,
    size: int = 64,
    fps: int = 16,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> VideoIndex:
    """Write ``ROOT/{train,val}/<class>/<class>_NNN.mp4`` (H.264, yuv420p) and ``ROOT/{train,val}.csv``.

    The CSVs hold ``path,class`` lines with paths relative to ``ROOT``, the same videos in the lists layout.
    Returns the index of the folder layout.
    """
    root = Path(root)
    counts = {"train": train_per_class, "val": val_per_class}
    total = len(CLASSES) * sum(counts.values())
    splits: dict[str, list[VideoRecord]] = {}
    done = 0
    for split_id, (split, count) in enumerate(counts.items()):
        records = []
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                rng = np.random.default_rng([seed, split_id, label, i])
                path = folder / f"{name}_{i:03d}.mp4"
                _write_mp4(path, render_video(name, rng, frames=frames, size=size), fps)
                records.append(VideoRecord(path, label))
                done += 1
                if progress:
                    progress(done, total)
        lines = [f"{r.path.relative_to(root).as_posix()},{CLASSES[r.label]}\n" for r in records]
        (root / f"{split}.csv").write_text("".join(lines))
        splits[split] = records
    return VideoIndex(list(CLASSES), splits, "folders")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random colour with smooth random waves and a fixed grain, float ``(H, W, 3)``."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 215, 3)
    scene = np.broadcast_to(base, (size, size, 3)).copy()
    for _ in range(3):
        fx, fy, phase = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
        scene += wave[..., None] * rng.uniform(-18, 18, 3)
    scene += rng.normal(0, 8, (size, size, 1))
    return scene


def _look(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Ink and paper colours far apart in brightness (either way round), and a texture period in px at 64."""
    dark = rng.uniform(0, 90, 3)
    light = np.clip(dark.mean() + rng.uniform(90, 150) + rng.uniform(-25, 25, 3), 0, 255)
    ink, paper = (light, dark) if rng.random() < 0.5 else (dark, light)
    return ink, paper, rng.uniform(4.5, 6.0)


def _object(
    shape: str,
    centre: np.ndarray,
    radius: float,
    texture: str,
    look: tuple[np.ndarray, np.ndarray, float],
    size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``(H, W, 1)`` and premultiplied colour ``(H, W, 3)`` of a textured object, anti-aliased.

    The texture moves with the object: it is computed in the object's own coordinates.
    """
    ink, paper, period = look
    period *= size / 64
    coords = (np.arange(size * SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    u = coords[None, :] - centre[0]
    v = coords[:, None] - centre[1]
    inside = (np.abs(u) <= radius) & (np.abs(v) <= radius) if shape == "square" else u**2 + v**2 <= radius**2
    wave_u, wave_v = np.sin(2 * np.pi * u / period), np.sin(2 * np.pi * v / period)
    if texture == "stripes_h":
        inked = np.broadcast_to(wave_v > 0, inside.shape)
    elif texture == "stripes_v":
        inked = np.broadcast_to(wave_u > 0, inside.shape)
    elif texture == "checker":
        inked = wave_u * wave_v > 0
    elif texture == "dots":
        du, dv = u % period - period / 2, v % period - period / 2
        inked = du**2 + dv**2 <= (0.3 * period) ** 2
    elif texture == "diagonal":
        inked = np.sin(2 * np.pi * (u + v) / (1.4 * period)) > 0
    else:  # plain
        inked = np.zeros(inside.shape, bool)
    colour = np.where(inked[..., None], ink, paper) * inside[..., None]
    blocks = (size, SUPERSAMPLE, size, SUPERSAMPLE)
    coverage = inside.astype(np.float64).reshape(blocks).mean(axis=(1, 3))[..., None]
    return coverage, colour.reshape(*blocks, 3).mean(axis=(1, 3))


def _paint(canvas: np.ndarray, obj: tuple[np.ndarray, np.ndarray]) -> None:
    coverage, colour = obj
    canvas *= 1 - coverage
    canvas += colour


def _trajectory(label: str, rng: np.random.Generator, frames: int, size: int, margin: float, unit: float) -> np.ndarray:
    """Centre ``(x, y)`` of the square on each frame, ``margin`` px inside the picture throughout."""
    t = np.arange(frames, dtype=np.float64)
    room = size - 2 * margin
    duration = max(frames - 1, 1)
    x, y = rng.uniform(margin, size - margin, 2)
    if label in ("rise", "fall"):
        speed = min(SLIDE_SPEED * unit, room / duration)
        y = rng.uniform(margin, size - margin - speed * duration) + speed * t
        return np.stack([np.full(frames, x), y[::-1] if label == "rise" else y], axis=1)
    if label == "drift":
        speed = min(DRIFT_SPEED * unit, room / duration)
        x = rng.uniform(margin, size - margin - speed * duration) + speed * t
        return np.stack([x if rng.random() < 0.5 else size - x, np.full(frames, y)], axis=1)
    if label == "shake":
        amplitude = SHAKE_AMPLITUDE * unit
        x = rng.uniform(margin + amplitude, size - margin - amplitude)
        side = np.where((t + rng.integers(2 * SHAKE_HOLD)) // SHAKE_HOLD % 2 == 0, 1.0, -1.0)
        return np.stack([x + amplitude * side, np.full(frames, y)], axis=1)
    return np.tile([x, y], (frames, 1))


def _write_mp4(path: Path, video: np.ndarray, fps: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = fps
        stream.options = {"crf": "18", "preset": "fast"}
        for array in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
