"""Finding the cases of an input folder, and checking their files before prediction (one clear message per case).

Before an image is read in full, its header is checked against the file: the voxel data it declares (size x
components x bytes per component) must be there, counted on disk for raw data and by a bounded streaming decompression
for compressed data (.nii.gz, gzip/bzip2 NRRD, compressed MetaImage): ITK reads a truncated or header-only NIfTI file
without an error, filling the missing voxels with zeros. The spacing must be finite and positive (ITK replaces a zero
or NaN NIfTI pixdim by 1 without a word), and the image must fit the voxel budget before and after resampling to the
model's spacing (:class:`VoxelBudget`; an absurd spacing turns a 20³ image into a 600³ one).
"""
from __future__ import annotations

import bz2
import math
import os
import re
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from stunet.memory_estimate import GIB, PredictionMemory, available_memory

ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
_CHANNEL = re.compile(r"(.+)_(\d{4})$")


class CaseError(Exception):
    """A case that cannot be processed; the message names the file and the cause."""


@dataclass
class Case:
    name: str
    files: list[Path]
    ending: str
    problem: str | None = field(default=None)


def _split(path: Path) -> tuple[str, str] | None:
    for ending in ENDINGS:
        if path.name.endswith(ending):
            return path.name[:-len(ending)], ending
    return None


def find_cases(source: Path, channels: int) -> list[Case]:
    """Cases in a folder (``case_0000.nii.gz``, ``case_0001.nii.gz``, ... or, for one channel, ``case.nii.gz``) or
    the one case of a file. Incomplete cases carry their ``problem`` instead of failing the whole run, and so do inputs
    that would write the same output (``a.nii.gz`` and ``a_0000.nii.gz``, or ``a_0000.nii.gz`` and ``a_0000.nrrd``):
    each of them is reported, none is predicted."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    grouped: dict[str, dict[int, Path]] = {}
    plain: list[tuple[str, Path, str]] = []
    endings: dict[str, str] = {}
    clashes: dict[str, list[Path]] = {}  # case name -> files that claim the same channel
    for path in files:
        split = _split(path)
        if split is None:
            continue
        stem, ending = split
        match = _CHANNEL.fullmatch(stem)
        if match:
            channel = int(match[2])
            if channel in grouped.get(match[1], {}):
                clashes.setdefault(match[1], [grouped[match[1]][channel]]).append(path)
            grouped.setdefault(match[1], {})[channel] = path
            endings[match[1]] = ending
        else:
            plain.append((stem, path, ending))
    cases = []
    for name, by_channel in grouped.items():
        found = sorted(by_channel)
        case = Case(name, [by_channel[c] for c in found], endings[name])
        if found != list(range(channels)):
            expected = ", ".join(f"{name}_{c:04d}" for c in range(channels))
            have = ", ".join(f"{name}_{c:04d}" for c in found)
            case.problem = f"{case.files[0]}: the model takes {channels} channel file(s) ({expected}); found {have}"
        cases.append(case)
    for stem, path, ending in plain:
        case = Case(stem, [path], ending)
        if channels != 1:
            case.problem = (f"{path}: the model takes {channels} channels, given as {stem}_0000{ending} ... "
                            f"{stem}_{channels - 1:04d}{ending}")
        cases.append(case)
    by_name: dict[str, list[Case]] = {}
    for case in cases:
        by_name.setdefault(case.name, []).append(case)
    for name, same in by_name.items():
        inputs = sorted({p for c in same for p in c.files} | set(clashes.get(name, [])))
        if len(same) > 1 or name in clashes:
            for case in same:
                case.problem = (f"{case.files[0]}: {', '.join(p.name for p in inputs)} would all write the output "
                                f"{name} (same case name); rename all but one, nothing of {name} is predicted")
    return sorted(cases, key=lambda c: (c.name, c.ending))


def check_output_folder(folder: Path) -> None:
    """Raise CaseError unless ``folder`` is (or can be created as) a folder this process can write in: checked by
    creating it and writing a file there, before any model is loaded."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CaseError(f"{folder}: the output folder is an existing file; give a folder (or, for one input file, "
                        f"an output file name with an image ending)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".stunet-write-test-"):
            pass
    except OSError as e:
        raise CaseError(f"{folder}: cannot write the outputs there ({e.strerror or type(e).__name__}); give a "
                        f"writable output folder") from None


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


# -- voxel budget ------------------------------------------------------------------------------------------------
ENV_MAX_VOXELS = "STUNET_MAX_VOXELS"
DEFAULT_MAX_VOXELS = 200_000_000  # at the model's spacing: about 585³; a whole-body CT at 1.5 mm is under 1e8
INPUT_VOXELS = 1_500_000_000  # of the image as stored (at least; --max-voxels raises it too)


def max_voxels(option: int | float | None = None) -> int:
    """The voxel budget: ``option`` (--max-voxels), else $STUNET_MAX_VOXELS, else DEFAULT_MAX_VOXELS."""
    value = option if option is not None else os.environ.get(ENV_MAX_VOXELS)
    if value is None or value == "":
        return DEFAULT_MAX_VOXELS
    try:
        number = int(float(value))
    except ValueError:
        raise ValueError(f"{ENV_MAX_VOXELS}={value!r} is not a number of voxels (e.g. 4e8)") from None
    if number < 1:
        raise ValueError(f"the voxel budget must be positive, got {value!r}")
    return number


@dataclass
class VoxelBudget:
    """The most voxels an image may have after resampling to ``target_spacing`` (the model's, in nnU-Net's axis order
    after ``transpose``), and as stored (at least INPUT_VOXELS)."""
    target_spacing: Sequence[float] | None = None
    transpose: Sequence[int] | None = None
    limit: int = DEFAULT_MAX_VOXELS
    memory: PredictionMemory | None = None  # checked against the memory available unless the budget was set
    explicit: bool = False  # by the user (--max-voxels or $STUNET_MAX_VOXELS): no memory check

    @classmethod
    def for_model(cls, model, limit: int | None = None, probability_maps: int = 0) -> "VoxelBudget":
        return cls(list(model.configuration_manager.spacing), list(model.plans_manager.transpose_forward),
                   max_voxels(limit), PredictionMemory.for_model(model, probability_maps),
                   limit is not None or bool(os.environ.get(ENV_MAX_VOXELS)))

    def resampled_shape(self, size_xyz: Sequence[int], spacing_xyz: Sequence[float]) -> list[int]:
        shape, spacing = list(size_xyz)[::-1], list(spacing_xyz)[::-1]  # nnU-Net's SimpleITK order: z, y, x
        if self.transpose:
            shape, spacing = [shape[i] for i in self.transpose], [spacing[i] for i in self.transpose]
        target = list(self.target_spacing)
        if len(target) < len(shape):  # 2D configurations keep the first axis
            target = [spacing[0], *target]
        return [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target)]

    def check(self, path: Path, size_xyz: Sequence[int], spacing_xyz: Sequence[float]) -> None:
        stored = math.prod(size_xyz)
        if stored > max(INPUT_VOXELS, self.limit):
            raise CaseError(f"{path}: {stored:,} voxels ({' x '.join(map(str, size_xyz))}), over the budget of "
                            f"{max(INPUT_VOXELS, self.limit):,}; raise it with --max-voxels N or {ENV_MAX_VOXELS}=N "
                            f"if the machine has the memory")
        if self.target_spacing is None:
            return
        shape = self.resampled_shape(size_xyz, spacing_xyz)
        voxels = math.prod(shape)
        if voxels > self.limit:
            raise CaseError(f"{path}: at the model's spacing {tuple(self.target_spacing)} mm its "
                            f"{' x '.join(map(str, size_xyz))} voxels of {tuple(round(s, 4) for s in spacing_xyz)} "
                            f"mm become {' x '.join(map(str, shape))} = {voxels:,} voxels, over the budget of "
                            f"{self.limit:,} (check the spacing in its header; raise the budget with --max-voxels N "
                            f"or {ENV_MAX_VOXELS}=N)")
        if self.memory is None or self.explicit:
            return
        stored = list(size_xyz)[::-1]
        need, available = self.memory.estimate(stored, shape), available_memory()
        if available is not None and need > available:
            raise CaseError(f"{path}: predicting its {' x '.join(map(str, size_xyz))} voxels ({' x '.join(map(str, shape))} "
                            f"at the model's spacing) takes about {need / GIB:.1f} GiB of memory (GiB by phase: "
                            f"{self.memory.describe(stored, shape)}), more than the {available / GIB:.1f} GiB "
                            f"available; free memory or use a machine with more, or crop or resample the image "
                            f"first (setting the budget with --max-voxels N or {ENV_MAX_VOXELS}=N skips this check)")


def _check_spacing(path: Path, spacing: Sequence[float], source: str) -> None:
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise CaseError(f"{path}: {source} spacing {tuple(spacing)} is not finite and positive; fix the header (the "
                        f"segmentation would be computed at a made-up scale)")


def check_files(case: Case, spatial_dims: int = 3, budget: VoxelBudget | None = None) -> None:
    """Raise CaseError for unreadable, corrupt, truncated, 2D/4D, empty, badly spaced, over-budget or mutually
    inconsistent channel files, before any is read in full."""
    first = None
    for path in case.files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError as e:
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            detail = lines[-1].replace("sitk::ERROR: ", "") if lines else "unreadable"
            raise CaseError(f"{path}: cannot read it as an image ({detail[:200]})") from None
        size, spacing = reader.GetSize(), reader.GetSpacing()
        if reader.GetDimension() != spatial_dims:
            raise CaseError(f"{path}: a {reader.GetDimension()}D image of size {size}; expected a {spatial_dims}D "
                            f"image (one file per channel)")
        if 0 in size:
            raise CaseError(f"{path}: empty image (size {size})")
        stated = header_spacing(path)
        if stated is not None:
            _check_spacing(path, stated, "the header's (pixdim)")
        _check_spacing(path, spacing, "the")
        (budget or VoxelBudget()).check(path, size, spacing)
        check_data_size(path)
        if first is None:
            first = (path, size, spacing)
        elif size != first[1] or not np.allclose(spacing, first[2], rtol=1e-4):
            raise CaseError(f"{path}: size {size} / spacing {tuple(round(s, 4) for s in spacing)} differs from "
                            f"{first[0].name} ({first[1]} / {tuple(round(s, 4) for s in first[2])})")


def check_values(case: Case, image: np.ndarray) -> np.ndarray:
    """Raise CaseError for channels without content (no finite voxel, or one value everywhere: an empty image, or an
    all-NaN one, which ITK reads as zeros); replace isolated NaN/inf by the channel's minimum."""
    for c, channel in enumerate(image):
        finite = np.isfinite(channel)
        if not finite.any():
            raise CaseError(f"{case.files[c]}: no finite voxel (all NaN or infinite)")
        if not finite.all():
            channel[~finite] = channel[finite].min()
        low, high = channel.min(), channel.max()
        if low == high:
            raise CaseError(f"{case.files[c]}: every voxel has the value {low:g}; an empty or all-NaN image")
    return image
