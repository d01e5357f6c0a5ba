"""Zip archives within limits: what a central directory declares (members, bytes, compression ratio) is checked
before any member is read, by :func:`check_zip_sizes`, for every room that opens a zip (DICOM series, torch
checkpoints)."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass


@dataclass(frozen=True)
class ZipLimits:
    """What an archive may declare."""
    max_bytes: int  # uncompressed bytes, all members together
    max_ratio: float  # uncompressed / compressed bytes, of each member and of the whole archive
    ratio_from_bytes: int  # the ratio is checked from this many uncompressed bytes (small, sparse members are harmless)
    max_members: int | None = None


class ZipRefused(ValueError):
    """An archive over its limits; the message says which (without the archive's path: the caller names it)."""


def size_text(n: float) -> str:
    """A byte count in GiB or MiB."""
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def _ratio_exceeded(uncompressed: int, compressed: int, limits: ZipLimits) -> bool:
    return uncompressed >= limits.ratio_from_bytes and uncompressed > limits.max_ratio * max(compressed, 1)


def check_zip_sizes(members: list[zipfile.ZipInfo], limits: ZipLimits) -> int:
    """The uncompressed bytes the members declare, all together; raises :class:`ZipRefused` when they are too many,
    too large, or a member or the archive expands more than ``limits.max_ratio`` (a zip bomb)."""
    if limits.max_members is not None and len(members) > limits.max_members:
        raise ZipRefused(f"{len(members):,} members, over the {limits.max_members:,} allowed")
    declared = sum(m.file_size for m in members)
    if declared > limits.max_bytes:
        raise ZipRefused(f"extracts to {size_text(declared)}, over the {size_text(limits.max_bytes)} allowed (a zip "
                         f"bomb?)")
    for member in members:
        if _ratio_exceeded(member.file_size, member.compress_size, limits):
            ratio = member.file_size / max(member.compress_size, 1)
            raise ZipRefused(f"member {member.filename!r} expands {size_text(member.compress_size)} into "
                             f"{size_text(member.file_size)} (ratio {ratio:.0f}, over {limits.max_ratio:g}; a zip "
                             f"bomb?)")
    compressed = sum(m.compress_size for m in members)
    if _ratio_exceeded(declared, compressed, limits):
        raise ZipRefused(f"{size_text(compressed)} extracting to {size_text(declared)} (ratio "
                         f"{declared / max(compressed, 1):.0f}, over {limits.max_ratio:g}; a zip bomb?)")
    return declared
