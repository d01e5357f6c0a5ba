"""What an image must be before it is segmented, wherever it comes from (a file, a DICOM series, an in-memory image):
one 3D scalar image of real values, not empty, with a plausible spacing, within the voxel budget, its channels
consistent (:func:`check_image`; :func:`open_files` before a file's voxels are read, through the shared reader
:mod:`stunet.io.reader`), and with content
(:func:`check_values`, after reading). Every door into prediction runs these same functions, so the same bad image
gets the same message through the command and the Python API.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import SimpleITK as sitk
import numpy as np

from stunet.errors import CaseError
from stunet.io.reader import ImageFile, check_geometry
from stunet.prediction.budget import VoxelBudget

_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}


def check_image(name, dimension: int, size: Sequence[int], spacing: Sequence[float], components: int = 1,
                spacing_source: str = "the", budget: VoxelBudget | None = None, complex_values: bool = False) -> None:
    """Raise CaseError unless this is one 3D scalar real image with voxels and a plausible spacing
    (:func:`stunet.io.reader.check_geometry`) that fits ``budget`` (``size`` and ``spacing`` in ITK's x, y, z order;
    ``name`` is what the message calls it)."""
    check_geometry(name, dimension, size, spacing, components, complex_values, spacing_source)
    (budget or VoxelBudget()).check(name, tuple(int(s) for s in size), spacing)


def check_channels(images: Sequence[tuple[object, Sequence[int], Sequence[float]]]) -> None:
    """(name, size, spacing) of each channel: all must share the grid."""
    first = images[0]
    for name, size, spacing in images[1:]:
        if tuple(size) != tuple(first[1]) or not np.allclose(spacing, first[2], rtol=1e-4):
            raise CaseError(f"{name}: size {tuple(size)} / spacing {tuple(round(s, 4) for s in spacing)} differs "
                            f"from {Path(str(first[0])).name} ({tuple(first[1])} / "
                            f"{tuple(round(s, 4) for s in first[2])})")


def check_sitk_images(names: Sequence[str], images: Sequence[sitk.Image], budget: VoxelBudget | None = None) -> None:
    """:func:`check_image` for in-memory SimpleITK images (one per channel) and their consistency."""
    for name, image in zip(names, images):
        check_image(name, image.GetDimension(), image.GetSize(), image.GetSpacing(),
                    image.GetNumberOfComponentsPerPixel(), budget=budget,
                    complex_values=image.GetPixelID() in _COMPLEX)
    check_channels([(n, i.GetSize(), i.GetSpacing()) for n, i in zip(names, images)])


def open_files(files: Sequence[Path], budget: VoxelBudget | None = None, workdir: Path | None = None
               ) -> list[ImageFile]:
    """The channel files opened (:class:`stunet.io.reader.ImageFile`: headers read and checked against the files) and
    refused when unreadable, 2D/4D, vector, complex, empty, badly spaced, over-budget or mutually inconsistent, before
    any voxel is read. ``workdir`` holds links for names ITK cannot open."""
    opened = []
    try:
        for path in files:
            image = ImageFile(path, workdir)
            opened.append(image)
            check_image(image.name, image.dimension, image.size, image.spacing, image.components, budget=budget,
                        complex_values=image.complex_values)
        check_channels([(f.name, f.size, f.spacing) for f in opened])
    except BaseException:
        for image in opened:
            image.close()
        raise
    return opened


def check_files(files: Sequence[Path], budget: VoxelBudget | None = None, workdir: Path | None = None
                ) -> list[ImageFile]:
    """:func:`open_files`, and the voxel data each header declares found in its file (a bounded streaming
    decompression for compressed data): the checks for files that another reader (the plans' own) reads."""
    opened = open_files(files, budget, workdir)
    for image in opened:
        image.check_data()
    return opened


def check_values(names: Sequence[str], image: np.ndarray) -> list[str]:
    """Raise CaseError for channels without content (no finite voxel, or one value everywhere: an empty image, or an
    all-NaN one, which ITK reads as zeros). Isolated NaN/inf voxels are replaced, in place, by the channel's minimum
    finite value; each replacement is returned as a note (printed by the command, warned by the Python API, recorded
    in provenance.json)."""
    notes = []
    for name, channel in zip(names, image):
        finite = np.isfinite(channel)
        if not finite.any():
            raise CaseError(f"{name}: no finite voxel (all NaN or infinite)")
        if not finite.all():
            low = channel[finite].min()
            count = int(finite.size - np.count_nonzero(finite))
            channel[~finite] = low
            notes.append(f"{name}: {count} NaN or infinite voxel(s) replaced by the image's minimum {low:g}")
        low, high = channel.min(), channel.max()
        if low == high:
            raise CaseError(f"{name}: every voxel has the value {low:g}; an empty or all-NaN image")
    return notes
