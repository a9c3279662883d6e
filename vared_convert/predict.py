"""Running an adaptive model on clips: predictions with each clip's FLOPs ratio, and evaluation on a dataset.

A clip's FLOPs ratio is what its own decisions cost: each adaptive layer's chosen option (returned by the
forward's :class:`~vared_convert.nn.DecisionLog`) and its gate, plus the static layers, over the original model at the same clip shape (:class:`~vared_convert.flops.CostModel`).
Video-level accuracy averages the logits of a video's clips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .checks import integer
from .errors import VaredError
from .flops import CostModel
from .nn import adaptive_layers, recording
from .nn.layer import Policy
from .recipe import model_info

__all__ = [
    "Predictions",
    "EvalReport",
    "predict",
    "evaluate",
    "evaluate_dataset",
    "clip_loader",
    "inference_memory_format",
    "layout_name",
]


def inference_memory_format(device: torch.device) -> torch.memory_format:
    """Channels-last on the CPU, where oneDNN's convs and the cheap ops run fastest in it; as is elsewhere."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def layout_name(layout: torch.memory_format) -> str:
    """How reports name a clip layout: ``"channels-last"`` or ``"contiguous"``."""
    return "channels-last" if layout == torch.channels_last_3d else "contiguous"


@dataclass
class Predictions:
    """One batch's outputs: logits (N, classes) and each clip's FLOPs ratio (N,)."""

    logits: torch.Tensor
    flops_ratio: torch.Tensor


@torch.no_grad()
def predict(model: nn.Module, clips: torch.Tensor, costs: CostModel | None = None,
            policy: Mapping[str, Policy] | None = None) -> Predictions:
    """Run ``model`` on a batch of clips (N, C, T, H, W), every gate deciding per clip.

    ``costs`` (for the clips' shape) is built when not given; pass one to reuse it across batches. ``policy``
    decides instead of the gates (which then do not run nor count): per layer name, an option index, or option
    probabilities that each clip's option is drawn from (a random policy).
    """
    named = adaptive_layers(model)
    layers = [layer for _, layer in named]
    if not layers:
        raise VaredError("the model has no adaptive convolution; convert it first (vared convert)")
    if policy is not None and any(name not in policy for name, _ in named):
        raise VaredError(f"the policy names no option for {sum(name not in policy for name, _ in named)} layers")
    saved = [(layer, layer.policy) for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for name, layer in named:
            layer.policy = None if policy is None else policy[name]
        costs = costs or CostModel(model, clips.shape[1:])
        with recording(model) as log:
            logits = model(clips)
        choices = log.choices(layers)
    finally:
        for layer, policy in saved:
            layer.policy = policy
        model.train(was_training)
    ratio = costs.per_sample_macs(choices, with_gates=policy is None) / costs.original_macs
    return Predictions(logits.float().cpu(), ratio.float())


@dataclass
class EvalReport:
    """Top-1 at clip and video level (percent) and the mean FLOPs ratio over clips."""

    clips: int
    videos: int
    clip_top1: float
    video_top1: float
    flops_ratio: float
    original_gflops: float  # per clip, at the evaluated clip shape
    failed: int = 0  # videos that could not be decoded

    @property
    def adaptive_gflops(self) -> float:
        return self.flops_ratio * self.original_gflops

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "adaptive_gflops": self.adaptive_gflops}


def evaluate(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    device: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    policy: Mapping[str, Policy] | None = None,
) -> EvalReport:
    """Evaluate ``model`` on batches as :func:`vared_convert.data.collate_clips` makes them.

    Each batch holds ``clip`` (N, C, T, H, W), ``label`` (N,) and ``video`` (N,) ids; ``failed`` lists videos
    that could not be decoded (a batch whose every item failed has ``clip`` None). On the CPU the model and
    clips run channels-last (the model is converted in place). ``on_batch(clips_so_far)`` reports progress.
    ``policy`` decides instead of the gates (see :func:`predict`).
    """
    device = torch.device(device)
    layout = inference_memory_format(device)
    model.to(device=device, memory_format=layout)
    costs: CostModel | None = None
    correct = total = 0
    ratio_sum = 0.0
    video_logits: dict[int, torch.Tensor] = {}
    video_labels: dict[int, int] = {}
    failed: set[str] = set()
    for batch in batches:
        failed.update(path for path, _ in batch.get("failed", []))
        if batch.get("clip") is None or len(batch["clip"]) == 0:
            continue
        clips = batch["clip"].to(device=device, memory_format=layout)
        if costs is None or costs.clip_shape != tuple(clips.shape[1:]):
            costs = CostModel(model, clips.shape[1:])
        out = predict(model, clips, costs, policy)
        labels = torch.as_tensor(batch["label"]).cpu()
        correct += int((out.logits.argmax(1) == labels).sum())
        total += len(labels)
        ratio_sum += float(out.flops_ratio.sum())
        for logit, label, video in zip(out.logits, labels.tolist(), torch.as_tensor(batch["video"]).tolist()):
            video_logits[video] = video_logits.get(video, 0) + logit
            video_labels[video] = label
        if on_batch:
            on_batch(total)
    if not total:
        why = f": none of the {len(failed)} videos could be decoded" if failed else ""
        raise VaredError(f"no clip to evaluate{why}")
    video_correct = sum(int(int(logits.argmax()) == video_labels[v]) for v, logits in video_logits.items())
    return EvalReport(
        clips=total,
        videos=len(video_logits),
        clip_top1=100 * correct / total,
        video_top1=100 * video_correct / len(video_logits),
        flops_ratio=ratio_sum / total,
        original_gflops=costs.original_macs / 1e9,
        failed=len(failed),
    )


def clip_loader(
    model: nn.Module,
    root: str,
    *,
    split: str = "val",
    layout: str = "auto",
    frames: int | None = None,
    stride: int = 4,
    size: int | None = None,
    clips_per_video: int = 1,
    batch_size: int = 8,
    workers: int = 2,
) -> Any:
    """Evaluation clips of one split of the dataset at ``root``, labelled in the model's class order.

    Frames and crop size default to the clip shape the model was converted at; normalisation is its
    architecture's.
    """
    from .data.dataset import VideoClipDataset, make_loader
    from .data.layouts import index_dataset
    from .shapes import check_clip_shape

    integer("stride", stride, 1)
    integer("clips_per_video", clips_per_video, 1)
    integer("batch_size", batch_size, 1)
    integer("workers", workers, 0)
    for name, value in (("frames", frames), ("size", size)):
        if value is not None:
            integer(name, value, 1)
    info = model_info(model)
    shape = info.recipe.input_shape if info is not None and info.recipe is not None else None
    if (frames is None or size is None) and shape is None:
        raise VaredError("the model records no clip shape: give --frames and --size")
    frames = frames if frames is not None else shape[1]
    size = size if size is not None else shape[2]
    clip_shape = (3 if shape is None else shape[0], frames, size, size)
    check_clip_shape(model, clip_shape, what="--frames/--size clip")
    index = index_dataset(root, layout, class_names=info.class_names if info is not None else None)
    outputs = _head_outputs(model, clip_shape)
    if outputs is not None and outputs != len(index.classes):
        raise VaredError(f"{root} has {len(index.classes)} classes but the model's head has {outputs} outputs; "
                         "evaluate it on the dataset it was trained for (or finetune it with --reset-head)")
    dataset = VideoClipDataset.from_index(
        index, split, train=False, frames=frames, stride=stride, size=size, clips_per_video=clips_per_video,
        normalization=info.arch.normalization if info is not None else "kinetics",
    )
    if len(dataset) == 0:
        raise VaredError(f"the '{split}' split of {root} has no videos")
    return make_loader(dataset, batch_size, workers)


def _head_outputs(model: nn.Module, clip_shape: Sequence[int]) -> int | None:
    """The number of classes the model scores, from a run on a meta clip (None where it cannot run on meta)."""
    from .shapes import output_shape

    shape = output_shape(model, clip_shape)
    return shape[-1] if shape is not None and len(shape) == 2 else None


def evaluate_dataset(model: nn.Module, root: str, *, device: torch.device | str = "cpu",
                     on_batch: Callable[[int], None] | None = None, **loader_options: Any) -> EvalReport:
    """:func:`evaluate` on one split of a dataset folder (``loader_options``: those of :func:`clip_loader`)."""
    return evaluate(model, clip_loader(model, root, **loader_options), device=device, on_batch=on_batch)
