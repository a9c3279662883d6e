"""Writing outputs safely: into a temporary file beside the target, renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import VaredError

__all__ = ["atomic_output", "check_output_path"]


def check_output_path(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse to overwrite an existing file without ``force``; make sure the folder exists."""
    path = Path(path)
    if path.is_dir():
        raise VaredError(f"output {path} is a directory; give a file name")
    if path.exists() and not force:
        raise VaredError(f"output {path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` only if the block succeeds.

    A crash or an exception leaves no partial file behind, and never touches an existing ``path``.
    """
    path = check_output_path(path, force)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
