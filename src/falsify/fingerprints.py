"""Files known by their content: the sha256 of a file's bytes, hashed once per process.

A run records the sha256 of every file that decides its results (the data's images, the
model's weights), so that a resumed run is refused when one of them was replaced at the same
path. :func:`file_fingerprint` hashes a file once and keeps the digest for the rest of the
process, keyed by the file's resolved path and its ``stat`` (size, mtime and ctime in
nanoseconds, inode, device): a file written again or replaced at that path has another
``stat``, so it is hashed again. Only a file rewritten to the same size within the file
system's timestamp resolution (on ext4, XFS, APFS: nanoseconds; FAT: two seconds) while this
process runs could be served a stale digest.
"""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

_CACHE: dict[tuple, str] = {}
_LOCK = threading.Lock()


def _stat_key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of the bytes of the file at ``path``, cached in this process by (resolved
    path, size, mtime, ctime, inode, device). ``OSError`` (e.g. ``FileNotFoundError``) when it
    cannot be read."""
    resolved = Path(path).expanduser().resolve()
    key = _stat_key(resolved)
    with _LOCK:
        cached = _CACHE.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(resolved, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    value = digest.hexdigest()
    if _stat_key(resolved) == key:  # not cached when the file changed while it was read
        with _LOCK:
            _CACHE[key] = value
    return value


__all__ = ["file_fingerprint"]
