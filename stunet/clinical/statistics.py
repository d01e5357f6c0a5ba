"""Per-label statistics of a segmentation on its image's grid (``stunet-predict --statistics``).

For every output label: voxel count, volume in millilitres (count x voxel volume, spacing in mm), the mean, standard
deviation (population, ddof=0), median, minimum and maximum of the first input channel inside the label (as stored,
e.g. Hounsfield units for CT; NaN for an absent label), and whether the label touches the image border (any voxel on
one of the six faces). Written as ``case.statistics.json`` per case and one ``statistics.csv`` for the run.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

import numpy as np

from stunet.clinical.quality import QC_FIELDS

FIELDS = ["case", "label", "name", "voxels", "volume_ml", "mean", "std", "median", "min", "max", "touches_border"]


def label_statistics(seg: np.ndarray, image: np.ndarray, spacing: Sequence[float],
                     names: dict[int, str]) -> dict[str, dict]:
    """``seg`` and ``image`` share their shape (any axis order, ``spacing`` in mm per axis in that order);
    one entry per output label except background (0), keyed by name."""
    if seg.shape != image.shape:
        raise ValueError(f"segmentation {seg.shape} and image {image.shape} differ in shape")
    from scipy import ndimage

    voxel_ml = float(np.prod([float(s) for s in spacing])) / 1000.0
    boxes = ndimage.find_objects(seg) if seg.size and seg.dtype.kind in "iu" else None  # one pass for every label
    out = {}
    for label, name in sorted(names.items()):
        if label == 0:
            continue
        if boxes is None:
            box = tuple(slice(0, n) for n in seg.shape)
        else:
            box = boxes[label - 1] if 0 < label <= len(boxes) else None
        mask = seg[box] == label if box is not None else np.zeros((0,), dtype=bool)
        values = image[box][mask].astype(np.float64) if box is not None else np.zeros(0)
        count = int(values.size)
        nan = float("nan")
        out[name] = {"label": int(label), "voxels": count, "volume_ml": count * voxel_ml,
                     "mean": float(values.mean()) if count else nan, "std": float(values.std()) if count else nan,
                     "median": float(np.median(values)) if count else nan,
                     "min": float(values.min()) if count else nan, "max": float(values.max()) if count else nan,
                     "touches_border": bool(count) and _touches_border(mask, box, seg.shape)}
    return out


def _touches_border(mask: np.ndarray, box: tuple, shape: Sequence[int]) -> bool:
    """Whether the label (``mask`` inside its bounding ``box``) has a voxel on one of the image's faces."""
    for axis, (part, size) in enumerate(zip(box, shape)):
        if part.start == 0 and mask.take(0, axis).any():
            return True
        if part.stop == size and mask.take(-1, axis).any():
            return True
    return False


def to_json_ready(stats: dict) -> dict:
    """NaN (absent label) as null: JSON has no NaN."""
    return {k: {f: (None if isinstance(v, float) and math.isnan(v) else v) for f, v in e.items()}
            for k, e in stats.items()}


def csv_rows(case: str, stats: dict) -> list[dict]:
    return [{"case": case, "name": name, **{f: e[f] for f in FIELDS + QC_FIELDS if f in e}}
            for name, e in stats.items()]


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV; the quality-control columns (``--qc``) follow when any row has them."""
    buffer = io.StringIO()
    fields = FIELDS + [f for f in QC_FIELDS if any(f in row for row in rows)]
    writer = csv.DictWriter(buffer, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
