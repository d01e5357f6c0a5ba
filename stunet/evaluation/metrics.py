"""The metrics of one label in one case, their names, the suites, and the convention for empty masks.

Every metric compares a reference mask R with a predicted mask P on the reference's voxel grid (spacing in mm):

- ``dice`` = 2|R∩P| / (|R| + |P|) and ``iou`` = |R∩P| / |R∪P|, counted in voxels as nnU-Net's
  ``compute_metrics_on_folder`` counts them (``nnunetv2.evaluation.evaluate_predictions``).
- ``nsd``, ``hd95``, ``hd``, ``assd``: on the masks' surfaces as DeepMind's ``surface-distance`` defines them
  (:mod:`.surface`): the normalised surface Dice at a tolerance in mm (``compute_surface_dice_at_tolerance``, the
  metric of FLARE), the area-weighted 95th percentile of the surface distances taken in each direction and the larger
  of the two (``compute_robust_hausdorff(.., 95)``), the largest surface distance, and the mean of the two directed
  area-weighted average surface distances (``compute_average_surface_distance``).
- ``volume_ref_ml``, ``volume_pred_ml``: voxel count × voxel volume.
- ``fp_volume_ml``, ``fn_volume_ml`` (autoPET): the volume of the predicted connected components that overlap no
  reference voxel, and of the reference components that no predicted voxel overlaps. Components are 18-connected (two
  voxels touch when they share a face or an edge), as autoPET's evaluation script labels them with cc3d.

Empty masks (FLARE's convention): both empty, Dice, IoU and NSD are 1 and the distances are empty (no surface to
measure); one empty, Dice, IoU and NSD are 0 and the distances are empty. An empty distance is NaN here, an empty
cell in metrics.csv, and is left out of means and medians (the count says how many cases have one). The volumes are
always numbers. nnU-Net itself gives NaN for Dice and IoU when both masks are empty (and leaves them out of its means).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from stunet.evaluation.surface import surface, surface_distances

METRICS = ("dice", "iou", "nsd", "hd95", "hd", "assd", "volume_ref_ml", "volume_pred_ml", "fp_volume_ml",
           "fn_volume_ml")
STEMS = {"volume": ("volume_ref_ml", "volume_pred_ml"), "volume_ref": ("volume_ref_ml",),
         "volume_pred": ("volume_pred_ml",), "fp_volume": ("fp_volume_ml",), "fn_volume": ("fn_volume_ml",)}
DEFAULT_METRICS = ("dice", "nsd", "hd95", "assd", "volume")
SURFACE_METRICS = {"nsd", "hd95", "hd", "assd"}
DISTANCES = ("hd95", "hd", "assd")  # in mm; lower is better
HIGHER_IS_BETTER = ("dice", "iou", "nsd")
DEFAULT_NSD_TOLERANCE_MM = 1.0  # FLARE22's tolerance

# name -> (metrics, NSD tolerance in mm or None, what it reproduces)
SUITES = {
    "flare": (("dice", "nsd"), 1.0, "FLARE22/23: Dice and NSD at 1 mm"),
    "kipa": (("dice", "hd", "assd"), None, "KiPA22: Dice, Hausdorff distance and average surface distance"),
    "autopet": (("dice", "fp_volume", "fn_volume"), None,
                "autoPET: Dice, false-positive and false-negative volume (18-connected components)"),
}


def parse_metrics(names: Iterable[str] | None = None, suite: str | None = None) -> list[str]:
    """Metric columns, in the order of :data:`METRICS`, for names or stems (``volume``, ``fp_volume``, ...) and a
    suite's metrics; neither given: :data:`DEFAULT_METRICS`."""
    asked = list(SUITES[suite_name(suite)][0]) if suite else []
    asked += list(names or [])
    if not asked:
        asked = list(DEFAULT_METRICS)
    chosen = set()
    for name in asked:
        key = str(name).strip().lower()
        if key in METRICS:
            chosen.add(key)
        elif key in STEMS:
            chosen.update(STEMS[key])
        else:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRICS)} (or the stems "
                             f"{', '.join(STEMS)})")
    return [m for m in METRICS if m in chosen]


def suite_name(suite: str) -> str:
    key = str(suite).strip().lower()
    if key not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    return key


@dataclass
class Tolerances:
    """NSD tolerance in mm: one default and optional per-label values (by label name)."""
    default: float = DEFAULT_NSD_TOLERANCE_MM
    per_label: dict[str, float] = field(default_factory=dict)

    def of(self, name: str) -> float:
        return self.per_label.get(name, self.default)

    def check_names(self, known: Iterable[str], source: str) -> None:
        """ValueError, one line naming the known labels, for a per-label tolerance of a label not in ``known``."""
        known = list(known)
        unknown = [name for name in self.per_label if name not in known]
        if unknown:
            shown = ", ".join(known[:30]) + (f" ... ({len(known)} in all)" if len(known) > 30 else "")
            raise ValueError(f"--nsd-tolerance {unknown[0]}=...: no label {unknown[0]!r} in {source}; known labels: "
                             f"{shown or 'none'}")

    def as_dict(self) -> dict:
        return {"default": self.default, **({"per_label": dict(self.per_label)} if self.per_label else {})}


def parse_tolerances(values: Iterable[str | float] | float | dict | None, default: float | None = None) -> Tolerances:
    """``[1, "liver=2"]`` (the command line's repeated ``--nsd-tolerance``), a number, or ``{"default": 1,
    "liver": 2}``; ``default`` replaces FLARE's 1 mm when no plain number is given. An empty label name (``=2``) is
    refused; which label names exist is checked against the labels (:meth:`Tolerances.check_names`)."""
    tolerances = Tolerances(DEFAULT_NSD_TOLERANCE_MM if default is None else float(default))
    if values is None:
        return tolerances
    if isinstance(values, dict):
        items = [(None if k in ("default", "*") else str(k), v) for k, v in values.items()]
    elif isinstance(values, (int, float)):
        items = [(None, values)]
    else:
        items = []
        for value in values:
            text = str(value)
            name, _, number = text.rpartition("=") if "=" in text else (None, "", text)
            items.append((name.strip() if name is not None else None, number))
    for name, number in items:
        if name is not None and not name:
            raise ValueError(f"NSD tolerance ={number}: an empty label name; give NAME=MM, or MM alone for the default")
        try:
            tolerance = float(number)
        except (TypeError, ValueError):
            raise ValueError(f"NSD tolerance {number!r}{f' for {name}' if name else ''}: not a number of mm") from None
        if not math.isfinite(tolerance) or tolerance < 0:
            raise ValueError(f"NSD tolerance {number!r}: must be a finite number of mm, 0 or more")
        if name:
            tolerances.per_label[name] = tolerance
        else:
            tolerances.default = tolerance
    return tolerances


@dataclass
class Crop:
    """A mask cut to its bounding box: ``mask`` (bool) starts at voxel ``offset`` of the image; None when empty."""
    mask: np.ndarray | None
    offset: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return self.mask is None

    def voxels(self) -> int:
        return 0 if self.mask is None else int(np.count_nonzero(self.mask))


def _intersection(a: Crop, b: Crop) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """The slices of a's and b's masks covering the overlap of their boxes; None when the boxes do not overlap."""
    in_a, in_b = [], []
    for oa, na, ob, nb in zip(a.offset, a.mask.shape, b.offset, b.mask.shape):
        start, stop = max(oa, ob), min(oa + na, ob + nb)
        if start >= stop:
            return None
        in_a.append(slice(start - oa, stop - oa))
        in_b.append(slice(start - ob, stop - ob))
    return tuple(in_a), tuple(in_b)


def _unmatched_voxels(components_of: Crop, other: Crop, overlap) -> int:
    """Voxels of ``components_of``'s 18-connected components (8-connected in 2D) that touch no voxel of ``other``."""
    from scipy import ndimage  # here: stunet-evaluate --help reads the metric names without SciPy

    mask = components_of.mask
    structure = ndimage.generate_binary_structure(mask.ndim, min(2, mask.ndim))  # faces and edges
    components, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return 0
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    hit = np.zeros(count + 1, dtype=bool)
    if overlap is not None:
        mine, theirs = overlap
        hit[np.unique(components[mine][other.mask[theirs]])] = True
    hit[0] = True  # background
    return int(sizes[~hit].sum())


def compare(ref: Crop, pred: Crop, spacing: Sequence[float], metrics: Sequence[str],
            tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, float]:
    """The metrics of one label: ``ref`` and ``pred`` cropped to their own bounding boxes (offsets on one grid)."""
    spacing = tuple(float(s) for s in spacing)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    n_ref, n_pred = ref.voxels(), pred.voxels()
    overlap = None if ref.empty or pred.empty else _intersection(ref, pred)
    tp = 0 if overlap is None else int(np.count_nonzero(ref.mask[overlap[0]] & pred.mask[overlap[1]]))
    out: dict[str, float] = {}
    nan = float("nan")
    if "dice" in metrics:
        out["dice"] = 1.0 if n_ref + n_pred == 0 else 2.0 * tp / (n_ref + n_pred)
    if "iou" in metrics:
        out["iou"] = 1.0 if n_ref + n_pred == 0 else tp / (n_ref + n_pred - tp)
    wanted = SURFACE_METRICS.intersection(metrics)
    if wanted:
        if n_ref == 0 or n_pred == 0:
            values = {"nsd": 1.0 if n_ref == n_pred else 0.0, "hd95": nan, "hd": nan, "assd": nan}
        else:
            distances = surface_distances(surface(ref.mask, spacing, ref.offset),
                                          surface(pred.mask, spacing, pred.offset), spacing)
            values = {"nsd": distances.nsd(tolerance_mm) if "nsd" in wanted else nan,
                      "hd95": distances.hausdorff(95.0) if "hd95" in wanted else nan,
                      "hd": distances.hausdorff(100.0) if "hd" in wanted else nan,
                      "assd": distances.assd() if "assd" in wanted else nan}
        out.update({m: values[m] for m in wanted})
    if "volume_ref_ml" in metrics:
        out["volume_ref_ml"] = n_ref * voxel_ml
    if "volume_pred_ml" in metrics:
        out["volume_pred_ml"] = n_pred * voxel_ml
    if "fp_volume_ml" in metrics:
        fp = n_pred if ref.empty else 0 if pred.empty else \
            _unmatched_voxels(pred, ref, None if overlap is None else (overlap[1], overlap[0]))
        out["fp_volume_ml"] = fp * voxel_ml
    if "fn_volume_ml" in metrics:
        fn = n_ref if pred.empty else 0 if ref.empty else _unmatched_voxels(ref, pred, overlap)
        out["fn_volume_ml"] = fn * voxel_ml
    return {m: out[m] for m in metrics if m in out}


def crop(mask: np.ndarray) -> Crop:
    """A whole-image mask cut to its bounding box (for callers that hold full masks)."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return Crop(None, (0,) * mask.ndim)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=others))
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return Crop(mask[tuple(box)], tuple(s.start for s in box))


def compare_masks(ref: np.ndarray, pred: np.ndarray, spacing: Sequence[float], metrics: Iterable[str] | None = None,
                  tolerance_mm: float = DEFAULT_NSD_TOLERANCE_MM) -> dict[str, float]:
    """The metrics of two boolean masks of one shape (``spacing`` in mm per axis, in the arrays' axis order)."""
    ref, pred = np.asarray(ref, dtype=bool), np.asarray(pred, dtype=bool)
    if ref.shape != pred.shape:
        raise ValueError(f"reference {ref.shape} and prediction {pred.shape} differ in shape")
    if len(spacing) != ref.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match the masks' {ref.ndim} dimensions")
    return compare(crop(ref), crop(pred), spacing, parse_metrics(metrics), tolerance_mm)
