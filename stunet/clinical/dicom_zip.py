"""A zipped DICOM series, extracted within limits: :data:`MAX_ZIP_BYTES`, :data:`MAX_ZIP_RATIO` and
:data:`MAX_ZIP_MEMBERS` are checked on the central directory before anything is written
(:func:`stunet.archives.check_zip_sizes`) and the bytes counted again while extracting (declared sizes can lie)."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from stunet.archives import ZipLimits, ZipRefused, check_zip_sizes, size_text
from stunet.clinical.dicom_headers import DicomError

# A series of 2000 slices of 1024 x 1024 int16 pixels is 4.2 GB: unzip anything larger yourself and give the folder.
MAX_ZIP_BYTES = 4 * 2 ** 30  # extracted bytes, all members together
MAX_ZIP_RATIO = 100  # extracted / compressed bytes; DICOM deflates 2-10x, a zip bomb 1000x
ZIP_RATIO_FROM_BYTES = 32 * 2 ** 20  # the ratio is checked from this many extracted bytes (small sparse test
#                                      series deflate far better than 100x, harmlessly)
MAX_ZIP_MEMBERS = 100_000
LIMITS = ZipLimits(MAX_ZIP_BYTES, MAX_ZIP_RATIO, ZIP_RATIO_FROM_BYTES, MAX_ZIP_MEMBERS)
_CHUNK = 1 << 20


def _check_members(path: Path, archive: zipfile.ZipFile, root: Path) -> list[zipfile.ZipInfo]:
    """The members, refused when over the limits, named outside ``root``, encrypted, or larger than the free space."""
    members = archive.infolist()
    try:
        declared = check_zip_sizes(members, LIMITS)
    except ZipRefused as e:
        raise DicomError(f"{path}: {e}; not extracted (unzip it yourself and give the folder)") from None
    for member in members:
        target = (root / member.filename).resolve()
        if target != root and not target.is_relative_to(root):
            raise DicomError(f"{path}: member {member.filename!r} would be written outside the folder")
        if member.flag_bits & 0x1:
            raise DicomError(f"{path}: member {member.filename!r} is encrypted; unzip it yourself")
    free = shutil.disk_usage(root).free
    if declared > free:
        raise DicomError(f"{path}: extracts to {size_text(declared)}, more than the {size_text(free)} free in {root}")
    return members


def extract_zip(path: Path, into: Path) -> Path:
    """The members of a zip under ``into``, within the limits of this module (checked on the central directory, then
    counted while extracting); names that leave the folder, encrypted members and unreadable archives are refused."""
    into = Path(into)
    root = into.resolve()
    try:
        with zipfile.ZipFile(path) as archive:
            total = 0
            for member in _check_members(path, archive, root):
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
