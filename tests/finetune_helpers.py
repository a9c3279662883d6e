"""Small datasets and models for finetune tests, and the worker that two DDP processes run."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vared_convert.arch import ArchSpec
from vared_convert.baseline import tiny_c3d
from vared_convert.checkpoint import save_model
from vared_convert.convert import convert
from vared_convert.data.synthetic import write_synthetic_dataset

CLIP = dict(frames=4, stride=2, size=32, batch_size=4, workers=0, log_every=1)


def tiny_dataset(root: Path, train_per_class: int = 2, val_per_class: int = 1) -> Path:
    """The synthetic action dataset at 32 px, 12 frames: 8 classes, a few videos each."""
    write_synthetic_dataset(root, train_per_class=train_per_class, val_per_class=val_per_class, frames=12, size=32)
    return root


def converted_tiny(path: Path, width: int = 8) -> Path:
    """A random tiny_c3d for 8 classes, converted at the test clip shape and saved."""
    torch.manual_seed(0)
    model = tiny_c3d(num_classes=8, width=width)
    result = convert(model, (3, CLIP["frames"], CLIP["size"], CLIP["size"]),
                     arch=ArchSpec("vared:tiny_c3d", 8, {"width": width}))
    return save_model(result.model, path)


def ddp_worker(rank: int, world_size: int, port: int, model: str, data: str, run_dir: str, out_dir: str) -> None:
    """One rank of a two-process gloo run: finetune, then dump this rank's final weights."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from vared_convert.train.finetune import finetune

    result = finetune(model, dict(CLIP, data=data, epochs=2, target_flops=0.5, run_dir=run_dir, device="cpu"))
    torch.save(result.model.state_dict(), Path(out_dir) / f"rank{rank}.pt")
