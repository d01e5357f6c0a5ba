"""TotalSegmentator-layout datasets to nnU-Net v2 raw datasets with one multi-label map per case.

Layout read: ``SOURCE/<subject>/ct.nii.gz`` and ``SOURCE/<subject>/segmentations/<structure>.nii.gz`` (one binary mask
per structure), and ``SOURCE/meta.csv`` (``;``-separated, columns ``image_id`` and ``split``) when present: subjects
of the ``test`` split go to imagesTs/labelsTs, the others to imagesTr/labelsTr, and ``official_split.json`` records
train/val/test.

Labels: the released STU-Nets' 105-class order (``totalseg104``, their pretrained configs' labels) or TotalSegmentator
v2's 117 classes (``totalseg_v2_117``). A structure without a mask file becomes background, with a warning.
Overlapping masks: the smaller structure (fewer voxels in that subject) wins; overlaps are boundary disagreements,
where a small structure loses proportionally more than a large one.

File names: a source path that is not valid UTF-8 (ITK aborts the process on one) is read through symbolic links with
plain names (:func:`stunet.paths.itk_readable`); a subject whose folder name is not valid UTF-8 or holds a control
character (a line break) is refused, since that name would name its files in the dataset, and so is an output folder
(``--raw``) that is not valid UTF-8: nnU-Net reads the dataset with ITK.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from stunet.atomic import atomic_write, partial_folder
from stunet.paths import is_utf8, itk_readable
from stunet.weights.pretrained import get_pretrained_config

OVERLAP_RULE = "where masks overlap, the smaller structure (fewer voxels in that subject) wins"


def label_order(name: str) -> dict[int, str]:
    if name == "totalseg104":
        return dict(get_pretrained_config("stunet_small.totalseg104").labels)
    if name == "totalseg_v2_117":
        data = json.loads(resources.files("stunet.nnunet").joinpath("totalseg_v2_labels.json").read_text())
        return {int(k): v for k, v in data["labels"].items()}
    raise ValueError(f"unknown label order {name!r}; known: totalseg104, totalseg_v2_117")


def read_split(source: Path) -> dict[str, str]:
    """subject -> 'train' | 'val' | 'test' from meta.csv, or {} without one."""
    meta = source / "meta.csv"
    if not meta.is_file():
        return {}
    try:
        with open(meta, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{meta}: not a ';'-separated text file ({e})") from None
    if not rows or "image_id" not in rows[0] or "split" not in rows[0]:
        raise ValueError(f"{meta}: expected ';'-separated columns image_id and split")
    return {row["image_id"].strip(): row["split"].strip() for row in rows}


def check_subject_name(subject: Path) -> None:
    """ValueError for a subject folder whose name cannot name the case's files: not valid UTF-8 (ITK, and so nnU-Net,
    aborts on such a file name) or holding a control character (a line break in a case name breaks every listing)."""
    if not is_utf8(subject.name):
        raise ValueError(f"{subject}: the folder's name is not valid UTF-8; it would name the case's files, which ITK "
                         f"(and so nnU-Net) cannot open; rename the folder")
    if not subject.name.isprintable():
        raise ValueError(f"{subject}: the folder's name holds a control character (such as a line break); it would "
                         f"name the case's files; rename the folder")


def convert_subject(subject: Path, labels: dict[int, str], image_out: Path, label_out: Path) -> list[str]:
    """Write one case; returns the structures that had no mask. Files whose paths ITK cannot open are read through
    links in a temporary folder."""
    check_subject_name(subject)
    with tempfile.TemporaryDirectory(prefix="stunet-totalseg-") as links:
        return _convert_subject(subject, labels, image_out, label_out, Path(links))


def _convert_subject(subject: Path, labels: dict[int, str], image_out: Path, label_out: Path,
                     links: Path) -> list[str]:
    import numpy as np
    import SimpleITK as sitk  # here, in the worker: the command's parser and --help do not load ITK

    ct_path = subject / "ct.nii.gz"
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(itk_readable(ct_path, links)))
    reader.ReadImageInformation()
    size = reader.GetSize()
    masks, missing = [], []
    for index, name in labels.items():
        if index == 0:
            continue
        path = subject / "segmentations" / f"{name}.nii.gz"
        if not path.is_file():
            missing.append(name)
            continue
        mask = sitk.ReadImage(str(itk_readable(path, links)))
        if mask.GetSize() != size:
            raise ValueError(f"{path}: size {mask.GetSize()} differs from its ct.nii.gz ({size})")
        array = sitk.GetArrayViewFromImage(mask) > 0
        masks.append((int(array.sum()), index, array))
    label_map = np.zeros(size[::-1], dtype=np.uint8 if max(labels) < 256 else np.uint16)
    for _, index, array in sorted(masks, key=lambda m: -m[0]):  # largest first: smaller structures overwrite
        label_map[array] = index
    seg = sitk.GetImageFromArray(label_map)
    seg.SetSpacing(reader.GetSpacing()), seg.SetOrigin(reader.GetOrigin()), seg.SetDirection(reader.GetDirection())
    partial = partial_folder(label_out.parent.parent)  # the dataset folder: not listed by nnU-Net
    atomic_write(label_out, lambda tmp: sitk.WriteImage(seg, str(tmp), useCompression=True), partial)
    atomic_write(image_out, lambda tmp: shutil.copyfile(ct_path, tmp), partial)  # last: it marks the case as done
    return missing


PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
MARKER = ".stunet-totalseg.json"  # what a dataset folder was converted from: a rerun with the same resumes


def check_dataset_target(raw: Path, dataset_id: int, name: str, source: Path, order: str, overwrite: bool) -> Path:
    """The dataset folder ``raw/Dataset<id>_<name>``, or ValueError: a name that is not plain (it becomes a path), an
    id outside 1-999 or already used by another dataset name, or a folder that another conversion wrote (unless
    ``overwrite``). A folder converted from the same source with the same label order is resumed."""
    if not PLAIN_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"--name {name!r}: a dataset name is a plain name (letters, digits, '_', '-', '.'; no '/' "
                         f"or '..')")
    if not 1 <= dataset_id <= 999:
        raise ValueError(f"--dataset-id {dataset_id}: nnU-Net dataset ids are 1-999")
    if not is_utf8(os.path.abspath(raw)):
        raise ValueError(f"--raw {raw}: the path is not valid UTF-8; nnU-Net reads its datasets with ITK, which cannot "
                         f"open such paths (it aborts); choose another folder")
    folder = Path(raw) / f"Dataset{dataset_id:03d}_{name}"
    roots = [Path(raw)] + [Path(os.environ[v]) for v in ("nnUNet_preprocessed", "nnUNet_results") if os.environ.get(v)]
    others = sorted(str(p) for root in roots if root.is_dir() for p in root.glob(f"Dataset{dataset_id:03d}_*")
                    if p.name != folder.name)
    if others:
        raise ValueError(f"dataset id {dataset_id} already belongs to {', '.join(others)}; nnU-Net finds datasets by "
                         f"id: choose another --dataset-id")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file; remove it or choose another --name")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        try:
            marker = json.loads((folder / MARKER).read_text())
        except (OSError, ValueError):
            marker = None
        wanted = {"source": str(Path(source).resolve()), "labels": order}
        if marker != wanted:
            made = (f"from {marker.get('source')} with label order {marker.get('labels')}" if isinstance(marker, dict)
                    else "by something other than stunet-totalseg")
            raise ValueError(f"{folder} exists, converted {made}; pass --overwrite to write into it anyway, or choose "
                             f"another --dataset-id/--name")
    return folder


def write_marker(folder: Path, source: Path, order: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"source": str(Path(source).resolve()), "labels": order}))


def plan_conversion(source: Path, folder: Path) -> list[tuple[Path, Path, Path]]:
    """(subject folder, image output, label output) for every subject, by the official split."""
    if not Path(source).is_dir():
        raise ValueError(f"{source}: not a folder; give the TotalSegmentator folder (<subject>/ct.nii.gz)")
    split = read_split(source)
    subjects = sorted(p for p in source.iterdir() if p.is_dir() and (p / "ct.nii.gz").is_file())
    if not subjects:
        raise ValueError(f"{source}: no <subject>/ct.nii.gz folders; expected the TotalSegmentator layout")
    jobs = []
    for subject in subjects:
        part = "Ts" if split.get(subject.name) == "test" else "Tr"
        jobs.append((subject, folder / f"images{part}" / f"{subject.name}_0000.nii.gz",
                     folder / f"labels{part}" / f"{subject.name}.nii.gz"))
    return jobs


def write_dataset_files(source: Path, folder: Path, labels: dict[int, str], order: str, jobs) -> None:
    split = read_split(source)
    train = [s.name for s, image, label in jobs if image.parent.name == "imagesTr" and image.is_file()
             and label.is_file()]  # converted, now or before (a failed subject is not counted)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {name: index for index, name in labels.items()},
        "numTraining": len(train), "file_ending": ".nii.gz", "name": folder.name,
        "description": f"converted from {source} by stunet-totalseg: label order {order}; {OVERLAP_RULE}; "
                       f"structures without a mask are background"}, indent=2))
    if split:
        (folder / "official_split.json").write_text(json.dumps(
            {part: sorted(s for s, p in split.items() if p == part) for part in ("train", "val", "test")}, indent=2))
