"""Content fingerprints of files: what falsify knows a method's (or a model's) file by."""
from __future__ import annotations

import hashlib
from pathlib import Path

_CACHE: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path) -> str:
    """The hex sha256 of the file at ``path``, cached in this process by (resolved path, size,
    mtime_ns), so a file that changes is read again."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]
