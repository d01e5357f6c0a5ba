"""One mask per output label, TotalSegmentator's layout: ``OUT/case/liver.nii.gz``, ``OUT/case/kidney_left.nii.gz``,
..., uint8 0/1 on the input's exact grid, one file for every output label, empty ones included
(``stunet-predict --output-type masks``).

A file is named by its label (:func:`mask_file_names`): the released TotalSegmentator models' label names are
TotalSegmentator's class names, so their files are named as TotalSegmentator names them. The case's folder is
written whole in this process's folder for unfinished files and renamed into place (:func:`write_masks`): a folder
at ``OUT/case`` is always complete.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from stunet.atomic import refuse_links
from stunet.errors import CaseError
from stunet.paths import is_utf8

MASK_ENDING = ".nii.gz"


def mask_file_names(names: dict[int, str]) -> dict[int, str]:
    """Label index -> its mask's file name, for every label but background: the label's name with each run of
    characters other than letters, digits, ``.``, ``-`` and ``_`` written ``_`` (``right kidney`` ->
    ``right_kidney.nii.gz``, ``prostate/uterus`` -> ``prostate_uterus.nii.gz``); a name left empty, or taken by an
    earlier label, gets ``_<index>`` added."""
    files, taken = {}, set()
    for index, name in sorted(names.items()):
        if index == 0:
            continue
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "label"
        if stem.lower() in taken:
            stem = f"{stem}_{index}"
        taken.add(stem.lower())
        files[index] = stem + MASK_ENDING
    return files


def write_masks(target: Path, labels: sitk.Image, names: dict[int, str], partial: Path) -> None:
    """The folder ``target`` of one uint8 0/1 mask per label of ``names`` (background excepted) of the label image
    ``labels``, each with its geometry; built in ``partial`` (this process's folder for unfinished files) and renamed
    onto ``target``, replacing a folder there."""
    target, partial = Path(target), Path(partial)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise CaseError(f"{target}: not a folder where the case's masks belong; remove it")
    refuse_links(partial)
    partial.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=partial, prefix="."))
    # ITK aborts on a path that is not UTF-8: the masks are then written in the system's temporary folder first
    scratch = None if is_utf8(os.path.abspath(work)) else Path(tempfile.mkdtemp(prefix="stunet-masks-"))
    try:
        folder = work / target.name
        folder.mkdir()
        array = sitk.GetArrayViewFromImage(labels)
        for index, file_name in mask_file_names(names).items():
            mask = sitk.GetImageFromArray((array == index).astype(np.uint8))
            mask.CopyInformation(labels)
            sitk.WriteImage(mask, str((scratch or folder) / file_name), True)
            if scratch is not None:
                shutil.move(scratch / file_name, folder / file_name)
        if target.is_dir():
            os.replace(target, work / "previous")
        os.replace(folder, target)
    finally:
        for path in (work, scratch):
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)
