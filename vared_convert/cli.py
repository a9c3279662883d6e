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
