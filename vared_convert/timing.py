"""Wall-clock measurement done right: inference mode, warm-up, median of repeats, the thread count stated."""

from __future__ import annotations

import contextlib
import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

__all__ = ["Timing", "cpu_threads", "measure", "measure_interleaved", "resolve_device", "retain_freed_memory"]


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated runs, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    repeats: int
    device: str
    threads: int

    def per_call(self, calls: int) -> "Timing":
        """This timing of ``calls`` calls in a row, as milliseconds per call."""
        return dataclasses.replace(self, median_ms=self.median_ms / calls, min_ms=self.min_ms / calls,
                                   max_ms=self.max_ms / calls)

    def to_dict(self) -> dict:
        return {"median_ms": self.median_ms, "min_ms": self.min_ms, "max_ms": self.max_ms, "repeats": self.repeats,
                "device": self.device, "threads": self.threads}


def retain_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory for reuse (no mmap for large blocks, no trimming), as jemalloc
    or tcmalloc do in CPU serving; returns whether it could (glibc only).

    With glibc's defaults every large tensor is mmap-ed and given back to the OS when freed, and the next one
    page-faults its memory in again: a fixed cost per layer and call (30 ms for a 12.8 MB map on a VM here) that
    hits the original and the adaptive model alike and hides savings. ``benchmarks/bench_speed.py --malloc
    retain`` sets the same two options through ``GLIBC_TUNABLES``.
    """
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` CPU threads (``None``: as they are), and restore the count after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
