"""Per-layer FLOPs and measured latency of a model, original against adaptive.

Three modes, by what is given:

* nothing: static analysis at the recipe's clip shape -- each layer's cost range, cheapest option to full;
* ``clips``: the gates decide on real clips -- per-layer costs and option histograms averaged over them;
* ``option=(T, C)``: every gate forced to one option (a what-if, as a static-policy export would run it).

FLOPs are multiply-adds (fvcore's convention); the original model is fvcore's count, the adaptive cost per
layer and option comes from the analytic formulas that tests check against fvcore.
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .arch import build_model
from .checks import choice as check_choice, integer
from .errors import VaredError
from .flops import CostModel
from .blocks import block_members
from .nn import adaptive_layers, forced_policy, option_index, recording
from .nn.kernels import CONV_KERNELS, resolve_kernel, set_conv_kernel
from .recipe import model_info
from .shapes import check_clip_shape, resolve_clip_shape
from .timing import Timing, measure_interleaved

__all__ = ["LayerProfile", "ProfileReport", "Reservoir", "profile_model", "profile_dataset", "original_network",
           "option_label", "parse_option", "check_option"]


def option_label(temporal: int, channels: int, out_channels: int) -> str:
    """``"2,0.5"``: an option as the ``--option T,C`` flag writes it."""
    return f"{temporal},{channels / out_channels:.3g}"


def parse_option(text: str) -> tuple[int, float]:
    """Parse ``T,C`` (temporal factor, channel ratio), e.g. ``2,0.5``."""
    parts = text.replace(" ", "").split(",")
    try:
        temporal, ratio = int(parts[0]), float(parts[1])
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError):
        raise VaredError(f"--option {text!r}: expected T,C such as 2,0.5 (temporal factor, channel ratio)") from None
    return temporal, ratio


@dataclass
class LayerProfile:
    """One conv's row in the report (MACs per clip at batch 1). ``output_shape`` is ``(C, T, H, W)``, the output
    of one clip at the full option, for static and adaptive rows alike."""

    name: str
    output_shape: tuple[int, ...]
    original_macs: int
    adaptive_macs: float  # mean over clips (or the forced option's cost; or the full cost without clips)
    min_macs: int  # the cheapest option (equal to original for a static conv)
    gate_macs: int = 0
    option_counts: dict[str, int] = field(default_factory=dict)
    dynamic: bool = False

    @property
    def saving(self) -> float:
        return 1 - self.adaptive_macs / self.original_macs if self.original_macs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dynamic": self.dynamic,
            "output_shape": list(self.output_shape),
            "original_gflops": self.original_macs / 1e9,
            "adaptive_gflops": self.adaptive_macs / 1e9,
            "min_gflops": self.min_macs / 1e9,
            "gate_gflops": self.gate_macs / 1e9,
            "option_counts": dict(self.option_counts),
        }


@dataclass
class Latency:
    """Median time per batch-1 clip of the original network and the adaptive model, timed side by side."""

    original: Timing
    adaptive: Timing
    clips: int = 1
    flops_ratio: float | None = None
    layout: str = "contiguous"
    malloc: str = "system"
    conv_kernel: str = "aten"

    @property
    def time_ratio(self) -> float:
        return self.adaptive.median_ms / self.original.median_ms

    @property
    def realised(self) -> float | None:
        """The share of the FLOPs saving realised in time, ``(1 − time ratio) / (1 − FLOPs ratio)``."""
        if self.flops_ratio is None or self.flops_ratio >= 0.99:
            return None
        return (1 - self.time_ratio) / (1 - self.flops_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "original_ms": self.original.median_ms,
            "adaptive_ms": self.adaptive.median_ms,
            "original_range_ms": [self.original.min_ms, self.original.max_ms],
            "adaptive_range_ms": [self.adaptive.min_ms, self.adaptive.max_ms],
            "time_ratio": self.time_ratio,
            "flops_ratio": self.flops_ratio,
            "realised": self.realised,
            "layout": self.layout,
            "malloc": self.malloc,
            "conv_kernel": self.conv_kernel,
            "device": self.original.device,
            "threads": self.original.threads,
            "repeats": self.original.repeats,
            "clips": self.clips,
        }


@dataclass
class ProfileReport:
    """Everything ``vared profile`` prints; ``to_dict`` has the fixed keys scripts read."""

    mode: str  # "static", "clips" or "forced"
    input_shape: tuple[int, ...]
    original_macs: int
    adaptive_macs: float
    gate_macs: float  # what the gates themselves cost (included in adaptive_macs unless forced)
    min_macs: int
    layers: list[LayerProfile]
    other_macs: int  # everything that is not a conv (norms, pools, classifier)
    clips: int = 0
    option: tuple[int, float] | None = None
    latency: Latency | None = None
    class_histograms: dict[str, dict[str, int]] = field(default_factory=dict)
    latency_table: Any = None  # a LatencyTable, with `vared profile --latency-table`

    @property
    def flops_ratio(self) -> float:
        return self.adaptive_macs / self.original_macs

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "unit": "GMACs (fvcore: one multiply-add = one FLOP), per clip",
            "mode": self.mode,
            "input_shape": list(self.input_shape),
            "original_gflops": self.original_macs / 1e9,
            "adaptive_gflops": self.adaptive_macs / 1e9,
            "flops_ratio": self.flops_ratio,
            "gate_gflops": self.gate_macs / 1e9,
            "min_gflops": self.min_macs / 1e9,
            "other_gflops": self.other_macs / 1e9,
            "clips": self.clips,
            "option": list(self.option) if self.option else None,
            "layers": [layer.to_dict() for layer in self.layers],
        }
        if self.class_histograms:
            data["class_option_counts"] = self.class_histograms
        if self.latency is not None:
            data["latency"] = self.latency.to_dict()
        if self.latency_table is not None:
            data["latency_table"] = self.latency_table.to_dict()
        return data


def original_network(model: nn.Module) -> nn.Module:
    """The unconverted network with the same weights, rebuilt from the model's architecture spec."""
    info = model_info(model)
    if info is None or info.recipe is None:
        return model
    original = build_model(info.arch)
    state = model.state_dict()
    missing = [k for k in original.state_dict() if k not in state]
    if missing:
        raise VaredError(f"cannot rebuild the original network: {len(missing)} keys missing ({missing[0]}, ...)")
    original.load_state_dict({k: state[k] for k in original.state_dict()})
    param = next(model.parameters(), None)
    return original.to(param.device if param is not None else "cpu").eval()


def _output_shapes(model: nn.Module, names: Sequence[str], clip_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Each named module's output shape ``(C, T, H, W)`` for one clip, every gate forced to the full option."""
    param = next(model.parameters(), None)
    clip = torch.zeros(1, *clip_shape, device=param.device if param is not None else "cpu")
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name in names:
        def record(module: nn.Module, args: tuple, output: torch.Tensor, name: str = name) -> None:
            shapes.setdefault(name, tuple(int(s) for s in output.shape[1:]))

        handles.append(model.get_submodule(name).register_forward_hook(record))
    try:
        with forced_policy(model, (1, 1.0)) if adaptive_layers(model) else contextlib.nullcontext():
            model(clip)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def _conv_rows(model: nn.Module, costs: CostModel) -> tuple[list[LayerProfile], int]:
    """One row per adaptive layer (dynamic conv or block) and per static conv with its original cost; the rest of
    the model's cost."""
    dynamic = {t.name: t for t in costs.layers}
    inside = block_members(model)
    picked: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if name in inside:
            continue
        if name in dynamic or (isinstance(module, nn.Conv3d) and costs.by_module.get(name)):
            picked.append((name, module))
    shapes = _output_shapes(model, [name for name, _ in picked], costs.clip_shape)
    rows = []
    for name, module in picked:
        if name in dynamic:
            table = dynamic[name]
            rows.append(LayerProfile(name, shapes[name], table.full_macs, table.full_macs, min(table.option_macs),
                                     table.gate_macs, dynamic=True))
        else:
            macs = costs.by_module[name]
            rows.append(LayerProfile(name, shapes[name], macs, macs, macs))
    other = costs.original_macs - sum(r.original_macs for r in rows)
    return rows, other


def _run(model: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    try:
        return model(clip)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise VaredError(f"the model rejects clips of shape {tuple(clip.shape[1:])}: {first}") from exc


def profile_dataset(
    model: nn.Module,
    root: str,
    clips: int = 64,
    *,
    split: str = "val",
    layout: str = "auto",
    stride: int = 4,
    workers: int = 2,
    input_shape: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ProfileReport:
    """:func:`profile_model` with the gates deciding on up to ``clips`` clips of one split of a dataset.

    ``input_shape`` sets the frames and crop size (default: the recipe's); ``progress(done, total)`` follows the
    clips; ``options`` are :func:`profile_model`'s (``option``, ``latency``, ``repeats``).
    """
    from .predict import clip_loader

    integer("clips", clips, 1)
    frames, size = (input_shape[1], input_shape[2]) if input_shape is not None else (None, None)
    loader = clip_loader(model, root, split=split, layout=layout, frames=frames, size=size, stride=stride,
                         batch_size=min(8, clips), workers=workers)
    total = min(clips, len(loader.dataset))
    info = model_info(model)
    class_names = (info.class_names if info is not None else None) or loader.dataset.classes
    done = 0

    def batches() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        nonlocal done
        for batch in loader:
            if batch.get("clip") is None:
                continue
            x, y = batch["clip"][: total - done], batch["label"][: total - done]
            yield x, y
            if done >= total:
                return

    def advance(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done, total)

    if progress:
        progress(0, total)
    return profile_model(model, clips=batches(), class_names=class_names, on_batch=advance, **options)


class Reservoir:
    """A uniform sample of ``size`` items from a stream of unknown length (reservoir sampling), seeded, so the same
    stream gives the same sample: the clips a latency measurement on data times, spread over the whole data rather
    than its first clips (a dataset listed class by class would give one class)."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seen, self.items = size, 0, []
        self._rng = random.Random(seed)

    def slot(self) -> int | None:
        """Count the stream's next item: the slot it takes in :attr:`items`, or ``None`` if it is not kept."""
        seen, self.seen = self.seen, self.seen + 1
        if seen < self.size:
            return seen
        slot = self._rng.randrange(seen + 1)
        return slot if slot < self.size else None

    def offer(self, item: Any) -> None:
        self.put(self.slot(), item)

    def put(self, slot: int | None, item: Any) -> None:
        """Keep ``item`` in the ``slot`` that :meth:`slot` gave it (``None``: drop it)."""
        if slot is None:
            return
        if slot == len(self.items):
            self.items.append(item)
        else:
            self.items[slot] = item


@torch.no_grad()
def profile_model(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    *,
    clips: Iterable[tuple[torch.Tensor, torch.Tensor | None]] | None = None,
    class_names: Sequence[str] | None = None,
    option: tuple[int, float] | None = None,
    latency: bool = False,
    repeats: int = 10,
    warmup: int = 3,
    latency_clips: int = 4,
    conv_kernel: str = "auto",
    on_batch: Callable[[int], None] | None = None,
) -> ProfileReport:
    """Profile ``model`` (converted or plain) per layer; optionally on real ``clips`` and with measured latency.

    Args:
        input_shape: clip shape (C, T, H, W); default the recipe's. With ``clips`` their own shape is used.
        clips: batches ``(clips (N, C, T, H, W), labels or None)`` on which the gates decide.
        option: force every gate to ``(temporal factor, channel ratio)``.
        latency: time the original network and the adaptive model on the same inputs (batch 1): ``latency_clips``
            of ``clips``, a seeded uniform sample of all of them (:class:`Reservoir`), else one random clip.
        conv_kernel: the conv kernel both run with when timed (:func:`~vared_convert.nn.kernels.set_conv_kernel`;
            ``"auto"``: oneDNN on the CPU).
        on_batch: called with the number of clips after each batch (progress bars).
    """
    integer("repeats", repeats, 1)
    integer("warmup", warmup, 0)
    integer("latency_clips", latency_clips, 1)
    check_choice("conv_kernel", conv_kernel, ("auto", *CONV_KERNELS))
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    layers = adaptive_layers(model)
    if option is not None:
        check_option(model, option)
    iterator = iter(clips) if clips is not None else None
    first = next(iterator, None) if iterator is not None else None
    if clips is not None and first is None:
        raise VaredError("no clip could be read from the data")
    if first is not None:
        input_shape = tuple(first[0].shape[1:])
    else:
        input_shape = resolve_clip_shape(model, input_shape)
        check_clip_shape(model, input_shape)
    input_shape = tuple(int(s) for s in input_shape)
    try:
        costs = CostModel(model, input_shape)
    except RuntimeError as exc:
        raise VaredError(f"the model rejects clips of shape {input_shape}: {str(exc).splitlines()[0][:200]}") from exc
    rows, other = _conv_rows(model, costs)
    by_name = {r.name: r for r in rows}
    labels = {name: [option_label(o.temporal, o.channels, layer.width) for o in layer.options]
              for name, layer in layers}

    mode, n_clips, adaptive, gates = "static", 0, float(costs.original_macs), float(costs.gate_macs)
    histograms: dict[str, Counter] = {}
    sample = Reservoir(latency_clips)
    if option is not None:
        mode, gates = "forced", 0.0
        with forced_policy(model, option):
            chosen = [layer.policy for _, layer in layers]
        for table, index in zip(costs.layers, chosen):
            by_name[table.name].adaptive_macs = table.option_macs[index]
            by_name[table.name].option_counts = {labels[table.name][index]: 1}
        adaptive = float(costs.forced_macs(chosen))
    elif first is not None:
        mode = "clips"
        sums = {t.name: 0.0 for t in costs.layers}
        counts: dict[str, Counter] = {t.name: Counter() for t in costs.layers}
        total = 0.0
        batch: tuple[torch.Tensor, torch.Tensor | None] | None = first
        while batch is not None:
            x, y = batch
            x = x.to(device)
            with recording(model) as log:
                _run(model, x)
            choices = log.choices([layer for _, layer in layers])
            total += float(costs.per_sample_macs(choices).sum())
            for table, choice in zip(costs.layers, choices):
                picked = choice.cpu().tolist()
                sums[table.name] += sum(table.option_macs[c] for c in picked)
                counts[table.name].update(labels[table.name][c] for c in picked)
                if y is not None and class_names is not None:
                    for c, label in zip(picked, y.tolist()):
                        histograms.setdefault(class_names[label], Counter())[labels[table.name][c]] += 1
            if latency:
                for i in range(len(x)):
                    if (slot := sample.slot()) is not None:  # a copy of a kept clip only: the batch is not kept
                        sample.put(slot, x[i : i + 1].clone())
            n_clips += len(x)
            if on_batch:
                on_batch(len(x))
            batch = next(iterator, None)
        for table in costs.layers:
            by_name[table.name].adaptive_macs = sums[table.name] / n_clips
            by_name[table.name].option_counts = dict(counts[table.name])
        adaptive = total / n_clips
    else:
        adaptive = float(costs.original_macs + costs.gate_macs)

    report = ProfileReport(
        mode, input_shape, costs.original_macs, adaptive, gates, costs.min_macs(), rows, other, n_clips, option,
        class_histograms={k: dict(v) for k, v in histograms.items()},
    )
    if latency:
        inputs = sample.items or [torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)]
        report.latency = _measure_latency(model, inputs, option, repeats, warmup, device, conv_kernel)
        report.latency.flops_ratio = report.flops_ratio
    return report


def check_option(model: nn.Module, option: tuple[int, float]) -> None:
    """Refuse an option ``(T, C)`` that is not in the model's search space (one line naming the space)."""
    info = model_info(model)
    layers = adaptive_layers(model)
    if not layers:
        raise VaredError("--option needs a converted model (this one has no adaptive layer); run vared convert first")
    temporal, ratio = option
    if info is not None and info.recipe is not None:
        if temporal not in info.recipe.temporal or not any(abs(ratio - c) < 1e-9 for c in info.recipe.channel):
            raise VaredError(
                f"--option {temporal},{ratio:g} is not in this model's search space (temporal "
                f"{','.join(map(str, info.recipe.temporal))}; channel {','.join(f'{c:g}' for c in info.recipe.channel)})"
            )
    for _, layer in layers:
        option_index(layer, temporal, ratio)


def _measure_latency(model: nn.Module, inputs: list[torch.Tensor], option: tuple[int, float] | None, repeats: int,
                     warmup: int, device: torch.device, conv_kernel: str = "auto") -> Latency:
    """Both models timed side by side, interleaved, in the layout inference runs in on ``device`` (channels-last
    on the CPU, where it is fastest for both), with the same conv kernel, and with freed memory kept for reuse on
    glibc."""
    import copy

    from .predict import inference_memory_format, layout_name
    from .timing import retain_freed_memory

    layout = inference_memory_format(device)
    malloc = "retain" if device.type == "cpu" and retain_freed_memory() else "system"
    kernel = resolve_kernel(conv_kernel, device)
    original = original_network(model)
    original = copy.deepcopy(original) if original is model else original  # never the caller's own module
    original = set_conv_kernel(original.to(memory_format=layout).eval(), kernel)
    model = set_conv_kernel(copy.deepcopy(model).to(memory_format=layout).eval(), kernel)
    inputs = [x.contiguous(memory_format=layout) for x in inputs]

    def run_all(net: nn.Module) -> Callable[[], None]:
        def call() -> None:
            for x in inputs:
                net(x)

        return call

    with forced_policy(model, option) if option is not None else contextlib.nullcontext():
        timings = measure_interleaved({"original": run_all(original), "adaptive": run_all(model)}, device, warmup,
                                      repeats)
    return Latency(*(timings[name].per_call(len(inputs)) for name in ("original", "adaptive")), clips=len(inputs),
                   layout=layout_name(layout), malloc=malloc,
                   conv_kernel=kernel)


