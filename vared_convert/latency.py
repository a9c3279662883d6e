"""Latency tables: what each adaptive layer costs in time, at each of its options, on one device.

:func:`measure_latency_table` times a converted model the way ``vared profile --latency`` does (inference mode,
warm-up, interleaved repeats; on the CPU channels-last with freed memory kept for reuse, at the thread count
given; on CUDA synchronised after every call): the original network, the whole model with every gate forced to
the full option, and, on its real input (captured with a forward hook in that full run), every adaptive layer or
block alone at each option and its gate. The static rest is the whole full-option model minus its adaptive layers
at full. A gate timed alone runs on warm caches and costs several times less than between the layers it decides
for, so the gates' times are scaled together to what they add in place: the whole model with every gate deciding
(each pushed to the full option by its offset) against the same model forced to the full option without them.
Each time is the fastest of the repeats: other work on the machine only ever adds time, and adds more to a long
call (the whole model) than to a short one (one layer), which would skew a median-based table's parts against its
whole; on a quiet machine the fastest and the median differ by a few percent.

A :class:`LatencyTable` is saved as JSON and loaded with checks: one that was measured on another model (layer
names or options) or at another clip shape is refused in one line. :class:`LatencyCostModel` reads it with the
interface of :class:`~vared_convert.flops.CostModel`, in milliseconds, so the finetune objective budgets time on
the table's device (``vared finetune --cost latency``).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .checks import choice, integer
from .errors import VaredError
from .files import atomic_output
from .flops import CostModel, LayerCostTable, PolicyCosts
from .nn import adaptive_layers, forced_policy
from .nn.kernels import CONV_KERNELS, resolve_kernel, set_conv_kernel

__all__ = ["LayerLatency", "LatencyTable", "LatencyCostModel", "measure_latency_table", "cost_model", "label_cost",
           "FORMAT", "COSTS", "TABLE_FILE"]

FORMAT = "vared-latency-table"
FORMAT_VERSION = 1
COSTS = ("flops", "latency")


@dataclass
class LayerLatency:
    """One adaptive layer's times (ms per batch): each option ``[R, k]`` alone on its real input, and its gate
    (with the decision's host sync)."""

    name: str
    input_shape: list[int]  # C, T, H, W of the layer's input (batch excluded)
    options: list[list[int]]
    option_ms: list[float]
    gate_ms: float


@dataclass
class LatencyTable:
    """Measured times (ms per batch of ``batch`` clips of ``clip_shape``) of a converted model on one device."""

    device: str  # "cpu", "cuda:0"
    device_name: str  # the CPU model or the GPU's name
    threads: int
    torch_version: str
    layout: str  # "channels-last" or "contiguous"
    malloc: str  # "retain" (freed memory kept for reuse) or "system"
    clip_shape: list[int]
    batch: int
    repeats: int
    original_ms: float  # the original network (the full path where it cannot be rebuilt: it computes the same)
    full_ms: float  # the converted model, every gate forced to the full option
    layers: list[LayerLatency] = field(default_factory=list)
    arch: str = ""  # the model's architecture, for people reading the file
    conv_kernel: str = "aten"  # the 3-D conv kernel both models ran with (nn.kernels.set_conv_kernel)

    @property
    def static_ms(self) -> float:
        """What no gate changes: the full-option model minus its adaptive layers at full."""
        return self.full_ms - sum(layer.option_ms[0] for layer in self.layers)

    @property
    def gate_ms(self) -> float:
        return sum(layer.gate_ms for layer in self.layers)

    def describe(self) -> str:
        """``cpu (Intel Xeon ..., 2 threads, torch 2.x, channels-last)``: the device the times hold for."""
        return (f"{self.device} ({self.device_name}, {self.threads} threads, torch {self.torch_version}, "
                f"{self.layout}, {self.conv_kernel} convs, batch {self.batch})")

    def to_dict(self) -> dict[str, Any]:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "unit": "ms per batch, fastest of the repeats",
                **asdict(self)}
        data.update(static_ms=self.static_ms, gate_ms=self.gate_ms)
        return data

    def save(self, path: str | os.PathLike, force: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> Path:
        """Write the table as JSON to ``path`` (atomically; an existing file only with ``force``)."""
        with atomic_output(path, force, inputs) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return Path(path)

    @classmethod
    def from_dict(cls, data: Any, source: str = "latency table") -> "LatencyTable":
        """A table from its JSON data, every field checked (a :class:`VaredError` in one line otherwise)."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise VaredError(f"{source}: not a vared latency table (write one with "
                             "vared profile MODEL --latency-table OUT)")
        if data.get("format_version") != FORMAT_VERSION:
            raise VaredError(f"{source}: latency table format version {data.get('format_version')!r}; this vared "
                             f"reads version {FORMAT_VERSION}")
        read = _Reader(data, source)
        layers = []
        for i, raw in enumerate(read.list("layers")):
            entry = _Reader(raw, source, f"layers[{i}]")
            options = entry.list("options")
            if not options or not all(isinstance(o, list) and len(o) == 2 and all(_is_int(v) and v > 0 for v in o)
                                      for o in options):
                raise VaredError(f"{source}: malformed latency table (layers[{i}].options: expected [[R, k], ...])")
            times = entry.list("option_ms")
            if len(times) != len(options) or not all(_is_time(t) for t in times):
                raise VaredError(f"{source}: malformed latency table (layers[{i}].option_ms: expected one time in "
                                 "ms per option)")
            layers.append(LayerLatency(entry.text("name"), entry.shape("input_shape"), options,
                                       [float(t) for t in times], entry.time("gate_ms")))
        clip = read.shape("clip_shape")
        if len(clip) != 4:
            raise VaredError(f"{source}: malformed latency table (clip_shape: expected C, T, H, W)")
        return cls(read.text("device"), read.text("device_name"), read.count("threads"), read.text("torch_version"),
                   read.text("layout"), read.text("malloc"), clip, read.count("batch"), read.count("repeats"),
                   read.time("original_ms"), read.time("full_ms"), layers, str(data.get("arch") or ""),
                   str(data.get("conv_kernel") or "aten"))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        """Read a table written by :meth:`save`; a missing, unreadable or malformed file is one line."""
        path = Path(path)
        source = f"--latency-table {path}"
        if path.is_dir():
            raise VaredError(f"{source}: is a directory, not a latency table")
        if not path.is_file():
            raise VaredError(f"{source}: no such file")
        try:
            text = path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise VaredError(f"{source}: cannot be read ({exc.strerror or type(exc).__name__})") from exc
        except UnicodeDecodeError as exc:
            raise VaredError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VaredError(f"{source}: not JSON ({exc.msg} at line {exc.lineno})") from exc
        return cls.from_dict(data, source)

    def check(self, model: nn.Module, clip_shape: Sequence[int] | None = None,
              source: str = "the latency table") -> None:
        """Refuse, in one line, a table measured on another model (its adaptive layers' names or options differ) or
        at another clip shape than ``clip_shape``."""
        layers = adaptive_layers(model)
        names = [name for name, _ in layers]
        mine = [layer.name for layer in self.layers]
        if names != mine:
            first = next((i for i, (a, b) in enumerate(zip(names, mine)) if a != b), min(len(names), len(mine)))
            theirs = mine[first] if first < len(mine) else "nothing"
            ours = names[first] if first < len(names) else "nothing"
            raise VaredError(f"{source} was measured on another model: it times {len(mine)} adaptive layers and this "
                             f"model has {len(names)} (layer {first + 1}: {theirs} in the table, {ours} here); "
                             "measure this model with vared profile MODEL --latency-table OUT")
        for (name, layer), entry in zip(layers, self.layers):
            options = [o.as_list() for o in layer.options]
            if options != entry.options:
                raise VaredError(f"{source} was measured on another model: {name} has options {entry.options} in the "
                                 f"table and {options} here; measure this model with vared profile MODEL "
                                 "--latency-table OUT")
        if clip_shape is not None and [int(s) for s in clip_shape] != list(self.clip_shape):
            shape = ",".join(map(str, clip_shape))
            raise VaredError(f"{source} was measured at clip {','.join(map(str, self.clip_shape))} and this run uses "
                             f"{shape}; measure it at this clip with vared profile MODEL --latency-table OUT "
                             f"--input-shape {shape}")


class _Reader:
    """Typed reads of one JSON object's fields, each failure a one-line error naming the field."""

    def __init__(self, data: Any, source: str, where: str = ""):
        if not isinstance(data, dict):
            raise VaredError(f"{source}: malformed latency table ({where or 'the file'}: expected an object)")
        self.data, self.source, self.where = data, source, where

    def _bad(self, key: str, expected: str) -> VaredError:
        name = f"{self.where}.{key}" if self.where else key
        return VaredError(f"{self.source}: malformed latency table ({name}: expected {expected})")

    def _get(self, key: str, expected: str) -> Any:
        if key not in self.data:
            raise self._bad(key, expected)
        return self.data[key]

    def text(self, key: str) -> str:
        value = self._get(key, "a string")
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def count(self, key: str) -> int:
        value = self._get(key, "a positive integer")
        if not _is_int(value) or value < 1:
            raise self._bad(key, "a positive integer")
        return int(value)

    def time(self, key: str) -> float:
        value = self._get(key, "a time in ms")
        if not _is_time(value):
            raise self._bad(key, "a finite, non-negative time in ms")
        return float(value)

    def list(self, key: str) -> list:
        value = self._get(key, "a list")
        if not isinstance(value, list):
            raise self._bad(key, "a list")
        return value

    def shape(self, key: str) -> list[int]:
        value = self.list(key)
        if not value or not all(_is_int(v) and v > 0 for v in value):
            raise self._bad(key, "a list of positive integers")
        return [int(v) for v in value]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


class LatencyCostModel(PolicyCosts):
    """:class:`~vared_convert.flops.CostModel`'s interface in milliseconds, from a :class:`LatencyTable`: each layer's
    ``option_macs`` are its options' times, ``gate_macs`` its gate's, ``static_macs`` the static rest and
    ``original_macs`` the original network's time, so ratios are time ratios on the table's device."""

    unit = "ms"

    def __init__(self, table: LatencyTable, layers: list[LayerCostTable]):
        self.table = table
        self.clip_shape = tuple(table.clip_shape)
        self.layers = layers
        self.static_macs = table.static_ms
        self.original_macs = table.original_ms

    @classmethod
    def from_table(cls, table: LatencyTable, model: nn.Module,
                   clip_shape: Sequence[int] | None = None) -> "LatencyCostModel":
        """The cost model of ``model`` from ``table`` (checked against the model and, if given, ``clip_shape``)."""
        table.check(model, clip_shape)
        if table.original_ms <= 0:
            raise VaredError("the latency table's original time is 0 ms; measure it again with more --repeats")
        layers = [LayerCostTable(entry.name, layer, (table.batch, *entry.input_shape), list(entry.option_ms),
                                 entry.gate_ms)
                  for (_, layer), entry in zip(adaptive_layers(model), table.layers)]
        return cls(table, layers)


def cost_model(model: nn.Module, clip_shape: Sequence[int], kind: str = "flops",
               table: LatencyTable | str | os.PathLike | None = None) -> PolicyCosts:
    """The costs the finetune objective budgets: FLOPs (``kind="flops"``) or the times of a latency ``table`` (a
    :class:`LatencyTable` or its path) for ``kind="latency"``."""
    if kind == "flops":
        return CostModel(model, clip_shape)
    if kind != "latency":
        raise VaredError(f"--cost {kind!r}: must be one of {', '.join(COSTS)}")
    if table is None or table == "":
        raise VaredError("--cost latency needs --latency-table PATH (write one with vared profile MODEL "
                         "--latency-table OUT on the deployment device)")
    loaded = table if isinstance(table, LatencyTable) else LatencyTable.load(table)
    source = "the latency table" if isinstance(table, LatencyTable) else f"--latency-table {table}"
    loaded.check(model, clip_shape, source=source)
    return LatencyCostModel.from_table(loaded, model, clip_shape)


TABLE_FILE = "latency_table.json"  # the copy a finetune run keeps of the table it budgeted


def label_cost(model: nn.Module, costs: PolicyCosts, run_dir: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """Record in ``model``'s recipe (saved with it) what its policy budgets: for a :class:`LatencyCostModel`, the
    device and the whole table (``recipe.extra["cost"]``), and a copy of the table in ``run_dir``; nothing for
    FLOPs (a stale label is removed). Returns the label."""
    from .recipe import model_info

    info = model_info(model)
    if info is None or info.recipe is None:
        return None
    if not isinstance(costs, LatencyCostModel):
        info.recipe.extra.pop("cost", None)
        return None
    label = {"kind": "latency", "device": costs.table.describe(), "table": costs.table.to_dict()}
    if run_dir is not None:
        label["table_file"] = str(costs.table.save(Path(run_dir) / TABLE_FILE, force=True))
    info.recipe.extra["cost"] = label
    return label


# ---------------------------------------------------------------------------------------------- measuring
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _layer_inputs(net: nn.Module, clip: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each adaptive layer's input in a full-option run of ``net`` on ``clip``."""
    inputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, layer in adaptive_layers(net):
        def keep(module: nn.Module, args: tuple, name: str = name) -> None:
            inputs.setdefault(name, args[0].detach())

        handles.append(layer.register_forward_pre_hook(keep))
    try:
        with torch.inference_mode(), forced_policy(net, (1, 1.0)):
            net(clip)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def _repeated(call: Callable[[], object], times: int) -> None:
    for _ in range(times):
        call()


def _decide(layer: nn.Module, x: torch.Tensor) -> list[int]:
    """A gate's decision as inference makes it: logits by the gate's inference route, argmax, and the host sync
    that reads the choice."""
    return layer.gate.infer(x).argmax(dim=1).tolist()


def measure_latency_table(
    model: nn.Module,
    clip_shape: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    repeats: int = 20,
    batch: int = 1,
    warmup: int = 3,
    conv_kernel: str = "auto",
    runs_per_round: int = 4,
) -> LatencyTable:
    """Time every adaptive layer of the converted ``model`` at each option on ``device`` (see the module's doc).

    ``clip_shape`` defaults to the recipe's; ``threads`` sets the CPU threads for the measurement (default: as
    they are); times are the fastest of ``repeats`` interleaved rounds after ``warmup`` ones, in ms per batch of
    ``batch`` clips; ``conv_kernel`` is the 3-D conv kernel both the model and its original run with
    (:func:`~vared_convert.nn.kernels.set_conv_kernel`; ``"auto"``: oneDNN on the CPU). Each round runs every
    call ``runs_per_round`` times in a row, as ``vared profile --latency`` runs several clips a round, so that the
    table and that measurement both time warm calls (a lone call of a millisecond network after other work runs
    15% slower here). ``model`` itself is not changed (a copy runs).
    """
    from .predict import inference_memory_format, layout_name
    from .profile import original_network
    from .recipe import model_info
    from .shapes import check_clip_shape, resolve_clip_shape
    from .timing import cpu_threads, measure_interleaved, resolve_device, retain_freed_memory

    integer("repeats", repeats, 1)
    integer("batch", batch, 1)
    integer("warmup", warmup, 0)
    integer("runs_per_round", runs_per_round, 1)
    choice("conv_kernel", conv_kernel, ("auto", *CONV_KERNELS))
    if threads is not None:
        integer("threads", threads, 1)
    if not adaptive_layers(model):
        raise VaredError("--latency-table needs a converted model (this one has no adaptive layer); run vared "
                         "convert first")
    target = resolve_device(device) if isinstance(device, str) else device
    shape = resolve_clip_shape(model, clip_shape)
    check_clip_shape(model, shape, batch=batch)
    layout = inference_memory_format(target)
    malloc = "retain" if target.type == "cpu" and retain_freed_memory() else "system"
    with cpu_threads(threads if target.type == "cpu" else None):
        net = copy.deepcopy(model).to(target).to(memory_format=layout).eval()
        try:
            original = original_network(model).to(target).to(memory_format=layout).eval()
        except VaredError:  # no architecture to rebuild it from: the full path computes the original (verified)
            original = net
        kernel = resolve_kernel(conv_kernel, target)
        set_conv_kernel(net, kernel)
        set_conv_kernel(original, kernel)
        generator = torch.Generator().manual_seed(0)
        clip = torch.randn(batch, *shape, generator=generator).to(target).contiguous(memory_format=layout)
        inputs = _layer_inputs(net, clip)
        layers = adaptive_layers(net)
        gated = copy.deepcopy(net)  # every gate decides in place, each pushed to the full option
        for _, layer in adaptive_layers(gated):
            layer.gate.logit_offset.zero_()[0] = 1e4
        calls: dict[str, Callable[[], object]] = {"original": partial(original, clip), "full": partial(net, clip),
                                                  "gated": partial(gated, clip)}
        for i, (name, layer) in enumerate(layers):
            for o in range(layer.num_options):
                calls[f"{i}:{o}"] = partial(layer.run_option, inputs[name], o)
            calls[f"{i}:gate"] = partial(_decide, layer, inputs[name])
        with forced_policy(net, (1, 1.0)):
            repeated = {name: partial(_repeated, call, runs_per_round) for name, call in calls.items()}
            timings = measure_interleaved(repeated, target, warmup, repeats)
        timings = {name: t.per_call(runs_per_round) for name, t in timings.items()}
        used_threads = torch.get_num_threads()
    info = model_info(model)
    alone = sum(timings[f"{i}:gate"].min_ms for i in range(len(layers)))
    in_place = timings["gated"].min_ms - timings["full"].min_ms
    gate_scale = in_place / alone if in_place > 0 and alone > 0 else 1.0
    entries = [
        LayerLatency(name, [int(s) for s in inputs[name].shape[1:]], [o.as_list() for o in layer.options],
                     [timings[f"{i}:{o}"].min_ms for o in range(layer.num_options)],
                     timings[f"{i}:gate"].min_ms * gate_scale)
        for i, (name, layer) in enumerate(layers)
    ]
    return LatencyTable(
        str(target), _device_name(target), used_threads, torch.__version__,
        layout_name(layout), malloc, [int(s) for s in shape], batch,
        repeats, timings["original"].min_ms, timings["full"].min_ms, entries,
        info.arch.name if info is not None else "", kernel,
    )
