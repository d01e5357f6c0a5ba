"""What an image must be before it is segmented: readable, 3D, not empty, finite positive spacing, within the voxel
budget, consistent across channels (:func:`check_files`, before reading in full), and with content (:func:`check_values`,
after reading).
"""
from __future__ import annotations
import math
from pathlib import Path
from typing import Sequence
import numpy as np
import SimpleITK as sitk
from stunet.errors import CaseError
from stunet.prediction.budget import VoxelBudget
from stunet.prediction.discovery import Case
from stunet.prediction.headers import check_data_size, header_spacing


def _check_spacing(path: Path, spacing: Sequence[float], source: str) -> None:
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CaseError(f"{path}: {source} spacing {tuple(spacing)} is not finite and positive; fix the header (the "
                        f"segmentation would be computed at a made-up scale)")


def check_files(case: Case, spatial_dims: int = 3, budget: VoxelBudget | None = None) -> None:
    """Raise CaseError for unreadable, corrupt, truncated, 2D/4D, empty, badly spaced, over-budget or mutually
    inconsistent channel files, before any is read in full."""
    first = None
    for path in case.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = lines[-1].replace("sitk::ERROR: ", "") if lines else "unreadable"
            raise CaseError(f"{path}: cannot read it as an image ({detail[:200]})") from None
        size, spacing = reader.GetSize(), reader.GetSpacing()
        if reader.GetDimension() != spatial_dims:
            raise CaseError(f"{path}: a {reader.GetDimension()}D image of size {size}; expected a {spatial_dims}D "
                            f"image (one file per channel)")
        if 0 in size:
            raise CaseError(f"{path}: empty image (size {size})")
        stated = header_spacing(path)
        if stated is not None:
            _check_spacing(path, stated, "the header's (pixdim)")
        _check_spacing(path, spacing, "the")
        (budget or VoxelBudget()).check(path, size, spacing)
        check_data_size(path)
        if first is None:
            first = (path, size, spacing)
        elif size != first[1] or not np.allclose(spacing, first[2], rtol=1e-4):
            raise CaseError(f"{path}: size {size} / spacing {tuple(round(s, 4) for s in spacing)} differs from "
                            f"{first[0].name} ({first[1]} / {tuple(round(s, 4) for s in first[2])})")


def check_values(case: Case, image: np.ndarray) -> np.ndarray:
    """Raise CaseError for channels without content (no finite voxel, or one value everywhere: an empty image, or an
    all-NaN one, which ITK reads as zeros); replace isolated NaN/inf by the channel's minimum."""
    for c, channel in enumerate(image):
        finite = np.isfinite(channel)
        if not finite.any():
            raise CaseError(f"{case.files[c]}: no finite voxel (all NaN or infinite)")
        if not finite.all():
            channel[~finite] = channel[finite].min()
        low, high = channel.min(), channel.max()
        if low == high:
            raise CaseError(f"{case.files[c]}: every voxel has the value {low:g}; an empty or all-NaN image")
    return image
