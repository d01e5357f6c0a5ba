"""DICOM series as inputs: a folder holding one series, a folder of series folders (one case each), or a .zip.

Series are found and read with SimpleITK's GDCM series reader (rescale slope/intercept applied), in the order of their
slice positions along the slice normal, never by file name. Refused, in one line naming the folder: several series in
one folder without a choice (``series_uid=``), files of one series with different orientations, a gantry tilt (slice
positions not along the slice normal), and non-uniform or repeated slice positions, none of which a single image
grid represents. A modality other than CT or MR is a warning when the files are images (PT, OT, ...), a refusal when
they are not (SEG, RTSTRUCT, SR, ...).
"""
from __future__ import annotations

import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from stunet.errors import CaseError

NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "PR", "KO", "DOC", "REG", "RWV", "FID"}
TOLERANCE_MM = 0.01


class DicomError(CaseError):
    """A DICOM input that cannot be one image; the message names the folder."""


@dataclass
class DicomSeries:
    image: sitk.Image
    files: list[Path]  # in slice order: file k is slice k of the image's first array axis
    series_uid: str
    modality: str
    name: str
    warnings: list[str] = field(default_factory=list)


def _tag(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def _floats(text: str, n: int, what: str, path: Path) -> np.ndarray:
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        values = np.array([])
    if values.size != n or not np.all(np.isfinite(values)):
        raise DicomError(f"{path}: no valid {what} ({text!r})")
    return values


def extract_zip(path: Path, into: Path) -> Path:
    """The members of a zip under ``into`` (names that leave the folder are refused)."""
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            target = (into / member.filename).resolve()
            if not str(target).startswith(str(into.resolve())):
                raise DicomError(f"{path}: member {member.filename!r} would be written outside the folder")
        archive.extractall(into)
    return into


def series_in(folder: Path) -> list[str]:
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def find_dicom_cases(source: Path) -> list[tuple[str, Path]]:
    """(case name, folder or zip) for an input: the folder itself when it holds series, else each sub-folder or zip
    that does."""
    source = Path(source)
    if source.is_file():
        return [(source.name[:-4] if source.suffix.lower() == ".zip" else source.stem, source)]
    if series_in(source):
        return [(source.name, source)]
    cases = []
    for child in sorted(source.iterdir()):
        if child.is_dir() and series_in(child):
            cases.append((child.name, child))
        elif child.is_file() and child.suffix.lower() == ".zip":
            cases.append((child.name[:-4], child))
    return cases


def is_dicom_folder(source: Path) -> bool:
    return Path(source).is_dir() and bool(find_dicom_cases(source))


def read_dicom(source: Path, series_uid: str | None = None, name: str | None = None) -> DicomSeries:
    """The one series of a folder (or .zip, or single file's folder) as a SimpleITK image."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="stunet-dicom-") as tmp:
            series = read_dicom(extract_zip(source, Path(tmp)), series_uid, name or source.name[:-4])
            series.files = []  # extracted files are gone; a zip's series cannot be referenced by file
            return series
    folder = source.parent if source.is_file() else source
    ids = series_in(folder)
    if not ids:
        nested = [p for p in folder.rglob("*") if p.is_dir() and series_in(p)]
        if len(nested) == 1:
            folder, ids = nested[0], series_in(nested[0])
        else:
            raise DicomError(f"{source}: no DICOM series found" + (f" directly ({len(nested)} in sub-folders: give "
                                                                  f"one)" if nested else ""))
    if series_uid is None and len(ids) > 1:
        raise DicomError(f"{folder}: {len(ids)} DICOM series mixed in one folder ({', '.join(ids[:3])}"
                         f"{', ...' if len(ids) > 3 else ''}); put each in its own folder or choose one with --series-uid UID (series_uid= in Python)")
    uid = series_uid or ids[0]
    if uid not in ids:
        raise DicomError(f"{folder}: no series {uid}")
    files = [Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid)]
    headers = [_header(f) for f in files]
    notes = []
    modality = _tag(headers[0], "0008|0060").upper()
    if modality in NOT_IMAGES:
        raise DicomError(f"{folder}: modality {modality} is not an image series; give the CT or MR series")
    if modality not in ("CT", "MR"):
        notes.append(f"{folder}: modality {modality or 'missing'} (not CT or MR); segmented as an image anyway")
    orientations = [_floats(_tag(h, "0020|0037"), 6, "ImageOrientationPatient", f) for h, f in zip(headers, files)]
    if any(np.abs(o - orientations[0]).max() > 1e-4 for o in orientations):
        raise DicomError(f"{folder}: slices of series {uid} have different orientations; not one image grid")
    row, col = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, col)
    positions = np.array([_floats(_tag(h, "0020|0032"), 3, "ImagePositionPatient", f)
                          for h, f in zip(headers, files)])
    order = np.argsort(positions @ normal, kind="stable")
    files, positions = [files[i] for i in order], positions[order]
    if len(files) > 1:
        offsets = positions - positions[0]
        along = offsets @ normal
        off_normal = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
        if off_normal.max() > TOLERANCE_MM * max(1, len(files)):
            tilt = np.degrees(np.arctan2(off_normal[-1], along[-1]))
            raise DicomError(f"{folder}: gantry tilt or sheared slices (positions {tilt:.1f} degrees off the slice "
                             f"normal); resample the series to an untilted grid first")
        gaps = np.diff(along)
        if gaps.min() <= TOLERANCE_MM:
            raise DicomError(f"{folder}: repeated slice positions in series {uid} (several acquisitions?)")
        if gaps.max() - gaps.min() > max(TOLERANCE_MM, 1e-3 * gaps.mean()):
            raise DicomError(f"{folder}: non-uniform slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, missing "
                             f"slices?); not one image grid")
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    image = reader.Execute()
    if image.GetDimension() != 3:
        raise DicomError(f"{folder}: series {uid} is not a 3D volume")
    if len(files) > 1:  # the grid must follow the files' order: slice k at position k
        first = np.array(image.TransformIndexToPhysicalPoint((0, 0, len(files) - 1)))
        if np.abs(first - positions[-1]).max() > 0.1:
            raise DicomError(f"{folder}: the reader's grid does not match the slice positions; not read")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return DicomSeries(image, files, uid, modality, name or folder.name, notes)
