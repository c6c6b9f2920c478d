"""``python -m polytask``: the command line, for launchers that take a module
(``torchrun ... -m polytask train CONFIG``), and the ``polytask`` script's entry point.

Ctrl-C while the command line is still being imported ends the process as Ctrl-C later does
(:func:`polytask.cli.main`): one line on stderr, exit status 130, no traceback. The quiet handler
is installed only where Python's own (``KeyboardInterrupt``) is, and put back once the import is
done, so an ignored SIGINT (a background job) stays ignored."""

import signal
import sys
from types import FrameType


def _interrupted(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)


_previous = signal.getsignal(signal.SIGINT)
if _previous is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)
try:
    from polytask.cli import main
finally:
    if _previous is signal.default_int_handler:
        signal.signal(signal.SIGINT, _previous)

__all__ = ["main"]

if __name__ == "__main__":
    main()
