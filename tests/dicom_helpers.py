"""Synthetic DICOM series written with pydicom: any orientation, slice order, spacing, rescale; objects that are not
images (SEG, RTDOSE, SR, ...) to put beside them; a zip of a folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_series(folder: Path, volume: np.ndarray, origin=(0., 0., 0.), row_dir=(1., 0., 0.), col_dir=(0., 1., 0.),
                 pixel_spacing=(1., 1.), slice_step=None, slope=1.0, intercept=0.0, modality="CT",
                 file_order=None, series_uid=None, study_uid=None, positions=None, frame_uid=None,
                 edit=None) -> list[Path]:
    """``volume`` (slices, rows, columns) of stored values (pixel = stored * slope + intercept). Slice k sits at
    origin + k * slice_step (default: the normal times 2.5 mm) unless ``positions`` are given; ``file_order`` permutes
    the file names (slice k is written as file_order[k]); ``edit(k, ds)``, when given, changes slice k's data set
    (any tag, its pixel data, its file meta) before it is saved."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    step = normal * 2.5 if slice_step is None else np.asarray(slice_step, float)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    order = list(range(len(volume))) if file_order is None else list(file_order)
    files = []
    for k, plane in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"im{order[k]:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientName, ds.PatientID = modality, "Synthetic^Case", "SYN001"
        ds.PatientBirthDate, ds.PatientSex, ds.StudyDate, ds.StudyTime = "", "O", "20240101", "120000"
        ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = "", "", "1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SeriesNumber, ds.InstanceNumber = 1, order[k] + 1
        ds.Manufacturer, ds.PositionReferenceIndicator = "synthetic", ""
        position = (np.asarray(origin, float) + k * step) if positions is None else np.asarray(positions[k], float)
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_dir, *col_dir)]
        ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
        ds.SliceThickness = f"{float(np.linalg.norm(step)):.6f}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        if modality == "CT":
            ds.RescaleType = "HU"
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(plane.astype(np.int16)).tobytes()
        if edit is not None:
            edit(k, ds)
        # pydicom will not fill a file meta with empty UIDs (an anonymiser may): such a one is written as it is
        complete = all(ds.file_meta.get(key) for key in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"))
        ds.save_as(str(path), enforce_file_format=complete)
        files.append(path)
    return files


def voxel_position(origin, row_dir, col_dir, pixel_spacing, step, k, r, c) -> np.ndarray:
    """Patient position (LPS, mm) of slice k, row r, column c."""
    return (np.asarray(origin, float) + k * np.asarray(step, float) + c * pixel_spacing[1] * np.asarray(row_dir, float)
            + r * pixel_spacing[0] * np.asarray(col_dir, float))


NON_IMAGES = {  # kind: (SOP class UID, Modality, with pixel data)
    "SEG": ("1.2.840.10008.5.1.4.1.1.66.4", "SEG", True),
    "RTDOSE": ("1.2.840.10008.5.1.4.1.1.481.2", "RTDOSE", True),
    "RTSTRUCT": ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT", False),
    "RTPLAN": ("1.2.840.10008.5.1.4.1.1.481.5", "RTPLAN", False),
    "SR": ("1.2.840.10008.5.1.4.1.1.88.11", "SR", False),
    "PR": ("1.2.840.10008.5.1.4.1.1.11.1", "PR", False),
    "KO": ("1.2.840.10008.5.1.4.1.1.88.59", "KO", False),
    "PDF": ("1.2.840.10008.5.1.4.1.1.104.1", "DOC", False),
}


def write_object(path: Path, kind: str, series_uid=None, study_uid=None, frames: int = 4, shape=(8, 8),
                 modality=None, position=(0., 0., 0.)) -> Path:
    """A DICOM object that is not an image slice (``NON_IMAGES``), as a folder of slices may hold one: multi-frame
    pixel data with a position and orientation for SEG and RTDOSE (a dose grid over the slices), none for the others.
    ``series_uid`` may be the slices' own."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop_class, default_modality, pixels = NON_IMAGES[kind]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = modality if modality is not None else default_modality
    ds.PatientName, ds.PatientID = "Synthetic^Case", "SYN001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), series_uid or generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 2, 1
    if pixels:
        ds.FrameOfReferenceUID = generate_uid()
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = ["2", "2"]
        ds.NumberOfFrames = frames
        ds.GridFrameOffsetVector = [f"{2.5 * k:g}" for k in range(frames)]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ones((frames, *shape), np.uint16).tobytes()
    elif kind in ("SR", "KO"):
        ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def zip_folder(folder: Path, path: Path) -> Path:
    """``folder``'s files in a zip (deflated), at its root."""
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in sorted(folder.iterdir()):
            archive.write(f, f.name)
    return path


def set_text(ds, tag: int, vr: str, text: str) -> None:
    """Store ``text`` as the value of ``tag`` byte for byte (as a broken exporter would: 'abc' in a DS), bypassing
    pydicom's conversion; the element is written as is."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag
    value = text.encode("latin-1")
    value += b" " * (len(value) % 2)
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
