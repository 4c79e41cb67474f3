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


#: The stop signals received while :func:`stop_signals_as_interrupts` runs (their numbers).
_received: list[int] = []


def _stop_of(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Stopped(signum)


def stop_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The stop (Ctrl-C, SIGTERM, SIGHUP) that ``exc`` stands for, or None when it is an error of
    its own. A library can turn the interrupt that a stop raises in its code into an error of
    its own: pybind11 makes one raised while an extension module initialises (SciPy's HiGHS
    module, imported with ``scipy.stats`` as a run's summary is computed) an
    ``ImportError('initialization failed')`` raised from it,
    and code that wraps errors can drop the interrupt altogether (``raise ... from None``). So
    ``exc`` is the stop's when it is one, when one is in its chain of causes and contexts, or
    when a stop signal was received while :func:`stop_signals_as_interrupts` runs."""
    if isinstance(exc, KeyboardInterrupt):
        return exc
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):  # a new one: raised from exc, the same one would make a cycle
            return Stopped(e.signum) if isinstance(e, Stopped) else KeyboardInterrupt()
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return _stop_of(_received[0]) if _received else None


def raise_if_stopped(exc: BaseException) -> None:
    """Raise the stop behind ``exc`` (:func:`stop_behind`), from it; for code that records an
    error and goes on (a pair's error row), so that a stop is neither stored as an error nor
    ignored."""
    stop = stop_behind(exc)
    if stop is not None:
        raise stop from exc


def check_stopped() -> None:
    """Raise the stop signal received while :func:`stop_signals_as_interrupts` runs, if one was
    and its interrupt was swallowed by the code it was raised in (e.g. one that reads an optional
    value and falls back on any error): between two units of work, nothing computed is lost."""
    if _received:
        raise _stop_of(_received[0])


@contextlib.contextmanager
def stop_signals_as_interrupts():
    """While the block runs, SIGTERM and SIGHUP raise :class:`Stopped` (a ``KeyboardInterrupt``)
    in the main thread, so every clean-up that Ctrl-C runs (a run's lock and folder, its store,
    the Ray executor) runs for them too; the handlers in place before are restored after. A
    second one (the first one's clean-up hangs) ends the process at once, as it would have.
    Ctrl-C raises ``KeyboardInterrupt`` as before; every stop is recorded, and an error that
    leaves the block after one (a library's own error raised in the interrupt's place,
    :func:`stop_behind`) leaves it as that stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()

    def handler(signum, _frame):
        if signum != signal.SIGINT and any(s != signal.SIGINT for s in _received):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _received.append(signum)
        raise _stop_of(signum)

    handled = [*STOP_SIGNALS, *([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler
                                else [])]
    previous = {sig: signal.signal(sig, handler) for sig in handled}
    try:
        yield
    except Exception as exc:
        raise_if_stopped(exc)
        raise
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        _received.clear()


def say(line: str) -> None:
    """A line on stderr; a terminal already closed (SIGHUP) is not an error."""
    with contextlib.suppress(OSError):
        print(line, file=sys.stderr)
