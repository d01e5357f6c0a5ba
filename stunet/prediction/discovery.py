"""Finding the cases of an input folder (nnU-Net's ``case_0000.nii.gz`` naming or plain files) and checking that
the output folder can be written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import re
import tempfile

from stunet.errors import CaseError
from stunet.paths import IMAGE_ENDINGS, split_ending

ENDINGS = IMAGE_ENDINGS  # found in any case (CT.NII.GZ); outputs end in lower case
_CHANNEL = re.compile(r"(.+)_(\d{4})", re.DOTALL)  # fullmatch; a newline in a name keeps its suffix


@dataclass
class Case:
    name: str
    files: list[Path]
    ending: str
    problem: str | None = field(default=None)


def has_image_ending(path: Path) -> bool:
    return split_ending(path) is not None


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (the 'DICM' marker after the 128-byte preamble), whatever its name; or a .dcm file."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


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
        split = split_ending(path)
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
