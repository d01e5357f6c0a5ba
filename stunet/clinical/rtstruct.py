"""RT Structure Set output (``stunet-predict --output-type dicom_rtstruct``), written with pydicom: what radiotherapy
planning systems read.

One structure set per series, referencing its study, the series, its Frame of Reference and every slice (Referenced
Frame of Reference Sequence > RT Referenced Study > RT Referenced Series > Contour Image Sequence). One ROI per output
label present in the label map (ROI Number = the label's index, ROI Name = its name, ROI Display Color =
:func:`stunet.clinical.preview.colour`, RT ROI Interpreted Type ORGAN: the label maps name no other), none for an
absent one. The
algorithm (STU-Net, stunet's version, the model, the checkpoints' SHA-256) is in the Structure Set Description, each
ROI's ROI Generation Algorithm (AUTOMATIC), ROI Generation Description and ROI Derivation Algorithm Identification
Sequence, and the series' Software Versions.

Contours: each slice of each label's mask is traced by marching squares (``skimage.measure.find_contours`` at 0.5 on
the mask padded by one pixel, so every contour closes; foreground 4-connected), the points of straight runs dropped.
The traced lines pass between the centres of labelled and unlabelled pixels, so a pixel is inside the contours exactly
when it is labelled. Every outer boundary and every hole is a CLOSED_PLANAR contour of its own (no keyhole bridges):
planning systems combine the contours of one ROI on a plane by even-odd (XOR) filling. A point at (row r, column c)
of slice k is ``IPP_k + c * PixelSpacing[1] * IOP[:3] + r * PixelSpacing[0] * IOP[3:]`` with that slice's own
ImagePositionPatient, ImageOrientationPatient and PixelSpacing, so contours lie in their slice's plane whatever the
orientation; each references its slice's SOP Instance UID. The source slices are checked as
:mod:`.dicom_sources` says (:func:`check_source_for_rtstruct`, before the network runs).

The file is written in Implicit VR Little Endian, whose 32-bit lengths hold contours of any size.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import ImplicitVRLittleEndian, RTStructureSetStorage, generate_uid

from stunet.clinical.dicom_sources import check_sources, geometry, read_sources
from stunet.clinical.preview import colour

OUTPUT = "RT Structure Set"
INTERPRETED_TYPE = "ORGAN"
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"  # the SOP class RT Referenced Study items name, by convention
_CONTOUR_DATA = Tag(0x30060050)
# patient and study attributes copied from the source (the type-2 ones present: read_sources writes them empty)
_COPIED = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription")


@dataclass(frozen=True)
class Algorithm:
    """What made the contours, as the structure set names it."""
    version: str  # stunet's
    model: str = ""
    checkpoints: tuple[str, ...] = ()  # SHA-256 of each checkpoint
    name: str = "STU-Net"

    def describe(self) -> str:
        return (f"{self.name} automatic segmentation (stunet {self.version or 'unknown'})"
                + (f"; model {self.model}" if self.model else "")
                + (f"; checkpoint SHA-256 {', '.join(self.checkpoints)}" if self.checkpoints else ""))

    def identification(self) -> Dataset:
        """An item of the Algorithm Identification Macro (family: DCM 123110 Artificial Intelligence)."""
        family = Dataset()
        family.CodeValue, family.CodingSchemeDesignator, family.CodeMeaning = "123110", "DCM", \
            "Artificial Intelligence"
        item = Dataset()
        item.AlgorithmFamilyCodeSequence = DicomSequence([family])
        item.AlgorithmName = self.name
        item.AlgorithmVersion = (self.version or "unknown")[:64]
        item.AlgorithmParameters = self.describe()[:10240]
        return item


def check_source_for_rtstruct(files: Sequence[Path]) -> list[str]:
    """Check, before the network runs, that an RT Structure Set can be written on these source slices (in slice
    order), as :func:`stunet.clinical.dicom_sources.check_sources` does; returns the notes on what was repaired."""
    return check_sources(files, OUTPUT)


# -- contours --------------------------------------------------------------------------------------------------------
def _without_straight_runs(points: np.ndarray) -> np.ndarray:
    """A closed polygon without the points that lie on the straight line through their neighbours."""
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    turning = (np.abs(cross) > 1e-9) | ((before * after).sum(1) <= 0)
    return points[turning]


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed boundaries (outer ones and holes) of a 2D mask, each an (n, 2) array of (row, column) pixel
    coordinates, not repeating its first point; a pixel centre is inside an odd number of them exactly when the pixel
    is in the mask."""
    from skimage.measure import find_contours
    padded = np.pad(mask.astype(np.uint8), 1)
    contours = []
    for line in find_contours(padded, 0.5):
        polygon = _without_straight_runs(line[:-1] - 1.0)  # closed: its last point repeats the first
        if len(polygon) >= 3:
            contours.append(polygon)
    return contours


def label_contours(seg: np.ndarray) -> dict[int, list[tuple[int, np.ndarray]]]:
    """label -> [(slice index, (n, 2) row/column polygon)] of a label map (slices, rows, columns); labels present
    only. Each label's masks are taken within its bounding box."""
    from scipy import ndimage
    found: dict[int, list[tuple[int, np.ndarray]]] = {}
    if not np.issubdtype(seg.dtype, np.integer):
        raise ValueError(f"the label map is {seg.dtype}; an integer label map is needed")
    if seg.size and seg.min() < 0:
        raise ValueError("the label map has negative labels")
    for label, box in enumerate(ndimage.find_objects(seg), start=1):
        if box is None:
            continue
        masks = seg[box] == label
        offset = np.array([box[1].start, box[2].start], dtype=np.float64)
        contours = []
        for k, mask in enumerate(masks):
            if mask.any():
                contours += [(box[0].start + k, polygon + offset) for polygon in slice_contours(mask)]
        if contours:
            found[label] = contours
    return found


def patient_points(polygon: np.ndarray, position: np.ndarray, orientation: np.ndarray,
                   spacing: np.ndarray) -> np.ndarray:
    """(n, 3) patient coordinates (mm) of (row, column) points of a slice at ``position`` with ``orientation`` (IOP:
    the row direction, then the column direction) and ``spacing`` (PixelSpacing: between rows, between columns)."""
    return (position[None, :] + polygon[:, 1:2] * (spacing[1] * orientation[None, :3])
            + polygon[:, 0:1] * (spacing[0] * orientation[None, 3:]))


def _contour_data(points: np.ndarray) -> RawDataElement:
    """ContourData (DS) as its encoded text, written as it is (formatting each value through pydicom's DS would
    cost more than tracing the contours)."""
    value = "\\".join(map("{:.3f}".format, points.ravel().tolist())).encode("ascii")
    value += b" " * (len(value) % 2)
    return RawDataElement(_CONTOUR_DATA, "DS", len(value), value, 0, True, True)


# -- the structure set -----------------------------------------------------------------------------------------------
def _image_reference(source: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    return item


def _frame_of_reference(sources: list[Dataset]) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = sources[0].SeriesInstanceUID
    series.ContourImageSequence = DicomSequence([_image_reference(s) for s in sources])
    study = Dataset()
    study.ReferencedSOPClassUID, study.ReferencedSOPInstanceUID = _STUDY_REFERENCE_CLASS, sources[0].StudyInstanceUID
    study.RTReferencedSeriesSequence = DicomSequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = sources[0].FrameOfReferenceUID
    frame.RTReferencedStudySequence = DicomSequence([study])
    return frame


def _document(path: Path, sources: list[Dataset], algorithm: Algorithm, description: str) -> FileDataset:
    """The structure set's modules but its ROIs: SOP common, patient and study (copied from the source), RT series,
    equipment, and the references to the series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = RTStructureSetStorage, generate_uid()
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    first = sources[0]
    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for keyword in _COPIED:
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", generate_uid(), 901
    ds.SeriesDescription, ds.OperatorsName, ds.InstanceNumber = description[:64], "", 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.Manufacturer, ds.ManufacturerModelName = "stunet", algorithm.name
    ds.SoftwareVersions = f"stunet {algorithm.version or 'unknown'}"[:64]
    ds.StructureSetLabel = algorithm.name[:16]
    ds.StructureSetName = description[:64]
    ds.StructureSetDescription = algorithm.describe()[:1024]
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_frame_of_reference(sources)])
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def write_rtstruct(path: Path, seg: np.ndarray, source_files: Sequence[Path], names: dict[int, str],
                   algorithm: Algorithm, description: str = "STU-Net segmentation") -> None:
    """``seg`` (slices, rows, columns) on the grid of ``source_files`` (in slice order: file k is slice k) as an RT
    Structure Set at ``path``."""
    sources, _ = read_sources(source_files, OUTPUT)  # headers only
    if seg.ndim != 3 or len(sources) != seg.shape[0] or any((s.Rows, s.Columns) != seg.shape[1:] for s in sources):
        raise ValueError(f"label map {seg.shape} is not on the grid of its {len(sources)} source slices")
    contours = label_contours(seg)
    if not contours:
        raise ValueError("no labelled voxels: an RT Structure Set without ROIs is not written")
    planes = [geometry(s) for s in sources]
    references = [_image_reference(s) for s in sources]
    ds = _document(path, sources, algorithm, description)
    frame_uid = sources[0].FrameOfReferenceUID
    rois, roi_contours, observations = [], [], []
    for label, found in sorted(contours.items()):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = label, frame_uid
        roi.ROIName = names.get(label, f"label {label}")[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"stunet {algorithm.version} {algorithm.model}".strip()[:64]
        roi.ROIDerivationAlgorithmIdentificationSequence = DicomSequence([algorithm.identification()])
        rois.append(roi)
        items = []
        for number, (k, polygon) in enumerate(found, start=1):
            item = Dataset()
            item.ContourImageSequence = DicomSequence([references[k]])
            item.ContourGeometricType, item.NumberOfContourPoints = "CLOSED_PLANAR", len(polygon)
            item.ContourNumber = number
            item[_CONTOUR_DATA] = _contour_data(patient_points(polygon, *planes[k]))
            items.append(item)
        outline = Dataset()
        outline.ROIDisplayColor = list(colour(label))
        outline.ContourSequence = DicomSequence(items)
        outline.ReferencedROINumber = label
        roi_contours.append(outline)
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = label, label
        observation.RTROIInterpretedType = INTERPRETED_TYPE
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(roi_contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    ds.save_as(str(path), enforce_file_format=True)

