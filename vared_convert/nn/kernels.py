"""Which kernel runs a model's 3-D convolutions at inference on the CPU: PyTorch's choice, or oneDNN always.

``F.conv3d`` on the CPU picks its kernel with a size heuristic: a batch-1 input whose N·C·T·H is at most 20,480
with kernels of at most 3×3 goes to an unblocked reference kernel instead of oneDNN. Most convs of a video net
at batch 1 qualify once their maps are small: r3d_18's res4 and res5 at 16×112×112, and every conv whose input an
option shrinks. Measured on this project's CPU (one thread, channels-last, 3×3×3): 256 channels at 4×14×14,
36.9 ms against oneDNN's 11.6; 64 channels at 8×28×28, 49.3 against 6.1; from 128 channels at 8×28×28 on, both
take oneDNN (23.5 ms each). The heuristic taxes the cheap options most, so a time ratio measured under it mixes
the method with a kernel choice.

:func:`set_conv_kernel` chooses explicitly, for a whole model and for its original alike: ``"onednn"`` runs every
plain ``nn.Conv3d`` and every adaptive layer's inference convs through oneDNN; ``"aten"`` is PyTorch's own
choice. Training, ``torch.export`` and ONNX export always take ``F.conv3d`` (oneDNN's op has no ONNX form).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CONV_KERNELS", "DEFAULT_CPU_KERNEL", "OneDNNConv3d", "conv_kernel", "onednn_available", "onednn_conv3d",
           "resolve_kernel", "set_conv_kernel"]

CONV_KERNELS = ("aten", "onednn")
DEFAULT_CPU_KERNEL = "onednn"


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN (MKL-DNN) convolutions."""
    return bool(torch.backends.mkldnn.is_available())


def resolve_kernel(kernel: str, device: torch.device | str = "cpu") -> str:
    """``"auto"`` → oneDNN on a CPU whose PyTorch has it, PyTorch's choice elsewhere; a named kernel checked."""
    device = torch.device(device)
    if kernel == "auto":
        return DEFAULT_CPU_KERNEL if device.type == "cpu" and onednn_available() else "aten"
    if kernel not in CONV_KERNELS:
        raise ValueError(f"conv kernel must be auto or one of {', '.join(CONV_KERNELS)}, got {kernel!r}")
    return kernel


def _triple(value: Any) -> list[int]:
    return [int(value)] * 3 if isinstance(value, int) else [int(v) for v in value]


def onednn_conv3d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: Any = 1,
                  padding: Any = 0, dilation: Any = 1, groups: int = 1) -> torch.Tensor:
    """``F.conv3d`` through oneDNN whatever the sizes, for CPU float32/bfloat16 tensors (its gradient is
    ``F.conv3d``'s); another device or dtype, or a string padding, goes to ``F.conv3d``."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or isinstance(padding, str):
        return F.conv3d(x, weight, bias, stride, padding, dilation, groups)
    return torch.mkldnn_convolution(x, weight, bias, _triple(padding), _triple(stride), _triple(dilation), groups)


class OneDNNConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` whose eval-mode forward runs through oneDNN (same parameters, same state_dict keys).

    :func:`set_conv_kernel` gives a model's plain convs this class (or a subclass of it and of the conv's own
    class, for subclasses that keep ``nn.Conv3d``'s forward, like torchvision's ``Conv3DSimple``) and takes it
    back; it has no state of its own. In training mode, while compiling or exporting, or with a padding mode other
    than zeros, it is a plain ``nn.Conv3d``.
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.training or self.padding_mode != "zeros" or torch.compiler.is_compiling():
            return super()._conv_forward(input, weight, bias)
        return onednn_conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


_ONEDNN_CLASSES: dict[type, type] = {nn.Conv3d: OneDNNConv3d}


def _plain_class(module: nn.Module) -> type | None:
    """The conv class ``module`` has without a kernel choice, if it is a Conv3d that runs ``nn.Conv3d``'s forward."""
    cls = getattr(type(module), "_vared_plain", type(module))
    if (isinstance(module, nn.Conv3d) and cls.forward is nn.Conv3d.forward
            and cls._conv_forward is nn.Conv3d._conv_forward):
        return cls
    return None


def _onednn_class(cls: type) -> type:
    if cls not in _ONEDNN_CLASSES:
        _ONEDNN_CLASSES[cls] = type(f"OneDNN{cls.__name__}", (OneDNNConv3d, cls), {"__module__": __name__})
    derived = _ONEDNN_CLASSES[cls]
    derived._vared_plain = cls
    return derived


def set_conv_kernel(model: nn.Module, kernel: str) -> nn.Module:
    """Run ``model``'s 3-D convs at inference with ``kernel`` (``"aten"`` or ``"onednn"``), in place.

    Convs that run ``nn.Conv3d``'s own forward switch class (no parameter or key changes); adaptive layers switch
    the kernel their inference path calls. Returns ``model``.
    """
    kernel = resolve_kernel(kernel)
    if kernel == "onednn" and not onednn_available():
        raise ValueError("this PyTorch build has no oneDNN; use the aten conv kernel")
    for module, plain in _kernel_targets(model):
        if plain is None:
            module.conv_kernel = kernel
        else:
            module.__class__ = _onednn_class(plain) if kernel == "onednn" else plain
    return model


def _kernel_targets(model: nn.Module) -> Iterator[tuple[nn.Module, type | None]]:
    """The modules whose conv kernel can be chosen: an adaptive layer with ``None``, a plain conv with its class
    without a kernel choice."""
    from .layer import AdaptiveLayer

    for module in model.modules():
        if isinstance(module, AdaptiveLayer):
            yield module, None
        elif (plain := _plain_class(module)) is not None:
            yield module, plain


@contextlib.contextmanager
def conv_kernel(model: nn.Module, kernel: str) -> Iterator[nn.Module]:
    """:func:`set_conv_kernel` for the duration of a ``with`` block, restoring each module's kernel after."""
    saved = [(module, module.conv_kernel if plain is None else type(module))
             for module, plain in _kernel_targets(model)]
    set_conv_kernel(model, kernel)
    try:
        yield model
    finally:
        for module, before in saved:
            if isinstance(before, str):
                module.conv_kernel = before
            else:
                module.__class__ = before
