"""Checks shared by the tests that run the `vared` command line."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path


def assert_one_line_error(proc, needle: str) -> None:
    """A failed command: non-zero exit, no traceback, one `error:` line on stderr that contains ``needle``."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert needle in lines[0], lines[0]


@dataclass
class Outcome:
    """What one in-process run of the command line did."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: object, cwd: Path | None = None) -> Outcome:
    """Run `vared ARGS` in this process, through the console script's entry point (`cli.main`), as a user's shell
    would, capturing its output. Much faster than a subprocess (no second import of torch); an uncaught exception
    propagates, so a traceback cannot go unnoticed."""
    from vared_convert.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = Path.cwd()
    code: object = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code
    finally:
        os.chdir(previous)
    return Outcome(code if isinstance(code, int) else (0 if code is None else 1), out.getvalue(), err.getvalue())


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file, folder and link under ``root`` (hidden ones too), with its kind, mode and content hash."""
    found: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            info = os.lstat(path)
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(info.st_mode):
                found[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(info.st_mode):
                found[rel] = ("dir", stat.S_IMODE(info.st_mode))
            else:
                found[rel] = ("file", stat.S_IMODE(info.st_mode), hashlib.sha1(path.read_bytes()).hexdigest())
    return found


def assert_refused(outcome: Outcome, needle: str, code: int = 1) -> None:
    """The promise to a user who gave a bad input: the exit code, no traceback, exactly one `error:` line on
    stderr naming the problem (``needle``)."""
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert "Traceback" not in outcome.stdout + outcome.stderr, outcome.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), outcome.stderr
    assert needle in lines[0], lines[0]
    assert outcome.returncode == code, (outcome.returncode, lines[0])
