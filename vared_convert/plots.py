"""PNG figures: per-layer savings, and decisions per class."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from .files import atomic_output

if TYPE_CHECKING:
    from .profile import ProfileReport

__all__ = ["plot_layer_savings", "plot_class_decisions"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_savings(report: "ProfileReport", path: str | os.PathLike,
                       inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Horizontal bars: each conv's original GFLOPs behind its adaptive GFLOPs, biggest layers on top."""
    plt = _pyplot()
    rows = list(reversed(report.layers))
    height = max(3.0, 0.22 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(9, height))
    names = [r.name for r in rows]
    original = [r.original_macs / 1e9 for r in rows]
    adaptive = [(r.min_macs if report.mode == "static" and r.dynamic else r.adaptive_macs) / 1e9 for r in rows]
    ax.barh(names, original, color="#c7c7c7", label="original")
    label = "cheapest option" if report.mode == "static" else "adaptive"
    ax.barh(names, adaptive, height=0.5, color="#1f77b4", label=label)
    ax.set_xlabel("GFLOPs per clip (multiply-adds)")
    if report.mode == "static":
        ax.set_title(f"Per-layer cost: original {report.original_macs / 1e9:.2f} GFLOPs, every gate at its cheapest "
                     f"{report.min_macs / 1e9:.2f}")
    else:
        ax.set_title(f"Per-layer cost: original {report.original_macs / 1e9:.2f} → adaptive "
                     f"{report.adaptive_macs / 1e9:.2f} GFLOPs (ratio {report.flops_ratio:.2f})")
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_output(path, force=True, inputs=inputs) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_class_decisions(histograms: dict[str, dict[str, int]], path: str | os.PathLike, title: str = "",
                         order: Sequence[str] | None = None) -> None:
    """Stacked bars: for each class (in ``order``, default by name), the share of layer decisions that took each
    option."""
    plt = _pyplot()
    classes = [c for c in order if c in histograms] if order is not None else sorted(histograms)
    options = sorted({o for h in histograms.values() for o in h}, key=lambda s: (-float(s.split(",")[1]), int(s.split(",")[0])))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(classes) + 2), 4))
    bottom = [0.0] * len(classes)
    cmap = plt.get_cmap("viridis", max(len(options), 2))
    for i, option in enumerate(options):
        shares = [histograms[c].get(option, 0) / max(1, sum(histograms[c].values())) for c in classes]
        ax.bar(classes, shares, bottom=bottom, label=f"T,C = {option}", color=cmap(i))
        bottom = [b + s for b, s in zip(bottom, shares)]
    ax.set_ylabel("share of layer decisions")
    ax.set_title(title or "Options chosen per class")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.tight_layout()
    with atomic_output(path, force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
