"""What stunet-predict writes beside each segmentation: statistics, previews, DICOM-SEG, and the run's provenance.

Every file goes through :func:`stunet.atomic.atomic_write`. Label names travel with every output: ``labels.json``,
the NIfTI header's ``descrip`` field (``stunet labels 1=liver;2=spleen...``, cut at 80 bytes) and a NIfTI header
extension (code 6, "comment") holding the whole ``labels.json``, the SEG's segment labels, the statistics' names and
the preview's legend.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from stunet.atomic import atomic_write
from stunet.digest import file_sha256
from stunet.version import __version__


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
