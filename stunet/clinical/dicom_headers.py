"""DICOM headers: each file of a folder read as a header (pydicom, pixel data left on disk), sorted into image slices,
objects that are not images and files that are not DICOM, and the values a slice must state (PixelSpacing, the rescale)
read and checked; no value is ever assumed."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID

from stunet.errors import CaseError

NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "PR", "KO", "DOC", "REG", "RWV",
              "FID", "PLAN", "RAW"}

_PIXEL_TAGS = ((0x7FE00010, "PixelData (7FE0,0010)"), (0x7FE00008, "FloatPixelData (7FE0,0008)"),
               (0x7FE00009, "DoubleFloatPixelData (7FE0,0009)"))
_DEFER_BYTES = 4096  # header elements longer than this (pixel data) stay on disk
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class DicomError(CaseError):
    """A DICOM input that cannot be one image; the message names the file or folder."""


@dataclass
class Header:
    """One DICOM file's data set, pixel data left on disk."""
    path: Path
    ds: pydicom.Dataset
    sop_class: str  # the dataset's SOPClassUID, else the file meta's MediaStorageSOPClassUID
    modality: str
    series_uid: str
    skip: str | None  # why the object is not an image (skipped), else None


def _looks_like_dicom(path: Path) -> bool | None:
    """True for a Part 10 file (preamble and 'DICM'), None for one that may be a raw data set (starting with a group
    0002 or 0008 tag, as GDCM also reads them), False otherwise."""
    try:
        with open(path, "rb") as f:
            start = f.read(132)
    except OSError:
        return False
    if len(start) == 132 and start[128:] == b"DICM":
        return True
    if len(start) >= 8 and start[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08"):
        return None
    return False


def _read_header(path: Path) -> pydicom.Dataset | None:
    """The data set of a DICOM file with its pixel data left on disk; None for a file that is not DICOM."""
    kind = _looks_like_dicom(path)
    if kind is False:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a truncated file is found by the pixel data checks, in one line
        try:
            ds = pydicom.dcmread(str(path), defer_size=_DEFER_BYTES, force=kind is None)
        except Exception as e:
            if kind is None:
                return None
            raise DicomError(f"{path}: a DICOM file that cannot be read ({str(e).strip()[:150]}); remove or "
                             f"replace it") from e
    if kind is None and not any(t in ds for t in (0x00080016, 0x0020000E, 0x00280010)):
        return None
    return ds


def _item(ds, tag: int):
    """The element as read (a RawDataElement until converted), a deferred value left on disk (pydicom 3 reads it
    unless told not to; pydicom 2 never does here)."""
    try:
        return ds.get_item(tag, keep_deferred=True)
    except TypeError:
        return ds.get_item(tag)


def text_of(ds, tag: int) -> str:
    """A text element's value as stored (backslashes between values), without padding; '' when absent."""
    try:
        element = _item(ds, tag)
    except Exception:
        return ""
    if element is None or element.value is None:
        return ""
    value = element.value
    if isinstance(value, bytes):
        text = value.decode("latin-1")
    elif isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip(" \0")


def int_of(ds, keyword: str) -> int | None:
    """An integer element by keyword; None when absent, empty or not an integer."""
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def transfer_syntax(ds) -> str:
    """The file meta's TransferSyntaxUID; '' when there is none."""
    meta = getattr(ds, "file_meta", None)
    return text_of(meta, 0x00020010) if meta is not None else ""


def _sop_class(ds) -> str:
    return text_of(ds, 0x00080016) or text_of(getattr(ds, "file_meta", None) or pydicom.Dataset(), 0x00020002)


def pixel_element(ds):
    """The pixel data element (as read, possibly left on disk) and its name, or (None, None)."""
    for tag, name in _PIXEL_TAGS:
        element = _item(ds, tag)
        if element is not None:
            return element, name
    return None, None


def _why_skipped(ds, sop_class: str, modality: str) -> str | None:
    """Why a DICOM object is not an image slice (a short label for the note), else None."""
    if modality in NOT_IMAGES:
        return modality
    name = UID(sop_class).name if sop_class else ""
    if name and name != sop_class and "Image Storage" not in name:
        return name.replace(" Storage", "")
    if pixel_element(ds)[0] is None and not (name and "Image Storage" in name):
        return "no pixel data"
    return None


def read_header(path: Path) -> Header | None:
    """The header of one file; None for a file that is not DICOM."""
    ds = _read_header(path)
    if ds is None:
        return None
    sop_class, modality = _sop_class(ds), text_of(ds, 0x00080060).upper()
    return Header(path, ds, sop_class, modality, text_of(ds, 0x0020000E), _why_skipped(ds, sop_class, modality))


def _files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


@dataclass
class Scan:
    """The files directly in a folder: image slices, objects that are not images, files that are not DICOM."""
    images: list[Header]
    skipped: list[Header]
    not_dicom: list[Path]

    def series(self) -> dict[str, list[Header]]:
        found: dict[str, list[Header]] = {}
        for h in self.images:
            found.setdefault(h.series_uid, []).append(h)
        return found

    def notes(self, folder: Path) -> list[str]:
        notes = []
        if self.skipped:
            listed = ", ".join(f"{h.path.name} ({h.skip})" for h in self.skipped[:10])
            notes.append(f"{folder}: {len(self.skipped)} DICOM object(s) that are not image slices skipped: {listed}"
                         f"{', ...' if len(self.skipped) > 10 else ''}")
        shown = [p for p in self.not_dicom if not p.name.startswith(".")]
        if shown:
            notes.append(f"{folder}: {len(shown)} file(s) that are not DICOM ignored: "
                         f"{', '.join(p.name for p in shown[:4])}{', ...' if len(shown) > 4 else ''}")
        return notes


def scan(folder: Path) -> Scan:
    """Every file directly in ``folder``, read as a header and sorted; an image without pixel data is refused."""
    found = Scan([], [], [])
    for path in _files_of(folder):
        header = read_header(path)
        if header is None:
            found.not_dicom.append(path)
        elif header.skip:
            found.skipped.append(header)
        elif pixel_element(header.ds)[0] is None:  # an image cut short before its pixel data, whatever its series
            raise DicomError(f"{path}: no pixel data (PixelData (7FE0,0010) missing: a truncated file?); remove or "
                             f"replace it")
        else:
            found.images.append(header)
    return found


def holds_images(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM image file (stops at the first)."""
    try:
        files = _files_of(folder)
    except OSError:
        return False
    for path in files:
        try:
            header = read_header(path)
        except DicomError:
            return True  # an unreadable DICOM file: the case is found, and refused in one line when read
        if header is not None and not header.skip:
            return True
    return False


# -- the values a slice must state ----------------------------------------------------------------------------------
def numbers(h: Header, tag: int, name: str, n: int, required: bool = True) -> np.ndarray | None:
    """``n`` finite numbers of a multi-valued element; None when it is absent and not ``required``."""
    text = text_of(h.ds, tag)
    if not text:
        if required:
            raise DicomError(f"{h.path}: {name} missing; fix the header (no value is assumed)")
        return None
    try:
        values = np.array([float(v) for v in text.split("\\")])
    except ValueError:
        values = np.array([])
    if values.size != n or not np.all(np.isfinite(values)):
        raise DicomError(f"{h.path}: {name} {text!r} is not {n} finite number(s); fix the header")
    return values


def pixel_spacing(h: Header) -> np.ndarray:
    """PixelSpacing: two finite positive numbers (row spacing, column spacing), never assumed."""
    spacing = numbers(h, 0x00280030, "PixelSpacing (0028,0030)", 2)
    if not np.all(spacing > 0):
        raise DicomError(f"{h.path}: PixelSpacing (0028,0030) {text_of(h.ds, 0x00280030)!r} is not positive; fix the "
                         f"header (no spacing is assumed)")
    return spacing


def rescale(h: Header) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (absent: 1 and 0), the slope not 0 and the rescaled range within float32."""
    slope = numbers(h, 0x00281053, "RescaleSlope (0028,1053)", 1, required=False)
    intercept = numbers(h, 0x00281052, "RescaleIntercept (0028,1052)", 1, required=False)
    slope = 1.0 if slope is None else float(slope[0])
    intercept = 0.0 if intercept is None else float(intercept[0])
    if slope == 0:
        raise DicomError(f"{h.path}: RescaleSlope (0028,1053) is 0 (every pixel would be the intercept); fix the "
                         f"header")
    stored = int_of(h.ds, "BitsStored") or 16
    signed = int_of(h.ds, "PixelRepresentation") == 1
    low, high = (-2.0 ** (stored - 1), 2.0 ** (stored - 1) - 1) if signed else (0.0, 2.0 ** stored - 1)
    extreme = max(abs(slope * low + intercept), abs(slope * high + intercept))
    if not np.isfinite(extreme) or extreme > _FLOAT32_MAX:
        raise DicomError(f"{h.path}: RescaleSlope (0028,1053) {slope:g} and RescaleIntercept (0028,1052) "
                         f"{intercept:g} give values up to {extreme:.3g}, beyond float32; fix the header")
    return slope, intercept
