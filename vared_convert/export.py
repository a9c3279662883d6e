"""Exporting an adaptive model so that its savings survive outside PyTorch eager.

* **Dynamic** (the default): every adaptive layer (a :class:`DynamicConv3d` or an
  :class:`~vared_convert.nn.AdaptiveBlock`) becomes its gate, an argmax and a balanced tree of ``torch.cond``
  whose leaves each run one option's slice and cheap ops (``run_option``): one ``If`` per gate.
  In ONNX each ``torch.cond`` is an ``If`` node, so ONNX Runtime runs only the chosen branch. A decision is
  per video, so the program takes one clip (batch 1).
* **Static policy**: every layer runs one fixed option and no gate: plain sliced/strided convs and cheap ops,
  any batch size (batched serving). The option comes from ``(temporal, channel_ratio)`` or from the decisions
  the gates make most often on sample clips.

Both go through one ``torch.export`` program, written as ONNX and/or ``.pt2``, and every written file is
verified against PyTorch eager on sample clips: an error above ``atol`` fails the export and writes nothing.

The adaptive layers are swapped for export modules (and run in their ``"trace"`` execution) before tracing, rather than rewritten in a traced fx graph:
``torch.export`` (strict) traces modules that call ``torch.cond`` directly, and models that torch.fx cannot
trace (SlowFast) export the same way.
"""

from __future__ import annotations

import contextlib
import io
import copy
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import block_members
from .errors import VaredError
from .files import atomic_output, check_output_path
from .nn import TRACE, AdaptiveBlock, AdaptiveLayer, adaptive_layers, option_index, recording, set_execution
from .nn.dynamic_conv import Conv3dFunction
from .nn.frame_conv import FrameConv3d, lowered_conv3d
from .recipe import replace_module

__all__ = [
    "ConditionalConv3d",
    "FixedOptionConv3d",
    "ExportResult",
    "DEFAULT_ATOL",
    "conditional_model",
    "static_model",
    "static_policy",
    "lower_conv3d",
    "most_frequent_policy",
    "export_model",
    "sample_clips",
]

DEFAULT_ATOL = 1e-4
LOWERINGS = ("none", "frames")


class ConditionalConv3d(nn.Module):
    """An adaptive layer (dynamic conv or block) for export: the gate picks an option, ``torch.cond`` runs only
    that option's branch."""

    def __init__(self, layer: AdaptiveLayer, conv3d: Conv3dFunction = F.conv3d):
        super().__init__()
        self.layer, self.conv3d = layer, conv3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.layer.gate(x).argmax()  # one clip: a 0-d option index
        return self._among(0, self.layer.num_options, x, choice)

    def _among(self, first: int, end: int, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Run the chosen option of ``first .. end - 1``: a balanced tree of conds (shallow nesting exports fast)."""
        if end - first == 1:  # cond's branches must return tensors of one layout: dense, canonical strides
            return _dense(self.layer.run_option(x, first, self.conv3d))
        middle = (first + end) // 2
        return torch.cond(
            choice < middle,
            lambda x, choice: self._among(first, middle, x, choice),
            lambda x, choice: self._among(middle, end, x, choice),
            (x, choice),
        )


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` with row-major strides, size-1 dimensions included (``contiguous()`` keeps a size-1 dimension's
    stride, and odd frame counts or the frame lowering's transposes leave other layouts)."""
    canonical, step = [], 1
    for size in reversed(x.shape):
        canonical.append(step)
        step *= size
    return x if x.stride() == tuple(reversed(canonical)) else x.clone(memory_format=torch.contiguous_format)


class FixedOptionConv3d(nn.Module):
    """An adaptive layer frozen to one option for export: no gate, only that option's slice and cheap ops."""

    def __init__(self, layer: AdaptiveLayer, option: int, conv3d: Conv3dFunction = F.conv3d):
        super().__init__()
        self.layer, self.option, self.conv3d = layer, option, conv3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.run_option(x, self.option, self.conv3d)

    def extra_repr(self) -> str:
        return f"option={self.option} {self.layer.options[self.option]}"


def lower_conv3d(model: nn.Module, inplace: bool = False) -> nn.Module:
    """``model`` (a copy unless ``inplace``) with each static ``nn.Conv3d`` run as 2-D convs over frames
    (:class:`~vared_convert.nn.frame_conv.FrameConv3d`) where that pays. Adaptive layers (and the modules a block
    runs) are left to their export modules, which lower their computed part themselves."""
    lowered = model if inplace else copy.deepcopy(model)
    inside_dynamic = {f"{name}.{sub}" for name, m in adaptive_layers(lowered) for sub, _ in m.named_modules() if sub}
    inside_dynamic |= block_members(lowered)
    for name, module in list(lowered.named_modules()):
        if isinstance(module, nn.Conv3d) and name not in inside_dynamic and FrameConv3d.pays_for(module):
            replace_module(lowered, name, FrameConv3d(module))
    return lowered


def conv_function(lowering: str) -> Conv3dFunction:
    """How exported 3-D convs compute: ``"none"`` as 3-D convs, ``"frames"`` as 2-D convs over frames where that
    pays (:mod:`vared_convert.nn.frame_conv`)."""
    if lowering not in LOWERINGS:
        raise VaredError(f"--conv-lowering must be one of {', '.join(LOWERINGS)}, got {lowering!r}")
    return lowered_conv3d if lowering == "frames" else F.conv3d


def _swapped(model: nn.Module, make: Callable[[str, AdaptiveLayer], nn.Module], lowering: str) -> nn.Module:
    """An eval-mode copy of ``model``, its adaptive layers in their ``"trace"`` execution, each replaced by
    ``make(name, layer)`` and, with the ``"frames"`` lowering, every static 3-D conv run as 2-D convs over frames
    where that pays."""
    copied = copy.deepcopy(model).eval()
    set_execution(copied, TRACE)
    layers = adaptive_layers(copied)
    if not layers:
        raise VaredError("the model has no adaptive layer; convert it first (vared convert)")
    for name, layer in layers:
        replace_module(copied, name, make(name, layer))
    return lower_conv3d(copied, inplace=True) if lowering == "frames" else copied


def conditional_model(model: nn.Module, lowering: str = "none") -> nn.Module:
    """A copy of ``model`` whose dynamic convs decide with ``torch.cond`` (exports to ONNX ``If``; batch 1)."""
    conv3d = conv_function(lowering)
    return _swapped(model, lambda name, layer: ConditionalConv3d(layer, conv3d), lowering)


def static_model(model: nn.Module, policy: Mapping[str, int], lowering: str = "none") -> nn.Module:
    """A copy of ``model`` whose dynamic convs run the option ``policy[name]`` each, with no gate."""
    missing = [name for name, _ in adaptive_layers(model) if name not in policy]
    if missing:
        raise VaredError(f"the static policy names no option for {len(missing)} layers (first: {missing[0]})")
    conv3d = conv_function(lowering)
    return _swapped(model, lambda name, layer: FixedOptionConv3d(layer, int(policy[name]), conv3d), lowering)


def static_policy(model: nn.Module, option: tuple[int, float]) -> dict[str, int]:
    """Every layer's index of option ``(temporal, channel_ratio)``, which must be in the model's search space (a
    layer that lacks it, e.g. a grouped conv's channel ratios, runs the nearest option it offers)."""
    from .profile import check_option

    check_option(model, option)
    temporal, ratio = option
    return {name: option_index(layer, temporal, ratio) for name, layer in adaptive_layers(model)}


def policy_labels(model: nn.Module, policy: Mapping[str, int]) -> dict[str, str]:
    """Each layer's option of a static policy as the ``--option`` flag writes it (``"2,0.5"``)."""
    from .profile import option_label

    layers = dict(adaptive_layers(model))
    return {name: option_label(*layers[name].options[index].as_list(), layers[name].width)
            for name, index in policy.items()}


def policy_from_data(model: nn.Module, root: str, *, split: str = "val", layout: str = "auto",
                     max_clips: int = 256, batch_size: int = 8, workers: int = 2) -> dict[str, int]:
    """:func:`most_frequent_policy` over up to ``max_clips`` clips of one split of a dataset."""
    from itertools import islice

    from .checks import integer
    from .predict import clip_loader

    integer("max_clips", max_clips, 1)
    loader = clip_loader(model, root, split=split, layout=layout, batch_size=batch_size, workers=workers)
    batches = (b["clip"] for b in islice(loader, -(-max_clips // batch_size)) if b["clip"] is not None)
    return most_frequent_policy(model, batches)


@torch.no_grad()
def most_frequent_policy(model: nn.Module, clips: Iterable[torch.Tensor]) -> dict[str, int]:
    """Every layer's most frequent gate decision over ``clips`` (batches of shape (N, C, T, H, W))."""
    layers = adaptive_layers(model)
    counts = {name: torch.zeros(layer.num_options, dtype=torch.long) for name, layer in layers}
    with _decisions(model, None):
        for batch in clips:
            with recording(model) as log:
                model(batch)
            for name, layer in layers:
                counts[name] += torch.bincount(log[layer].choice.cpu(), minlength=layer.num_options)
    if not any(int(c.sum()) for c in counts.values()):
        raise VaredError("no clips to choose a static policy from")
    return {name: int(c.argmax()) for name, c in counts.items()}


def sample_clips(input_shape: Sequence[int], count: int, batch: int = 1, seed: int = 0) -> list[torch.Tensor]:
    """Seeded random clips of shape ``(batch, *input_shape)``; each batch is scaled differently so that gates
    see inputs of different statistics."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, *input_shape, generator=generator) * (0.5 + i) for i in range(count)]


@dataclass
class ExportResult:
    """What one export wrote and how well it reproduces PyTorch eager."""

    path: str
    format: str  # "onnx" or "pt2"
    policy: str  # "dynamic" (gates, If / torch.cond) or "static"
    batch: str  # "1" or "any"
    max_abs_error: float | None  # None when not verified
    atol: float
    clips: int  # sample clips compared
    options: dict[str, int] = field(default_factory=dict)  # static: each layer's option index
    lowering: str = "none"  # how 3-D convs were written: "none" (3-D) or "frames" (2-D convs over frames)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def _decisions(model: nn.Module, policy: Mapping[str, int] | None) -> Iterator[None]:
    """Eager ``model`` in eval mode deciding as the export does: by its gates, or by ``policy``."""
    saved = [(layer, layer.policy) for _, layer in adaptive_layers(model)]
    was_training = model.training
    model.eval()
    try:
        for name, layer in adaptive_layers(model):
            layer.policy = None if policy is None else int(policy[name])
        yield
    finally:
        for layer, before in saved:
            layer.policy = before
        model.train(was_training)


def _input_shape(model: nn.Module, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    from .shapes import check_clip_shape, resolve_clip_shape

    shape = resolve_clip_shape(model, input_shape)
    check_clip_shape(model, shape)
    return shape


def _why(exc: Exception) -> str:
    """The exception's type and first line (the exporters' reports run to pages)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _program(module: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    torch._dynamo.reset()  # a previous export's cached state can otherwise pin the batch dimension
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic_batch else None
    try:
        with torch.no_grad():
            # strict: dynamo traces every torch.cond within one graph at static shapes (non-strict export
            # compiles each cond on its own, and the recompilations make the clip's dimensions symbolic)
            return torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes, strict=True)
    except Exception as exc:  # torch.export fails in many ways; each means "this model does not export"
        raise VaredError(f"torch.export could not export the model: {_why(exc)}") from exc


def _onnx_program(program: torch.export.ExportedProgram) -> Any:
    try:
        return torch.onnx.export(program, dynamo=True, verbose=False)
    except Exception as exc:
        raise VaredError(f"ONNX conversion failed: {_why(exc)}") from exc


def _max_error(expected: Sequence[torch.Tensor], got: Sequence[Any]) -> float:
    return max(float((torch.as_tensor(g).float() - e.float()).abs().max()) for e, g in zip(expected, got))


def _run_onnx(path: Path, clips: Sequence[torch.Tensor]) -> list[Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the exporter leaves unused initializers that ORT warns about
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: clip.numpy()})[0] for clip in clips]


def _run_pt2(path: Path, clips: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    with open(path, "rb") as fh:
        loaded = torch.export.load(fh).module()
    with torch.no_grad():
        return [loaded(clip) for clip in clips]


def export_model(
    model: nn.Module,
    *,
    onnx: str | os.PathLike | None = None,
    pt2: str | os.PathLike | None = None,
    policy: Mapping[str, int] | None = None,
    input_shape: Sequence[int] | None = None,
    verify: bool = True,
    atol: float = DEFAULT_ATOL,
    clips: Sequence[torch.Tensor] | None = None,
    force: bool = False,
    lowering: str = "none",
    inputs: Sequence[str | os.PathLike] = (),
) -> list[ExportResult]:
    """Export an adaptive model as ONNX and/or a ``torch.export`` program (``.pt2``), verified.

    Args:
        model: a converted (adaptive) model, on the CPU.
        onnx, pt2: where to write each format (at least one).
        policy: ``None`` for the dynamic model (gates and ``If``; batch 1), or each layer's fixed option index
            (:func:`static_policy`, :func:`most_frequent_policy`) for a static model with a dynamic batch.
        input_shape: the clip shape ``(C, T, H, W)`` to export at (default: the one the conversion recorded).
        verify: compare every written file with PyTorch eager on ``clips``; above ``atol`` raise and write nothing.
        clips: the sample inputs for verification (default: seeded random clips of the export shape).
        force: overwrite existing outputs.
        inputs: files the outputs must not be (the model file it was loaded from).
        lowering: ``"frames"`` writes each ungrouped ``k_t×k×k`` conv as 2-D convs over frames (faster in ONNX
            Runtime on the CPU, where a 3-D conv's unfolding does not shrink with the channels an option
            computes); ``"none"`` keeps 3-D convs.
    """
    if onnx is None and pt2 is None:
        raise VaredError("nothing to write: give --onnx PATH and/or --pt2 PATH")
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise VaredError("export runs on the CPU: move the model there first (model.cpu())")
    outputs = [(Path(p), kind) for p, kind in ((onnx, "onnx"), (pt2, "pt2")) if p is not None]
    for path, _ in outputs:
        check_output_path(path, force, inputs)
    shape = _input_shape(model, input_shape)
    dynamic = policy is None
    module = conditional_model(model, lowering) if dynamic else static_model(model, policy, lowering)
    if clips is None:
        clips = sample_clips(shape, count=4 if dynamic else 2, batch=1 if dynamic else 2)
    if dynamic and any(clip.shape[0] != 1 for clip in clips):
        raise VaredError("the dynamic (If) export decides per clip: verify it with batch-1 clips")
    # a dynamic batch is traced at batch 2: torch.export specialises a dimension of size 1
    program = _program(module, torch.zeros(1 if dynamic else 2, *shape), dynamic_batch=not dynamic)
    if verify:
        with _decisions(model, policy), torch.no_grad():
            expected = [model(clip) for clip in clips]

    results = []
    for path, kind in outputs:
        with atomic_output(path, force, inputs) as tmp:
            if kind == "onnx":
                _onnx_program(program).save(tmp, external_data=False)
            else:
                buffer = io.BytesIO()  # written by Python, so that a full disk is an OSError naming its cause
                torch.export.save(program, buffer)
                tmp.write_bytes(buffer.getbuffer())
            error = None
            if verify:
                error = _max_error(expected, (_run_onnx if kind == "onnx" else _run_pt2)(tmp, clips))
                if not error <= atol:
                    raise VaredError(
                        f"verification failed: {kind} output differs from PyTorch by {error:.3g} (> --atol {atol:g}); "
                        f"nothing written to {path}"
                    )
        results.append(ExportResult(str(path), kind, "dynamic" if dynamic else "static", "1" if dynamic else "any",
                                    error, atol, len(clips) if verify else 0, {} if dynamic else dict(policy),
                                    lowering))
    return results
