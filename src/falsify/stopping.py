"""How a command stops on Ctrl-C, SIGTERM and SIGHUP: one clean-up for all three, the line that
says what is kept, and the exit status a shell expects (``falsify.cli.main`` wires them)."""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path


def stopped_line(exc: BaseException, out: Path | None) -> str:
    """What ``falsify run`` says when it is stopped (Ctrl-C, SIGTERM, SIGHUP): what is kept of
    ``out`` and how to go on. The runner has already cleaned up: a run stopped before its store
    existed removed its lock and the folder the lock made; the rows of one stopped later stay."""
    how = f"stopped by {signal_name(exc)}"
    if out is None:
        return f"{how} before anything was written; rerun the same command to start it"
    out = Path(out)
    if (out / "results.sqlite").is_file():
        return f"{how}; the rows already stored in {out} are kept: rerun the same command to resume"
    return (f"{how} before any row was stored; {out} is left as it was before the run: rerun the same command to "
            "start again")


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program is, so that the clean-up Ctrl-C runs runs
    (``timeout``, ``docker stop`` and batch schedulers send SIGTERM; a closed terminal SIGHUP)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def signal_name(exc: BaseException) -> str:
    return signal.Signals(exc.signum).name if isinstance(exc, Stopped) else "SIGINT (Ctrl-C)"


def stopped_status(exc: BaseException) -> int:
    """128 + the signal's number, as a shell reports a process ended by it (130 for Ctrl-C)."""
    return 128 + (exc.signum if isinstance(exc, Stopped) else signal.SIGINT)


#: The signals handled as Ctrl-C is (SIGHUP does not exist on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextlib.contextmanager
def stop_signals_as_interrupts():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Stopped` (a ``KeyboardInterrupt``)
    in the main thread, so every clean-up that Ctrl-C runs (a run's lock and folder, its store,
    the Ray executor) runs for them too; the handlers in place before are restored after. A
    second one (the first one's clean-up hangs) ends the process at once, as it would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def handler(signum, _frame):
        if seen:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        seen.append(signum)
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def say(line: str) -> None:
    """A line on stderr; a terminal already closed (SIGHUP) is not an error."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr)
