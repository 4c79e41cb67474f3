"""One run per output folder (:class:`RunLock`)."""
from __future__ import annotations

import os
from pathlib import Path

from .resume import now


class RunLock:
    """One run per output folder: an exclusive ``flock`` on ``OUT/run.lock``, released by the
    operating system when the process ends, however it ends (SIGKILL included). The file holds
    the pid of the run that holds the lock.

    :meth:`release` with ``clean=True`` (a run refused before it wrote anything) removes what
    :meth:`acquire` created: the lock file, and the folders it made if they are still empty, so
    that a refused run leaves no folder behind. A lock is taken only on the file that the path
    names when it is taken (a file removed meanwhile by such a release is made again)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "run.lock"
        self._fh = None
        self._made: list[Path] = []  # what acquire() created: the file, then the folders, deepest first

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (documented)
            return self
        while True:
            made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fh = open(self.path, "x+", encoding="utf-8")
                made.insert(0, self.path)
            except FileExistsError:
                try:
                    fh = open(self.path, "r+", encoding="utf-8")
                except FileNotFoundError:  # removed by a refused run's release since: again
                    continue
            except FileNotFoundError:  # its folder removed by a refused run's release since: again
                continue
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                holder = fh.read().strip() or "pid unknown"
                fh.close()
                raise ValueError(f"{self.path.parent} is in use by another falsify run ({holder}); wait for it to "
                                 "finish, or use another --out") from None
            try:
                same = os.path.samestat(os.fstat(fh.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            fh.close()  # locked a file that a refused run removed meanwhile: lock the one there now
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {now()}\n")
        fh.flush()
        self._fh, self._made = fh, made
        return self

    def release(self, clean: bool = False) -> None:
        """Unlock; ``clean``: first remove the lock file and the folders :meth:`acquire` created
        (those still empty), as for a run that wrote nothing."""
        if self._fh is None:
            return
        import fcntl

        if clean:
            for p in self._made:
                try:
                    p.unlink() if p == self.path else p.rmdir()
                except OSError:  # not empty (another run's files), or gone: leave it
                    break
        self._made = []
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
        self._fh = None
