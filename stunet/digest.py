"""The SHA-256 of a file: one function for released checkpoints, exported graphs and the provenance of outputs."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Callable

from stunet.errors import CheckpointError

_BLOCK = 8 << 20


def file_sha256(path: str | Path, progress: Callable[[int], object] | None = None) -> str:
    """The SHA-256 of a regular file, as hexadecimal digits; ``progress`` is called with the length of each block read.
    A FIFO or a device is refused (:class:`~stunet.errors.CheckpointError`) without waiting on it."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise CheckpointError(f"{path}: not a regular file")
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()
