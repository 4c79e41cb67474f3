"""Checks on output paths, made before any work so that a bad one costs nothing."""
from __future__ import annotations

import os
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
