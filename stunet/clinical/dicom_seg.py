"""DICOM-SEG output (``stunet-predict --output-type dicom_seg``), written with highdicom.

One segment per output label present or not (segment number = label index), labelled with the label's name, a
BINARY segmentation whose frames are the source series' slices in slice order, referencing every source instance
(same Frame of Reference, patient and study). Coding: category SCT 91723000 "Anatomical Structure"; type the SNOMED-CT
concept of DICOM's code dictionary (PS3.16, via pydicom) whose keyword is the label's name without side and separators
(``kidney_left`` -> ``Kidney`` 64033007, ``liver`` -> 10200004), and where none matches, the generic SCT 85756007
"Tissue" (the label's name stays in the segment label). RTSTRUCT is not written: see docs/prediction.md.

The source slices are read as headers (no pixel data) and checked by :func:`check_source_for_seg`, which the command
runs right after reading a series, before the network: what anonymisers blank and the SEG can take from elsewhere in
the file is repaired in memory (an empty SOPClassUID or SOPInstanceUID from the file meta's MediaStorageSOPClassUID /
MediaStorageSOPInstanceUID; a removed type-2 attribute, PatientID, StudyDate, ..., written empty as DICOM allows);
what it cannot is refused in one line naming the file and the tag. The writer runs the same function.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom

from stunet.clinical.dicom import DicomError

EXTRA = "dicom"
_SIDES = {"left", "right", "l", "r"}


# (keyword, tag) a SEG copies from its source slices and cannot do without: the same value in every slice
_SAME_IN_ALL = (("StudyInstanceUID", "(0020,000D)"), ("SeriesInstanceUID", "(0020,000E)"),
                ("FrameOfReferenceUID", "(0020,0052)"), ("Modality", "(0008,0060)"))
# type-2 attributes the SEG copies (patient, study, the pixel measures): present, maybe empty; written empty if removed
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber", "SliceThickness")


def require() -> None:
    try:
        import highdicom  # noqa: F401
    except ImportError as e:
        raise ImportError(f"DICOM-SEG output needs the optional package highdicom ({e.name} is missing): "
                          f"pip install \"stunet[{EXTRA}]\"") from e


class SegSourceError(DicomError):
    """A source series the DICOM-SEG cannot reference; the message names the file and the tag."""


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip(" \0")


def _known_sop_classes() -> set[str] | None:
    """The SOP classes highdicom can reference (its IOD table, whose place differs between versions), else None."""
    require()
    try:
        from highdicom._standard_utils import get_sop_class_iod_map
        return set(get_sop_class_iod_map())
    except ImportError:
        pass
    try:
        from highdicom._iods import SOP_CLASS_UID_IOD_KEY_MAP
        return set(SOP_CLASS_UID_IOD_KEY_MAP)
    except ImportError:
        return None


def _sources(files: Sequence[Path]) -> tuple[list[pydicom.Dataset], list[str]]:
    """The headers of ``files`` as the SEG writer needs them, repaired where the file says how (see the module's
    docstring), and the notes saying what was repaired; raises SegSourceError for what cannot be."""
    known = _known_sop_classes()
    if not files:
        raise SegSourceError("DICOM-SEG needs the source slices; none given")
    sources, repaired, removed = [], {}, {}
    fix = "restore it (the anonymiser removed or blanked it) or write --output-type nifti"
    for path in files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        meta = getattr(ds, "file_meta", None)
        for keyword, tag, meta_keyword in (("SOPClassUID", "(0008,0016)", "MediaStorageSOPClassUID"),
                                           ("SOPInstanceUID", "(0008,0018)", "MediaStorageSOPInstanceUID")):
            if not _text(ds, keyword):
                value = _text(meta, meta_keyword)
                if not value:
                    raise SegSourceError(f"{path}: {keyword} {tag} is empty, in the data set and in the file meta "
                                         f"({meta_keyword}); the DICOM-SEG cannot reference this slice: {fix}")
                setattr(ds, keyword, value)
                repaired.setdefault(f"{keyword} from the file meta's {meta_keyword}", []).append(path)
        if known is not None and ds.SOPClassUID not in known:
            raise SegSourceError(f"{path}: SOPClassUID (0008,0016) {ds.SOPClassUID} is not a storage class a "
                                 f"DICOM-SEG can reference (highdicom does not know it); write --output-type nifti")
        for keyword, tag in _SAME_IN_ALL:
            if not _text(ds, keyword):
                raise SegSourceError(f"{path}: {keyword} {tag} is empty or missing; the DICOM-SEG needs it: {fix}")
        for keyword in _TYPE2:
            if keyword not in ds:
                removed.setdefault(keyword, []).append(path)
            if not _text(ds, keyword):
                setattr(ds, keyword, "")
        sources.append(ds)
    for keyword, tag in (*_SAME_IN_ALL, ("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")):
        first = _text(sources[0], keyword)
        for path, ds in zip(files, sources):
            if _text(ds, keyword) != first:
                raise SegSourceError(f"{path}: {keyword} {tag} {_text(ds, keyword)!r} differs from {first!r} in "
                                     f"{Path(files[0]).name}; one DICOM-SEG references one series")
    seen: dict[str, Path] = {}
    for path, ds in zip(files, sources):
        uid = _text(ds, "SOPInstanceUID")
        if uid in seen:
            raise SegSourceError(f"{path}: SOPInstanceUID (0008,0018) {uid} is also that of {Path(seen[uid]).name}; "
                                 f"the DICOM-SEG cannot tell the slices apart: {fix}")
        seen[uid] = path
    folder = Path(files[0]).parent
    notes = [f"{folder}: {what} in {len(paths)} of {len(files)} slice(s), for the DICOM-SEG"
             for what, paths in repaired.items()]
    if removed:
        count = len({p for paths in removed.values() for p in paths})
        notes.append(f"{folder}: {', '.join(removed)} missing in {count} of {len(files)} slice(s); written empty in "
                     f"the DICOM-SEG, as DICOM allows")
    return sources, notes


def check_source_for_seg(files: Sequence[Path]) -> list[str]:
    """Check, before the network runs, that a DICOM-SEG can be written on these source slices (in slice order),
    repairing in memory what the files themselves say how to repair; returns the notes on what was repaired (each also
    a warning) and raises :class:`SegSourceError` (a CaseError) naming the file and the tag otherwise. A zip's series,
    whose files are gone once read (``files`` empty), is refused."""
    if not files:
        raise SegSourceError("DICOM-SEG needs the source files (a zip's series is extracted only while it is read); "
                             "unzip it first")
    _, notes = _sources(files)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return notes


def property_type(name: str):
    """(SNOMED-CT code of a label name, whether it is a known mapping)."""
    from pydicom.sr.codedict import codes
    words = [w for w in re.split(r"[_\s\-]+", name.lower()) if w and w not in _SIDES]
    keyword = "".join(w.capitalize() for w in words)
    try:
        return getattr(codes.SCT, keyword), True
    except (AttributeError, ValueError):
        return codes.SCT.Tissue, False


def write_dicom_seg(path: Path, seg: np.ndarray, source_files: Sequence[Path], names: dict[int, str],
                    description: str = "STU-Net segmentation", software_version: str = "") -> None:
    """``seg`` (slices, rows, columns) on the grid of ``source_files`` (in slice order: file k is slice k)."""
    require()
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources, _ = _sources(source_files)  # headers only: highdicom needs no source pixels
    if len(sources) != seg.shape[0] or any((s.Rows, s.Columns) != seg.shape[1:] for s in sources):
        raise ValueError(f"segmentation {seg.shape} is not on the grid of its {len(sources)} source slices")
    labels = [i for i in sorted(names) if i > 0]
    algorithm = hd.AlgorithmIdentificationSequence(name="STU-Net", version=software_version or "unknown",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, label in enumerate(labels, start=1):
        code, _ = property_type(names[label])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=names[label][:64],
            segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=code,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
    if not labels:
        raise ValueError("no foreground labels to write as segments")
    lookup = np.zeros(int(max(int(seg.max()), max(labels))) + 1, dtype=np.uint16)
    for number, label in enumerate(labels, start=1):
        lookup[label] = number
    pixel_array = lookup[seg]  # label index -> segment number (consecutive from 1)
    document = hd.seg.Segmentation(
        source_images=sources, pixel_array=pixel_array.astype(np.uint16 if len(labels) > 255 else np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="stunet", manufacturer_model_name="STU-Net", software_versions=software_version or "unknown",
        device_serial_number="0", series_description=description[:64], omit_empty_frames=False)
    document.save_as(str(path))


def read_dicom_seg(path: Path, source_files: Sequence[Path], names: dict[int, str]) -> np.ndarray:
    """The label volume (slices, rows, columns) of a SEG on its source slices, segment numbers mapped back to the
    label indices of ``names`` (as written by :func:`write_dicom_seg`)."""
    require()
    import highdicom as hd

    document = hd.seg.segread(str(path))
    uids = [ds.SOPInstanceUID for ds in _sources(source_files)[0]]
    labels = [i for i in sorted(names) if i > 0]
    volume = document.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                                    skip_overlap_checks=True)
    back = np.array([0, *labels], dtype=np.int64)
    return back[volume.astype(np.int64)]
