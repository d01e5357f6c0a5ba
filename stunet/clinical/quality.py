"""Quality control of a segmentation without labels (``stunet-predict --qc``): per output label, how sure the model
was and how the structure is shaped, and a flag when a documented rule fires.

- ``confidence``: the mean winning-class probability (softmax of the models' mean logits) over the voxels of the
  network's grid that the label wins; ``uncertain_fraction``: the share of those voxels won with a probability below
  0.5. Both come from the logits the export computes anyway (:class:`stunet.prediction.export.ConfidenceTally`), on
  the network's grid (every voxel there has the same volume), so they cost no second pass over any logits. Where an
  output label merges several model classes (``--label-map``), its voxels are those its classes win, each with its own
  winning probability.
- ``components`` and ``largest_component_fraction``: connected components of the label in the written label map
  (26-connectivity), and the share of the label's voxels in the largest one.
- ``flag``: empty, or the rules that fired, joined by "; " (thresholds below). Volume ranges seen in training labels
  are not known for the released models, so no volume rule applies yet.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

LOW_CONFIDENCE = 0.8  # a structure the model wins with a mean probability below this is flagged
HIGH_UNCERTAINTY = 0.2  # ... or of which more than this share of voxels is won with a probability below 0.5
FRAGMENTED = 0.9  # ... or whose largest component holds less than this share of its voxels
QC_FIELDS = ["confidence", "uncertain_fraction", "components", "largest_component_fraction", "flag"]


def label_confidence(voxels: Sequence[float], confidence: Sequence[float], uncertain: Sequence[float],
                     members: Mapping[int, Sequence[int]]) -> dict[int, tuple[float, float]]:
    """(confidence, uncertain_fraction) per output label from per-model-class sums; NaN where it wins no voxel."""
    voxels, confidence, uncertain = (np.asarray(a, dtype=np.float64) for a in (voxels, confidence, uncertain))
    out = {}
    for label, classes in members.items():
        classes = [c for c in classes if c < voxels.size]
        count = voxels[classes].sum() if classes else 0.0
        out[label] = ((confidence[classes].sum() / count, uncertain[classes].sum() / count) if count
                      else (float("nan"), float("nan")))
    return out


def components(seg: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[int, float]]:
    """(number of 26-connected components, share of the label's voxels in the largest) per label; each label is
    labelled inside its bounding box only (one pass over the map finds every box)."""
    from scipy import ndimage

    boxes = ndimage.find_objects(seg) if seg.size else []  # integer maps as they are: no copy of the volume
    structure = np.ones((3,) * seg.ndim, dtype=bool)
    out = {}
    for label in labels:
        box = boxes[label - 1] if 0 < label <= len(boxes) else None
        if box is None:
            out[label] = (0, float("nan"))
            continue
        mask = seg[box] == label
        numbered, count = ndimage.label(mask, structure)
        sizes = np.bincount(numbered.ravel())[1:]
        out[label] = (int(count), float(sizes.max() / sizes.sum()))
    return out


def flag(confidence: float, uncertain_fraction: float, count: int, largest: float) -> str:
    """The rules that fire for one structure, or "" (an absent structure is not flagged: it has no voxels to judge)."""
    rules = []
    if confidence == confidence and confidence < LOW_CONFIDENCE:
        rules.append(f"low confidence ({confidence:.2f} < {LOW_CONFIDENCE})")
    if uncertain_fraction == uncertain_fraction and uncertain_fraction > HIGH_UNCERTAINTY:
        rules.append(f"uncertain ({uncertain_fraction:.0%} of its voxels below 0.5)")
    if count > 1 and largest == largest and largest < FRAGMENTED:
        rules.append(f"fragmented ({count} components, the largest {largest:.0%})")
    return "; ".join(rules)


def quality(seg: np.ndarray, tally, members: Mapping[int, Sequence[int]], names: Mapping[int, str]) -> dict[str, dict]:
    """The QC fields per output label (keyed by name, background left out), from the label map as written and the
    export's :class:`~stunet.prediction.export.ConfidenceTally` (None: confidence unknown, e.g. region-based models)."""
    labels = [label for label in sorted(names) if label]
    shapes = components(seg, labels)
    confident = (label_confidence(tally.voxels.numpy(), tally.confidence.numpy(), tally.uncertain.numpy(), members)
                 if tally is not None and tally.voxels is not None else {})
    out = {}
    for label in labels:
        conf, uncertain = confident.get(label, (float("nan"), float("nan")))
        count, largest = shapes[label]
        out[names[label]] = {"confidence": conf, "uncertain_fraction": uncertain, "components": count,
                             "largest_component_fraction": largest, "flag": flag(conf, uncertain, count, largest)}
    return out
