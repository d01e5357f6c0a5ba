"""Image headers against their files, before an image is read in full.

The voxel data a header declares (size x components x bytes per component) must be there, counted on disk for raw
data and by a bounded streaming decompression for compressed data (.nii.gz, gzip/bzip2 NRRD, compressed MetaImage):
ITK reads a truncated or header-only NIfTI file without an error, filling the missing voxels with zeros. The NIfTI
pixdim is read here too, since ITK silently replaces a zero or NaN one by 1, and so are the data files a NRRD or
MetaImage header names, which must lie in the header's own folder.
"""
from __future__ import annotations

import bz2
from dataclasses import dataclass
import math
from pathlib import Path
import re
import struct
import zlib

from stunet.errors import CaseError

# -- declared voxel data vs the file ------------------------------------------------------------------------------
_CHUNK = 1 << 20


_HEADER_LIMIT = 1 << 16


_NRRD_TYPES = {1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
               2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                   "unsigned short", "unsigned short int", "uint16", "uint16_t"),
               4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
               8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                   "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                   "double")}


_NRRD_SIZE = {name: size for size, names in _NRRD_TYPES.items() for name in names}


_MET_SIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
             "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


@dataclass
class _Layout:
    """Where a file keeps its voxel data: ``data_file`` from ``offset`` on, ``needed`` bytes once decoded by
    ``codec`` (None: raw), and the spacing its header states (None where only ITK's is known)."""
    data_file: Path
    offset: int
    needed: int
    codec: str | None = None
    spacing: tuple | None = None


def _nifti_layout(path: Path, head: bytes) -> _Layout | None:
    if len(head) < 348:
        raise CaseError(f"{path}: {len(head)} bytes, shorter than a NIfTI header (348); truncated")
    for order in "<>":
        size = struct.unpack(order + "i", head[:4])[0]
        if size == 348:
            dims = struct.unpack(order + "8h", head[40:56])
            bitpix = struct.unpack(order + "h", head[72:74])[0]
            pixdim = struct.unpack(order + "8f", head[76:108])
            offset = max(int(struct.unpack(order + "f", head[108:112])[0]), 352)
            break
        if size == 540:
            if len(head) < 540:
                raise CaseError(f"{path}: shorter than a NIfTI-2 header (540 bytes); truncated")
            bitpix = struct.unpack(order + "h", head[14:16])[0]
            dims = struct.unpack(order + "8q", head[16:80])
            pixdim = struct.unpack(order + "8d", head[104:168])
            offset = max(struct.unpack(order + "q", head[168:176])[0], 544)
            break
    else:
        return None  # not a NIfTI header: ITK says what it is
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1:ndim + 1]) or bitpix <= 0 or bitpix % 8:
        raise CaseError(f"{path}: a NIfTI header with dimensions {dims[1:ndim + 1] if 0 < ndim < 8 else dims} and "
                        f"{bitpix} bits per voxel; damaged")
    return _Layout(path, offset, math.prod(dims[1:ndim + 1]) * bitpix // 8, None, tuple(pixdim[1:min(ndim, 3) + 1]))


def _nrrd_layout(path: Path, head: bytes) -> _Layout | None:
    if not head.startswith(b"NRRD"):
        return None
    ends = [(i, len(mark)) for mark in (b"\n\n", b"\r\n\r\n") if (i := head.find(mark)) >= 0]
    if ends:
        stop, length = min(ends)
        offset = stop + length
    elif len(head) < _HEADER_LIMIT:
        stop = offset = len(head)  # a header only, or detached data
    else:
        return None
    fields = {}
    for line in head[:stop].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip().lstrip("=").strip()
    size = _NRRD_SIZE.get(fields.get("type", "").lower())
    try:
        sizes = [int(v) for v in fields.get("sizes", "").split()]
        skip = int(fields.get("byte skip", fields.get("byteskip", "0")))
        line_skip = int(fields.get("line skip", fields.get("lineskip", "0")))
    except ValueError:
        return None
    codec = {"raw": None, "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}.get(
        fields.get("encoding", "raw").lower(), "text")
    if size is None or not sizes or codec == "text" or skip < 0 or line_skip:
        return None  # text encodings, blocks, data at the end of the file, skipped lines: left to ITK
    if any(n < 1 for n in sizes):
        raise CaseError(f"{path}: NRRD sizes {sizes}; damaged header")
    needed = math.prod(sizes) * size
    data_file = fields.get("data file", fields.get("datafile"))
    if data_file:
        if "%" in data_file or data_file.split()[0] == "LIST":
            return None
        return _Layout(path.parent / data_file, skip, needed, codec)
    return _Layout(path, offset + skip, needed, codec)


def _metaimage_layout(path: Path, head: bytes) -> _Layout | None:
    match = re.search(rb"^ElementDataFile\s*=\s*(.*?)\r?\n", head, re.MULTILINE)
    if match is None:
        if b"ElementDataFile" not in head and len(head) < _HEADER_LIMIT and b"NDims" in head:
            raise CaseError(f"{path}: a MetaImage header without ElementDataFile (no voxel data)")
        return None
    fields = {}
    for line in head[:match.start()].decode("latin-1").splitlines():
        key, _, value = line.partition("=")
        fields[key.strip()] = value.strip()
    size = _MET_SIZE.get(fields.get("ElementType", ""))
    try:
        dims = [int(v) for v in fields.get("DimSize", "").split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except ValueError:
        return None
    if size is None or not dims or header_size != 0:
        return None  # array element types, skipped headers: left to ITK
    if any(n < 1 for n in dims) or channels < 1:
        raise CaseError(f"{path}: MetaImage DimSize {dims}, {channels} channel(s); damaged header")
    codec = "zlib" if fields.get("CompressedData", "False").lower() == "true" else None
    target = match.group(1).decode("latin-1").strip()
    needed = math.prod(dims) * channels * size
    if target == "LOCAL":
        return _Layout(path, match.end(), needed, codec)
    if "%" in target or target.split()[0] == "LIST":
        return None
    return _Layout(path.parent / target, 0, needed, codec)


def _decoded_bytes(path: Path, offset: int, codec: str, needed: int) -> tuple[int, str | None]:
    """Bytes that ``codec`` decodes from ``path`` after ``offset``, counted chunk by chunk and no further than
    ``needed`` (memory: a chunk; time: the needed part only), with the decoder's complaint if it failed. Concatenated
    gzip or bzip2 streams count as one, as their readers take them."""
    magic = {"gzip": b"\x1f\x8b", "bzip2": b"BZh"}.get(codec)

    def decoder():
        return bz2.BZ2Decompressor() if codec == "bzip2" else zlib.decompressobj(47)  # 47: zlib or gzip header

    seen, d, pending = 0, decoder(), b""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while seen < needed:
                if d.eof:  # one stream ended: another may follow
                    rest, pending = d.unused_data + pending, b""
                    rest = rest or f.read(_CHUNK)
                    if magic is None or not rest.startswith(magic):
                        return seen, None
                    d, pending = decoder(), rest
                if codec == "bzip2" and not d.needs_input:
                    out = d.decompress(b"", _CHUNK)
                else:
                    pending = pending or f.read(_CHUNK)
                    if not pending:
                        return seen + (len(d.flush()) if codec != "bzip2" else 0), None
                    out = d.decompress(pending, _CHUNK)
                    pending = b"" if codec == "bzip2" else d.unconsumed_tail
                seen += len(out)
    except (OSError, EOFError, zlib.error, ValueError) as e:
        return seen, str(e)
    return seen, None


def check_data_size(path: Path) -> None:
    """Raise CaseError when ``path`` (or its data file) holds less voxel data than its header declares; formats and
    encodings not understood here (text encodings, file lists) are left to ITK, which fails on them itself."""
    name = path.name.lower()
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_LIMIT)
    except OSError as e:
        raise CaseError(f"{path}: cannot read it ({e.strerror or e})") from None
    skip = 0  # decoded bytes before the voxel data (a .nii.gz header)
    if name.endswith(".nii.gz"):
        try:
            head = zlib.decompressobj(47).decompress(head, 544)
        except zlib.error as e:
            raise CaseError(f"{path}: not a gzip file ({e})") from None
        layout = _nifti_layout(path, head)
        if layout is not None:
            skip, layout.offset, layout.codec = layout.offset, 0, "gzip"
    elif name.endswith(".nii"):
        layout = _nifti_layout(path, head)
    elif name.endswith(".nrrd"):
        layout = _nrrd_layout(path, head)
    elif name.endswith((".mha", ".mhd")):
        layout = _metaimage_layout(path, head)
    else:
        return
    if layout is None:
        return
    if not layout.data_file.is_file():
        raise CaseError(f"{path}: its voxel data file {layout.data_file} does not exist")
    problem = None
    if layout.codec is None:
        held = max(layout.data_file.stat().st_size - layout.offset, 0)
    else:
        seen, problem = _decoded_bytes(layout.data_file, layout.offset, layout.codec, skip + layout.needed)
        held = max(seen - skip, 0)
    if held < layout.needed:
        kind = {"gzip": "truncated gzip file", "bzip2": "truncated bzip2 data", "zlib": "truncated compressed data",
                None: "truncated file"}[layout.codec]
        what = "holds none (a header only)" if held == 0 else f"holds {held:,}"
        where = "" if layout.data_file == path else f" ({layout.data_file.name})"
        raise CaseError(f"{path}: {kind}: the header declares {layout.needed:,} bytes of voxel data, the file"
                        f"{where} {what}" + (f" ({problem})" if problem else "") + "; skipped")


def header_spacing(path: Path) -> tuple | None:
    """The spacing a NIfTI header states (pixdim), which ITK silently replaces by 1 where it is 0 or NaN."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_LIMIT)
        if name.endswith(".gz"):
            head = zlib.decompressobj(47).decompress(head, 544)
        layout = _nifti_layout(path, head)
    except (OSError, zlib.error, CaseError):
        return None  # check_data_size names the problem
    return layout.spacing if layout else None


def _named_data_files(path: Path, head: bytes) -> list[str]:
    """The data files a NRRD or MetaImage header names (single, pattern, or LIST entries), as written."""
    text = head.decode("latin-1")
    lines = text.splitlines()
    if head.startswith(b"NRRD"):
        for i, line in enumerate(lines):
            key, _, value = line.partition(":")
            if key.strip().lower() in ("data file", "datafile"):
                value = value.strip().lstrip("=").strip()
                if value.split()[:1] == ["LIST"]:
                    return [entry.strip() for entry in lines[i + 1:] if entry.strip()]
                return [value.split()[0] if "%" in value else value]
        return []
    for i, line in enumerate(lines):
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            value = value.strip()
            if value in ("LOCAL", ""):
                return []
            if value.split()[:1] == ["LIST"]:
                return [entry.strip() for entry in lines[i + 1:] if entry.strip()]
            return [value.split()[0] if "%" in value else value]
    return []


def check_data_files(path: Path) -> None:
    """Raise CaseError when a NRRD or MetaImage header names a data file outside its own folder (an absolute path, or
    one that leaves the folder through ``..`` or a link): reading it would read another file of the machine."""
    name = path.name.lower()
    if not name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_LIMIT)
    except OSError:
        return  # check_data_size names it
    if name.endswith((".nrrd", ".nhdr")) and not head.startswith(b"NRRD"):
        return
    if not name.endswith((".nrrd", ".nhdr")):  # a MetaImage header ends at ElementDataFile's line
        match = re.search(rb"^ElementDataFile\s*=.*$", head, re.MULTILINE)
        if match is None:
            return
        head = head if b"LIST" in match.group(0) else head[:match.end()]
    else:
        stop = min((i for mark in (b"\n\n", b"\r\n\r\n") if (i := head.find(mark)) >= 0), default=len(head))
        head = head[:stop]
    folder = path.resolve().parent  # the header's own folder, also when path is a link to it
    for entry in _named_data_files(path, head):
        target = (folder / entry).resolve()
        if Path(entry).is_absolute() or not target.is_relative_to(folder):
            raise CaseError(f"{path}: its header names the data file {entry!r}, outside the header's folder; refused "
                            f"(it would read another file): keep the data beside the header")
