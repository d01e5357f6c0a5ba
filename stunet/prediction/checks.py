"""What an image must be before it is segmented, wherever it comes from (a file, a DICOM series, an in-memory image):
one 3D scalar image of real values, not empty, with a finite positive spacing, within the voxel budget, its channels
consistent (:func:`check_image`, :func:`check_files` before a file is read in full), and with content
(:func:`check_values`, after reading). Every door into prediction runs these same functions, so the same bad image
gets the same message through the command and the Python API.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk
import numpy as np

from stunet.errors import CaseError
from stunet.prediction.budget import VoxelBudget
from stunet.prediction.headers import check_data_files, check_data_size, header_spacing

_COMPLEX = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}
# the voxel sizes (mm) of real CT, MR and PET images lie well inside this range; outside it a header is wrong (a unit
# mix-up, a placeholder) and segmenting at that scale would give a confident, meaningless result
SPACING_RANGE_MM = (0.01, 50.0)


def _check_spacing(name, spacing: Sequence[float], source: str, plausible: bool = True) -> None:
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CaseError(f"{name}: {source} spacing {tuple(spacing)} is not finite and positive; fix the header (the "
                        f"segmentation would be computed at a made-up scale)")
    low, high = SPACING_RANGE_MM
    if plausible and not all(low <= s <= high for s in spacing):
        raise CaseError(f"{name}: {source} spacing {tuple(float(f'{s:.4g}') for s in spacing)} mm is outside the "
                        f"plausible {low:g}-{high:g} mm; fix the header (the segmentation would be computed at a "
                        f"made-up scale)")


def check_image(name, dimension: int, size: Sequence[int], spacing: Sequence[float], components: int = 1,
                spacing_source: str = "the", budget: VoxelBudget | None = None, complex_values: bool = False) -> None:
    """Raise CaseError unless this is one 3D scalar real image with voxels and a finite positive spacing that fits
    ``budget`` (``size`` and ``spacing`` in ITK's x, y, z order; ``name`` is what the message calls it)."""
    size = tuple(int(s) for s in size)
    if dimension != 3:
        raise CaseError(f"{name}: a {dimension}D image of size {size}; expected a 3D image (one file per channel)")
    if complex_values:
        raise CaseError(f"{name}: complex-valued voxels; a real-valued image is needed (give its magnitude)")
    if components != 1:
        raise CaseError(f"{name}: {components} components per voxel (an RGB or vector image); a scalar image is "
                        f"needed (one file per channel)")
    if 0 in size:
        raise CaseError(f"{name}: empty image (size {size})")
    _check_spacing(name, tuple(float(s) for s in spacing), spacing_source)
    (budget or VoxelBudget()).check(name, size, spacing)


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


def check_files(files: Sequence[Path], budget: VoxelBudget | None = None, shown: Sequence[Path] | None = None) -> None:
    """Raise CaseError for unreadable, corrupt, truncated, 2D/4D, vector, complex, empty, badly spaced, over-budget or
    mutually inconsistent channel files, before any is read in full. ``shown``: the names the messages use, where
    ``files`` are links to them (:func:`stunet.paths.itk_readable`)."""
    seen = []
    for path, name in zip(files, shown or files):
        check_data_files(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = lines[-1].replace("sitk::ERROR: ", "") if lines else "unreadable"
            raise CaseError(f"{name}: cannot read it as an image ({detail[:200]})") from e
        size, spacing = reader.GetSize(), reader.GetSpacing()
        if reader.GetDimension() == 3 and 0 not in size:
            stated = header_spacing(path)
            if stated is not None:
                _check_spacing(name, stated, "the header's (pixdim)", plausible=False)  # in its units
        check_image(name, reader.GetDimension(), size, spacing, reader.GetNumberOfComponents(), budget=budget,
                    complex_values=reader.GetPixelID() in _COMPLEX)
        check_data_size(path)
        seen.append((name, size, spacing))
    check_channels(seen)


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
