"""``stunet-report``: the cohort page of unlabelled predictions (a stunet-predict output folder).

Per case, the statistics come from its ``case.statistics.json`` (stunet-predict --statistics, with the quality-control
fields where it wrote them), or, when that file is absent, are computed from the label map alone: voxels, volume in
ml and whether the label touches the image border (no intensities: the image is not read).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stunet.atomic import atomic_write
from stunet.evaluation.pairing import (LabelSet, default_name, find_label_images, read_label_file,
                                       read_label_image)


def label_map_statistics(array: np.ndarray, spacing, names: dict[int, str] | None = None,
                         slab: int = 16) -> dict[str, dict]:
    """label name -> ``{"label", "voxels", "volume_ml", "touches_border"}`` of every label in ``names`` (default:
    every label present), counted in slabs of ``slab`` planes so memory stays small."""
    from scipy import ndimage

    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    counts = np.zeros(0, dtype=np.int64)
    for start in range(0, max(array.shape[0], 1), slab):
        part = np.asarray(array[start:start + slab]).ravel()
        if part.size == 0:
            continue
        if part.min() < 0:
            part = part[part >= 0]
        found = np.bincount(part)
        counts = np.pad(counts, (0, max(0, found.size - counts.size)))
        counts[:found.size] += found
    boxes = ndimage.find_objects(array.view(np.uint8) if array.dtype == bool else array)
    wanted = names if names is not None else {int(v): default_name(int(v)) for v in np.flatnonzero(counts) if v}
    out = {}
    for value, name in sorted(wanted.items()):
        if value == 0:
            continue
        voxels = int(counts[value]) if value < counts.size else 0
        box = boxes[value - 1] if 0 < value <= len(boxes) else None
        touches = box is not None and any(s.start == 0 or s.stop == n for s, n in zip(box, array.shape))
        out[name] = {"label": int(value), "voxels": voxels, "volume_ml": voxels * voxel_ml,
                     "touches_border": bool(touches)}
    return out


def _names(folder: Path) -> dict[int, str] | None:
    """The label names of the predictions folder itself (stunet-predict's labels.json, or a dataset.json there)."""
    for candidate in (folder / "labels.json", folder / "dataset.json"):
        if candidate.is_file():
            labels: LabelSet = read_label_file(candidate)
            return {values[0]: name for name, values in labels.labels.items() if len(values) == 1}
    return None


def report_predictions(folder: Path | str, output: Path | str | None = None, progress=None) -> Path:
    """Write the cohort page of a predictions folder (default ``folder/report.html``) and return its path."""
    from stunet.evaluation.report import prediction_report, read_statistics

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    statistics = read_statistics(folder)
    images = find_label_images(folder)
    if not images and not statistics:
        raise ValueError(f"{folder}: no predictions (label images or case.statistics.json files)")
    names = _names(folder)
    computed = []
    for case, path in sorted(images.items()):
        if case in statistics:
            continue
        image = read_label_image(path)
        array = image.array
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            array = np.rint(array).astype(np.int32)
        statistics[case] = label_map_statistics(array, tuple(reversed(image.spacing)), names)
        computed.append(case)
        if progress:
            progress(f"{case}: statistics computed from the label map")
    statistics = dict(sorted(statistics.items()))
    target = Path(output) if output is not None else folder / "report.html"
    if target.is_dir() or (output is not None and not target.suffix):
        target = target / "report.html"
    page = prediction_report(statistics, str(folder), computed)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: tmp.write_text(page, encoding="utf-8", errors="backslashreplace"))
    return target
