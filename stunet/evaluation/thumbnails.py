"""The pictures of an evaluation report: for the worst and the quality-flagged case-label pairs, the plane where the
reference and the prediction of the label disagree most (:func:`stunet.clinical.preview.disagreement_slice`, along
the first array axis), cut to the two masks' extent there with a margin, their contours drawn over the case's image
(``stunet-evaluate --images``) or over the masks alone. At most MAX_THUMBNAILS pictures of THUMBNAIL_PIXELS square;
each pair's label images are read once more (the comparison does not keep them).
"""
from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from stunet.clinical.preview import disagreement_png, disagreement_slice
from stunet.errors import printable
from stunet.evaluation.pairing import LabelSet, read_pair

MAX_THUMBNAILS = 24
MARGIN = 0.3  # of the masks' extent in the plane, on each side
MIN_SIDE = 24  # voxels: a small structure is shown with some surroundings


def chosen(rows: list[dict], metric: str | None, higher: bool, flagged: set[tuple[str, str]], per_label: int,
           limit: int = MAX_THUMBNAILS) -> list[tuple[str, str]]:
    """(case, label name) pairs to draw: the flagged ones first, then by turns each label's worst by ``metric``
    (``higher``: higher is better), at most ``per_label`` per label and ``limit`` in all."""
    picked = [key for key in sorted(flagged) if any((r["case"], r["name"]) == key for r in rows)][:limit]
    if metric is None:
        return picked
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        if not math.isnan(float(row[metric])):
            by_name.setdefault(row["name"], []).append(row)
    for mine in by_name.values():
        mine.sort(key=lambda r: (float(r[metric]) if higher else -float(r[metric]), r["case"]))
    for rank in range(per_label):
        for mine in by_name.values():
            if rank < len(mine) and len(picked) < limit and (mine[rank]["case"], mine[rank]["name"]) not in picked:
                picked.append((mine[rank]["case"], mine[rank]["name"]))
    return picked


def _window(reference: np.ndarray, prediction: np.ndarray) -> tuple[slice, slice]:
    both = np.argwhere(reference | prediction)
    if not both.size:
        return slice(None), slice(None)
    out = []
    for axis, size in enumerate(reference.shape):
        low, high = int(both[:, axis].min()), int(both[:, axis].max()) + 1
        pad = max(int(MARGIN * (high - low)), (MIN_SIDE - (high - low)) // 2, 2)
        out.append(slice(max(0, low - pad), min(size, high + pad)))
    return tuple(out)


def draw(pairs: Sequence[tuple[str, str]], files: dict[str, tuple[Path, Path]], labels: LabelSet,
         images: dict[str, Path] | None = None) -> dict[tuple[str, str], str]:
    """(case, label name) -> PNG data URI; ``files``: case -> (reference, prediction) paths; ``images``: case ->
    image path (drawn where it lies on the reference's grid). A case that cannot be read again gets no picture."""
    from stunet.io.reader import DEFAULT_MAX_VOXELS, read_image

    out = {}
    by_case: dict[str, list[str]] = {}
    for case, name in pairs:
        by_case.setdefault(case, []).append(name)
    for case, names in by_case.items():
        try:
            ref, pred = read_pair(case, *files[case], labels)
            image = None
            if images and case in images:
                picture = read_image(images[case], DEFAULT_MAX_VOXELS, dimensions=(2, 3))
                image = picture.array if picture.array.shape == ref.array.shape else None
        except (OSError, ValueError, KeyError):
            continue
        spacing = ref.spacing
        for name in names:
            values = labels.labels.get(name)
            if values is None:
                continue
            a, b = np.isin(ref.array, values), np.isin(pred.array, values)
            if a.ndim == 3:
                index = disagreement_slice(a, b)
                a, b = a[index], b[index]
                plane = image[index] if image is not None else None
                aspect, where = spacing[1] / spacing[2], f"plane {index}"
            else:
                plane, aspect, where = image, spacing[0] / spacing[1], "2D"
            window = _window(a, b)
            png = disagreement_png(a[window], b[window], None if plane is None else plane[window].astype(np.float64),
                                   aspect, printable(f"{case[:28]} · {name[:20]} · {where}"))
            out[(case, name)] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return out
