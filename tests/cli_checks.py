"""Checks shared by the tests that run the real `vared` console script."""

from __future__ import annotations


def assert_one_line_error(proc, needle: str) -> None:
    """A failed command: non-zero exit, no traceback, one `error:` line on stderr that contains ``needle``."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert needle in lines[0], lines[0]
