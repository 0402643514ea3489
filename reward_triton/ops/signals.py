"""Stopping the project's long-running commands cleanly on SIGINT, SIGTERM and SIGHUP.

`run_stoppable(main, name)` runs a command's main with SIGTERM and SIGHUP turned into a `Stopped` exception (SIGINT
is Python's KeyboardInterrupt), so every `with ServerProcess(...)` and `finally` on the way out runs and stops the
servers the command started; the command then prints one line ("NAME: stopped by SIGTERM") instead of a traceback
and exits with 128 + the signal number, as a shell reports a process killed by it. Further signals during that
cleanup are ignored, so a second Ctrl-C cannot cut the cleanup short (ServerProcess.stop bounds it with a timeout).

`die_with_parent()` (a Popen preexec_fn) asks Linux to send SIGTERM to a child when its parent dies, so a child
outlives nothing even when the parent is killed with SIGKILL and no cleanup runs.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import warnings
from collections.abc import Callable
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


class Stopped(BaseException):
    """A stop signal arrived (BaseException, like KeyboardInterrupt: `except Exception` does not swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _ignore_further() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _quiet_unwinding() -> None:
    """The stop may land anywhere, e.g. inside asyncio building its event loop: objects left half-made then
    complain from their finalizers ("Exception ignored in ...", "coroutine ... was never awaited") while the stack
    unwinds. The command is stopping and says so in one line; that noise is dropped."""
    sys.unraisablehook = lambda _: None
    warnings.simplefilter("ignore", RuntimeWarning)


def _raise(signum: int, _frame: FrameType | None) -> None:
    _ignore_further()
    _quiet_unwinding()
    raise Stopped(signum)


def run_stoppable(main: Callable[[], int], name: str) -> int:
    """main() with stop signals raised as exceptions; a stop → one line on stderr and status 128 + signal."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _raise)
    try:
        return main()
    except Stopped as e:
        signum = e.signum
    except KeyboardInterrupt:
        signum = signal.SIGINT
    _ignore_further()
    print(f"{name}: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    return 128 + signum


def die_with_parent() -> None:
    """In a child before exec: get SIGTERM when the parent dies (Linux prctl; elsewhere a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
