"""User-facing errors.

Every problem caused by the user's input (a file, a column, a config key) is raised as a
:class:`PolytaskError` whose message is one line naming the culprit and what was expected. The
CLI prints that line and exits non-zero; it never shows a traceback for these.
"""

from __future__ import annotations


class PolytaskError(Exception):
    """A problem with the user's input, reported as one line of text."""

    def __init__(self, message: str) -> None:
        # Keep the message on one line: a multi-line message is hard to grep in CI logs.
        super().__init__(" ".join(message.split()))


class ConfigError(PolytaskError):
    """A configuration key is unknown or has an invalid value."""


class DataError(PolytaskError):
    """A data file or column is missing or holds values of the wrong kind."""
