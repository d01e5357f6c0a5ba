"""Synthetic DICOM series written with pydicom: any orientation, slice order, spacing, rescale."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_series(folder: Path, volume: np.ndarray, origin=(0., 0., 0.), row_dir=(1., 0., 0.), col_dir=(0., 1., 0.),
                 pixel_spacing=(1., 1.), slice_step=None, slope=1.0, intercept=0.0, modality="CT",
                 file_order=None, series_uid=None, study_uid=None, positions=None) -> list[Path]:
    """``volume`` (slices, rows, columns) of stored values (pixel = stored * slope + intercept). Slice k sits at
    origin + k * slice_step (default: the normal times 2.5 mm) unless ``positions`` are given; ``file_order`` permutes
    the file names (slice k is written as file_order[k])."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    step = normal * 2.5 if slice_step is None else np.asarray(slice_step, float)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
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
        ds.save_as(str(path), enforce_file_format=True)
        files.append(path)
    return files


def voxel_position(origin, row_dir, col_dir, pixel_spacing, step, k, r, c) -> np.ndarray:
    """Patient position (LPS, mm) of slice k, row r, column c."""
    return (np.asarray(origin, float) + k * np.asarray(step, float) + c * pixel_spacing[1] * np.asarray(row_dir, float)
            + r * pixel_spacing[0] * np.asarray(col_dir, float))
