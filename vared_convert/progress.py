"""Rich rendering of a finetune run's events: a progress bar with loss, top-1 and FLOPs ratio; epoch lines."""

from __future__ import annotations

import os
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

__all__ = ["FinetuneDisplay", "calibration_line", "class_decision_table"]


def class_decision_table(result: Any, title: str = "Decisions per class (share of layer decisions)") -> Table:
    """One row per class: top-1, the share of decisions that skipped frames, and the option histogram."""
    table = Table(title=title, title_justify="left")
    table.add_column("class", no_wrap=True)
    table.add_column("top-1", justify="right")
    table.add_column("frames skipped", justify="right")
    kinds = [f"{t},{c:g}" for t, c in result.kinds]
    for kind in kinds:
        table.add_column(kind, justify="right")
    for i, name in enumerate(result.class_names):
        counts = result.class_counts[i]
        total = max(1, sum(counts))
        top1 = f"{result.per_class_top1[i]:.1f}" if result.per_class_top1 else ""
        table.add_row(escape(name), top1, f"{100 * result.temporal_share(i):.0f}%",
                      *[f"{100 * n / total:.0f}%" for n in counts])
    return table


def calibration_line(calibration: Any, final: Any) -> str:
    """``FLOPs ratio: target 0.600, reached 0.604 on the validation clips (top-1 95.3) …``: what calibration did."""
    c = calibration
    return (f"FLOPs ratio: target {c.target:.3f}, reached {final.flops_ratio:.3f} on the validation clips (top-1 "
            f"{final.top1:.1f}); calibrated on {c.clips} training clips: {c.before:.3f} → {c.reached:.3f} "
            f"(λ = {c.strength:+.3g})")


class FinetuneDisplay:
    """Turns the trainer's events into a live progress bar and printed lines (rank 0 only)."""

    def __init__(self, console: Console, progress: Progress | None = None):
        self.console = console
        self.active = os.environ.get("RANK", "0") == "0"
        self.owns_progress = progress is None
        self.progress = progress or Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not self.active or not console.is_terminal,
        )
        self.task: Any = None
        self.steps_per_epoch = 1

    def __enter__(self) -> "FinetuneDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        if not self.active:
            return
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(data)

    def _on_start(self, data: dict[str, Any]) -> None:
        self.steps_per_epoch = data["steps_per_epoch"]
        self.task = self.progress.add_task("finetune", total=data["total_steps"], completed=data["step"],
                                           stats="")

    def _on_resumed(self, data: dict[str, Any]) -> None:
        self.progress.console.print(f"resumed from {escape(data['path'])} at epoch {data['epoch'] + 1}, step {data['step']}")

    def _on_tick(self, data: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=data["step"])

    def _on_step(self, data: dict[str, Any]) -> None:
        stats = (f"epoch {data['epoch']} loss {data['loss']:.3f} top-1 {data['top1']:.1f} "
                 f"FLOPs {data['flops_ratio']:.2f} τ {data['tau']:.2f}" + (" (warm-up)" if data["warmup"] else ""))
        self.progress.update(self.task, completed=data["step"], stats=stats)

    def _on_epoch(self, data: dict[str, Any]) -> None:
        r = data["result"]
        hist = "  ".join(f"{t},{c:g}:{100 * sum(row[i] for row in r.class_counts) / max(1, sum(map(sum, r.class_counts))):.0f}%"
                         for i, (t, c) in enumerate(r.kinds))
        mark = "  [green]★ best[/]" if data["best"] else ""
        self.progress.console.print(
            f"epoch {data['epoch']}: val top-1 {r.top1:.1f} (full path {r.top1_full:.1f}), FLOPs ratio "
            f"{r.flops_ratio:.3f}, options (T,C) {hist}{mark}"
        )

    def _on_failed(self, data: dict[str, Any]) -> None:
        for path, reason in data["files"]:
            self.progress.console.print(f"[yellow]skipped unreadable video[/] {escape(str(path))}: {escape(str(reason))}")

    def _on_interrupted(self, data: dict[str, Any]) -> None:
        self.progress.console.print(f"[yellow]interrupted[/] at step {data['step']}: saved {escape(data['path'])}")

    def _on_done(self, data: dict[str, Any]) -> None:
        result = data["result"]
        if result.last is not None and not result.interrupted:
            if self.owns_progress:
                self.progress.stop()
            self.progress.console.print(class_decision_table(result.final or result.last))
            from .recipe import model_info

            best = result.best
            cost = (model_info(result.model).recipe.extra.get("cost") or {}) if result.config.cost == "latency" else {}
            ratio = "time ratio (from the latency table)" if cost else "FLOPs ratio"
            if best:
                self.progress.console.print(f"best epoch {best['epoch']}: top-1 {best['top1']:.1f}, {ratio} "
                                   f"{best['flops_ratio']:.3f}" + ("" if best["meets_budget"] else " (over budget)"))
            if cost:
                self.progress.console.print(escape(f"budgeted in time on {cost['device']}: the policy is for that "
                                                   f"device (table kept as {cost.get('table_file', '?')})"))
            if result.calibration is not None and result.final is not None:
                self.progress.console.print(calibration_line(result.calibration, result.final))
            if result.out:
                self.progress.console.print(escape(f"wrote {result.out} (run folder {result.run_dir})"))
