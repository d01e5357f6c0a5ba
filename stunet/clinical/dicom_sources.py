"""The source slices a derived DICOM object (the DICOM-SEG, the RT Structure Set) references, read as headers (no
pixel data) and checked before the network runs, so that the object can be written once the labels are known.

What anonymisers blank and the object can take from elsewhere in the file is repaired in memory: an empty SOPClassUID
or SOPInstanceUID from the file meta's MediaStorageSOPClassUID / MediaStorageSOPInstanceUID; a removed type-2
attribute (PatientID, StudyDate, ...) written empty as DICOM allows. What cannot be repaired is refused in one line
naming the file and the tag: an empty Study, Series or Frame of Reference UID or Modality, values that differ between
the slices of one series, two slices with one SOPInstanceUID, an ImagePositionPatient, ImageOrientationPatient or
PixelSpacing that is not its count of finite numbers.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom

from stunet.clinical.dicom_headers import DicomError

# (keyword, tag) an object copies from its source slices and cannot do without: the same value in every slice
SAME_IN_ALL = (("StudyInstanceUID", "(0020,000D)"), ("SeriesInstanceUID", "(0020,000E)"),
               ("FrameOfReferenceUID", "(0020,0052)"), ("Modality", "(0008,0060)"))
# type-2 attributes the objects copy (patient, study, the pixel measures): present, maybe empty; written empty when
# removed
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber", "SliceThickness")
# (keyword, tag, count): the geometry of each slice, finite numbers
GEOMETRY = (("ImagePositionPatient", "(0020,0032)", 3), ("ImageOrientationPatient", "(0020,0037)", 6),
            ("PixelSpacing", "(0028,0030)", 2))
_FIX = "restore it (the anonymiser removed or blanked it) or write --output-type nifti"


class SourceError(DicomError):
    """A source series a derived object cannot reference; the message names the file and the tag."""


def text(ds, keyword: str) -> str:
    """A data element's value as text without padding; '' when absent or ``ds`` is None."""
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip(" \0")


def geometry(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) of a checked source slice, as float arrays."""
    return tuple(np.array([float(v) for v in ds.get(keyword)], dtype=np.float64) for keyword, _, _ in GEOMETRY)


def _check_geometry(path: Path, ds, output: str) -> None:
    for keyword, tag, count in GEOMETRY:
        value = ds.get(keyword)
        values = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
        try:
            finite = len(values) == count and all(np.isfinite(float(v)) for v in values)
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise SourceError(f"{path}: {keyword} {tag} {text(ds, keyword)!r} is not {count} finite number(s); the "
                              f"{output} needs it on every slice: fix the header or write --output-type nifti")


def read_sources(files: Sequence[Path], output: str,
                 known_classes: set[str] | None = None) -> tuple[list[pydicom.Dataset], list[str]]:
    """The headers of ``files`` (in slice order) as ``output`` (the object's name in messages) needs them, repaired
    where the file says how (see the module's docstring), and the notes saying what was repaired; raises
    :class:`SourceError` for what cannot be. ``known_classes``: the SOP classes ``output`` can reference (None: any)."""
    if not files:
        raise SourceError(f"the {output} needs the source files (a zip's series is extracted only while it is read); "
                          f"unzip it first")
    sources, repaired, removed = [], {}, {}
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        for keyword, tag, meta_keyword in (("SOPClassUID", "(0008,0016)", "MediaStorageSOPClassUID"),
                                           ("SOPInstanceUID", "(0008,0018)", "MediaStorageSOPInstanceUID")):
            if not text(ds, keyword):
                value = text(meta, meta_keyword)
                if not value:
                    raise SourceError(f"{path}: {keyword} {tag} is empty, in the data set and in the file meta "
                                      f"({meta_keyword}); the {output} cannot reference this slice: {_FIX}")
                setattr(ds, keyword, value)
                repaired.setdefault(f"{keyword} from the file meta's {meta_keyword}", []).append(path)
        if known_classes is not None and ds.SOPClassUID not in known_classes:
            raise SourceError(f"{path}: SOPClassUID (0008,0016) {ds.SOPClassUID} is not a storage class the {output} "
                              f"can reference; write --output-type nifti")
        for keyword, tag in SAME_IN_ALL:
            if not text(ds, keyword):
                raise SourceError(f"{path}: {keyword} {tag} is empty or missing; the {output} needs it: {_FIX}")
        _check_geometry(path, ds, output)
        for keyword in TYPE2:
            if keyword not in ds:
                removed.setdefault(keyword, []).append(path)
            if not text(ds, keyword):
                setattr(ds, keyword, "")
        sources.append(ds)
    for keyword, tag in (*SAME_IN_ALL, ("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")):
        first = text(sources[0], keyword)
        for path, ds in zip(files, sources):
            if text(ds, keyword) != first:
                raise SourceError(f"{path}: {keyword} {tag} {text(ds, keyword)!r} differs from {first!r} in "
                                  f"{Path(files[0]).name}; one {output} references one series")
    seen: dict[str, Path] = {}
    for path, ds in zip(files, sources):
        uid = text(ds, "SOPInstanceUID")
        if uid in seen:
            raise SourceError(f"{path}: SOPInstanceUID (0008,0018) {uid} is also that of {Path(seen[uid]).name}; "
                              f"the {output} cannot tell the slices apart: {_FIX}")
        seen[uid] = path
    folder = Path(files[0]).parent
    notes = [f"{folder}: {what} in {len(paths)} of {len(files)} slice(s), for the {output}"
             for what, paths in repaired.items()]
    if removed:
        count = len({p for paths in removed.values() for p in paths})
        notes.append(f"{folder}: {', '.join(removed)} missing in {count} of {len(files)} slice(s); written empty in "
                     f"the {output}, as DICOM allows")
    return sources, notes


def check_sources(files: Sequence[Path], output: str, known_classes: set[str] | None = None) -> list[str]:
    """:func:`read_sources` before the network runs: returns the notes on what was repaired (each also a warning) and
    raises :class:`SourceError` (a CaseError) naming the file and the tag otherwise. A zip's series, whose files are
    gone once read (``files`` empty), is refused."""
    _, notes = read_sources(files, output, known_classes)
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return notes
