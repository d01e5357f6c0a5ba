"""An inter-process lock on a file that leaves nothing behind: ``with file_lock(path): ...``.

The holder takes an exclusive ``flock`` on ``path`` and removes the file when it lets go, so a folder holds no lock
files between runs. A process that was waiting on a file its holder removed takes the lock again on the file now at
the path (it compares the inode it locked with the path's), so two processes never both hold the lock. On file
systems without ``flock`` (some parallel file systems) the body runs unlocked. Used by the weights cache (one
download per file) and by prediction's output folders (one writer of provenance.json at a time).
"""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from stunet.errors import CaseError

try:
    import fcntl
except ImportError:  # Windows: no flock; the body runs unlocked
    fcntl = None


def _same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def file_lock(path: str | Path, what: str = "a lock", waiting: Callable[[], None] | None = None,
              check: Callable[[], None] | None = None, poll: float = 0.1) -> Iterator[None]:
    """Hold the lock ``path`` (created, never followed through a link). While another process holds it, ``waiting``
    is called once and ``check`` before every retry (it may raise, e.g. at a deadline). ``what`` names the lock in the
    one-line error when the file cannot be opened."""
    path = Path(path)
    if fcntl is None:
        yield
        return
    told = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise CaseError(f"{path}: cannot be opened as {what} ({e.strerror}); remove it") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not told and waiting is not None:
                waiting()
            told = True
            if check is not None:
                check()
            time.sleep(poll)
            continue
        except OSError:  # no locks on this file system
            os.close(fd)
            yield
            return
        if _same_file(path, fd):
            break
        os.close(fd)
    try:
        yield
    finally:
        if _same_file(path, fd):
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(fd)
