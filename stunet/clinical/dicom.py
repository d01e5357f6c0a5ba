"""DICOM series as inputs: a folder holding one series, a folder of series folders (one case each), or a .zip.

Every file of a folder is read as a header first (pydicom, pixel data left on disk; :mod:`.dicom_headers`), and a
series is read only when every one of its files is consistent with itself and with the others; no value is ever
assumed. In order:

1. **Objects that are not images** (DICOM-SEG, RTSTRUCT, RTDOSE, RTPLAN, SR, PR, KO, DICOMDIR, ...: by their SOP class
   or their modality) are skipped with a note, never read as a slice and never counted as a series; files that are not
   DICOM at all are ignored (with a note, unless their name starts with a dot).
2. **The series**: the image files grouped by SeriesInstanceUID; several in one folder are refused unless one is chosen
   (``series_uid=``, ``--series-uid``).
3. **Each file against its own header**: the pixel data must be what its header declares (:mod:`.dicom_pixels`);
   PixelSpacing two finite positive numbers (never 1 mm by default, no ImagerPixelSpacing fallback), orientation and
   position present; RescaleSlope and RescaleIntercept finite numbers (absent: 1 and 0, as DICOM defines), the slope
   not 0, and the rescaled range within float32; single-frame grey-scale slices only (SamplesPerPixel 1).
4. **The files against each other**: the same modality, FrameOfReferenceUID, Rows, Columns, PixelSpacing and
   orientation in every file (not only the first); positions along the slice normal (no gantry tilt),
   uniform and unrepeated (no missing slices). At least two slices.
5. **Reading**: SimpleITK's GDCM series reader, in slice-position order (never by file name), into float32, so each
   slice's own rescale is applied without wrapping or truncation (GDCM rescales each file into a type that holds its
   values; read in the first file's type, a series could wrap 100000 to -31072 in int16). The grid (origin,
   direction, spacing) is then set from the checked headers: PixelSpacing in-plane, the slice positions' step across.

A modality other than CT or MR is a warning when the files are images (PT, OT, ...). A zip is extracted within the
limits of :mod:`.dicom_zip`.
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.uid import UID

from stunet.clinical.dicom_headers import (DicomError, Header, Scan, holds_images, int_of, numbers, pixel_spacing,
                                           read_header, rescale, scan, text_of, transfer_syntax)
from stunet.clinical.dicom_pixels import check_pixels
from stunet.clinical.dicom_zip import MAX_ZIP_BYTES, MAX_ZIP_RATIO, extract_zip
from stunet.io.reader import itk_error_detail

#: the series API, and the names of :mod:`.dicom_headers` and :mod:`.dicom_zip` other rooms take from here
__all__ = ["DicomError", "DicomSeries", "MAX_ZIP_BYTES", "MAX_ZIP_RATIO", "extract_zip", "find_dicom_cases",
           "is_dicom_folder", "read_dicom", "series_in"]

TOLERANCE_MM = 0.01


@dataclass
class DicomSeries:
    image: sitk.Image
    files: list[Path]  # in slice order: file k is slice k of the image's first array axis
    series_uid: str
    modality: str
    name: str
    warnings: list[str] = field(default_factory=list)


# -- cases and series ---------------------------------------------------------------------------------------------
def series_in(folder: Path) -> list[str]:
    """The SeriesInstanceUIDs of the image files directly in ``folder`` (objects that are not images left out)."""
    return list(scan(Path(folder)).series())


def find_dicom_cases(source: Path) -> list[tuple[str, Path]]:
    """(case name, folder or zip) for an input: the folder itself when it holds DICOM images, else each sub-folder
    that does and each zip."""
    source = Path(source)
    if source.is_file():
        return [(source.name[:-4] if source.suffix.lower() == ".zip" else source.stem, source)]
    if holds_images(source):
        return [(source.name, source)]
    cases = []
    for child in sorted(source.iterdir()):
        if child.is_dir() and holds_images(child):
            cases.append((child.name, child))
        elif child.is_file() and child.suffix.lower() == ".zip":
            cases.append((child.name[:-4], child))
    return cases


def is_dicom_folder(source: Path) -> bool:
    return Path(source).is_dir() and bool(find_dicom_cases(source))


def _agree(headers: list[Header], what: str, values: list, same=None) -> None:
    """Refuse a series whose files disagree on ``what`` (values[k] of headers[k]), naming the first that differs."""
    same = same or (lambda a, b: a == b)
    for h, value in zip(headers[1:], values[1:]):
        if not same(value, values[0]):
            shown = lambda v: f"{v!r}" if not isinstance(v, np.ndarray) else "\\".join(f"{x:g}" for x in v)
            raise DicomError(f"{h.path}: {what} {shown(value)} differs from {shown(values[0])} in "
                             f"{headers[0].path.name} of the same series; not one image grid")


def _choose_series(folder: Path, found: Scan, series_uid: str | None) -> list[Header]:
    series = found.series()
    ids = list(series)
    if series_uid is None and len(ids) > 1:
        shown = [uid or f"none ({series[uid][0].path.name}, no SeriesInstanceUID)" for uid in ids]
        raise DicomError(f"{folder}: {len(ids)} DICOM series mixed in one folder ({', '.join(shown[:3])}"
                         f"{', ...' if len(ids) > 3 else ''}); put each in its own folder or choose one with "
                         f"--series-uid UID (series_uid= in Python)")
    uid = ids[0] if series_uid is None else series_uid
    if uid not in series:
        raise DicomError(f"{folder}: no series {uid}")
    return series[uid]


def _series_files(source: Path, series_uid: str | None) -> tuple[Path, Scan, list[Header]]:
    """The folder a source's series lies in (a single file's own, or the one sub-folder that holds images), its scan,
    and the headers of the series chosen."""
    folder = source.parent if source.is_file() else source
    if source.is_file() and series_uid is None:  # a single file: its own series
        header = read_header(source)
        if header is None:
            raise DicomError(f"{source}: not a DICOM file")
        if header.skip:
            raise DicomError(f"{source}: a DICOM object that is not an image ({header.skip}); give the CT or MR "
                             f"series")
        series_uid = header.series_uid
    found = scan(folder)
    if not found.images:
        nested = [p for p in folder.rglob("*") if p.is_dir() and holds_images(p)]
        if len(nested) != 1:
            listed = ", ".join(f"{h.path.name} ({h.skip})" for h in found.skipped[:3])
            only = (f" (only objects that are not images: {listed}{', ...' if len(found.skipped) > 3 else ''})"
                    if found.skipped and not nested else "")
            raise DicomError(f"{source}: no DICOM image series found" + (f" directly ({len(nested)} in sub-folders: "
                                                                        f"give one)" if nested else only))
        folder = nested[0]
        found = scan(folder)
    return folder, found, _choose_series(folder, found, series_uid)


def _check_files(headers: list[Header], notes: list[str]) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Each file against its own header and against the others (steps 3 and 4 of the module's docstring, before any
    pixel data is read); a note for trailing padding goes to ``notes``. Returns the pixel spacings, orientations and
    positions, per file."""
    padded = [note for note in (check_pixels(h) for h in headers) if note]
    if padded:
        notes.append(padded[0] + (f" (and in {len(padded) - 1} more file(s))" if len(padded) > 1 else ""))
    frames = [int_of(h.ds, "NumberOfFrames") or 1 for h in headers]
    if max(frames) > 1:
        h = headers[frames.index(max(frames))]
        raise DicomError(f"{h.path}: a multi-frame image ({max(frames)} frames); only series of single-frame slices "
                         f"are read (convert it to single-frame slices first)")
    samples = [int_of(h.ds, "SamplesPerPixel") or 1 for h in headers]
    if max(samples) > 1:
        h = headers[samples.index(max(samples))]
        raise DicomError(f"{h.path}: SamplesPerPixel (0028,0002) {max(samples)} (a colour image, "
                         f"{text_of(h.ds, 0x00280004) or 'no PhotometricInterpretation'}); a grey-scale series is "
                         f"needed")
    if len(headers) < 2:
        raise DicomError(f"{headers[0].path}: series {headers[0].series_uid} has one slice; not a 3D volume")
    spacings = [pixel_spacing(h) for h in headers]
    orientations = [numbers(h, 0x00200037, "ImageOrientationPatient (0020,0037)", 6) for h in headers]
    positions = np.array([numbers(h, 0x00200032, "ImagePositionPatient (0020,0032)", 3) for h in headers])
    for h in headers:
        rescale(h)
    _agree(headers, "Modality (0008,0060)", [h.modality for h in headers])
    _agree(headers, "FrameOfReferenceUID (0020,0052)", [text_of(h.ds, 0x00200052) for h in headers])
    _agree(headers, "Rows (0028,0010)", [int_of(h.ds, "Rows") for h in headers])
    _agree(headers, "Columns (0028,0011)", [int_of(h.ds, "Columns") for h in headers])
    _agree(headers, "PixelSpacing (0028,0030)", spacings, lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6))
    _agree(headers, "ImageOrientationPatient (0020,0037)", orientations, lambda a, b: np.abs(a - b).max() <= 1e-4)
    return spacings, orientations, positions


@dataclass
class _Stack:
    """The slices in position order and the grid they span."""
    headers: list[Header]
    origin: np.ndarray
    axes: np.ndarray  # 3 x 3: row, column and slice-normal unit vectors as columns
    step: float  # mm between slices


def _stack(folder: Path, headers: list[Header], orientation: np.ndarray, positions: np.ndarray) -> _Stack:
    """The slices sorted along the normal of their orientation; refuses non-orthogonal orientations, gantry tilt,
    repeated positions and non-uniform spacing."""
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        shown = text_of(headers[0].ds, 0x00200037)
        raise DicomError(f"{headers[0].path}: ImageOrientationPatient (0020,0037) {shown!r} is not two orthogonal unit "
                         f"vectors; fix the header")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    order = np.argsort(positions @ normal, kind="stable")
    headers, positions = [headers[i] for i in order], positions[order]
    offsets = positions - positions[0]
    along = offsets @ normal
    off_normal = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    if off_normal.max() > TOLERANCE_MM * max(1, len(headers)):
        tilt = np.degrees(np.arctan2(off_normal[-1], along[-1]))
        raise DicomError(f"{folder}: gantry tilt or sheared slices (positions {tilt:.1f} degrees off the slice "
                         f"normal); resample the series to an untilted grid first")
    gaps = np.diff(along)
    if gaps.min() <= TOLERANCE_MM:
        raise DicomError(f"{folder}: repeated slice positions in series {headers[0].series_uid} (several "
                         f"acquisitions?)")
    if gaps.max() - gaps.min() > max(TOLERANCE_MM, 1e-3 * gaps.mean()):
        raise DicomError(f"{folder}: non-uniform slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm, missing "
                         f"slices?); not one image grid")
    return _Stack(headers, positions[0], np.column_stack([row, col, normal]), float(gaps.mean()))


def _name_unreadable(headers: list[Header], error: Exception) -> None:
    """The series reader failed: raise DicomError naming the first file GDCM cannot read alone (its SOP class and
    transfer syntax, what GDCM depends on), if one is."""
    for h in headers:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(h.path))
        try:
            reader.Execute()
        except RuntimeError as e:
            detail = itk_error_detail(e)
            syntax = transfer_syntax(h.ds)
            raise DicomError(f"{h.path}: GDCM cannot read it (SOPClassUID {h.sop_class or 'empty'}, transfer syntax "
                             f"{UID(syntax).name if syntax else 'unknown'}: {detail[:150]}); remove or convert it"
                             ) from error


def _read_pixels(folder: Path, stack: _Stack, spacing: np.ndarray) -> sitk.Image:
    """The slices through GDCM into float32, on the grid of the checked headers (slice k at its position)."""
    files = [str(h.path) for h in stack.headers]
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(files)
    reader.SetOutputPixelType(sitk.sitkFloat32)  # each slice's rescale, without wrapping into the first one's type
    try:
        image = reader.Execute()
    except RuntimeError as e:
        _name_unreadable(stack.headers, e)
        raise
    rows, columns = int_of(stack.headers[0].ds, "Rows"), int_of(stack.headers[0].ds, "Columns")
    if image.GetDimension() != 3 or tuple(image.GetSize()) != (columns, rows, len(files)):
        raise DicomError(f"{folder}: the reader gave an image of size {tuple(image.GetSize())}, not the "
                         f"{columns} x {rows} x {len(files)} of the headers; not read")
    image.SetSpacing((float(spacing[1]), float(spacing[0]), stack.step))
    image.SetOrigin(tuple(float(v) for v in stack.origin))
    image.SetDirection(tuple(float(v) for v in stack.axes.ravel()))
    return image


def read_dicom(source: Path, series_uid: str | None = None, name: str | None = None) -> DicomSeries:
    """The one series of a folder (or .zip, or a single file's series) as a SimpleITK float32 image, checked as the
    module's docstring says; raises DicomError naming the file or folder."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="stunet-dicom-") as tmp:
            series = read_dicom(extract_zip(source, Path(tmp)), series_uid, name or source.name[:-4])
            series.files = []  # the extracted files are deleted with the folder: a zip's series has no files
            return series
    folder, found, headers = _series_files(source, series_uid)
    notes = found.notes(folder)
    spacings, orientations, positions = _check_files(headers, notes)
    modality = headers[0].modality
    if modality not in ("CT", "MR"):
        notes.append(f"{folder}: modality {modality or 'missing'} (not CT or MR); segmented as an image anyway")
    stack = _stack(folder, headers, orientations[0], positions)
    image = _read_pixels(folder, stack, spacings[0])
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return DicomSeries(image, [h.path for h in stack.headers], headers[0].series_uid, modality, name or folder.name,
                       notes)
