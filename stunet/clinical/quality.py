"""Quality control of a segmentation without labels (``stunet-predict --qc``): per output label, how sure the model
was, how the structure is shaped, whether the image looks like the model's training images there, and a flag when a
documented rule fires.

- ``confidence``: the mean winning-class probability (softmax of the models' mean logits) over the voxels of the
  network's grid that the label wins; ``uncertain_fraction``: the share of those voxels won with a probability below
  0.5. Both come from the logits the export computes anyway (:class:`stunet.prediction.export.ConfidenceTally`), on
  the network's grid (every voxel there has the same volume), so they cost no second pass over any logits. Where an
  output label merges several model classes (``--label-map``), its voxels are those its classes win, each with its own
  winning probability.
- ``case_confidence``: the same mean over the voxels of every foreground label of the case together, the same number
  in each label's entry.
- ``components`` and ``largest_component_fraction``: connected components of the label in the written label map
  (26-connectivity), and the share of the label's voxels in the largest one.
- ``border_section``: how much of the label a face of the image cuts: over the six faces, the largest ratio of the
  label's section in that face's plane to its largest section parallel to it (0 when it touches no face, 1 when the
  face cuts it where it is widest).
- ``outside_intensity_fraction``: the share of the label's voxels whose intensity (first channel, as read) lies
  outside the 0.5-99.5 percentile range of the training labels' intensities (the plans'
  ``foreground_intensity_properties_per_channel``, the range nnU-Net's CT normalisation clips to); by that
  definition about 1 % on training-like images.
- ``flag``: empty, or the rules that fired, joined by "; " (thresholds below).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

LOW_CONFIDENCE = 0.8  # a structure the model wins with a mean probability below this is flagged
HIGH_UNCERTAINTY = 0.2  # ... or of which more than this share of voxels is won with a probability below 0.5
FRAGMENTED = 0.9  # ... or whose largest component holds less than this share of its voxels
LOW_CASE_CONFIDENCE = 0.95  # ... or in a case whose foreground as a whole is won with a mean probability below this
CUT_BY_BORDER = 0.5  # ... or that a face of the image cuts through at least this share of its widest section
OUTSIDE_INTENSITIES = 0.04  # ... or of which more than this share of voxels lies outside the training intensities
QC_FIELDS = ["confidence", "uncertain_fraction", "case_confidence", "components", "largest_component_fraction",
             "border_section", "outside_intensity_fraction", "flag"]


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


def case_confidence(voxels: Sequence[float], confidence: Sequence[float], members: Mapping[int, Sequence[int]]
                    ) -> float:
    """The mean winning probability over the voxels of every output label's classes together; NaN when none wins."""
    voxels, confidence = np.asarray(voxels, dtype=np.float64), np.asarray(confidence, dtype=np.float64)
    classes = sorted({c for label, cs in members.items() if label for c in cs if c < voxels.size})
    count = voxels[classes].sum() if classes else 0.0
    return float(confidence[classes].sum() / count) if count else float("nan")


def border_section(mask: np.ndarray, box: tuple, shape: Sequence[int]) -> float:
    """The largest ratio, over the image's faces that the label (``mask`` inside its bounding ``box``) reaches, of
    its section in the face's plane to its largest section parallel to it; 0 when it reaches no face."""
    worst = 0.0
    for axis, (part, size) in enumerate(zip(box, shape)):
        ends = [index for index, reached in ((0, part.start == 0), (-1, part.stop == size)) if reached]
        if not ends:
            continue
        sections = mask.sum(axis=tuple(a for a in range(mask.ndim) if a != axis))
        widest = float(sections.max())
        worst = max([worst, *(float(sections[index]) / widest for index in ends)])
    return worst


def shapes(seg: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[int, float, float, tuple | None]]:
    """(number of 26-connected components, share of the label's voxels in the largest, :func:`border_section`,
    bounding box) per label; each label is looked at inside its bounding box only (one pass over the map finds every
    box)."""
    from scipy import ndimage

    boxes = ndimage.find_objects(seg) if seg.size else []  # integer maps as they are: no copy of the volume
    structure = np.ones((3,) * seg.ndim, dtype=bool)
    out = {}
    for label in labels:
        box = boxes[label - 1] if 0 < label <= len(boxes) else None
        if box is None:
            out[label] = (0, float("nan"), float("nan"), None)
            continue
        mask = seg[box] == label
        numbered, count = ndimage.label(mask, structure)
        sizes = np.bincount(numbered.ravel())[1:]
        out[label] = (int(count), float(sizes.max() / sizes.sum()), border_section(mask, box, seg.shape), box)
    return out


def components(seg: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[int, float]]:
    """(number of 26-connected components, share of the label's voxels in the largest) per label."""
    return {label: found[:2] for label, found in shapes(seg, labels).items()}


def training_range(properties: Mapping | None) -> tuple[float, float] | None:
    """The 0.5 and 99.5 percentiles of the training labels' intensities, from one channel's entry of the plans'
    ``foreground_intensity_properties_per_channel``; None when they are not there."""
    try:
        low, high = float(properties["percentile_00_5"]), float(properties["percentile_99_5"])
    except (KeyError, TypeError, ValueError):
        return None
    return (low, high) if low == low and high == high and low <= high else None


def outside_fraction(image: np.ndarray, seg: np.ndarray, label: int, box: tuple, span: tuple[float, float]) -> float:
    values = image[box][seg[box] == label]
    if not values.size:
        return float("nan")
    return float(np.count_nonzero((values < span[0]) | (values > span[1])) / values.size)


def flag(confidence: float, uncertain_fraction: float, count: int, largest: float, case: float = float("nan"),
         border: float = float("nan"), outside: float = float("nan")) -> str:
    """The rules that fire for one structure, or "" (an absent structure is not flagged: it has no voxels to judge;
    a NaN field, one that could not be measured, fires no rule)."""
    rules = []
    if confidence < LOW_CONFIDENCE:
        rules.append(f"low confidence ({confidence:.2f} < {LOW_CONFIDENCE})")
    if uncertain_fraction > HIGH_UNCERTAINTY:
        rules.append(f"uncertain ({uncertain_fraction:.0%} of its voxels below 0.5)")
    if count > 1 and largest < FRAGMENTED:
        rules.append(f"fragmented ({count} components, the largest {largest:.0%})")
    if count and case < LOW_CASE_CONFIDENCE:
        rules.append(f"low confidence over the case ({case:.3f} < {LOW_CASE_CONFIDENCE})")
    if count and border >= CUT_BY_BORDER:
        rules.append(f"cut by the image border ({border:.0%} of its widest section)")
    if count and outside > OUTSIDE_INTENSITIES:
        rules.append(f"intensities unlike training ({outside:.0%} of its voxels outside the training labels' range)")
    return "; ".join(rules)


def quality(seg: np.ndarray, tally, members: Mapping[int, Sequence[int]], names: Mapping[int, str],
            image: np.ndarray | None = None, intensities: Mapping | None = None) -> dict[str, dict]:
    """The QC fields per output label (keyed by name, background left out), from the label map as written, the
    export's :class:`~stunet.prediction.export.ConfidenceTally` (None: confidence unknown, e.g. region-based models),
    and the first channel as read (``image``, on the map's grid) with that channel's
    ``foreground_intensity_properties_per_channel`` entry of the plans (``intensities``); without either, the
    intensity field is NaN."""
    labels = [label for label in sorted(names) if label]
    found = shapes(seg, labels)
    confident, overall = {}, float("nan")
    if tally is not None and tally.voxels is not None:
        sums = tally.voxels.numpy(), tally.confidence.numpy(), tally.uncertain.numpy()
        confident = label_confidence(*sums, members)
        overall = case_confidence(sums[0], sums[1], members)
    span = training_range(intensities)
    measurable = span is not None and image is not None and image.shape == seg.shape
    out = {}
    for label in labels:
        conf, uncertain = confident.get(label, (float("nan"), float("nan")))
        count, largest, border, box = found[label]
        outside = outside_fraction(image, seg, label, box, span) if measurable and box is not None else float("nan")
        out[names[label]] = {"confidence": conf, "uncertain_fraction": uncertain, "case_confidence": overall,
                             "components": count, "largest_component_fraction": largest, "border_section": border,
                             "outside_intensity_fraction": outside,
                             "flag": flag(conf, uncertain, count, largest, overall, border, outside)}
    return out
