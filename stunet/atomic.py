"""Writing files so that nobody sees a partial one: written in a temporary folder, moved onto the target when done.

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

from stunet.errors import CaseError


def partial_folder(root: Path) -> Path:
    """This process's folder for unfinished files under ``root`` (processes may share ``root``)."""
    return Path(root) / ".stunet-partial" / f"{socket.gethostname()}-{os.getpid()}"


def refuse_links(folder: Path) -> None:
    """Raise CaseError when ``folder`` (this process's folder for unfinished files) or the ``.stunet-partial`` folder
    holding it is a symbolic link (dangling or not): nothing is written through a link planted in an output folder."""
    for path in (Path(folder), Path(folder).parent):
        if path.is_symlink():
            raise CaseError(f"{path}: a symbolic link where stunet keeps unfinished files; remove it (nothing is "
                            f"written through it)")
        if path.name == ".stunet-partial":
            break


def remove_partial_folder(root: Path) -> None:
    if Path(root, ".stunet-partial").is_symlink():
        return  # not ours: left alone (refuse_links named it)
    shutil.rmtree(partial_folder(root), ignore_errors=True)
    with contextlib.suppress(OSError):
        partial_folder(root).parent.rmdir()  # when no other process uses it


def atomic_write(target: Path, write: Callable[[Path], object], temporary_folder: Path | None = None) -> None:
    """``write(path)`` into a private temporary folder, under ``target``'s own name, then move what it wrote beside
    ``target``.

    The path has the target's name so that formats made of several files stay consistent: a MetaImage header
    (``case.mhd``) names its data file (``case.zraw``) by file name. Every other file the writer made moves first and
    ``target`` itself last, so no reader sees ``target`` before the files it refers to. Nothing is left in the
    temporary folder, even when ``write`` fails.
    """
    target = Path(target)
    folder = Path(temporary_folder or target.parent)
    if temporary_folder is not None:
        refuse_links(folder)
    folder.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(dir=folder, prefix="."))
    try:
        write(private / target.name)
        written = sorted(p.name for p in private.iterdir())
        if target.name not in written:
            raise FileNotFoundError(f"writing {target} produced no file {target.name}"
                                    + (f" (only {', '.join(written)})" if written else ""))
        for name in [n for n in written if n != target.name] + [target.name]:
            os.replace(private / name, target.parent / name)
    finally:
        shutil.rmtree(private, ignore_errors=True)
