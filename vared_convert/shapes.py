"""The clip shape a model runs at: chosen from the user, the recipe or the architecture, and checked against the
network before any work, by running it on meta tensors (no data, no memory): the channel count, the smallest clip
the network takes, and the memory one clip needs."""

from __future__ import annotations

import contextlib
import copy
from typing import Sequence

import torch
from torch import nn

from .arch import ArchSpec, default_input_shape
from .errors import ArgumentError, VaredError
from .recipe import model_info

__all__ = ["resolve_clip_shape", "check_clip_shape", "output_shape", "available_memory_bytes", "MAX_SIDE"]

MAX_SIDE = 1 << 16  # no clip dimension is larger than this


def _arch_of(model: nn.Module, arch: ArchSpec | None) -> ArchSpec | None:
    info = model_info(model)
    return arch if arch is not None else (info.arch if info is not None else None)


def resolve_clip_shape(model: nn.Module, input_shape: Sequence[int] | None = None,
                       what: str = "--input-shape", arch: ArchSpec | None = None) -> tuple[int, int, int, int]:
    """``input_shape`` if given (four positive integers C,T,H,W), else the clip the model was converted at, else
    its architecture's (``arch``, default the model's own) usual clip."""
    if input_shape is not None:
        shape = tuple(input_shape)
        if len(shape) != 4 or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise ArgumentError(what, shape, "expected four integers C,T,H,W", ",".join(map(str, shape)))
        if min(shape) < 1 or max(shape) > MAX_SIDE:
            raise ArgumentError(what, shape, f"each of C,T,H,W must be between 1 and {MAX_SIDE}",
                                ",".join(map(str, shape)))
        return shape  # type: ignore[return-value]
    info = model_info(model)
    if info is not None and info.recipe is not None:
        return tuple(int(s) for s in info.recipe.input_shape)  # type: ignore[return-value]
    spec = _arch_of(model, arch)
    default = default_input_shape(spec.name) if spec is not None else None
    if default is None:
        raise VaredError(f"give the clip shape with {what} C,T,H,W (this architecture has no usual clip)")
    return default


def available_memory_bytes() -> int | None:
    """Memory the system can still give this process (Linux's MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _meta_run(model: nn.Module, shape: Sequence[int], batch: int = 1) -> tuple[Exception | None, int, tuple | None]:
    """Run ``model`` on a meta clip of ``shape``: the failure (None if it ran), the largest tensor a module
    produced (in elements) and the output's shape."""
    from .nn import adaptive_layers, forced_policy

    largest = [0]
    try:  # a lazy module's uninitialised parameters have no shape yet: such a model is checked by its real run
        model = _meta_copy(model)
    except (ValueError, RuntimeError) as exc:
        return exc, 0, None

    def record(module: nn.Module, inputs: object, output: object) -> None:
        for tensor in output if isinstance(output, (list, tuple)) else [output]:
            if isinstance(tensor, torch.Tensor):
                largest[0] = max(largest[0], tensor.numel())

    for m in model.modules():
        m.register_forward_hook(record)
    model.eval()
    try:
        with forced_policy(model, (1, 1.0)) if adaptive_layers(model) else contextlib.nullcontext(), torch.no_grad():
            out = model(torch.empty(batch, *shape, device="meta"))
        return None, largest[0], tuple(out.shape) if isinstance(out, torch.Tensor) else None
    except Exception as exc:  # any failure on meta tensors: the caller tells a bad shape from a model that cannot
        return exc, largest[0], None  # run on meta (value-dependent control flow) by trying a known-good shape


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are meta tensors (no data is copied), so that a run on it
    can never touch the user's model, its weights or anything it caches."""
    memo: dict[int, object] = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def output_shape(model: nn.Module, shape: Sequence[int], batch: int = 1) -> tuple[int, ...] | None:
    """The shape of the model's output for a batch of clips of ``shape`` (None where it cannot run on meta)."""
    return _meta_run(model, shape, batch)[2]


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:200]


def _smallest(model: nn.Module, shape: tuple[int, ...], axis: str, high: int) -> int | None:
    """The smallest frames (``axis="t"``) or square side (``"s"``) in ``1..high`` at which the model runs, with
    the other dimensions of ``shape``; None if even ``high`` fails."""
    def works(value: int) -> bool:
        trial = (shape[0], value, shape[2], shape[3]) if axis == "t" else (shape[0], shape[1], value, value)
        return _meta_run(model, trial)[0] is None

    if not works(high):
        return None
    low = 1
    while low < high:  # the smallest working value, assuming a larger clip works whenever a smaller one does
        mid = (low + high) // 2
        if works(mid):
            high = mid
        else:
            low = mid + 1
    return low


def _reference_shape(model: nn.Module, arch: ArchSpec | None) -> tuple[int, ...] | None:
    info = model_info(model)
    if info is not None and info.recipe is not None:
        return tuple(info.recipe.input_shape)
    spec = _arch_of(model, arch)
    return default_input_shape(spec.name) if spec is not None else None


def check_clip_shape(model: nn.Module, shape: Sequence[int], what: str = "--input-shape",
                     batch: int = 1, arch: ArchSpec | None = None) -> None:
    """Refuse, in one line, a clip the network cannot take: the wrong channel count, too small (naming the smallest
    workable frames and size), or too large for the memory left on this machine (CPU models)."""
    shape = tuple(int(s) for s in shape)
    text = ",".join(map(str, shape))
    failure, largest, _ = _meta_run(model, shape, batch)
    if failure is None:
        param = next(model.parameters(), None)
        available = available_memory_bytes()
        need = 4 * (3 * largest + batch * shape[0] * shape[1] * shape[2] * shape[3])  # float32, a few maps alive
        if (param is None or param.device.type == "cpu") and available is not None and need > available:
            raise ArgumentError(what, shape, f"a clip this large needs about {need / 2**30:.1f} GiB (its largest "
                                            f"feature map alone {4 * largest / 2**30:.1f} GiB) and "
                                            f"{available / 2**30:.1f} GiB are free", text)
        return
    reference = _reference_shape(model, arch)
    if reference is None or _meta_run(model, reference)[0] is not None:
        return  # the model cannot run on meta tensors at all: the real run will say what is wrong
    if shape[0] != reference[0] and _meta_run(model, (reference[0], *shape[1:]))[0] is None:
        raise ArgumentError(what, shape, f"this network reads {reference[0]}-channel clips, not {shape[0]}", text)
    frames = _smallest(model, reference, "t", max(reference[1], shape[1]))
    side = _smallest(model, reference, "s", max(reference[2], reference[3], shape[2], shape[3]))
    hints = []
    if frames is not None:
        hints.append(f"{frames} frames (at {reference[2]}×{reference[3]} pixels)")
    if side is not None:
        hints.append(f"{side}×{side} pixels (at {reference[1]} frames)")
    smallest = f"; the smallest it takes is {' and '.join(hints)}" if hints else ""
    raise ArgumentError(what, shape, f"this network cannot run clips of this shape ({_first_line(failure)})"
                                    f"{smallest}", text)
