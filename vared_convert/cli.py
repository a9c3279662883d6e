"""The `vared` command line: parse arguments, call the library, print with Rich. No model logic lives here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from .errors import VaredError

app = typer.Typer(
    name="vared",
    help="Make video models cheaper to run: input-dependent (VA-RED²) convolutions for any pretrained 3D CNN.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error and exit non-zero."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# ---- vared data ---------------------------------------------------------------------------------------------
from pathlib import Path  # noqa: E402 - kept in this block
from typing import Annotated  # noqa: E402

data_app = typer.Typer(no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.callback()
def data() -> None:
    """Inspect video datasets: layout, classes, videos per split, durations, unreadable files."""


@data_app.command("check")
def data_check(
    root: Annotated[Path, typer.Argument(help="Dataset folder.", show_default=False)],
    layout: Annotated[str, typer.Option(help="auto, folders, lists or kinetics.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of tables.")] = False,
) -> None:
    """Index a dataset and try to decode every video (header and first frame)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    import json

    from .data.check import check_dataset

    columns = (TextColumn("checking videos"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task("check", total=None)
        report = check_dataset(root, layout, progress=lambda done, total: bar.update(task, completed=done, total=total))
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        console.print(report)
    if report.readable == 0:
        raise VaredError(f"none of the {len(report.unreadable)} videos in {root} can be decoded")


def main() -> None:
    """Console-script entry point: user errors become one line and a non-zero exit."""
    try:
        app()
    except VaredError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
