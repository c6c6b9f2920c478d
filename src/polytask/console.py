"""The one way polytask makes a rich :class:`~rich.console.Console` (:func:`make_console`).

Two rules hold for everything polytask prints:

* **No markup.** Task names, paths and messages are the user's text: ``polytask[text]`` or
  ``[finetune]`` must print as written, not be swallowed as a style tag. The consoles made here
  read strings (in ``print`` and in table cells, titles and captions) as plain text; code that
  wants a style passes a :class:`~rich.text.Text` or a ``style=`` argument.
* **No hard wrapping when redirected.** Written to a file or a pipe (not a terminal), rich
  would wrap every line and squeeze every table at 80 columns, cutting numbers and paths in
  the middle of a field. Off a terminal the console is as wide as :data:`REDIRECTED_WIDTH`
  (or ``COLUMNS`` when it is set), so lines and tables come out whole and grep-able. On a
  terminal it is as wide as the terminal.
"""

from __future__ import annotations

import os
from typing import IO

from rich.console import Console, ConsoleDimensions

#: Width of a console whose output is not a terminal (unless ``COLUMNS`` says otherwise):
#: wide enough that no line or table of polytask's is ever wrapped.
REDIRECTED_WIDTH = 1000


class PolytaskConsole(Console):
    """A :class:`Console` that never hard-wraps output going to a file or a pipe (module
    docstring). Whether the output is a terminal is decided at each print, so a console made
    at import time follows ``sys.stdout`` as it is redirected (test runners, ``| tee``)."""

    @property
    def size(self) -> ConsoleDimensions:
        dimensions = super().size
        if self._width is None and not self.is_terminal and "COLUMNS" not in os.environ:
            return ConsoleDimensions(REDIRECTED_WIDTH, dimensions.height)
        return dimensions

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        width, height = new_size
        self._width, self._height = width, height


def make_console(
    *, stderr: bool = False, quiet: bool = False, file: IO[str] | None = None
) -> Console:
    """A console on stdout (or ``stderr``, or ``file``) that prints strings as plain text and
    does not wrap redirected output (module docstring); ``quiet`` prints nothing."""
    return PolytaskConsole(
        stderr=stderr, quiet=quiet, file=file, markup=False, highlight=False, emoji=False
    )


__all__ = ["REDIRECTED_WIDTH", "PolytaskConsole", "make_console"]
