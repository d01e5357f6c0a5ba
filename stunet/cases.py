"""Finding the cases of an input folder, and checking their files before prediction (one clear message per case)."""
from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_CHANNEL = re.compile(r"(.+)_(\d{4})$")


class CaseError(Exception):
    """A case that cannot be processed; the message names the file and the cause."""


@dataclass
class Case:
    name: str
    files: list[Path]
    ending: str
    problem: str | None = field(default=None)


def _split(path: Path) -> tuple[str, str] | None:
    for ending in ENDINGS:
        if path.name.endswith(ending):
            return path.name[:-len(ending)], ending
    return None


def find_cases(source: Path, channels: int) -> list[Case]:
    """Cases in a folder (``case_0000.nii.gz``, ``case_0001.nii.gz``, ... or, for one channel, ``case.nii.gz``) or
    the one case of a file. Incomplete cases carry their ``problem`` instead of failing the whole run."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    grouped: dict[str, dict[int, Path]] = {}
    plain: list[tuple[str, Path, str]] = []
    endings: dict[str, str] = {}
    for path in files:
        split = _split(path)
        if split is None:
            continue
        stem, ending = split
        match = _CHANNEL.fullmatch(stem)
        if match:
            grouped.setdefault(match[1], {})[int(match[2])] = path
            endings[match[1]] = ending
        else:
            plain.append((stem, path, ending))
    cases = []
    for name, by_channel in grouped.items():
        found = sorted(by_channel)
        case = Case(name, [by_channel[c] for c in found], endings[name])
        if found != list(range(channels)):
            expected = ", ".join(f"{name}_{c:04d}" for c in range(channels))
            have = ", ".join(f"{name}_{c:04d}" for c in found)
            case.problem = f"{case.files[0]}: the model takes {channels} channel file(s) ({expected}); found {have}"
        cases.append(case)
    for stem, path, ending in plain:
        case = Case(stem, [path], ending)
        if channels != 1:
            case.problem = (f"{path}: the model takes {channels} channels, given as {stem}_0000{ending} ... "
                            f"{stem}_{channels - 1:04d}{ending}")
        cases.append(case)
    return sorted(cases, key=lambda c: c.name)


def _check_gzip(path: Path) -> None:
    """Decompress to the end: ITK reads truncated .gz files without an error, filling the rest with garbage."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as e:
        raise CaseError(f"{path}: corrupt or truncated gzip file ({e})") from None


def check_files(case: Case, spatial_dims: int = 3) -> None:
    """Raise CaseError for unreadable, corrupt, 2D/4D, empty or mutually inconsistent channel files."""
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
        if path.name.endswith(".gz"):
            _check_gzip(path)
        size, spacing = reader.GetSize(), reader.GetSpacing()
        if reader.GetDimension() != spatial_dims:
            raise CaseError(f"{path}: a {reader.GetDimension()}D image of size {size}; expected a {spatial_dims}D "
                            f"image (one file per channel)")
        if 0 in size:
            raise CaseError(f"{path}: empty image (size {size})")
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
