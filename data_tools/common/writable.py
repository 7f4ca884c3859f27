"""Refuse an output that cannot be written before any work starts: a read-only mount or a
folder of another user's otherwise ends in an OSError traceback minutes (or a printed
table) later."""
from __future__ import annotations

import errno
import os
from pathlib import Path

# Errors that mean "this place cannot take the output", whatever wrote it: one line, not a traceback.
WRITE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def check_folder(path: str | Path, what: str, hint: str = "") -> None:
    """`path` is a folder that exists and can be written, or can be made (its nearest
    existing parent can be written). Raises PermissionError naming `what`."""
    _refuse(path, what, unwritable(Path(path)), hint)


def check_file(path: str | Path, what: str, hint: str = "") -> None:
    """`path` is a file that can be written (made, or replaced) in its folder."""
    problem = unwritable(Path(path).absolute().parent)
    if not problem and Path(path).exists() and not os.access(path, os.W_OK):
        problem = "the file is not writable by this user"
    _refuse(path, what, problem, hint)


def unwritable(folder: Path) -> str:
    """Why `folder` cannot be written or made ("" when it can, or when a file is in the
    way: the callers' own checks name that)."""
    place = folder.absolute()
    while not place.exists():
        place = place.parent
    if not place.is_dir() or os.access(place, os.W_OK | os.X_OK):
        return ""
    read_only = os.statvfs(place).f_flag & os.ST_RDONLY
    return f"{place} is {'on a read-only file system' if read_only else 'not writable by this user'}"


def _refuse(path, what: str, problem: str, hint: str) -> None:
    if problem:
        raise PermissionError(f"{what} {path} cannot be written: {problem}{f' ({hint})' if hint else ''}")
