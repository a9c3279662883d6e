"""Clip transforms: short-side resize, crops, flip, normalisation, output layout."""

from __future__ import annotations

import random

import pytest
import torch
from videos import RAW

from vared_convert.data.transforms import NORMALIZATION, ClipTransform, default_short_side, resize_short_side
from vared_convert.errors import VaredError


def ramp(t: int = 4, h: int = 20, w: int = 30) -> torch.Tensor:
    """uint8 (T, H, W, 3) whose red channel is the column, green the row, blue the frame."""
    frames = torch.zeros(t, h, w, 3, dtype=torch.uint8)
    frames[..., 0] = torch.arange(w, dtype=torch.uint8)
    frames[..., 1] = torch.arange(h, dtype=torch.uint8)[:, None]
    frames[..., 2] = torch.arange(t, dtype=torch.uint8)[:, None, None]
    return frames


def test_normalization_constants() -> None:
    assert NORMALIZATION["kinetics"] == ((0.45, 0.45, 0.45), (0.225, 0.225, 0.225))
    assert NORMALIZATION["torchvision"] == ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989))
    assert default_short_side(112) == 128


def test_eval_centre_crop_layout_and_normalisation() -> None:
    clip = ClipTransform(10, 20, train=False, normalization=RAW)(ramp(), random.Random(0))
    assert clip.shape == (3, 4, 10, 10) and clip.dtype == torch.float32 and clip.is_contiguous()
    assert clip[0, 0, 0].tolist() == list(range(10, 20))  # columns 10..19 of 30: centred
    assert clip[1, 0, :, 0].tolist() == list(range(5, 15))  # rows 5..14 of 20
    assert clip[2, :, 0, 0].tolist() == [0, 1, 2, 3]  # time on dim 1
    grey = torch.full((1, 8, 8, 3), round(0.45 * 255), dtype=torch.uint8)
    kinetics = ClipTransform(8, 8, train=False)(grey, random.Random(0))
    assert kinetics.abs().max() < 0.01  # the mean grey maps to zero
    white = torch.full((1, 8, 8, 3), 255, dtype=torch.uint8)
    torchvision = ClipTransform(8, 8, train=False, normalization="torchvision")(white, random.Random(0))
    mean, std = NORMALIZATION["torchvision"]
    assert torchvision[:, 0, 0, 0].tolist() == pytest.approx([(1 - m) / s for m, s in zip(mean, std)], rel=1e-5)


def test_train_crops_and_flips_are_random_within_bounds_and_seeded() -> None:
    transform = ClipTransform(10, 20, train=True, normalization=RAW)
    corners, flips = set(), 0
    for seed in range(40):
        clip = transform(ramp(), random.Random(seed))
        assert torch.equal(clip, transform(ramp(), random.Random(seed)))
        row = clip[0, 0, 0].tolist()
        flipped = row[0] > row[-1]
        flips += flipped
        left = row[-1] if flipped else row[0]
        assert 0 <= left <= 20 and sorted(row) == list(range(int(left), int(left) + 10))
        corners.add((left, clip[1, 0, 0, 0].item()))
    assert len(corners) > 10 and 5 < flips < 35
    no_flip = ClipTransform(10, 20, train=True, flip=False, normalization=RAW)
    rows = [no_flip(ramp(), random.Random(seed))[0, 0, 0] for seed in range(10)]
    assert all(row[1] > row[0] for row in rows)


def test_short_side_resize() -> None:
    frames = torch.randint(0, 256, (2, 60, 80, 3), dtype=torch.uint8)
    assert resize_short_side(frames, 30).shape == (2, 30, 40, 3)
    assert resize_short_side(frames, 60) is frames
    assert ClipTransform(24, 30, train=False)(frames, random.Random(0)).shape == (3, 2, 24, 24)


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(VaredError, match="unknown normalization 'imagenet'"):
        ClipTransform(8, train=False, normalization="imagenet")
    with pytest.raises(VaredError, match="short side 100 is smaller than the crop size 112"):
        ClipTransform(112, 100, train=True)
