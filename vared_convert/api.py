"""File-level operations behind the CLI commands, usable from Python too.

Each checks its arguments and outputs before any work (an output is never an input, an existing one needs
``force``, its folder must take a new file), then loads, works, and writes atomically. Errors are
:class:`~vared_convert.errors.VaredError` subclasses whose message is the one line the CLI prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .arch import ArchSpec
from .checkpoint import (is_vared_checkpoint, load_model, load_plain_checkpoint, model_from_checkpoint,
                         read_raw_checkpoint, save_model)
from .checks import choice, integer, number
from .convert import DEFAULT_CHANNEL, DEFAULT_GRANULARITY, DEFAULT_TEMPORAL, Conversion, convert
from .errors import ArgumentError, VaredError
from .files import atomic_output, check_output_path, same_file
from .keys import parse_key_map
from .nn.kernels import CONV_KERNELS

__all__ = ["convert_checkpoint", "profile_checkpoint", "evaluate_checkpoint", "export_checkpoint", "write_json"]


def write_json(path: str | os.PathLike, data: Any, force: bool = False,
               inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write ``data`` as indented JSON to ``path``, atomically."""
    with atomic_output(path, force, inputs) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    return Path(path)


def _distinct(outputs: Sequence[tuple[str, str | os.PathLike | None]]) -> None:
    given = [(flag, path) for flag, path in outputs if path is not None]
    for i, (flag, path) in enumerate(given):
        for other_flag, other in given[i + 1 :]:
            if same_file(path, other):
                raise ArgumentError(other_flag, str(other), f"is also {flag}; give each output its own file")


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    arch: str | None = None,
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
    key_map: Sequence[str] = (),
) -> Conversion:
    """``vared convert``: load pretrained weights, convert, verify, and save the adaptive model atomically.

    Without ``arch``, a plain checkpoint's architecture is recognised from its weights (registry architectures
    only); ``key_map`` (``OLD=NEW`` prefix rewrites) renames its keys first. ``Conversion.loaded`` says how the
    weights were read (a :class:`~vared_convert.checkpoint.LoadReport`; ``None`` for a vared model file)."""
    check_output_path(out, force, inputs=[checkpoint], what="--out")
    rules = parse_key_map(key_map)
    if num_classes is not None:
        integer("num_classes", num_classes, 1)
    if time_aware:
        from .timing import resolve_device

        resolve_device(time_device)
    raw = read_raw_checkpoint(checkpoint, trust_pickle=trust_pickle)
    if is_vared_checkpoint(raw.content) and raw.content.get("recipe"):
        raise VaredError(f"{checkpoint} is already a converted vared model; convert the original checkpoint")
    names = list(class_names) if class_names else None
    loaded = None
    if is_vared_checkpoint(raw.content):
        spec = ArchSpec(arch, num_classes) if arch is not None else None
        model = model_from_checkpoint(raw, str(checkpoint), spec, class_names=names, key_map=rules)
    else:
        model, loaded = load_plain_checkpoint(raw, str(checkpoint), arch, num_classes, class_names=names,
                                              key_map=rules, input_shape=input_shape)
    result = convert(
        model, input_shape, arch=model.vared_info.arch, temporal=temporal, channel=channel, only=only, skip=skip,
        min_flops_share=min_flops_share, convert_stem=convert_stem, class_names=model.vared_info.class_names,
        time_aware=time_aware, time_device=time_device, granularity=granularity,
    )
    save_model(result.model, out, force=force, inputs=[checkpoint])
    result.loaded = loaded
    return result


def profile_checkpoint(
    model_path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    key_map: Sequence[str] = (),
    input_shape: Sequence[int] | None = None,
    option: tuple[int, float] | None = None,
    data: str | None = None,
    clips: int = 64,
    split: str = "val",
    layout: str = "auto",
    stride: int = 4,
    workers: int = 2,
    latency: bool = False,
    device: str = "auto",
    repeats: int = 10,
    conv_kernel: str = "auto",
    json_out: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    latency_table: str | os.PathLike | None = None,
    threads: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """``vared profile``: per-layer FLOPs (and latency) of a model file, optionally on a dataset's clips; writes
    the JSON report to ``json_out``, the plot to ``plot`` and the per-layer, per-option
    :class:`~vared_convert.latency.LatencyTable` to ``latency_table`` when given (timed on ``device`` with
    ``threads`` CPU threads, default as they are); ``key_map`` (``OLD=NEW`` prefix rewrites) renames a plain
    checkpoint's keys. Returns the ``ProfileReport`` (its ``latency_table`` set)."""
    import torch

    from .profile import profile_dataset, profile_model
    from .timing import cpu_threads, resolve_device

    outputs = [("--json", json_out), ("--plot", plot), ("--latency-table", latency_table)]
    _distinct(outputs)
    for flag, path in outputs:
        if path is not None:
            check_output_path(path, force, inputs=[model_path], what=flag)
    integer("repeats", repeats, 1)
    rules = parse_key_map(key_map)
    choice("conv_kernel", conv_kernel, ("auto", *CONV_KERNELS))
    if threads is not None:
        integer("threads", threads, 1)
    if num_classes is not None:
        integer("num_classes", num_classes, 1)
    if data is not None:
        integer("clips", clips, 1)
        integer("stride", stride, 1)
        integer("workers", workers, 0)
    target = resolve_device(device)
    model = load_model(model_path, arch, num_classes=num_classes, trust_pickle=trust_pickle, key_map=rules).to(target)
    if latency_table is not None:
        from .nn import adaptive_layers

        if not adaptive_layers(model):
            raise VaredError("--latency-table needs a converted model (this one has no adaptive layer); run vared "
                             "convert first")
    with cpu_threads(threads if target.type == "cpu" else None):
        if data is None:
            report = profile_model(model, input_shape, option=option, latency=latency, repeats=repeats,
                                   conv_kernel=conv_kernel)
        else:
            report = profile_dataset(model, data, clips, split=split, layout=layout, stride=stride, workers=workers,
                                     input_shape=input_shape, progress=progress, option=option, latency=latency,
                                     repeats=repeats, conv_kernel=conv_kernel)
        if latency_table is not None:
            from .latency import measure_latency_table

            report.latency_table = measure_latency_table(model, report.input_shape, target, repeats=repeats,
                                                         conv_kernel=conv_kernel)
            report.latency_table.save(latency_table, force=True, inputs=[model_path])
    if json_out is not None:
        write_json(json_out, report.to_dict(), force=True, inputs=[model_path])
    if plot is not None:
        from .plots import plot_layer_savings

        plot_layer_savings(report, plot, inputs=[model_path])
    return report


def evaluate_checkpoint(
    model_path: str | os.PathLike,
    data: str,
    *,
    arch: str | None = None,
    device: str = "auto",
    on_batch: Callable[[int], None] | None = None,
    **loader_options: Any,
) -> Any:
    """``vared evaluate``: top-1 and FLOPs ratio of a model file on one split of a dataset (``loader_options``:
    those of :func:`~vared_convert.predict.clip_loader`). Returns the ``EvalReport``."""
    from .predict import evaluate, clip_loader
    from .timing import resolve_device

    target = resolve_device(device)
    model = load_model(model_path, arch)
    loader = clip_loader(model, data, **loader_options)
    return evaluate(model, loader, device=target, on_batch=on_batch)


def export_checkpoint(
    model_path: str | os.PathLike,
    *,
    onnx: str | os.PathLike | None = None,
    pt2: str | os.PathLike | None = None,
    arch: str | None = None,
    static_policy: bool = False,
    option: tuple[int, float] | None = None,
    data: str | None = None,
    split: str = "val",
    layout: str = "auto",
    max_clips: int = 256,
    batch_size: int = 8,
    workers: int = 2,
    input_shape: Sequence[int] | None = None,
    atol: float = 1e-4,
    verify: bool = True,
    lowering: str = "none",
    force: bool = False,
    on_status: Callable[[str], None] | None = None,
) -> tuple[Mapping[str, str] | None, list[Any]]:
    """``vared export``: write a model file as ONNX and/or ``.pt2``, dynamic or with a static policy (``option``
    for every layer, or each layer's most frequent decision on ``data``), each verified. Returns the static
    policy as each layer's option label (``"2,0.5"``; None for the dynamic model) and the ``ExportResult`` of
    each file."""
    from .export import conv_function, export_model, policy_from_data, policy_labels
    from .export import static_policy as fixed_policy

    if onnx is None and pt2 is None:
        raise VaredError("nothing to write: give --onnx PATH and/or --pt2 PATH")
    if (option is not None or data is not None) and not static_policy:
        raise VaredError("--option and --data choose a static policy: add --static-policy")
    if static_policy and (option is None) == (data is None):
        raise VaredError("--static-policy needs exactly one of --option T,C or --data DIR")
    _distinct([("--onnx", onnx), ("--pt2", pt2)])
    for flag, path in (("--onnx", onnx), ("--pt2", pt2)):
        if path is not None:
            check_output_path(path, force, inputs=[model_path], what=flag)
    number("atol", atol, 0)
    conv_function(lowering)
    if data is not None:
        integer("max_clips", max_clips, 1)
        integer("batch_size", batch_size, 1)
        integer("workers", workers, 0)
    model = load_model(model_path, arch)
    policy = None
    if option is not None:
        policy = fixed_policy(model, option)
    elif data is not None:
        if on_status:
            on_status("choosing the static policy ...")
        policy = policy_from_data(model, data, split=split, layout=layout, max_clips=max_clips,
                                  batch_size=batch_size, workers=workers)
    if on_status:
        on_status("exporting and verifying ...")
    results = export_model(model, onnx=onnx, pt2=pt2, policy=policy, input_shape=input_shape, verify=verify,
                           atol=atol, force=force, lowering=lowering, inputs=[model_path])
    return (policy_labels(model, policy) if policy is not None else None), results
