"""``python -m polytask``: the command line, for launchers that take a module
(``torchrun ... -m polytask train CONFIG``), and the ``polytask`` script's entry point.

Ctrl-C during start-up (importing the command line, building and parsing it, importing the
studies, torch and the plug-ins) ends the process as Ctrl-C later does
(:func:`polytask.cli.main`): one line on stderr, exit status 130, no traceback.

Start-up cannot take Python's own ``KeyboardInterrupt``, nor any exception raised from a signal
handler: the signal is handled between two bytecodes of whatever runs, and during an import
that is often a finaliser or a weak-reference callback of the import machinery
(``_get_module_lock.<locals>.cb``), where Python prints "Exception ignored", drops the exception
and carries on, or the middle of a package's ``__init__``, which leaves a half-initialised
module behind: numpy's ``__getattr__`` then recursed into a ``RecursionError`` traceback while
the exception unwound (issue 18's Ctrl-C bug, about 0.6 s into ``polytask list``). Start-up has
written nothing yet, so the handler installed here ends the process on the spot instead: one
``write`` to file descriptor 2 (no buffered stream, which the interrupted code may be inside)
and ``os._exit(130)``, raising nothing. Once start-up is over, right before the command runs,
Python's handler is put back: from there a ``KeyboardInterrupt`` unwinds through the
command's ``finally`` blocks (a run directory left consistent) and ``cli.main`` prints the
same line. Read-only commands (``polytask list``, which imports torch itself when a plug-in
is installed) keep the quiet handler to the end: they have nothing to clean up.

The quiet handler is installed only where Python's own is, so an ignored SIGINT (a background
job) stays ignored. A Ctrl-C before this module runs (the interpreter's and ``polytask``'s own
first tens of milliseconds) still gets Python's traceback.
"""

import os
import signal
from types import FrameType

#: The one line a Ctrl-C prints (the same as ``polytask.cli.main``'s).
INTERRUPTED = b"error: interrupted\n"


def _exit_interrupted(signum: int, frame: FrameType | None) -> None:
    """End the process at once, with nothing raised (module docstring: why)."""
    os.write(2, INTERRUPTED)
    os._exit(130)


_previous = signal.getsignal(signal.SIGINT)
_quiet = _previous is signal.default_int_handler
if _quiet:
    signal.signal(signal.SIGINT, _exit_interrupted)

from polytask.cli import main as _cli_main  # noqa: E402 - under the quiet handler, on purpose


def _started() -> None:
    """Start-up is over: Python's Ctrl-C handling again (``KeyboardInterrupt``)."""
    if _quiet and signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, _previous)


def main() -> None:
    """The ``polytask`` command: :func:`polytask.cli.main`, quiet on Ctrl-C until the command
    runs. Python's handler is back when this returns, however it ends (``--help``, a usage
    error, a read-only command that kept the quiet handler throughout)."""
    try:
        _cli_main(started=_started)
    finally:
        _started()


__all__ = ["main"]

if __name__ == "__main__":
    main()
