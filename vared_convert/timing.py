"""Wall-clock measurement done right: inference mode, warm-up, median of repeats, the thread count stated."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Timing", "measure", "measure_interleaved", "resolve_device"]


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated runs, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    device: str
    threads: int

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "max_ms": self.max_ms, "repeats": self.repeats,
                "device": self.device, "threads": self.threads}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda`` without a GPU is a clear error."""
    from .errors import VaredError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise VaredError(f"--device {name!r}: not a device (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VaredError(f"--device {name}: no CUDA GPU is available here")
    return device


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> Timing:
    """Time ``fn()`` (already bound to its inputs): ``warmup`` untimed calls, then the median of ``repeats``."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - start) * 1000)
    return Timing(statistics.median(times), min(times), max(times), repeats, str(device), torch.get_num_threads())


def measure_interleaved(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int = 3,
                        repeats: int = 10) -> dict[str, Timing]:
    """Time several callables side by side: each round runs every one once, so background load hits all alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        sync()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                sync()
                times[name].append((time.perf_counter() - start) * 1000)
    threads = torch.get_num_threads()
    return {
        name: Timing(statistics.median(t), min(t), max(t), repeats, str(device), threads) for name, t in times.items()
    }
