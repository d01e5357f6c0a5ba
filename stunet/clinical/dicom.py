"""DICOM series as inputs: a folder holding one series, a folder of series folders (one case each), or a .zip.

Every file of a folder is read as a header first (pydicom, pixel data left on disk), and a series is read only when
every one of its files is consistent with itself and with the others; no value is ever assumed. In order:

1. **Objects that are not images** (DICOM-SEG, RTSTRUCT, RTDOSE, RTPLAN, SR, PR, KO, DICOMDIR, ...: by their SOP class
   or their modality) are skipped with a note, never read as a slice and never counted as a series; files that are not
   DICOM at all are ignored (with a note, unless their name starts with a dot).
2. **The series**: the image files grouped by SeriesInstanceUID; several in one folder are refused unless one is chosen
   (``series_uid=``, ``--series-uid``).
3. **Each file against its own header**: the pixel data must be what Rows x Columns x NumberOfFrames x
   SamplesPerPixel x BitsAllocated/8 declares (uncompressed transfer syntaxes: the element's length, not shorter and
   not a whole image longer, trailing padding below that being a note, and the bytes on disk; encapsulated ones: a
   basic offset table and at least one non-empty fragment per frame, and for a single frame
   the codestream's start and end markers: JPEG, JPEG-LS, JPEG 2000, RLE's segment table); PixelSpacing two finite
   positive numbers (never 1 mm by default, no ImagerPixelSpacing fallback), orientation and position present;
   RescaleSlope and RescaleIntercept finite numbers (absent: 1 and 0, as DICOM defines), the slope not 0, and the
   rescaled range within float32; single-frame grey-scale slices only (SamplesPerPixel 1).
4. **The files against each other**: the same modality, FrameOfReferenceUID, Rows, Columns, PixelSpacing and
   orientation in every file (not only the first); positions along the slice normal (no gantry tilt),
   uniform and unrepeated (no missing slices). At least two slices.
5. **Reading**: SimpleITK's GDCM series reader, in slice-position order (never by file name), into float32, so each
   slice's own rescale is applied without wrapping or truncation (GDCM rescales each file into a type that holds its
   values; the series' type was the first file's: int16 wrapped 100000 to -31072). The grid (origin, direction,
   spacing) is then set from the checked headers: PixelSpacing in-plane, the slice positions' step across.

A modality other than CT or MR is a warning when the files are images (PT, OT, ...). A zip is extracted only when its
central directory stays within :data:`MAX_ZIP_BYTES`, :data:`MAX_ZIP_RATIO` and :data:`MAX_ZIP_MEMBERS`, counted again
while extracting (declared sizes can lie).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID

from stunet.errors import CaseError

NOT_IMAGES = {"SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "RTIMAGE", "SR", "PR", "KO", "DOC", "REG", "RWV",
              "FID", "PLAN", "RAW"}
TOLERANCE_MM = 0.01

# zip limits, checked on the central directory before anything is written and again while extracting. A series of
# 2000 slices of 1024 x 1024 int16 pixels is 4.2 GB: unzip anything larger yourself and give the folder.
MAX_ZIP_BYTES = 4 * 2 ** 30  # extracted bytes, all members together
MAX_ZIP_RATIO = 100  # extracted / compressed bytes of the whole archive; DICOM deflates 2-10x, a zip bomb 1000x
ZIP_RATIO_FROM_BYTES = 32 * 2 ** 20  # the ratio is checked from this many extracted bytes (small sparse test
#                                      series deflate far better than 100x, harmlessly)
MAX_ZIP_MEMBERS = 100_000
_CHUNK = 1 << 20

_PIXEL_TAGS = ((0x7FE00010, "PixelData (7FE0,0010)"), (0x7FE00008, "FloatPixelData (7FE0,0008)"),
               (0x7FE00009, "DoubleFloatPixelData (7FE0,0009)"))
_DEFER_BYTES = 4096  # header elements longer than this (pixel data) stay on disk
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# encapsulated transfer syntaxes whose frames start and end with known markers: JPEG processes 1-29 and JPEG-LS (SOI
# FFD8 ... EOI FFD9), JPEG 2000 and HTJ2K (SOC FF4F SIZ FF51, or a JP2 box ... EOC FFD9)
_JPEG = {f"1.2.840.10008.1.2.4.{n}" for n in (*range(50, 67), 70, 80, 81)}
_JPEG_2000 = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}


class DicomError(CaseError):
    """A DICOM input that cannot be one image; the message names the file or folder."""


@dataclass
class DicomSeries:
    image: sitk.Image
    files: list[Path]  # in slice order: file k is slice k of the image's first array axis
    series_uid: str
    modality: str
    name: str
    warnings: list[str] = field(default_factory=list)


# -- headers ------------------------------------------------------------------------------------------------------
@dataclass
class _Header:
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


def _text(ds, tag: int) -> str:
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


def _int(ds, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def _sop_class(ds) -> str:
    return _text(ds, 0x00080016) or _text(getattr(ds, "file_meta", None) or pydicom.Dataset(), 0x00020002)


def _pixel_element(ds):
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
    if _pixel_element(ds)[0] is None and not (name and "Image Storage" in name):
        return "no pixel data"
    return None


def _header(path: Path) -> _Header | None:
    ds = _read_header(path)
    if ds is None:
        return None
    sop_class, modality = _sop_class(ds), _text(ds, 0x00080060).upper()
    return _Header(path, ds, sop_class, modality, _text(ds, 0x0020000E), _why_skipped(ds, sop_class, modality))


def _files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


@dataclass
class _Scan:
    images: list[_Header]
    skipped: list[_Header]
    not_dicom: list[Path]

    def series(self) -> dict[str, list[_Header]]:
        found: dict[str, list[_Header]] = {}
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


def _scan(folder: Path) -> _Scan:
    scan = _Scan([], [], [])
    for path in _files_of(folder):
        header = _header(path)
        if header is None:
            scan.not_dicom.append(path)
        elif header.skip:
            scan.skipped.append(header)
        elif _pixel_element(header.ds)[0] is None:  # an image cut short before its pixel data, whatever its series
            raise DicomError(f"{path}: no pixel data (PixelData (7FE0,0010) missing: a truncated file?); remove or "
                             f"replace it")
        else:
            scan.images.append(header)
    return scan


def _holds_images(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM image file (stops at the first)."""
    try:
        files = _files_of(folder)
    except OSError:
        return False
    for path in files:
        try:
            header = _header(path)
        except DicomError:
            return True  # an unreadable DICOM file: the case is found, and refused in one line when read
        if header is not None and not header.skip:
            return True
    return False


# -- one file against its header ----------------------------------------------------------------------------------
def _numbers(h: _Header, tag: int, name: str, n: int, required: bool = True) -> np.ndarray | None:
    text = _text(h.ds, tag)
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


def _pixel_spacing(h: _Header) -> np.ndarray:
    spacing = _numbers(h, 0x00280030, "PixelSpacing (0028,0030)", 2)
    if not np.all(spacing > 0):
        raise DicomError(f"{h.path}: PixelSpacing (0028,0030) {_text(h.ds, 0x00280030)!r} is not positive; fix the "
                         f"header (no spacing is assumed)")
    return spacing


def _rescale(h: _Header) -> tuple[float, float]:
    slope = _numbers(h, 0x00281053, "RescaleSlope (0028,1053)", 1, required=False)
    intercept = _numbers(h, 0x00281052, "RescaleIntercept (0028,1052)", 1, required=False)
    slope = 1.0 if slope is None else float(slope[0])
    intercept = 0.0 if intercept is None else float(intercept[0])
    if slope == 0:
        raise DicomError(f"{h.path}: RescaleSlope (0028,1053) is 0 (every pixel would be the intercept); fix the "
                         f"header")
    stored = _int(h.ds, "BitsStored") or 16
    signed = _int(h.ds, "PixelRepresentation") == 1
    low, high = (-2.0 ** (stored - 1), 2.0 ** (stored - 1) - 1) if signed else (0.0, 2.0 ** stored - 1)
    extreme = max(abs(slope * low + intercept), abs(slope * high + intercept))
    if not np.isfinite(extreme) or extreme > _FLOAT32_MAX:
        raise DicomError(f"{h.path}: RescaleSlope (0028,1053) {slope:g} and RescaleIntercept (0028,1052) "
                         f"{intercept:g} give values up to {extreme:.3g}, beyond float32; fix the header")
    return slope, intercept


def _fragments(value: bytes, path: Path, name: str) -> list[bytes]:
    """The fragments of encapsulated pixel data (the basic offset table excluded)."""
    items, at = [], 0
    while at + 8 <= len(value):
        group, element, length = int.from_bytes(value[at:at + 2], "little"), \
            int.from_bytes(value[at + 2:at + 4], "little"), int.from_bytes(value[at + 4:at + 8], "little")
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or at + 8 + length > len(value):
            raise DicomError(f"{path}: encapsulated {name} is malformed or truncated (item {len(items)} at byte {at} "
                             f"{'runs past the end' if (group, element) == (0xFFFE, 0xE000) else 'is no item'}); "
                             f"a truncated or corrupt file")
        items.append(value[at + 8:at + 8 + length])
        at += 8 + length
    if not items:
        raise DicomError(f"{path}: encapsulated {name} has no basic offset table and no fragment; a truncated or "
                         f"corrupt file")
    return items[1:]


def _check_codestream(frame: bytes, syntax: UID, path: Path, segments: int) -> None:
    """Start and end of one compressed frame, where the transfer syntax says what they must be (``segments``: the
    RLE segments one frame has, a byte plane per sample)."""
    name = syntax.name
    tail = frame.rstrip(b"\0")[-16:]
    if syntax in _JPEG or syntax in _JPEG_2000:
        starts = (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP") if syntax in _JPEG_2000 else (b"\xff\xd8",)
        if not frame.startswith(starts):
            raise DicomError(f"{path}: the compressed pixel data ({name}) does not start with its codestream's marker; "
                             f"a corrupt file")
        if b"\xff\xd9" not in tail:
            raise DicomError(f"{path}: the compressed pixel data ({name}) lacks its end-of-image marker; a truncated "
                             f"file")
    elif syntax == pydicom.uid.RLELossless:
        if len(frame) < 64:
            raise DicomError(f"{path}: the RLE pixel data is shorter than its 64-byte header; a truncated file")
        count = int.from_bytes(frame[:4], "little")
        offsets = [int.from_bytes(frame[4 + 4 * i:8 + 4 * i], "little") for i in range(min(count, 15))]
        if count != segments or not 1 <= count <= 15 or offsets[0] != 64 \
                or any(b <= a for a, b in zip(offsets, offsets[1:])) or offsets[-1] >= len(frame):
            raise DicomError(f"{path}: the RLE pixel data's segment table ({count} segment(s), offsets {offsets}) "
                             f"does not fit its {len(frame)} bytes and {segments} byte plane(s); a truncated or "
                             f"corrupt file")


def _check_pixels(h: _Header) -> str | None:
    """The pixel data must be what the header declares (see the module's docstring); raises DicomError. Returns a note
    for uncompressed pixel data longer than declared by less than a whole image (trailing padding)."""
    ds, path = h.ds, h.path
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if not rows or not columns:
        raise DicomError(f"{path}: Rows (0028,0010) {rows} / Columns (0028,0011) {columns} missing or 0; not an "
                         f"image")
    samples, bits = _int(ds, "SamplesPerPixel") or 1, _int(ds, "BitsAllocated")
    frames = _int(ds, "NumberOfFrames") or 1
    if bits not in (1, 8, 16, 32, 64):
        raise DicomError(f"{path}: BitsAllocated (0028,0100) {bits} is not 1, 8, 16, 32 or 64; a corrupt header")
    stored = _int(ds, "BitsStored")
    if stored is not None and not 1 <= stored <= bits:
        raise DicomError(f"{path}: BitsStored (0028,0101) {stored} is not within BitsAllocated {bits}; a corrupt "
                         f"header")
    element, name = _pixel_element(ds)
    if element is None:
        raise DicomError(f"{path}: no pixel data (PixelData (7FE0,0010) missing, a truncated file?); remove or "
                         f"replace it")
    meta = getattr(ds, "file_meta", None)
    syntax = UID(_text(meta, 0x00020010) if meta is not None else "") or pydicom.uid.ImplicitVRLittleEndian
    try:
        encapsulated, deflated = syntax.is_encapsulated, syntax.is_deflated
    except ValueError:  # a transfer syntax pydicom does not know: only the element's own length tells
        encapsulated, deflated = False, False
    raw = isinstance(element, RawDataElement)
    undefined = (element.length == 0xFFFFFFFF) if raw else bool(getattr(element, "is_undefined_length", False))
    if undefined or (encapsulated and name.startswith("PixelData")):
        value = element.value
        if value is None:  # deferred: compressed frames are read now (they are small), to look at their fragments
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = ds[element.tag].value
            except Exception as e:
                raise DicomError(f"{path}: the encapsulated {name} cannot be read ({str(e).strip()[:100]}); a "
                                 f"truncated or corrupt file") from e
        if not isinstance(value, (bytes, bytearray)):
            raise DicomError(f"{path}: the encapsulated {name} cannot be read; a truncated or corrupt file")
        fragments = _fragments(bytes(value), path, name)
        if len(fragments) < frames or not all(fragments):
            raise DicomError(f"{path}: encapsulated {name} holds {len(fragments)} fragment(s)"
                             f"{' (some empty)' if fragments and not all(fragments) else ''} for {frames} frame(s); a "
                             f"truncated or corrupt file")
        if frames == 1:
            _check_codestream(b"".join(fragments), syntax, path, samples * ((bits + 7) // 8))
        return None
    expected = (rows * columns * frames * samples * bits + 7) // 8
    if _text(ds, 0x00280004).upper() == "YBR_FULL_422":  # two chroma samples shared by two pixels
        expected = expected * 2 // 3
    length = element.length if raw else len(element.value)
    loaded = element.value
    if loaded is not None and len(loaded) < length:
        length = len(loaded)
    elif raw and loaded is None and not deflated:
        on_disk = os.path.getsize(path) - element.value_tell
        if on_disk < min(length, expected):
            raise DicomError(f"{path}: the file ends {length - on_disk} bytes before the end of its {name} (of "
                             f"{length} bytes); a truncated file")
    if length < expected or length >= 2 * expected:  # short, or a whole image's worth more: the header is wrong
        raise DicomError(f"{path}: {name} holds {length} bytes; its header declares {expected} (Rows {rows} x Columns "
                         f"{columns} x {frames} frame(s) x SamplesPerPixel {samples} x BitsAllocated {bits}/8): a "
                         f"truncated or mislabelled file")
    if length > expected + 1:  # + the padding byte to an even length; more is trailing padding some exporters add
        return f"{path}: {name} holds {length - expected} bytes more than its header declares (trailing padding?); " \
               f"the first {expected} are read"
    return None


# -- zips ---------------------------------------------------------------------------------------------------------
def _size(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def extract_zip(path: Path, into: Path) -> Path:
    """The members of a zip under ``into``, within :data:`MAX_ZIP_BYTES`, :data:`MAX_ZIP_RATIO` and
    :data:`MAX_ZIP_MEMBERS` (checked on the central directory, then counted while extracting); names that leave the
    folder, encrypted members and unreadable archives are refused."""
    into = Path(into)
    root = into.resolve()
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > MAX_ZIP_MEMBERS:
                raise DicomError(f"{path}: {len(members):,} members, over the {MAX_ZIP_MEMBERS:,} a series zip may "
                                 f"hold; unzip it yourself and give the folder")
            declared = sum(m.file_size for m in members)
            compressed = sum(m.compress_size for m in members)
            if declared > MAX_ZIP_BYTES:
                raise DicomError(f"{path}: extracts to {_size(declared)}, over the {_size(MAX_ZIP_BYTES)} allowed for "
                                 f"a zip (a zip bomb?); unzip it yourself and give the folder")
            if declared >= ZIP_RATIO_FROM_BYTES and declared > MAX_ZIP_RATIO * max(compressed, 1):
                raise DicomError(f"{path}: {_size(compressed)} extracting to {_size(declared)} (ratio "
                                 f"{declared / max(compressed, 1):.0f}, over {MAX_ZIP_RATIO}; a zip bomb?); not "
                                 f"extracted")
            for member in members:
                target = (root / member.filename).resolve()
                if target != root and not target.is_relative_to(root):
                    raise DicomError(f"{path}: member {member.filename!r} would be written outside the folder")
                if member.flag_bits & 0x1:
                    raise DicomError(f"{path}: member {member.filename!r} is encrypted; unzip it yourself")
            free = shutil.disk_usage(root).free
            if declared > free:
                raise DicomError(f"{path}: extracts to {_size(declared)}, more than the {_size(free)} free in {root}")
            total = 0
            for member in members:
                target = (root / member.filename).resolve()
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with archive.open(member) as source, open(target, "wb") as sink:
                    while block := source.read(_CHUNK):
                        written += len(block)
                        total += len(block)
                        if written > member.file_size or total > MAX_ZIP_BYTES:
                            raise DicomError(f"{path}: member {member.filename!r} extracts to more than its declared "
                                             f"{member.file_size:,} bytes (a zip bomb?); not extracted")
                        sink.write(block)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError) as e:
        raise DicomError(f"{path}: not a readable zip ({str(e).strip()[:150] or type(e).__name__})") from e
    return into


# -- cases and series ---------------------------------------------------------------------------------------------
def series_in(folder: Path) -> list[str]:
    """The SeriesInstanceUIDs of the image files directly in ``folder`` (objects that are not images left out)."""
    return list(_scan(Path(folder)).series())


def find_dicom_cases(source: Path) -> list[tuple[str, Path]]:
    """(case name, folder or zip) for an input: the folder itself when it holds DICOM images, else each sub-folder
    that does and each zip."""
    source = Path(source)
    if source.is_file():
        return [(source.name[:-4] if source.suffix.lower() == ".zip" else source.stem, source)]
    if _holds_images(source):
        return [(source.name, source)]
    cases = []
    for child in sorted(source.iterdir()):
        if child.is_dir() and _holds_images(child):
            cases.append((child.name, child))
        elif child.is_file() and child.suffix.lower() == ".zip":
            cases.append((child.name[:-4], child))
    return cases


def is_dicom_folder(source: Path) -> bool:
    return Path(source).is_dir() and bool(find_dicom_cases(source))


def _agree(headers: list[_Header], what: str, values: list, same=None) -> None:
    """Refuse a series whose files disagree on ``what`` (values[k] of headers[k]), naming the first that differs."""
    same = same or (lambda a, b: a == b)
    for h, value in zip(headers[1:], values[1:]):
        if not same(value, values[0]):
            shown = lambda v: f"{v!r}" if not isinstance(v, np.ndarray) else "\\".join(f"{x:g}" for x in v)
            raise DicomError(f"{h.path}: {what} {shown(value)} differs from {shown(values[0])} in "
                             f"{headers[0].path.name} of the same series; not one image grid")


def _choose_series(source: Path, folder: Path, scan: _Scan, series_uid: str | None) -> list[_Header]:
    found = scan.series()
    ids = list(found)
    if series_uid is None and len(ids) > 1:
        shown = [uid or f"none ({found[uid][0].path.name}, no SeriesInstanceUID)" for uid in ids]
        raise DicomError(f"{folder}: {len(ids)} DICOM series mixed in one folder ({', '.join(shown[:3])}"
                         f"{', ...' if len(ids) > 3 else ''}); put each in its own folder or choose one with "
                         f"--series-uid UID (series_uid= in Python)")
    uid = ids[0] if series_uid is None else series_uid
    if uid not in found:
        raise DicomError(f"{folder}: no series {uid}")
    return found[uid]


def _name_unreadable(headers: list[_Header], error: Exception) -> None:
    """The series reader failed: raise DicomError naming the first file GDCM cannot read alone (its SOP class and
    transfer syntax, what GDCM depends on), if one is."""
    for h in headers:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(h.path))
        try:
            reader.Execute()
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = lines[-1].replace("ITK ERROR: ", "") if lines else "unreadable"
            meta = getattr(h.ds, "file_meta", None)
            syntax = _text(meta, 0x00020010) if meta is not None else ""
            raise DicomError(f"{h.path}: GDCM cannot read it (SOPClassUID {h.sop_class or 'empty'}, transfer syntax "
                             f"{UID(syntax).name if syntax else 'unknown'}: {detail[:150]}); remove or convert it"
                             ) from error


def read_dicom(source: Path, series_uid: str | None = None, name: str | None = None) -> DicomSeries:
    """The one series of a folder (or .zip, or a single file's series) as a SimpleITK float32 image, checked as the
    module's docstring says; raises DicomError naming the file or folder."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="stunet-dicom-") as tmp:
            series = read_dicom(extract_zip(source, Path(tmp)), series_uid, name or source.name[:-4])
            series.files = []  # extracted files are gone; a zip's series cannot be referenced by file
            return series
    folder = source.parent if source.is_file() else source
    if source.is_file() and series_uid is None:  # a single file: its own series
        header = _header(source)
        if header is None:
            raise DicomError(f"{source}: not a DICOM file")
        if header.skip:
            raise DicomError(f"{source}: a DICOM object that is not an image ({header.skip}); give the CT or MR "
                             f"series")
        series_uid = header.series_uid
    scan = _scan(folder)
    if not scan.images:
        nested = [p for p in folder.rglob("*") if p.is_dir() and _holds_images(p)]
        if len(nested) == 1:
            folder = nested[0]
            scan = _scan(folder)
        else:
            listed = ", ".join(f"{h.path.name} ({h.skip})" for h in scan.skipped[:3])
            only = (f" (only objects that are not images: {listed}{', ...' if len(scan.skipped) > 3 else ''})"
                    if scan.skipped and not nested else "")
            raise DicomError(f"{source}: no DICOM image series found" + (f" directly ({len(nested)} in sub-folders: "
                                                                        f"give one)" if nested else only))
    headers = _choose_series(source, folder, scan, series_uid)
    uid = headers[0].series_uid
    notes = scan.notes(folder)
    padded = [note for note in (_check_pixels(h) for h in headers) if note]  # before any pixel data is read
    if padded:
        notes.append(padded[0] + (f" (and in {len(padded) - 1} more file(s))" if len(padded) > 1 else ""))
    frames = [_int(h.ds, "NumberOfFrames") or 1 for h in headers]
    if max(frames) > 1:
        h = headers[frames.index(max(frames))]
        raise DicomError(f"{h.path}: a multi-frame image ({max(frames)} frames); only series of single-frame slices "
                         f"are read (convert it to single-frame slices first)")
    samples = [_int(h.ds, "SamplesPerPixel") or 1 for h in headers]
    if max(samples) > 1:
        h = headers[samples.index(max(samples))]
        raise DicomError(f"{h.path}: SamplesPerPixel (0028,0002) {max(samples)} (a colour image, "
                         f"{_text(h.ds, 0x00280004) or 'no PhotometricInterpretation'}); a grey-scale series is needed")
    if len(headers) < 2:
        raise DicomError(f"{headers[0].path}: series {uid} has one slice; not a 3D volume")
    spacings = [_pixel_spacing(h) for h in headers]
    orientations = [_numbers(h, 0x00200037, "ImageOrientationPatient (0020,0037)", 6) for h in headers]
    positions = np.array([_numbers(h, 0x00200032, "ImagePositionPatient (0020,0032)", 3) for h in headers])
    for h in headers:
        _rescale(h)
    _agree(headers, "Modality (0008,0060)", [h.modality for h in headers])
    _agree(headers, "FrameOfReferenceUID (0020,0052)", [_text(h.ds, 0x00200052) for h in headers])
    _agree(headers, "Rows (0028,0010)", [_int(h.ds, "Rows") for h in headers])
    _agree(headers, "Columns (0028,0011)", [_int(h.ds, "Columns") for h in headers])
    _agree(headers, "PixelSpacing (0028,0030)", spacings, lambda a, b: np.allclose(a, b, rtol=1e-4, atol=1e-6))
    _agree(headers, "ImageOrientationPatient (0020,0037)", orientations, lambda a, b: np.abs(a - b).max() <= 1e-4)
    modality = headers[0].modality
    if modality not in ("CT", "MR"):
        notes.append(f"{folder}: modality {modality or 'missing'} (not CT or MR); segmented as an image anyway")
    row, col = orientations[0][:3], orientations[0][3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise DicomError(f"{headers[0].path}: ImageOrientationPatient (0020,0037) {_text(headers[0].ds, 0x00200037)!r}"
                         f" is not two orthogonal unit vectors; fix the header")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    order = np.argsort(positions @ normal, kind="stable")
    headers, positions = [headers[i] for i in order], positions[order]
    files = [h.path for h in headers]
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
    reader.SetOutputPixelType(sitk.sitkFloat32)  # each slice's rescale, without wrapping into the first one's type
    try:
        image = reader.Execute()
    except RuntimeError as e:
        _name_unreadable(headers, e)
        raise
    rows, columns = _int(headers[0].ds, "Rows"), _int(headers[0].ds, "Columns")
    if image.GetDimension() != 3 or tuple(image.GetSize()) != (columns, rows, len(files)):
        raise DicomError(f"{folder}: the reader gave an image of size {tuple(image.GetSize())}, not the "
                         f"{columns} x {rows} x {len(files)} of the headers; not read")
    # the grid from the checked headers, not the reader's defaults: slice k at positions[k]
    image.SetSpacing((float(spacings[0][1]), float(spacings[0][0]), float(gaps.mean())))
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return DicomSeries(image, files, uid, modality, name or folder.name, notes)
