"""Writing outputs safely: checked before any work, written to a temporary file, renamed into place when complete.

The rules every command follows:

* an output is never one of the command's inputs (the same path, a link to it, or the same file);
* an existing output is replaced only with ``force``;
* the output's folder must exist and accept a new file, checked before the work starts;
* a failure, Ctrl-C or SIGTERM leaves no partial or temporary file, and the previous output untouched;
* a finished file has the permissions the user's umask gives (not the temporary file's 0600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError

__all__ = ["atomic_output", "check_output_path", "same_file"]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` name one file (the same path, a link to it, or a hard link)."""
    a, b = Path(a), Path(b)
    try:
        if os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop resolves nowhere
        return False


def _temporary_name(folder: Path, prefix: str, suffix: str = "") -> Path:
    """A fresh hidden name in ``folder``, chosen before the file exists."""
    return folder / f"{prefix}{secrets.token_hex(6)}{suffix}"


def _create(path: Path) -> None:
    """Create ``path`` as a new empty file (0600), failing if it exists."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _probe_folder(folder: Path, what: str) -> None:
    """Create and remove one empty file in ``folder``: a read-only or unusable folder fails now, not after the work.

    The name is chosen before the file is created and removed in a ``finally``, so a signal at any moment (Ctrl-C,
    SIGTERM raised as an exception) leaves nothing behind."""
    probe = _temporary_name(folder, ".vared-probe.")
    try:
        _create(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            reason = "read-only" if exc.errno == errno.EROFS else "not writable"
        raise OutputError(f"{what} {folder}: cannot write there ({reason})") from exc
    finally:
        probe.unlink(missing_ok=True)


def check_output_path(
    path: str | os.PathLike,
    force: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    what: str = "output",
) -> Path:
    """Check that ``path`` may be written, before any work: not an input, not existing without ``force``, in a
    folder that exists and is writable. Returns the path; raises :class:`~vared_convert.errors.OutputError`."""
    path = Path(path)
    for source in inputs:
        if same_file(path, source):
            raise OutputError(f"{what} {path} is the input {source}; write it somewhere else")
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{what} {path} is a broken symbolic link")
    if path.exists() and not force:
        raise OutputError(f"{what} {path} exists; pass --force to overwrite it")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{what} {path}: folder {folder} does not exist")
    _probe_folder(folder, what)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` only if the block succeeds.

    A crash, an exception or an interrupt leaves no partial file behind and never touches an existing ``path``.
    A write that fails for lack of space or permission is an :class:`~vared_convert.errors.OutputError`.
    """
    path = check_output_path(path, force, inputs)
    # the name is known before the file exists, and the file is created inside the try: a signal raised as an
    # exception at any moment, even right after the creation, reaches the finally that removes it
    tmp = _temporary_name(path.parent, f".{path.name}.", ".tmp")
    try:
        try:
            _create(tmp)
            yield tmp
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO):
                raise OutputError(f"could not write {path}: {exc.strerror}; nothing was written") from exc
            raise
    finally:
        tmp.unlink(missing_ok=True)
