"""``stunet-report``: the cohort page of unlabelled predictions (a stunet-predict output folder).

Per case, the statistics come from its ``case.statistics.json`` (stunet-predict --statistics, with the quality-control
fields where it wrote them), or, when that file is absent, are computed from the label map alone: voxels, volume in
ml and whether the label touches the image border (no intensities: the image is not read).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stunet.atomic import atomic_write
from stunet.evaluation.pairing import (LabelSet, default_name, find_label_images, label_array, label_boxes,
                                       read_label_file, read_label_image)


def label_map_statistics(array: np.ndarray, spacing, names: dict[int, str] | None = None, slab: int = 16,
                         source: str = "the label map") -> dict[str, dict]:
    """label name -> ``{"label", "voxels", "volume_ml", "touches_border"}`` of every label in ``names`` (default:
    every label present) of a label map (:func:`.pairing.label_array`'s), each counted within its bounding box
    (:func:`.pairing.label_boxes`, in slabs of ``slab`` planes, refusing more than MAX_LABELS labels, naming
    ``source``)."""
    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    boxes = label_boxes(array, source, slab)
    wanted = names if names is not None else {value: default_name(value) for value in sorted(boxes)}
    out = {}
    for value, name in sorted(wanted.items()):
        if value == 0:
            continue
        box = boxes.get(value)
        voxels = 0 if box is None else int(np.count_nonzero(array[box] == value))
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
        statistics[case] = label_map_statistics(label_array(image.array, path), tuple(reversed(image.spacing)), names,
                                                source=str(path))
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
