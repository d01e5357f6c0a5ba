"""DICOM-SEG output (``stunet-predict --output-type dicom_seg``), written with highdicom.

One segment per output label present or not (segment number = label index), labelled with the label's name, a
BINARY segmentation whose frames are the source series' slices in slice order, referencing every source instance
(same Frame of Reference, patient and study). Coding: category SCT 91723000 "Anatomical Structure"; type the SNOMED-CT
concept of DICOM's code dictionary (PS3.16, via pydicom) whose keyword is the label's name without side and separators
(``kidney_left`` -> ``Kidney`` 64033007, ``liver`` -> 10200004), and where none matches, the generic SCT 85756007
"Tissue" (the label's name stays in the segment label). The RT Structure Set is :mod:`.rtstruct`'s.

The source slices are read as headers (no pixel data) and checked by :func:`check_source_for_seg`, which the command
runs right after reading a series, before the network: the checks and repairs of :mod:`.dicom_sources`, and a SOP
class highdicom can reference; what cannot be written is refused in one line naming the file and the tag. The writer
runs the same checks.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom

from stunet.clinical.dicom_sources import check_sources, read_sources

EXTRA = "dicom"
_SIDES = {"left", "right", "l", "r"}


def require() -> None:
    try:
        import highdicom  # noqa: F401
    except ImportError as e:
        raise ImportError(f"DICOM-SEG output needs the optional package highdicom ({e.name} is missing): "
                          f"pip install \"stunet[{EXTRA}]\"") from e


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
    """The headers of ``files`` as the SEG writer needs them (:func:`stunet.clinical.dicom_sources.read_sources`,
    with highdicom's SOP classes), and the notes saying what was repaired."""
    return read_sources(files, "DICOM-SEG", _known_sop_classes())


def check_source_for_seg(files: Sequence[Path]) -> list[str]:
    """Check, before the network runs, that a DICOM-SEG can be written on these source slices (in slice order),
    repairing in memory what the files themselves say how to repair; returns the notes on what was repaired (each also
    a warning) and raises :class:`~stunet.clinical.dicom_sources.SourceError` (a CaseError) naming the file and the
    tag otherwise. A zip's series, whose files are gone once read (``files`` empty), is refused."""
    return check_sources(files, "DICOM-SEG", _known_sop_classes())


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
