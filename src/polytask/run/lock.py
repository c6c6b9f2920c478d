"""The run directory's lock: one polytask process at a time writes a run directory.

The lock is an exclusive ``flock`` on ``<run dir>/.polytask.lock``, a file holding the owner's
process id. It is held for the run's whole lifetime and released by the kernel when the process
dies (even by ``kill -9``), so a stale file never blocks anyone. The owner deletes the file when
it is done (while still holding the lock), so a finished or failed run leaves no lock file; one
killed leaves it, and the next run to open the directory simply takes it over.

Because the owner deletes the file, a process can open the file, lose the race to the owner's
delete and lock a file that no longer has a name; :meth:`RunLock.acquire` therefore checks,
after locking, that the name still points at the file it locked, and retries if not.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from polytask.errors import PolytaskError

#: The lock file's name inside a run directory.
LOCK_NAME = ".polytask.lock"

if sys.platform == "win32":  # pragma: no cover - no flock there: the lock only records the pid

    def _try_lock(fd: int) -> bool:
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        """Take the exclusive lock without waiting; False when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def _busy(directory: Path, fd: int) -> PolytaskError:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    owner = f"pid {text}" if text.isdigit() else "pid unknown"
    return PolytaskError(
        f"run directory '{directory}' is in use by another polytask process ({owner})"
    )


class RunLock:
    """An exclusive lock on one run directory (module docstring)."""

    def __init__(self, directory: Path, fd: int) -> None:
        self.directory = directory
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, directory: Path) -> RunLock:
        """Lock ``directory`` (which must exist) or fail at once, naming the owner's pid."""
        path = directory / LOCK_NAME
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                locked = _try_lock(fd)
                error = None if locked else _busy(directory, fd)
            except BaseException:
                os.close(fd)
                raise
            if error is not None:
                os.close(fd)
                raise error
            if _same_file(path, fd):
                break
            os.close(fd)  # the previous owner deleted the file we opened: open the new one
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return cls(directory, fd)

    def moved_to(self, directory: Path) -> None:
        """The locked directory was renamed to ``directory`` (the file moved with it)."""
        self.directory = directory

    def release(self, *, delete: bool = True) -> None:
        """Give the lock up; ``delete`` removes the lock file first (still under the lock, so
        nobody can lock a file that is about to lose its name). Idempotent."""
        if self._fd is None:
            return
        path = self.directory / LOCK_NAME
        if delete and _same_file(path, self._fd):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None


def _same_file(path: Path, fd: int) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def check_unlocked(directory: Path) -> None:
    """Fail if a live process holds ``directory``'s lock; create nothing (a probe before any
    input is checked: the real lock is taken when the directory is written)."""
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except (FileNotFoundError, NotADirectoryError):
        return
    try:
        if not _try_lock(fd):
            raise _busy(directory, fd)
    finally:
        os.close(fd)  # also releases the probe's lock when it was taken


def is_locked(directory: Path) -> bool:
    """True when a live process holds ``directory``'s lock."""
    try:
        check_unlocked(directory)
    except PolytaskError:
        return True
    return False
