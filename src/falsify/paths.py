"""Output paths: checks made before any work so that a bad one costs nothing, and one line when
the space runs out while writing."""
from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path


def check_writable(path: str | Path, what: str, *, folder: bool) -> Path:
    """Refuse ``path`` (a folder to create or fill when ``folder``, else a file to write) when it
    cannot be written: it is the other kind of thing, or the nearest existing folder on its way
    is a file or is not writable (read-only or no permission). ``what`` names it in the message."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name")
    for p in ((path,) if folder else ()) + tuple(path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{what} {path}: {p} is a file, not a folder")
            if not os.access(p, os.W_OK):
                raise ValueError(f"{what} {path}: {p} is not writable (read-only or no permission)")
            break
    return path


class OutOfSpaceError(OSError):
    """The device holding an output folder ran out of space (or the user's quota did)."""


#: numpy's short write (``ndarray.tofile``, used by ``np.save``): "N requested and M written"
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` says that a write ran out of space: ENOSPC or EDQUOT from the system,
    SQLite's "database or disk is full", or numpy's short write."""
    if isinstance(exc, OutOfSpaceError):
        return True
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT) or bool(_SHORT_WRITE.search(str(exc)))
    return False


def _free(folder: Path) -> str:
    for p in (folder, *folder.parents):
        try:
            free = shutil.disk_usage(p).free
        except OSError:
            continue
        return f"{free / 2**20:.0f} MiB free now"
    return "free space unknown"


@contextmanager
def space_guard(folder: str | Path, then: str):
    """Turn running out of space while writing into ``folder`` into one line that names the
    folder, says that the space ran out and what to do (``then``: e.g. that the rows already
    stored are kept and rerunning resumes). Every other error passes unchanged."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, OutOfSpaceError) or not is_out_of_space(exc):
            raise  # another error, or one an inner guard already named
        folder = Path(folder)
        raise OutOfSpaceError(errno.ENOSPC, f"no space left on the device holding {folder} ({_free(folder)}): "
                                            f"free some space there or choose another folder; {then}") from None
