"""A DICOM file's pixel data against its own header, before any pixel is decoded: the bytes must be what Rows x
Columns x NumberOfFrames x SamplesPerPixel x BitsAllocated/8 declares.

- uncompressed transfer syntaxes: the element's length, not shorter and not a whole image longer (trailing padding
  below that is a note), and the bytes on disk;
- encapsulated ones: a basic offset table and at least one non-empty fragment per frame, and for a single frame the
  codestream's start and end markers (JPEG, JPEG-LS, JPEG 2000, RLE's segment table).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID

from stunet.clinical.dicom_headers import DicomError, Header, int_of, pixel_element, text_of, transfer_syntax

# encapsulated transfer syntaxes whose frames start and end with known markers: JPEG processes 1-29 and JPEG-LS (SOI
# FFD8 ... EOI FFD9), JPEG 2000 and HTJ2K (SOC FF4F SIZ FF51, or a JP2 box ... EOC FFD9)
_JPEG = {f"1.2.840.10008.1.2.4.{n}" for n in (*range(50, 67), 70, 80, 81)}
_JPEG_2000 = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}


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


def _check_encapsulated(h: Header, element, name: str, syntax: UID, frames: int, planes: int) -> None:
    """Encapsulated pixel data: its items, a fragment per frame, and a single frame's codestream markers (``planes``:
    the bytes of one pixel, RLE's segments)."""
    value = element.value
    if value is None:  # deferred: compressed frames are read from disk (they are small), to look at their fragments
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = h.ds[element.tag].value
        except Exception as e:
            raise DicomError(f"{h.path}: the encapsulated {name} cannot be read ({str(e).strip()[:100]}); a "
                             f"truncated or corrupt file") from e
    if not isinstance(value, (bytes, bytearray)):
        raise DicomError(f"{h.path}: the encapsulated {name} cannot be read; a truncated or corrupt file")
    fragments = _fragments(bytes(value), h.path, name)
    if len(fragments) < frames or not all(fragments):
        raise DicomError(f"{h.path}: encapsulated {name} holds {len(fragments)} fragment(s)"
                         f"{' (some empty)' if fragments and not all(fragments) else ''} for {frames} frame(s); a "
                         f"truncated or corrupt file")
    if frames == 1:
        _check_codestream(b"".join(fragments), syntax, h.path, planes)


def _check_native(h: Header, element, name: str, expected: int, deflated: bool) -> str | None:
    """Uncompressed pixel data of ``expected`` bytes: the element's length and the bytes on disk. Returns a note for
    trailing padding shorter than a whole image."""
    raw = isinstance(element, RawDataElement)
    length = element.length if raw else len(element.value)
    loaded = element.value
    if loaded is not None and len(loaded) < length:
        length = len(loaded)
    elif raw and loaded is None and not deflated:
        on_disk = os.path.getsize(h.path) - element.value_tell
        if on_disk < min(length, expected):
            raise DicomError(f"{h.path}: the file ends {length - on_disk} bytes before the end of its {name} (of "
                             f"{length} bytes); a truncated file")
    if length < expected or length >= 2 * expected:  # short, or a whole image's worth more: the header is wrong
        raise DicomError(f"{h.path}: {name} holds {length} bytes; its header declares {expected} ({_layout(h)}): a "
                         f"truncated or mislabelled file")
    if length > expected + 1:  # + the padding byte to an even length; more is trailing padding some exporters add
        return f"{h.path}: {name} holds {length - expected} bytes more than its header declares (trailing " \
               f"padding?); the first {expected} are read"
    return None


def _layout(h: Header) -> str:
    ds = h.ds
    return (f"Rows {int_of(ds, 'Rows')} x Columns {int_of(ds, 'Columns')} x {int_of(ds, 'NumberOfFrames') or 1} "
            f"frame(s) x SamplesPerPixel {int_of(ds, 'SamplesPerPixel') or 1} x BitsAllocated "
            f"{int_of(ds, 'BitsAllocated')}/8")


def check_pixels(h: Header) -> str | None:
    """The pixel data must be what the header declares (see the module's docstring); raises DicomError. Returns a note
    for uncompressed pixel data longer than declared by less than a whole image (trailing padding)."""
    ds, path = h.ds, h.path
    rows, columns = int_of(ds, "Rows"), int_of(ds, "Columns")
    if not rows or not columns:
        raise DicomError(f"{path}: Rows (0028,0010) {rows} / Columns (0028,0011) {columns} missing or 0; not an "
                         f"image")
    samples, bits = int_of(ds, "SamplesPerPixel") or 1, int_of(ds, "BitsAllocated")
    frames = int_of(ds, "NumberOfFrames") or 1
    if bits not in (1, 8, 16, 32, 64):
        raise DicomError(f"{path}: BitsAllocated (0028,0100) {bits} is not 1, 8, 16, 32 or 64; a corrupt header")
    stored = int_of(ds, "BitsStored")
    if stored is not None and not 1 <= stored <= bits:
        raise DicomError(f"{path}: BitsStored (0028,0101) {stored} is not within BitsAllocated {bits}; a corrupt "
                         f"header")
    element, name = pixel_element(ds)
    if element is None:
        raise DicomError(f"{path}: no pixel data (PixelData (7FE0,0010) missing, a truncated file?); remove or "
                         f"replace it")
    syntax = UID(transfer_syntax(ds)) or pydicom.uid.ImplicitVRLittleEndian
    try:
        encapsulated, deflated = syntax.is_encapsulated, syntax.is_deflated
    except ValueError:  # a transfer syntax pydicom does not know: only the element's own length tells
        encapsulated, deflated = False, False
    raw = isinstance(element, RawDataElement)
    undefined = (element.length == 0xFFFFFFFF) if raw else bool(getattr(element, "is_undefined_length", False))
    if undefined or (encapsulated and name.startswith("PixelData")):
        _check_encapsulated(h, element, name, syntax, frames, samples * ((bits + 7) // 8))
        return None
    expected = (rows * columns * frames * samples * bits + 7) // 8
    if text_of(ds, 0x00280004).upper() == "YBR_FULL_422":  # two chroma samples shared by two pixels
        expected = expected * 2 // 3
    return _check_native(h, element, name, expected, deflated)
