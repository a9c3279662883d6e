"""The `vared` command line: parse arguments, call the library, print with Rich. No model logic lives here."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import Terminated, VaredError

app = typer.Typer(
    name="vared",
    help="Make video models cheaper to run: input-dependent (VA-RED²) convolutions for any pretrained 3D CNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)
_STOP_REPORTED = False  # a command that stopped on Ctrl-C and said so itself (finetune)


# ---------------------------------------------------------------------------------------------- parsing helpers
def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise VaredError(f"{what}: expected comma-separated integers, got {text!r}") from None


def parse_floats(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise VaredError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def read_class_names(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise VaredError(f"--classes {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise VaredError(f"--classes {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise VaredError(f"--classes {path}: no class names in it (one per line)")
    return names


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def fmt_shape(shape) -> str:
    return "×".join(str(s) for s in shape)


def fmt_options(options: list[list[int]], out_channels: int) -> str:
    """``R 1,2 · r 1,.5,.25``: the temporal factors and channel ratios a layer offers."""
    factors = sorted({r for r, _ in options})
    ratios = sorted({k / out_channels for _, k in options}, reverse=True)
    return f"R {','.join(map(str, factors))} · r {','.join(f'{x:.3g}'.removeprefix('0') for x in ratios)}"


def fmt_conv(kernel, in_channels: int, out_channels: int, groups: int) -> str:
    kind = " dw" if groups == in_channels == out_channels and groups > 1 else (f" g{groups}" if groups > 1 else "")
    return f"{fmt_shape(kernel)} {in_channels}→{out_channels}{kind}"


def _print_version(value: bool) -> None:
    if value:
        console.print(f"vared {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    """Make video models cheaper to run: input-dependent (VA-RED²) convolutions for any pretrained 3D CNN."""


# ---------------------------------------------------------------------------------------------- convert
@app.command()
def convert(
    checkpoint: Annotated[Path, typer.Argument(help="Pretrained weights: a state_dict .pth/.pt (wrappers, key "
                                               "prefixes and training metadata are fine) or .safetensors.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the adaptive model (.pth).")],
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="torchvision:r3d_18, pytorchvideo:x3d_m, or "
                                                "module.path:factory for your own network \\[default: recognised "
                                                "from the weights (registry architectures)].")] = None,
    key_map: Annotated[list[str], typer.Option("--key-map", help="OLD=NEW: rewrite the checkpoint keys that start "
                                               "with OLD to start with NEW, before the automatic prefix fitting "
                                               "(repeatable; NEW may be empty).")] = [],
    num_classes: Annotated[Optional[int], typer.Option(help="Classifier size, when it differs from the "
                                                       "architecture's default.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="Clip shape C,T,H,W for analysis and verification "
                                                       "\\[default: the architecture's usual clip].")] = None,
    temporal: Annotated[str, typer.Option(help="Temporal stride factors R to offer (1 = every frame).")] = "1,2",
    channel: Annotated[str, typer.Option(help="Output-channel ratios r to offer (1 = every channel).")] = "1,0.5,0.25",
    skip: Annotated[list[str], typer.Option(help="Keep matching convs static (fnmatch pattern or module "
                                            "prefix; repeatable).")] = [],
    only: Annotated[list[str], typer.Option(help="Convert only matching convs, overriding the stem and cost "
                                            "rules (repeatable).")] = [],
    min_share: Annotated[float, typer.Option(help="Convs under this share of the model's FLOPs stay static.")] = 0.002,
    convert_stem: Annotated[bool, typer.Option(help="Also convert convs that read the input clip.")] = False,
    granularity: Annotated[str, typer.Option(help="block: one gate per block (residual branch, or conv + "
                                             "per-channel ops), its option shrinking all the work inside; stage: "
                                             "one gate per stage of residual blocks, or per run of plain conv "
                                             "blocks at one resolution (a temporal option runs the whole stage on "
                                             "every R-th frame), blocks elsewhere; conv: one gate per conv (the "
                                             "paper's form).")] = "block",
    time_aware: Annotated[bool, typer.Option("--time-aware", help="Time each converted block and conv on "
                                             "--time-device and keep it static where its gate and cheapest option "
                                             "save under 10% of its time (FLOPs are not time: X3D's 1×1×1 convs "
                                             "on a CPU).")] = False,
    time_device: Annotated[str, typer.Option(help="Device for --time-aware: cpu, cuda or auto.")] = "cpu",
    classes: Annotated[Optional[Path], typer.Option(help="Text file with the class names, one per line.")] = None,
    trust_pickle: Annotated[bool, typer.Option(help="Load the Python objects a checkpoint pickles (runs code from "
                                               "the file: only for sources you trust); without it they are read "
                                               "as inert stand-ins.")] = False,
    force: Annotated[bool, typer.Option(help="Overwrite OUT if it exists.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
) -> None:
    """Rewrite a pretrained 3D CNN into its adaptive form and verify that the full path equals the original."""
    from .api import convert_checkpoint

    shape = parse_ints(input_shape, "--input-shape") if input_shape else None
    status = err_console.status("analysing, converting and verifying ...") if not as_json else None
    if status:
        status.start()
    try:
        result = convert_checkpoint(
            checkpoint, out, arch,
            num_classes=num_classes, input_shape=shape,
            temporal=parse_ints(temporal, "--temporal"), channel=parse_floats(channel, "--channel"),
            only=only, skip=skip, min_flops_share=min_share, convert_stem=convert_stem, time_aware=time_aware,
            time_device=time_device, class_names=read_class_names(classes), trust_pickle=trust_pickle, force=force,
            granularity=granularity, key_map=key_map,
        )
    finally:
        if status:
            status.stop()
    report = result.report
    if as_json:
        print_json({**report.to_dict(), "checkpoint": result.loaded.to_dict() if result.loaded else None,
                    "out": str(out)})
        return
    for line in result.loaded.lines() if result.loaded else []:
        console.print(escape(line), highlight=False, soft_wrap=True)

    if report.granularity in ("block", "stage"):
        what = "stages and blocks" if report.granularity == "stage" else "blocks"
        blocks = Table(title=f"Adaptive {what} ({len(report.converted_blocks)})", title_justify="left")
        blocks.add_column("block", no_wrap=True)
        blocks.add_column("kind", no_wrap=True)
        blocks.add_column("ops")
        blocks.add_column("input C×T×H×W", no_wrap=True)
        blocks.add_column("options")
        blocks.add_column("share", justify="right", no_wrap=True, min_width=6)
        for d in report.converted_blocks:
            ops = (f"{len(d.branches)} residual blocks ({len(d.convs)} conv)" if d.kind == "stage" else
                   f"{d.ops[0].removeprefix(d.owner + '.')} … {d.ops[-1].removeprefix(d.owner + '.')} ({len(d.convs)} conv)")
            blocks.add_row(d.name, d.kind, ops, fmt_shape(d.input_shape), fmt_options(d.options, d.width),
                           f"{100 * d.share:.1f}%")
        console.print(blocks)
        fallback = [d for d in report.blocks if not d.converted]
        if fallback:
            table = Table(title=f"{what.capitalize()} left to finer rules ({len(fallback)})", title_justify="left")
            table.add_column("block", no_wrap=True)
            table.add_column("share", justify="right")
            table.add_column("why")
            for d in fallback:
                where = d.owner if d.kind == "stage" else f"{d.ops[0]} … {d.ops[-1]}"
                table.add_row(f"{where} ({d.kind})", f"{100 * d.share:.2f}%", d.reason)
            console.print(table)
        if report.block_failure:
            console.print(f"[yellow]note:[/] {report.block_failure}; every conv decided on its own")
    adaptive = Table(title=f"Adaptive convolutions ({len(report.converted)})", title_justify="left")
    adaptive.add_column("layer", no_wrap=True)
    adaptive.add_column("conv", no_wrap=True)
    adaptive.add_column("input C×T×H×W", no_wrap=True)
    adaptive.add_column("options")
    adaptive.add_column("share", justify="right", no_wrap=True, min_width=6)
    for d in report.converted:
        adaptive.add_row(escape(d.name), fmt_conv(d.kernel, d.in_channels, d.out_channels, d.groups),
                         fmt_shape(d.input_shape), fmt_options(d.options, d.out_channels), f"{100 * d.share:.1f}%")
    console.print(adaptive)
    static = Table(title=f"Left static ({len(report.static)})", title_justify="left")
    static.add_column("layer", no_wrap=True)
    static.add_column("share", justify="right")
    static.add_column("why")
    for d in report.static:
        static.add_row(escape(d.name), f"{100 * d.share:.2f}%", escape(d.reason))
    console.print(static)
    if report.trace_failure:
        console.print(f"[yellow]note:[/] {escape(report.trace_failure)}; analysed with forward hooks and converted in place")
    in_blocks = sum(len(d.convs) for d in report.converted_blocks)
    what = "stages and blocks" if report.granularity == "stage" else "blocks"
    console.print(
        (f"{len(report.converted_blocks)} adaptive {what} ({in_blocks} convs) and " if report.granularity != "conv"
         else "")
        + f"{len(report.converted)} of {len(report.layers)} {'other ' if report.granularity != 'conv' else ''}convs "
        f"adaptive, holding "
        f"{100 * report.converted_flops_share:.1f}% of the model's {report.original_macs / 1e9:.2f} GFLOPs "
        f"(clip {fmt_shape(report.input_shape)}; FLOPs = multiply-adds)"
    )
    console.print(
        f"[green]✓ verified[/]: with every gate forced to the full option the outputs equal the original's "
        f"(max abs difference {report.max_abs_error:.2g})"
    )
    console.print(f"wrote {escape(str(out))}")


# ---------------------------------------------------------------------------------------------- profile
def _option_summary(counts: dict[str, int], limit: int = 3) -> str:
    total = sum(counts.values())
    if not total:
        return ""
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return "  ".join(f"{label} {100 * n / total:.0f}%" for label, n in top)


def print_profile(report, title: str) -> None:
    """The per-layer table, totals, units and latency lines of `vared profile`."""
    table = Table(title=title, title_justify="left")
    table.add_column("layer", no_wrap=True)
    table.add_column("out C×T×H×W", no_wrap=True)
    table.add_column("original", justify="right", no_wrap=True)
    table.add_column("adaptive" if report.mode != "static" else "cheapest–full", justify="right", no_wrap=True)
    table.add_column("saving", justify="right", no_wrap=True)
    if report.mode != "static":
        table.add_column("options chosen (T,C)")
    for row in report.layers:
        if report.mode == "static" and row.dynamic:
            adaptive, saving = f"{row.min_macs / 1e9:.3f}–{row.original_macs / 1e9:.3f}", f"≤{100 * (1 - row.min_macs / row.original_macs):.0f}%"
        else:
            adaptive, saving = f"{row.adaptive_macs / 1e9:.3f}", f"{100 * row.saving:.0f}%" if row.dynamic else "static"
        cells = [escape(row.name), fmt_shape(row.output_shape), f"{row.original_macs / 1e9:.3f}", adaptive, saving]
        table.add_row(*cells, *([_option_summary(row.option_counts)] if report.mode != "static" else []))
    other = f"{report.other_macs / 1e9:.3f}"
    table.add_row("(other layers)", "", other, other, "static", *([""] if report.mode != "static" else []))
    console.print(table)
    o, a = report.original_macs / 1e9, report.adaptive_macs / 1e9
    if report.mode == "static":
        console.print(f"total: original {o:.3f} GFLOPs; adaptive between {report.min_macs / 1e9:.3f} (every gate at its "
                      f"cheapest) and {o + report.gate_macs / 1e9:.3f}: decisions need clips (--data) or --option T,C")
    else:
        what = f"mean over {report.clips} clips" if report.mode == "clips" else f"every gate forced to {report.option[0]},{report.option[1]:g}"
        console.print(f"total: original {o:.3f} GFLOPs → adaptive {a:.3f} GFLOPs ({what}): FLOPs ratio "
                      f"[bold]{report.flops_ratio:.3f}[/] (saving {100 * (1 - report.flops_ratio):.1f}%)")
    console.print(f"gates: {report.gate_macs / 1e9:.4f} GFLOPs ({100 * report.gate_macs / report.original_macs:.2f}% of "
                  f"the original){' — not run when forced' if report.mode == 'forced' else ''}")
    console.print(f"units: GFLOPs = 10⁹ multiply-adds per clip of {fmt_shape(report.input_shape)} (fvcore's "
                  "convention: one multiply-add = one FLOP)")
    if report.latency is not None:
        lat = report.latency
        realised = f", realised share {lat.realised:.2f}" if lat.realised is not None else ""
        console.print(f"latency ({lat.original.device}, {lat.original.threads} threads, {lat.layout}, malloc "
                      f"{lat.malloc}, {lat.conv_kernel} convs, median of {lat.original.repeats} interleaved after warm-up, batch 1): original "
                      f"{lat.original.median_ms:.1f} ms ({lat.original.min_ms:.1f}–{lat.original.max_ms:.1f}), adaptive "
                      f"{lat.adaptive.median_ms:.1f} ms ({lat.adaptive.min_ms:.1f}–{lat.adaptive.max_ms:.1f}) → time "
                      f"ratio [bold]{lat.time_ratio:.3f}[/] (FLOPs ratio {report.flops_ratio:.3f}{realised})")
    for cls, counts in sorted(report.class_histograms.items()):
        console.print(f"  class {escape(cls)}: {_option_summary(counts, limit=6)}")


def print_latency_table(table, stream: Console) -> None:
    """The per-layer times of a latency table: full and cheapest option, gate; then the totals."""
    out = Table(title=escape(f"latency per layer, ms per batch of {table.batch} on {table.describe()}"),
                title_justify="left")
    for column in ("layer", "full", "cheapest", "gate"):
        out.add_column(column, justify="left" if column == "layer" else "right", no_wrap=True)
    for layer in table.layers:
        out.add_row(escape(layer.name), f"{layer.option_ms[0]:.3f}", f"{min(layer.option_ms):.3f}",
                    f"{layer.gate_ms:.3f}")
    stream.print(out)
    stream.print(f"original {table.original_ms:.2f} ms, full path {table.full_ms:.2f} ms, static rest "
                 f"{table.static_ms:.2f} ms, gates {table.gate_ms:.2f} ms (fastest of {table.repeats} interleaved "
                 f"rounds after warm-up)", highlight=False)


def _bar(label: str, stream: Console):
    """A progress bar on ``stream``, or nothing when it is not a terminal (a log file gets no garbled lines)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn(f"[bold]{escape(label)}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=stream, transient=True, disable=not stream.is_terminal)


@app.command()
def profile(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A vared model (or a plain checkpoint with --arch).")],
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="Architecture of a plain checkpoint, or of a "
                                                "vared model that records your own code (module.path:factory), "
                                                "which vared never runs unless you name it.")] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Classifier size of a plain checkpoint.")] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="Clip shape C,T,H,W \\[default: the recipe's].")] = None,
    option: Annotated[Optional[str], typer.Option(help="Force every gate to T,C (temporal factor, channel "
                                                  "ratio), e.g. 2,0.5.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Dataset root (any layout `vared data check` reads): the gates "
                                                "decide on its clips.")] = None,
    clips: Annotated[int, typer.Option(help="With --data: how many clips to run.")] = 64,
    split: Annotated[str, typer.Option(help="With --data: the split to read.")] = "val",
    layout: Annotated[str, typer.Option(help="With --data: auto, folders, lists, kinetics, ucf101[:N], hmdb51[:N] or ssv2.")] = "auto",
    stride: Annotated[int, typer.Option(help="With --data: frames between sampled frames.")] = 4,
    workers: Annotated[int, typer.Option(help="With --data: decoding processes.")] = 2,
    latency: Annotated[bool, typer.Option("--latency", help="Also time original and adaptive on the same inputs.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (for --latency and --data).")] = "auto",
    repeats: Annotated[int, typer.Option(help="Timed repeats for --latency (median reported) and --latency-table "
                                         "(fastest kept).")] = 10,
    conv_kernel: Annotated[str, typer.Option(help="For --latency and --latency-table: the 3-D conv kernel the "
                                             "models run with: auto (oneDNN on the CPU), aten (PyTorch's own "
                                             "choice) or onednn.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for --latency and --latency-table "
                                                   "\\[default: as torch sets them].")] = None,
    latency_table: Annotated[Optional[Path], typer.Option("--latency-table", help="Time every adaptive layer at "
                                                          "each option on --device and write the table (JSON) for "
                                                          "vared finetune --cost latency.")] = None,
    json_out: Annotated[Optional[str], typer.Option("--json", help="Write the report as JSON to PATH ('-': stdout).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Draw per-layer original vs adaptive GFLOPs to a PNG.")] = None,
    trust_pickle: Annotated[bool, typer.Option(help="Allow pickled objects in a plain checkpoint.")] = False,
    key_map: Annotated[list[str], typer.Option("--key-map", help="OLD=NEW: rewrite a plain checkpoint's key "
                                               "prefix OLD to NEW (repeatable).")] = [],
    force: Annotated[bool, typer.Option(help="Overwrite existing --json and --plot files.")] = False,
) -> None:
    """Per-layer FLOPs (fvcore) and measured latency, original against adaptive."""
    from .api import profile_checkpoint
    from .profile import parse_option

    to_stdout = json_out == "-"
    bar = _bar("decoding and running clips", err_console)
    task = bar.add_task("clips", total=None)
    quiet = to_stdout or data is not None or not err_console.is_terminal
    with bar, _status("counting FLOPs" + (" and timing" if latency else "") + " ...", quiet=quiet):
        report = profile_checkpoint(
            model_path, arch=arch, num_classes=num_classes, trust_pickle=trust_pickle, key_map=key_map,
            input_shape=parse_ints(input_shape, "--input-shape") if input_shape else None,
            option=parse_option(option) if option else None, data=data, clips=clips, split=split, layout=layout,
            stride=stride, workers=workers, latency=latency, device=device, repeats=repeats, conv_kernel=conv_kernel,
            json_out=None if to_stdout else json_out, plot=plot, force=force, threads=threads,
            latency_table=latency_table,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if to_stdout:
        print_json(report.to_dict())
    else:
        print_profile(report, escape(f"{model_path.name}: GFLOPs per layer ({report.mode})"))
        if json_out:
            console.print(f"wrote {escape(json_out)}", highlight=False)
    if latency_table:
        print_latency_table(report.latency_table, err_console if to_stdout else console)
        (err_console if to_stdout else console).print(f"wrote {escape(str(latency_table))}", highlight=False)
    if plot:
        (err_console if to_stdout else console).print(f"wrote {escape(str(plot))}", highlight=False)


# ---------------------------------------------------------------------------------------------- finetune
def _d(name: str) -> str:
    """The help suffix with a finetune option's default (flags default to None so that --config can set them)."""
    from .train.config import FinetuneConfig

    return f"\\[default: {getattr(FinetuneConfig(), name)}]"


@app.command()
def finetune(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A converted model (vared convert's output).")],
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="Build this architecture: needed when the "
                                                "model records your own code (module.path:factory), which vared "
                                                "never runs unless you name it.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Dataset root: class folders, list files or Kinetics CSVs.")] = None,
    target_flops: Annotated[Optional[float], typer.Option(help=f"FLOPs ratio to reach (adaptive / original). {_d('target_flops')}")] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Training epochs. {_d('epochs')}")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="The finetuned model (best epoch). \\[default: RUN_DIR/final.pth]")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(help="Run folder: config.yaml, metrics.jsonl, last.pth, best.pth. \\[default: runs/MODEL]")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue a run exactly from its last.pth.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML file of options (flags override it).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=f"Clips per batch per process. {_d('batch_size')}")] = None,
    workers: Annotated[Optional[int], typer.Option(help=f"Decoding processes per rank. {_d('workers')}")] = None,
    frames: Annotated[Optional[int], typer.Option(help=f"Frames per clip. {_d('frames')}")] = None,
    stride: Annotated[Optional[int], typer.Option(help=f"Frames between sampled frames. {_d('stride')}")] = None,
    size: Annotated[Optional[int], typer.Option(help=f"Crop size in pixels. {_d('size')}")] = None,
    train_clips: Annotated[Optional[int], typer.Option(help=f"Random clips per video per epoch. {_d('train_clips')}")] = None,
    val_clips: Annotated[Optional[int], typer.Option(help=f"Clips per video for validation. {_d('val_clips')}")] = None,
    layout: Annotated[Optional[str], typer.Option(help=f"Dataset layout: auto, folders, lists, kinetics, ucf101[:N], hmdb51[:N] or ssv2. {_d('layout')}")] = None,
    train: Annotated[Optional[str], typer.Option(help=f"What trains: gates (gates and cheap ops) or all (the backbone too). {_d('train')}")] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Learning rate of gates and cheap ops. {_d('lr')}")] = None,
    backbone_lr_scale: Annotated[Optional[float], typer.Option(help=f"Backbone lr = lr × this (with --train all). {_d('backbone_lr_scale')}")] = None,
    flops_weight: Annotated[Optional[float], typer.Option(help=f"λ of the FLOPs term λ·(F − τ)². {_d('flops_weight')}")] = None,
    distill_weight: Annotated[Optional[float], typer.Option(help=f"α of the distillation term (teacher: the full path). {_d('distill_weight')}")] = None,
    relaxation: Annotated[Optional[str], typer.Option(help=f"Gate training: hard (straight-through one-hot) or soft (Gumbel mixture of options). {_d('relaxation')}")] = None,
    tau_start: Annotated[Optional[float], typer.Option(help=f"Gumbel-softmax temperature at the start. {_d('tau_start')}")] = None,
    tau_end: Annotated[Optional[float], typer.Option(help=f"... annealed exponentially to this. {_d('tau_end')}")] = None,
    warmup_epochs: Annotated[Optional[int], typer.Option(help=f"Epochs training the cheap ops with random options first. {_d('warmup_epochs')}")] = None,
    train_bn: Annotated[Optional[bool], typer.Option("--train-bn/--freeze-bn", help="Update BatchNorm statistics. \\[default: frozen]")] = None,
    reset_head: Annotated[Optional[bool], typer.Option("--reset-head", help="Train a new classifier for the dataset's classes.")] = None,
    device: Annotated[Optional[str], typer.Option(help=f"auto, cpu, cuda or cuda:N. {_d('device')}")] = None,
    amp: Annotated[Optional[str], typer.Option(help=f"Mixed precision: auto (bf16 on CUDA), bf16, fp16, off. {_d('amp')}")] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Random seed. {_d('seed')}")] = None,
    cost: Annotated[Optional[str], typer.Option(help="What --target-flops budgets: flops, or latency (a time "
                                                f"ratio on --latency-table's device). {_d('cost')}")] = None,
    latency_table: Annotated[Optional[Path], typer.Option("--latency-table", help="With --cost latency: the table "
                                                          "from vared profile MODEL --latency-table OUT.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many steps (smoke runs). \\[default: no limit]")] = None,
    save_every: Annotated[Optional[int], typer.Option(help="Also save last.pth every N steps. \\[default: at epoch ends]")] = None,
    log_every: Annotated[Optional[int], typer.Option(help=f"Steps between metrics lines. {_d('log_every')}")] = None,
    calibrate: Annotated[Optional[bool], typer.Option(
        "--calibrate/--no-calibrate", help="After training, shift the gates' thresholds so that training clips meet "
        "--target-flops. \\[default: calibrate]")] = None,
    calibrate_clips: Annotated[Optional[int], typer.Option(
        help=f"Training clips calibration decides on. {_d('calibrate_clips')}")] = None,
    static_option: Annotated[Optional[str], typer.Option(
        help="T,C: fix every layer at this option and train only the cheap ops (and the backbone with --train "
        "all): a static baseline.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing --out file.")] = False,
) -> None:
    """Learn the input-dependent policy to a FLOPs target (CPU, one GPU, or many with torchrun)."""
    from .train.finetune import finetune as run_finetune

    overrides = {k: v for k, v in dict(
        data=data, target_flops=target_flops, epochs=epochs, out=str(out) if out else None,
        run_dir=str(run_dir) if run_dir else None, batch_size=batch_size, workers=workers, frames=frames,
        stride=stride, size=size, train_clips=train_clips, val_clips=val_clips, layout=layout, train=train, lr=lr, backbone_lr_scale=backbone_lr_scale,
        flops_weight=flops_weight, distill_weight=distill_weight, relaxation=relaxation, tau_start=tau_start, tau_end=tau_end,
        warmup_epochs=warmup_epochs, train_bn=train_bn, reset_head=reset_head, device=device, amp=amp, seed=seed,
        max_steps=max_steps, save_every=save_every, log_every=log_every, cost=cost,
        latency_table=str(latency_table) if latency_table else None, calibrate=calibrate,
        calibrate_clips=calibrate_clips, static_option=static_option,
    ).items() if v is not None}
    from .progress import FinetuneDisplay

    with FinetuneDisplay(console) as display:
        result = run_finetune(model_path, overrides, config_file=config, resume=resume, on_event=display.on_event,
                              arch=arch, force=force)
    if result.interrupted:
        global _STOP_REPORTED
        _STOP_REPORTED = True
        err_console.print(escape(f"stopped ({result.stopped_by}): saved {result.run_dir / 'last.pth'}; continue with "
                                 f"vared finetune {model_path} --resume {result.run_dir / 'last.pth'}"),
                          highlight=False, soft_wrap=True)
        raise typer.Exit(143 if result.stopped_by == "SIGTERM" else 130)


# ---------------------------------------------------------------------------------------------- export
def _policy_summary(labels: dict[str, str]) -> str:
    """``2,0.5 ×12 · 1,1 ×4``: how many layers run each option of a static policy."""
    from collections import Counter

    return " · ".join(f"{label} ×{count}" for label, count in Counter(labels.values()).most_common())


def _status(message: str, quiet: bool):
    """A spinner on stderr (its ``update(text)`` changes the message), or None: JSON output, not a terminal."""
    return contextlib.nullcontext() if quiet else err_console.status(message)


@app.command()
def export(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A converted (or finetuned) vared model.")],
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="Build this architecture: needed when the "
                                                "model records your own code (module.path:factory), which vared "
                                                "never runs unless you name it.")] = None,
    onnx: Annotated[Optional[Path], typer.Option(help="Write ONNX here.")] = None,
    pt2: Annotated[Optional[Path], typer.Option(help="Write a torch.export program (.pt2) here.")] = None,
    static_policy: Annotated[bool, typer.Option("--static-policy", help="One fixed option per layer and no gates "
                                                "(any batch size), from --option or --data; default: the dynamic "
                                                "model (gates + If, batch 1).")] = False,
    option: Annotated[Optional[str], typer.Option(help="Static policy: every layer runs T,C (temporal factor, "
                                                  "channel ratio), e.g. 2,0.5.")] = None,
    data: Annotated[Optional[str], typer.Option(help="Static policy: each layer's most frequent gate decision "
                                                "over this dataset's clips.")] = None,
    split: Annotated[str, typer.Option(help="Split of --data to read.")] = "val",
    layout: Annotated[str, typer.Option(help="Layout of --data: auto, folders, lists, kinetics, ucf101[:N], hmdb51[:N] or ssv2.")] = "auto",
    max_clips: Annotated[int, typer.Option(help="Clips of --data to decide from (at most).")] = 256,
    batch_size: Annotated[int, typer.Option(help="Clips per batch when reading --data.")] = 8,
    workers: Annotated[int, typer.Option(help="Decoding processes for --data.")] = 2,
    input_shape: Annotated[Optional[str], typer.Option(help="Clip shape C,T,H,W to export at \\[default: the "
                                                       "recipe's].")] = None,
    atol: Annotated[float, typer.Option(help="Verification fails (nothing is written) above this max abs "
                                        "difference from PyTorch.")] = 1e-4,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check every file against PyTorch on "
                                         "sample clips (ONNX Runtime for .onnx).")] = True,
    conv_lowering: Annotated[str, typer.Option(help="How 3-D convs are written: none (as 3-D convs) or frames "
                                               "(k_t×k×k convs as 2-D convs over frames: faster in ONNX Runtime "
                                               "on the CPU, where channel slices then save their share).")] = "none",
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Export for serving: ONNX with conditional execution (If), a static-policy model, or a .pt2 program."""
    from .api import export_checkpoint
    from .profile import parse_option

    with _status("loading ...", quiet=as_json or not err_console.is_terminal) as status:
        policy, results = export_checkpoint(
            model_path, onnx=onnx, pt2=pt2, arch=arch, static_policy=static_policy,
            option=parse_option(option) if option else None, data=data, split=split, layout=layout,
            max_clips=max_clips, batch_size=batch_size, workers=workers,
            input_shape=parse_ints(input_shape, "--input-shape") if input_shape else None, atol=atol, verify=verify,
            lowering=conv_lowering, force=force, on_status=status.update if status is not None else None,
        )
    if as_json:
        print_json({"exports": [r.to_dict() for r in results]})
        return
    if policy is not None:
        source = f"--option {option}" if option else f"most frequent decisions on {data}"
        console.print(escape(f"static policy ({source}): {_policy_summary(policy)}"), highlight=False)
    for r in results:
        what = "dynamic: gates + If, batch 1" if r.policy == "dynamic" else "static policy, any batch"
        if r.lowering != "none":
            what += f", convs lowered to {r.lowering}"
        check = "ONNX Runtime" if r.format == "onnx" else "torch.export.load"
        verdict = (f"[green]✓ verified[/] with {check} on {r.clips} clips: max abs difference {r.max_abs_error:.2g} "
                   f"(atol {r.atol:g})") if r.max_abs_error is not None else "[yellow]not verified[/] (--no-verify)"
        console.print(f"wrote {escape(str(r.path))} ({what}) — {verdict}", highlight=False)


# ---------------------------------------------------------------------------------------------- evaluate
@app.command()
def evaluate(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="A converted (or finetuned) vared model.")],
    data: Annotated[str, typer.Option(help="Dataset root: class folders, list files or Kinetics CSVs.")],
    arch: Annotated[Optional[str], typer.Option("--arch", "-a", help="Build this architecture: needed when the "
                                                "model records your own code (module.path:factory), which vared "
                                                "never runs unless you name it.")] = None,

    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    layout: Annotated[str, typer.Option(help="Dataset layout: auto, folders, lists, kinetics, ucf101[:N], hmdb51[:N] or ssv2.")] = "auto",
    clips_per_video: Annotated[int, typer.Option(help="Clips per video, spread evenly (video top-1 averages "
                                                 "their logits).")] = 1,
    frames: Annotated[Optional[int], typer.Option(help="Frames per clip \\[default: the recipe's].")] = None,
    stride: Annotated[int, typer.Option(help="Frames between sampled frames.")] = 4,
    size: Annotated[Optional[int], typer.Option(help="Crop size \\[default: the recipe's].")] = None,
    batch_size: Annotated[int, typer.Option(help="Clips per batch.")] = 8,
    workers: Annotated[int, typer.Option(help="Decoding processes.")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Top-1 (clip and video level) and the average FLOPs ratio of the gates' decisions on a dataset."""
    from .api import evaluate_checkpoint

    with _status("evaluating ...", quiet=as_json or not err_console.is_terminal) as status:
        report = evaluate_checkpoint(
            model_path, data, arch=arch, device=device, split=split, layout=layout, frames=frames, stride=stride,
            size=size, clips_per_video=clips_per_video, batch_size=batch_size, workers=workers,
            on_batch=(lambda n: status.update(f"evaluating ... {n} clips")) if status is not None else None,
        )
    if as_json:
        print_json(report.to_dict())
        return
    table = Table(title=escape(f"{model_path.name} on {data} ({split})"), title_justify="left")
    for column in ("clips", "videos", "top-1 clip", "top-1 video", "FLOPs ratio", "GFLOPs / clip"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_row(str(report.clips), str(report.videos), f"{report.clip_top1:.2f}%", f"{report.video_top1:.2f}%",
                  f"{report.flops_ratio:.3f}", f"{report.adaptive_gflops:.3f} of {report.original_gflops:.3f}")
    console.print(table)
    if report.failed:
        console.print(f"[yellow]skipped {report.failed} unreadable videos[/]")


# ---- vared data ---------------------------------------------------------------------------------------------
data_app = typer.Typer(no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.callback()
def data() -> None:
    """Inspect video datasets: layout, classes, videos per split, durations, unreadable files."""


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="Dataset folder.", show_default=False)],
    layout: Annotated[str, typer.Option(help="auto, folders, lists, kinetics, ucf101[:N], hmdb51[:N] or ssv2.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of tables.")] = False,
    classes: Annotated[Optional[Path], typer.Option(help="Class names, one per line (integer label i is line i).")] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Class count, for integer labels without names.")] = None,
) -> None:
    """Index a dataset and try every video (first frame decoded, every packet read: truncated files are found)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .data.check import check_dataset

    columns = (TextColumn("checking videos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("check", total=None)
        report = check_dataset(root, layout, progress=lambda done, total: bar.update(task, completed=done, total=total),
                               class_names=read_class_names(classes), num_classes=num_classes)
    if as_json:
        print_json(report.to_dict())
    else:
        console.print(report)
    if report.readable == 0:
        raise VaredError(f"none of the {len(report.unreadable)} videos in {root} can be decoded")


# ---------------------------------------------------------------------------------------------- demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the dataset, models, plots and ONNX files.")] = Path("vared-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="A smaller run that shows the flow (about 4 minutes on 2 cores; the full one takes about 8-9).")] = False,
    force: Annotated[bool, typer.Option(help="Replace an earlier demo run in --out (only the files it wrote), and an "
                                        "existing --json file.")] = False,
    as_json: Annotated[Optional[Path], typer.Option("--json", help="Also write the summary as JSON to this file.")] = None,
    granularity: Annotated[Optional[str], typer.Option(help="vared convert --granularity: block, stage or conv "
                                                       "[default: stage, one gate for the demo network's two "
                                                       "spatio-temporal blocks].")] = None,
) -> None:
    """The whole tool end to end on a synthetic dataset: train, convert, finetune, profile, export (CPU, no download)."""
    from rich.panel import Panel
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .demo import FULL, QUICK, STATIC_CLASSES, run_demo
    from .progress import FinetuneDisplay

    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                    disable=not console.is_terminal)
    display = FinetuneDisplay(console, progress=bars)

    def on_step(title: str, explanation: str) -> None:
        console.rule(f"[bold]{title}")
        console.print(explanation, highlight=False)

    def progress(label: str, total: int):
        task = bars.add_task(label, total=total, stats="")
        return lambda n: bars.advance(task, n)

    with bars:
        settings = QUICK if quick else FULL
        if granularity is not None:
            settings = dataclasses.replace(settings, granularity=granularity)
        result = run_demo(out, settings, force=force, on_step=on_step, progress=progress,
                          on_finetune_event=display.on_event, json_out=as_json)

    console.rule("[bold]Summary")
    table = Table(title="Original vs adaptive, on the validation clips", title_justify="left")
    table.add_column("")
    table.add_column("original", justify="right")
    table.add_column("adaptive", justify="right")
    table.add_row("top-1 (%)", f"{result.original_top1:.1f}", f"{result.adaptive_top1:.1f}")
    table.add_row("GFLOPs per clip", f"{result.original_gflops:.4f}", f"{result.adaptive_gflops:.4f}")
    table.add_row(f"FLOPs ratio (target {result.target_flops:g})", "1.000", f"{result.flops_ratio:.3f}")
    if result.latency:
        threads = result.latency["threads"]
        table.add_row(f"CPU latency, ms ({threads} thread{'s' if threads != 1 else ''}, batch 1)",
                      f"{result.latency['original_ms']:.2f}", f"{result.latency['adaptive_ms']:.2f}")
    table.add_row("every gate at its cheapest option: top-1 (%)", "", f"{result.cheapest_top1:.1f}")
    table.add_row(escape(f"best static policy at FLOPs {result.static_flops_ratio:.3f} ({result.static_kind}: "
                         f"{result.static_detail}): top-1 (%)"), "", f"{result.static_top1:.1f}")
    console.print(table)
    if result.latency and result.latency["time_ratio"] >= 1:
        console.print(f"[yellow]time ratio {result.latency['time_ratio']:.2f} for a FLOPs ratio of "
                      f"{result.flops_ratio:.2f}: on this machine the fixed costs of each gate (about twenty small "
                      "eager ops: a grid pooling, two sums, two tiny linears, one decision) and of each block's "
                      "rebuild (a few small memory passes) outweigh what its layer saves. For real models see the "
                      "README's Speed section (r3d_18: bench_speed.py).[/]", highlight=False)
    decisions = Table(title="What each class chose (share of layer decisions)", title_justify="left")
    decisions.add_column("class")
    decisions.add_column("kind")
    decisions.add_column("frames skipped", justify="right")
    labels = sorted({label for shares in result.class_option_share.values() for label in shares},
                    key=lambda s: (-float(s.split(",")[1]), int(s.split(",")[0])))
    for label in labels:
        decisions.add_column(label, justify="right")
    ordered = [c for c in result.classes if c in STATIC_CLASSES] + [c for c in result.classes if c not in STATIC_CLASSES]
    for cls in ordered:
        shares = result.class_option_share.get(cls, {})
        decisions.add_row(escape(cls), "static" if cls in STATIC_CLASSES else "motion", f"{100 * result.class_temporal_share.get(cls, 0):.0f}%",
                          *[f"{100 * shares.get(label, 0):.0f}%" for label in labels])
    console.print(decisions)
    console.print(f"frames skipped: static classes {100 * result.static_temporal_share:.0f}%, motion classes "
                  f"{100 * result.motion_temporal_share:.0f}% of layer decisions")
    console.print(Panel(escape("\n".join(result.commands)), title="The same steps on your own model", expand=False))
    console.print(f"plots: {escape(result.files['savings_plot'])}, {escape(result.files['decisions_plot'])}; "
                  f"finished in {result.seconds / 60:.1f} min")
    if as_json:
        console.print(f"wrote {escape(str(as_json))}", highlight=False)


def _say_error(message: str) -> None:
    """One line on stderr, whatever the message holds (newlines, Rich markup such as ``[`` and ``]``)."""
    line = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)


def _terminate(signum: int, frame: object) -> None:
    if os.getpid() != _MAIN_PID:  # a forked worker (DataLoader) inherited this handler: die as SIGTERM does
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated()


_MAIN_PID = os.getpid()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line on stderr and a non-zero exit, never a traceback.

    Exit codes: 0 done, 1 an error the message explains, 2 a malformed command line, 130 Ctrl-C, 143 SIGTERM.
    SIGTERM is raised as :class:`~vared_convert.errors.Terminated`, so temporary files are removed on the way out.
    """
    global _MAIN_PID, _STOP_REPORTED
    _MAIN_PID, _STOP_REPORTED = os.getpid(), False
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:
        app(args=args, prog_name="vared")  # the help, as typer prints it
    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: keep the default
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code)


def _run(args: list[str]) -> int:
    """Run one command; every way it can end becomes an exit code, and an error one line on stderr."""
    try:
        code = app(args=args, prog_name="vared", standalone_mode=False)
    except typer.TyperException as exc:  # the command line itself is malformed (click's usage errors)
        ctx = getattr(exc, "ctx", None)
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        _say_error(exc.format_message() + where)
        return getattr(exc, "exit_code", 2)
    except typer.Abort:
        _say_error("interrupted")
        return 130
    except VaredError as exc:
        _say_error(str(exc))
        return 1
    except OSError as exc:  # the file system refused something: a full disk, a permission, a path too long
        where = f"{exc.filename}: " if exc.filename else ""
        _say_error(f"{where}{exc.strerror or exc}")
        return 1
    except KeyboardInterrupt:
        _say_error("interrupted")
        return 130
    except Terminated:
        _say_error("terminated (SIGTERM)")
        return 143
    if code in (130, 143) and not _STOP_REPORTED:  # typer turns a KeyboardInterrupt into exit code 130
        _say_error("interrupted" if code == 130 else "terminated (SIGTERM)")
    return code if isinstance(code, int) else 0
