"""What a folder run writes for each case (:func:`write_case`: the segmentation and, beside it, statistics, previews,
probabilities, DICOM-SEG, RT Structure Set, a mask per label), and for the folder: ``statistics.csv`` and
``provenance.json``.

Every file goes through :func:`stunet.atomic.atomic_write`, a case's folder of masks is renamed into place whole.
Label names travel with every output: ``labels.json``, the NIfTI header's ``descrip`` field (``stunet labels
1=liver;2=spleen...``, cut at 80 bytes) and a NIfTI header extension (code 6, "comment") holding the whole
``labels.json``, the SEG's segment labels, the RT Structure Set's ROI names, the statistics' names, the masks' file
names and the preview's legend.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from stunet.atomic import atomic_write
from stunet.digest import file_sha256
from stunet.errors import CaseError
from stunet.locks import file_lock
from stunet.prediction.masks import write_masks
from stunet.paths import image_ending, is_utf8
from stunet.version import __version__

PROVENANCE = "provenance.json"
PROVENANCE_LOCK = ".stunet-provenance.lock"


def label_description(names: dict[int, str]) -> str:
    return "stunet labels " + ";".join(f"{i}={n}" for i, n in sorted(names.items()) if i)


def describe_nifti(path: Path, names: dict[int, str]) -> None:
    """Add the label names to a written NIfTI file's header (descrip and a comment extension); voxels untouched."""
    import nibabel as nib
    image = nib.load(str(path))
    header = image.header.copy()
    header["descrip"] = label_description(names)[:79].encode()
    header.extensions.append(nib.nifti1.Nifti1Extension(6, json.dumps(
        {str(i): n for i, n in sorted(names.items())}).encode()))
    nib.save(type(image)(np.asanyarray(image.dataobj), image.affine, header), str(path))


def provenance(model, checkpoints: list[Path], options: dict) -> dict:
    import torch
    return {"stunet_version": __version__, "model": model.description, "configuration": model.configuration,
            "checkpoints": [{"file": str(p), "sha256": file_sha256(p)} for p in checkpoints if Path(p).is_file()],
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()},
            "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_extras(out_dir: Path, name: str, seg: np.ndarray, image: np.ndarray, spacing_zyx, names: dict[int, str],
                 partial: Path, statistics: bool, preview: bool, quality: dict[str, dict] | None = None) -> list[dict]:
    """Statistics JSON (returns its CSV rows; with ``quality``, the QC fields of each label join its statistics) and
    the preview PNG of one case; ``seg`` and ``image`` (z, y, x)."""
    rows = []
    if statistics:
        from stunet.clinical.statistics import csv_rows, label_statistics, to_json_ready
        stats = label_statistics(seg, image, spacing_zyx, names)
        for label, fields in (quality or {}).items():
            stats.setdefault(label, {}).update(fields)
        atomic_write(out_dir / f"{name}.statistics.json", lambda tmp: tmp.write_text(
            json.dumps(to_json_ready(stats), indent=2)), partial)
        rows = csv_rows(name, stats)
    if preview:
        from stunet.clinical.preview import write_preview
        atomic_write(out_dir / f"{name}.png", lambda tmp: write_preview(tmp, image, seg, spacing_zyx, names, name),
                     partial)
    return rows


def write_seg_for_series(target: Path, labels: sitk.Image, series, names: dict[int, str], partial: Path) -> None:
    """A DICOM-SEG of ``labels`` (on the series' grid) referencing the series' files."""
    from stunet.clinical.dicom_seg import write_dicom_seg
    if not series.files:
        raise ValueError(f"{series.name}: DICOM-SEG needs the source files (a zip's series is extracted only while "
                         f"it is read); unzip it first")
    atomic_write(target, lambda tmp: write_dicom_seg(tmp, sitk.GetArrayFromImage(labels), series.files, names,
                                                     software_version=__version__), partial)


def rtstruct_algorithm(record: dict):
    """The :class:`~stunet.clinical.rtstruct.Algorithm` a run's provenance record (:func:`provenance`) describes."""
    from stunet.clinical.rtstruct import Algorithm
    return Algorithm(record.get("stunet_version", __version__), str(record.get("model", "")),
                     tuple(c["sha256"] for c in record.get("checkpoints", [])))


def write_rtstruct_for_series(target: Path, labels: sitk.Image, series, names: dict[int, str], partial: Path,
                              algorithm) -> None:
    """An RT Structure Set of ``labels`` (on the series' grid) referencing the series' files; ``algorithm``: a
    :class:`~stunet.clinical.rtstruct.Algorithm`."""
    from stunet.clinical.rtstruct import write_rtstruct
    if not series.files:
        raise ValueError(f"{series.name}: the RT Structure Set needs the source files (a zip's series is extracted "
                         f"only while it is read); unzip it first")
    atomic_write(target, lambda tmp: write_rtstruct(tmp, sitk.GetArrayFromImage(labels), series.files, names,
                                                    algorithm), partial)


def write_case(result, segmenter, writer, target: Path, names: dict[int, str], partial: Path, *, statistics: bool,
               preview: bool, nifti: bool, seg_target: Path | None, rtstruct_target: Path | None = None,
               algorithm=None, masks_target: Path | None = None) -> None:
    """Every output of one case (a :class:`~stunet.prediction.case.CaseResult`), each written atomically, beside
    ``target``, the output that marks the case done, written last: statistics and preview (when the result kept its
    image), probabilities (when it has them), the DICOM-SEG at ``seg_target``, the RT Structure Set at
    ``rtstruct_target`` (naming ``algorithm``, a :class:`~stunet.clinical.rtstruct.Algorithm`), the folder of one
    mask per label at ``masks_target`` (:func:`~stunet.prediction.masks.write_masks`) and, with ``nifti``, the label
    file in the input's format with the label names in its header."""
    out_dir = target.parent
    seg, properties = result.labels, result.properties
    if rtstruct_target is not None and not seg.any():
        raise CaseError(f"{result.name}: nothing labelled, and an RT Structure Set holds at least one ROI; nothing "
                        f"written (write --output-type nifti or dicom_seg for an empty segmentation)")
    if result.image is not None:
        write_extras(out_dir, result.name, seg, result.image, properties["spacing"], names, partial, statistics,
                     preview, result.quality)
    if result.probabilities is not None:
        atomic_write(out_dir / f"{result.name}.npz", lambda tmp: np.savez_compressed(
            tmp, probabilities=result.probabilities, labels=np.array([names[i] for i in sorted(names)])), partial)
    if seg_target is not None:
        write_seg_for_series(seg_target, segmenter.to_sitk(seg, properties), result.series, names, partial)
    if rtstruct_target is not None:
        write_rtstruct_for_series(rtstruct_target, segmenter.to_sitk(seg, properties), result.series, names, partial,
                                  algorithm or rtstruct_algorithm(segmenter.provenance()))
    if masks_target is not None:
        write_masks(masks_target, segmenter.to_sitk(seg, properties), names, partial)
    if nifti:
        def write(tmp: Path) -> None:
            # ITK aborts on a name that is not UTF-8: it writes a plain one, renamed afterwards
            plain = tmp if is_utf8(tmp) else tmp.with_name("output" + image_ending(tmp))
            writer.write_seg(seg, str(plain), properties)
            if plain != tmp:
                os.replace(plain, tmp)
            if tmp.name.endswith((".nii.gz", ".nii")):
                describe_nifti(tmp, names)
        atomic_write(target, write, partial)


def statistics_csv(out_dir: Path, names: list[str]) -> str | None:
    """The text of statistics.csv over the cases ``names`` whose statistics JSON is in ``out_dir`` (predicted now or
    before, by this process or another part); None when there is none."""
    from stunet.clinical.statistics import csv_rows, csv_text
    rows = []
    for name in names:
        path = out_dir / f"{name}.statistics.json"
        try:
            stats = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        rows += csv_rows(name, {k: {f: (float("nan") if v is None else v) for f, v in e.items()}
                                for k, e in stats.items()})
    return csv_text(rows) if rows else None


def record_cases(out_dir: Path, run: dict, cases: dict[str, dict]) -> None:
    """Merge ``cases`` (name -> its record) into ``out_dir/provenance.json``, whose other fields become ``run``'s.

    Read, merge and the atomic replacement happen under the folder's lock, so processes sharing the folder (parts,
    overlapping runs, reruns) keep each other's records: the file lists every case ever recorded there once, with
    its latest record. An unreadable provenance.json is replaced."""
    out_dir = Path(out_dir)
    with file_lock(out_dir / PROVENANCE_LOCK, f"the lock of {PROVENANCE}"):
        try:
            previous = json.loads((out_dir / PROVENANCE).read_text()).get("cases")
        except (OSError, ValueError, AttributeError, RecursionError):
            previous = None
        merged = {**(previous if isinstance(previous, dict) else {}), **cases}
        text = json.dumps({**run, "cases": merged}, indent=2)
        atomic_write(out_dir / PROVENANCE, lambda tmp: tmp.write_text(text))
