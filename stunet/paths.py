"""File names ITK can open, and file names printed safely.

ITK (SimpleITK) aborts the whole process (SIGABRT: no Python exception, a pool worker simply dies) when it is given a
file name that is not valid UTF-8, such as ``os.fsdecode(b"caf\\xe9.nii.gz")`` (Python holds the undecodable byte as
the lone surrogate ``\\udce9``), and it refuses an image whose ending is in upper case (``CT.NII.GZ``).
:func:`itk_readable` gives a path that ITK opens in their place: a symbolic link with a plain name, in a folder the
caller owns and removes. A base module: anything may import it (the converters in ``stunet.nnunet`` and the
prediction path alike).
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")  # what ITK reads by ending, found here in any case


def split_ending(path: str | Path, endings: Sequence[str] = IMAGE_ENDINGS) -> tuple[str, str] | None:
    """(stem, ending in lower case) of ``path``'s name for the first of ``endings`` it ends in, whatever the case
    (``CT.NII.GZ`` -> ``("CT", ".nii.gz")``); None for other names."""
    name = Path(path).name
    lowered = name.lower()
    ending = next((ending for ending in endings if lowered.endswith(ending)), None)
    return None if ending is None else (name[:-len(ending)], ending)


def image_ending(path: str | Path) -> str:
    """The image ending of ``path``'s name in lower case (``CT.NII.GZ`` -> ``.nii.gz``), or "" for other names."""
    split = split_ending(path)
    return split[1] if split else ""


def is_utf8(text: str | Path) -> bool:
    """Whether a path's text is valid UTF-8 (no byte that did not decode)."""
    try:
        str(text).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def itk_can_open(path: str | Path) -> bool:
    """Whether ITK can be handed ``path`` itself: valid UTF-8, and an image ending (if any) in lower case."""
    ending = image_ending(path)
    return is_utf8(os.path.abspath(path)) and (not ending or Path(path).name.endswith(ending))


def itk_readable(path: str | Path, folder: str | Path) -> Path:
    """``path``, or, where ITK cannot open it (:func:`itk_can_open`), a symbolic link to it in ``folder`` named
    ``input-<n><ending>``. A MetaImage header's data files are linked beside the link under their own names (the header
    names them). ``folder`` is created if needed; the caller removes it when done. Raises ValueError when ``folder``
    itself is not valid UTF-8 (a link there would not help)."""
    path = Path(path)
    if itk_can_open(path):
        return path
    folder = Path(folder)
    if not is_utf8(os.path.abspath(folder)):
        raise ValueError(f"{os.path.abspath(folder)!a}: not valid UTF-8, so no folder for a link that ITK can open")
    folder.mkdir(parents=True, exist_ok=True)
    ending = image_ending(path)
    target = os.path.abspath(path)
    number = len(list(folder.glob("input-*")))
    while True:
        link = folder / f"input-{number}{ending}"
        try:
            os.symlink(target, link)
            break
        except FileExistsError:
            number += 1
    if ending == ".mhd":
        for data in path.parent.glob(f"{glob.escape(path.name[:-len(ending)])}.*"):
            if data != path and not (folder / data.name).exists():
                os.symlink(os.path.abspath(data), folder / data.name)
    return link
