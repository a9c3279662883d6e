"""File-level operations behind the CLI commands, usable from Python too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .arch import ArchSpec
from .checkpoint import load_model, read_checkpoint, save_model, is_vared_checkpoint
from .convert import DEFAULT_CHANNEL, DEFAULT_GRANULARITY, DEFAULT_TEMPORAL, Conversion, convert
from .errors import VaredError
from .files import check_output_path

__all__ = ["convert_checkpoint"]


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    arch: str,
    *,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    temporal: Sequence[int] = DEFAULT_TEMPORAL,
    channel: Sequence[float] = DEFAULT_CHANNEL,
    only: Sequence[str] = (),
    skip: Sequence[str] = (),
    min_flops_share: float = 0.002,
    convert_stem: bool = False,
    time_aware: bool = False,
    time_device: str = "cpu",
    class_names: Sequence[str] | None = None,
    trust_pickle: bool = False,
    force: bool = False,
    granularity: str = DEFAULT_GRANULARITY,
) -> Conversion:
    """``vared convert``: load pretrained weights, convert, verify, and save the adaptive model atomically."""
    check_output_path(out, force)
    if Path(checkpoint).resolve() == Path(out).resolve():
        raise VaredError("--out must differ from the input checkpoint")
    model = load_model(checkpoint, ArchSpec(arch, num_classes), trust_pickle=trust_pickle,
                       class_names=list(class_names) if class_names else None)
    result = convert(
        model, input_shape, arch=model.vared_info.arch, temporal=temporal, channel=channel, only=only, skip=skip,
        min_flops_share=min_flops_share, convert_stem=convert_stem, class_names=model.vared_info.class_names,
        time_aware=time_aware, time_device=time_device, granularity=granularity,
    )
    save_model(result.model, out, force=force)
    return result
