"""Writing files so that nobody sees a partial one: a temporary file, renamed onto the target when complete.

Temporary files of folders that other tools scan (nnU-Net lists every ``*.nii.gz`` of imagesTr, users glob output
folders) go to ``<root>/.stunet-partial/<host>-<pid>/``, where no such listing meets them, even after a crash.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable


def partial_folder(root: Path) -> Path:
    """This process's folder for unfinished files under ``root`` (processes may share ``root``)."""
    return Path(root) / ".stunet-partial" / f"{socket.gethostname()}-{os.getpid()}"


def remove_partial_folder(root: Path) -> None:
    shutil.rmtree(partial_folder(root), ignore_errors=True)
    with contextlib.suppress(OSError):
        partial_folder(root).parent.rmdir()  # when no other process uses it


def atomic_write(target: Path, write: Callable[[Path], object], temporary_folder: Path | None = None) -> None:
    """``write(temporary path)`` (same file ending as ``target``), then rename it onto ``target``."""
    target = Path(target)
    folder = Path(temporary_folder or target.parent)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if target.name.endswith(".nii.gz") else target.suffix
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
