"""Does the FLOPs saving become a time saving? Original against adaptive, every gate pinned to one option.

For r3d_18 (3×16×112×112) and x3d_m (3×16×224×224) at batch 1 and 8, in PyTorch eager and in ONNX Runtime:
original ms, adaptive ms, time ratio, FLOPs ratio (the whole model, static layers and gates included) and the share
of the FLOPs saving realised in time, ``(1 - time_ratio) / (1 - flops_ratio)``.

* Eager: the gates run and decide (each gate's last layer is pinned so that it picks the option), so the time
  includes the gates, the decision and the inference path exactly as users run it. CPU runs use channels-last for
  original and adaptive alike (``--layout``; the faster layout for r3d_18, while x3d_m's original runs about 7%
  faster in NCDHW at one thread).
* ONNX Runtime, batch 1: the dynamic export (gates + ``If``), exported once; each option's pinned gate weights
  are written into the graph's initializers. Batch 8: the static-policy export of that option (no gates). Both
  with ``--lowering`` (default ``frames``: k_t×k×k convs as 2-D convs over frames, ``vared export
  --conv-lowering frames``), and the original is exported through the same lowering, so the ratio measures the
  options, not the lowering.
* ``--conv-kernel`` (default ``auto``: oneDNN on the CPU) runs every 3-D conv of both models through the same
  kernel. PyTorch's own choice (``aten``) sends batch-1 convs on small maps (N·C·T·H ≤ 20,480) to a reference
  kernel 3–8× slower than oneDNN, which taxes the cheap options most.
* ``--malloc retain`` (default) runs with glibc keeping freed memory for reuse, as production CPU serving does
  with jemalloc or tcmalloc; ``system`` keeps glibc's defaults, where each large tensor can page-fault its memory
  back in (costly on VMs), a fixed cost per layer that hits both models and hides savings.

Random weights (speed does not depend on them); timings interleave original and adaptive round by round and
report medians (``--statistic fastest``: the fastest round), so background load hits both alike. ``--quick`` runs
small clips for a smoke test.

    python benchmarks/bench_speed.py [--quick] [--json] [--models r3d_18,x3d_m] [--backends eager,onnxruntime]
        [--batches 1,8] [--threads N] [--lowering none,frames] [--malloc retain|system] [--conv-kernel aten,onednn]
        [--statistic median|fastest]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from vared_convert.arch import build_model
from vared_convert.convert import convert
from vared_convert.export import LOWERINGS, export_model, lower_conv3d, static_policy
from vared_convert.flops import CostModel, option_costs
from vared_convert.nn import DynamicConv3d, adaptive_layers, option_index
from vared_convert.nn.kernels import onednn_conv3d, resolve_kernel, set_conv_kernel
from vared_convert.timing import measure_interleaved, resolve_device

MODELS = {
    "r3d_18": ("torchvision:r3d_18", (3, 16, 112, 112), (3, 8, 56, 56)),
    "x3d_m": ("pytorchvideo:x3d_m", (3, 16, 224, 224), (3, 8, 64, 64)),
    "i3d_r50": ("pytorchvideo:i3d_r50", (3, 8, 224, 224), (3, 8, 64, 64)),
}
OPTIONS = [(1, 1.0), (1, 0.5), (1, 0.25), (2, 1.0), (2, 0.5), (2, 0.25)]
QUICK_OPTIONS = [(1, 1.0), (2, 0.5)]
PIN = 10.0  # the pinned gate's logit for its option (every other logit is 0)


@dataclass
class Row:
    model: str
    clip: str
    granularity: str
    backend: str
    batch: int
    option: str
    original_ms: float
    adaptive_ms: float
    flops_ratio: float
    ideal_ms: float | None = None  # adaptive convs exactly at their FLOPs, cheap ops and gates free (eager only)

    @property
    def time_ratio(self) -> float:
        return self.adaptive_ms / self.original_ms

    @property
    def realised(self) -> float | None:
        """Share of the FLOPs saving realised in time (undefined when nothing is saved)."""
        return (1 - self.time_ratio) / (1 - self.flops_ratio) if self.flops_ratio < 0.99 else None

    @property
    def ideal(self) -> float | None:
        """The realised share if only the convs' time changed, exactly with their FLOPs: what the static layers
        (stem, norms, activations, residual adds) leave reachable."""
        if self.ideal_ms is None or self.flops_ratio >= 0.99:
            return None
        return (1 - self.ideal_ms / self.original_ms) / (1 - self.flops_ratio)

    def to_dict(self) -> dict:
        return {**asdict(self), "time_ratio": self.time_ratio, "realised": self.realised, "ideal": self.ideal}


def pinned(model: torch.nn.Module, option: tuple[int, float]) -> torch.nn.Module:
    """A copy whose every gate picks ``option`` whatever its input (the gates still run)."""
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for _, layer in adaptive_layers(copied):
            layer.gate.fc2.weight.zero_()
            layer.gate.fc2.bias.zero_()
            layer.gate.fc2.bias[option_index(layer, *option)] = PIN
    return copied


def flops_ratios(costs: CostModel, options: list) -> dict[tuple[int, float], tuple[float, float]]:
    """Per option: the whole model's FLOPs ratio with the gates running, and without (static export)."""
    ratios = {}
    for option in options:
        forced = costs.forced_macs([option_index(table.layer, *option) for table in costs.layers])
        ratios[option] = ((forced + costs.gate_macs) / costs.original_macs, forced / costs.original_macs)
    return ratios


def bench_eager(name, granularity, original, adaptive, costs, options, shape, batch, device, dtype, layout,
                repeats, kernel="aten", statistic="median") -> list[Row]:
    clip = torch.randn(batch, *shape).to(device=device, dtype=dtype).contiguous(memory_format=layout)
    conv3d = onednn_conv3d if kernel == "onednn" else F.conv3d

    def ready(model: torch.nn.Module):  # a copy: both models get the same layout, dtype and conv kernel
        model = set_conv_kernel(copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=layout).eval(),
                                kernel)
        return lambda: model(clip)

    def full_conv(layer, input_shape):  # the original conv of a dynamic layer, alone, on its input
        x = torch.randn(batch, *input_shape[1:]).to(device=device, dtype=dtype).contiguous(memory_format=layout)
        weight = layer.weight.detach().to(device=device, dtype=dtype).contiguous(memory_format=layout)
        bias = None if layer.bias is None else layer.bias.detach().to(device=device, dtype=dtype)
        return lambda: conv3d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)

    fns = {"original": ready(original)}
    for option in options:
        fns[option] = ready(pinned(adaptive, option))
    convs = [t for t in costs.layers if isinstance(t.layer, DynamicConv3d)]  # the ideal is a per-conv notion
    ideal_known = len(convs) == len(costs.layers)
    for table in convs if ideal_known else []:
        fns[table.name] = full_conv(table.layer, table.input_shape)
    measured = measure_interleaved(fns, device, warmup=2, repeats=repeats)
    timings = {key: t.median_ms if statistic == "median" else t.min_ms for key, t in measured.items()}
    base = timings["original"]
    ratios = flops_ratios(costs, options)
    rows = []
    for option in options:
        ideal = base if ideal_known else None
        for table in convs if ideal_known else []:  # each conv's time scaled by its own FLOPs under the option
            conv = option_costs(table.layer, table.input_shape)
            scale = conv[option_index(table.layer, *option)].conv / conv[0].conv
            ideal -= timings[table.name] * (1 - scale)
        rows.append(Row(name, "×".join(map(str, shape)), granularity, f"eager {device.type} {kernel}", batch,
                        f"{option[0]},{option[1]:g}", base, timings[option], ratios[option][0], ideal))
    return rows


def _session(path: Path | bytes, threads: int):
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.log_severity_level = 3
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), settings,
                                providers=["CPUExecutionProvider"])


def _time_sessions(sessions: dict, clip, repeats: int, statistic: str = "median") -> dict[str, float]:
    feeds = {key: {s.get_inputs()[0].name: clip} for key, s in sessions.items()}
    for key, s in sessions.items():
        for _ in range(2):
            s.run(None, feeds[key])
    times: dict = {key: [] for key in sessions}
    for _ in range(repeats):
        for key, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds[key])
            times[key].append((time.perf_counter() - start) * 1000)
    pick = statistics.median if statistic == "median" else min
    return {key: pick(t) for key, t in times.items()}


def _pin_initializers(onnx_model, adaptive: torch.nn.Module, option: tuple[int, float]):
    """A copy of the dynamic ONNX model whose gates are pinned to ``option`` (as :func:`pinned` does in PyTorch)."""
    import onnx.numpy_helper as nh

    model = copy.deepcopy(onnx_model)
    inits = {init.name: init for init in model.graph.initializer}
    for name, layer in adaptive_layers(adaptive):
        prefix = f"{name}.layer.gate.fc2."
        weight, bias = inits[prefix + "weight"], inits[prefix + "bias"]
        pinned_bias = torch.zeros(layer.num_options)
        pinned_bias[option_index(layer, *option)] = PIN
        weight.CopyFrom(nh.from_array(torch.zeros(tuple(weight.dims)).numpy(), weight.name))
        bias.CopyFrom(nh.from_array(pinned_bias.numpy(), bias.name))
    return model


def bench_onnx(name, granularity, original, adaptive, options, shape, batch, ratios, repeats, folder: Path,
               lowering: str, statistic: str = "median") -> list[Row]:
    import onnx

    threads = torch.get_num_threads()
    clip = torch.randn(batch, *shape).numpy()
    original_path = folder / f"{name}_original_{lowering}.onnx"
    if not original_path.exists():  # the baseline goes through the same conv lowering as the adaptive model
        export_plain(lower_conv3d(original) if lowering == "frames" else original, shape, original_path)
    sessions = {"original": _session(original_path, threads)}
    if batch == 1:  # the dynamic model: gates and If; one export, gates pinned per option in the initializers
        dynamic_path = folder / f"{name}_{granularity}_dynamic_{lowering}.onnx"
        if not dynamic_path.exists():
            distinct = copy.deepcopy(adaptive)
            with torch.no_grad():  # distinct gate weights, so the exporter keeps one initializer per gate
                for _, layer in adaptive_layers(distinct):
                    layer.gate.fc2.weight.normal_(0, 1e-3)
                    layer.gate.fc2.bias.normal_(0, 1e-3)
            export_model(distinct, onnx=dynamic_path, input_shape=shape, verify=False, lowering=lowering)
        base = onnx.load(dynamic_path)
        for option in options:
            sessions[option] = _session(_pin_initializers(base, adaptive, option).SerializeToString(), threads)
        check = _check_pinned(sessions[options[-1]], pinned(adaptive, options[-1]), clip)
        kind, flops = f"ort If {lowering}", {o: ratios[o][0] for o in options}
    else:  # the static-policy export of each option: no gates, any batch
        for option in options:
            path = folder / f"{name}_{granularity}_static_{option[0]}_{option[1]:g}_{lowering}.onnx"
            if not path.exists():
                export_model(adaptive, onnx=path, policy=static_policy(adaptive, option), input_shape=shape,
                             verify=False, lowering=lowering)
            sessions[option] = _session(path, threads)
        check = None
        kind, flops = f"ort static {lowering}", {o: ratios[o][1] for o in options}
    if check is not None and check > 1e-3:
        raise RuntimeError(f"pinned ONNX model differs from PyTorch by {check:.3g}")
    times = _time_sessions(sessions, clip, repeats, statistic)
    return [Row(name, "×".join(map(str, shape)), granularity, kind, batch, f"{o[0]},{o[1]:g}", times["original"],
                times[o], flops[o]) for o in options]


def export_plain(original: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """The original network as ONNX with a dynamic batch, through the same torch.export route as vared's."""
    torch._dynamo.reset()
    batch = {0: torch.export.Dim("batch", min=1, max=1024)}
    with torch.no_grad():
        program = torch.export.export(original.eval(), (torch.zeros(2, *shape),), dynamic_shapes=(batch,), strict=True)
    torch.onnx.export(program, dynamo=True, verbose=False).save(path, external_data=False)


def _check_pinned(session, model: torch.nn.Module, clip) -> float:
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(clip))
    got = session.run(None, {session.get_inputs()[0].name: clip})[0]
    return float((torch.from_numpy(got) - expected).abs().max())


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def print_table(rows: list[Row]) -> None:
    header = ["model", "clip", "granularity", "backend", "batch", "option T,C", "original ms", "adaptive ms",
              "time ratio", "FLOPs ratio", "realised", "ideal"]
    cells = [[r.model, r.clip, r.granularity, r.backend, str(r.batch), r.option, f"{r.original_ms:.1f}", f"{r.adaptive_ms:.1f}",
              f"{r.time_ratio:.3f}", f"{r.flops_ratio:.3f}", _share(r.realised), _share(r.ideal)] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) if i < 6 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))


RETAIN = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"


def retain_freed_memory() -> None:
    """Run again with glibc told to keep freed memory (read once, at start-up: hence the new process).

    With glibc's defaults a large tensor is mmap-ed and returned to the OS when freed, so the next one of its
    size page-faults its way in again: on a VM with free page reporting that cost 30 ms for a 12.8 MB feature
    map here, as much as the conv that filled it. It hits the original and the adaptive model alike, but it is a
    fixed cost per allocation, so it hides savings; production CPU serving uses an allocator that keeps memory.
    """
    if RETAIN in os.environ.get("GLIBC_TUNABLES", "") or platform.libc_ver()[0] != "glibc":
        return
    tunables = ":".join(t for t in (os.environ.get("GLIBC_TUNABLES"), RETAIN) if t)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "GLIBC_TUNABLES": tunables})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: r3d_18 (unless --models), small clips, "
                        "options 1,1 and 2,0.5, batches up to 2, 3 repeats")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--models", default=None, help="comma-separated: " + ", ".join(MODELS) + " (default: all)")
    parser.add_argument("--backends", default="eager,onnxruntime", help="eager and/or onnxruntime")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--granularity", default="block", help="comma-separated: block, stage, conv (vared convert "
                        "--granularity)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime "
                        "(default: PyTorch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (ONNX Runtime runs on the CPU only)")
    parser.add_argument("--layout", default="auto", choices=["auto", "channels-last", "ncdhw"],
                        help="eager memory layout (auto: channels-last on the CPU)")
    parser.add_argument("--conv-kernel", default="auto", help="eager 3-D conv kernel for both models, "
                        "comma-separated: aten (PyTorch's choice), onednn (always oneDNN), auto (onednn on the CPU)")
    parser.add_argument("--statistic", default="median", choices=["median", "fastest"],
                        help="each model's time over the interleaved rounds: the median, or the fastest round "
                        "(background load only adds time, and unevenly to short calls)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="eager dtype")
    parser.add_argument("--lowering", default="frames", help="ONNX conv lowering, comma-separated: "
                        + ", ".join(LOWERINGS) + " (the original is exported with the same one)")
    parser.add_argument("--malloc", default="retain", choices=["retain", "system"],
                        help="retain: glibc keeps freed memory for reuse (no mmap, no trimming; what jemalloc or "
                        "tcmalloc give), so neither model pays page faults for memory the OS took back; system: "
                        "glibc's defaults")
    args = parser.parse_args(argv)
    if args.malloc == "retain":
        retain_freed_memory()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = resolve_device(args.device), getattr(torch, args.dtype)
    channels_last = args.layout == "channels-last" or (args.layout == "auto" and device.type == "cpu")
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    repeats = args.repeats or (3 if args.quick else 10)
    batches = [int(b) for b in args.batches.split(",")]
    options = QUICK_OPTIONS if args.quick else OPTIONS
    models = (args.models or ("r3d_18" if args.quick else ",".join(MODELS))).split(",")
    if args.quick:
        batches = sorted({min(b, 2) for b in batches})
    backends = args.backends.split(",")
    kernels = [resolve_kernel(k, device) for k in args.conv_kernel.split(",")]
    lowerings = args.lowering.split(",")
    if any(lowering not in LOWERINGS for lowering in lowerings):
        parser.error(f"--lowering: choose from {', '.join(LOWERINGS)}")
    if device.type != "cpu" and "onnxruntime" in backends:
        parser.error("ONNX Runtime runs on the CPU here: add --backends eager for a GPU run")
    rows: list[Row] = []
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, {args.dtype}, "
          f"layout {'channels-last' if layout == torch.channels_last_3d else 'NCDHW'}, malloc {args.malloc}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            arch, full_shape, quick_shape = MODELS[name]
            shape = quick_shape if args.quick else full_shape
            original = build_model(arch).eval()
            for granularity in args.granularity.split(","):
                adaptive = convert(original, shape, arch=arch, granularity=granularity).model  # verified exact
                costs = CostModel(adaptive, shape)
                ratios = flops_ratios(costs, options)
                for batch in batches:
                    if "eager" in backends:
                        for kernel in kernels:
                            rows += bench_eager(name, granularity, original, adaptive, costs, options, shape, batch,
                                                device, dtype, layout, repeats, kernel, args.statistic)
                            print(f"# {name} {granularity} eager ({kernel} convs) batch {batch} done", file=sys.stderr,
                                  flush=True)
                    for lowering in lowerings if "onnxruntime" in backends else []:
                        try:
                            rows += bench_onnx(name, granularity, original, adaptive, options, shape, batch, ratios,
                                               repeats, Path(tmp), lowering, args.statistic)
                        except Exception as exc:  # e.g. the original network itself does not export
                            print(f"# {name} {granularity} onnxruntime ({lowering}) batch {batch} FAILED: "
                                  f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}", file=sys.stderr)
                            continue
                        print(f"# {name} {granularity} onnxruntime ({lowering}) batch {batch} done", file=sys.stderr,
                              flush=True)
                if not args.json:  # each model's rows as soon as they are measured
                    print_table([r for r in rows if r.model == name and r.granularity == granularity])
                    sys.stdout.flush()
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
