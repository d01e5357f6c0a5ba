"""metrics.csv and summary.json of an evaluation.

summary.json holds, for each label and each metric, the mean, median, standard deviation (population, ddof=0) and
count of the cases that have a value (an empty distance has none, see :mod:`.metrics`); ``over_labels`` the same
statistics of the per-label means (its mean is nnU-Net's "foreground mean"); which cases were empty in the
reference, in the prediction, or in both, per label; the cases left out (a reference without a prediction, a
prediction without a reference); and the settings (metrics, NSD tolerances, suite, where the label names came from).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Sequence

import numpy as np

from stunet.errors import rounded
from stunet.version import __version__


def csv_columns(metric_names: Sequence[str]) -> list[str]:
    return ["case", "label", "name", *metric_names]


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(rounded(value))
    return str(value)


def write_csv_text(rows: list[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c, "")) for c in columns])
    return buffer.getvalue()


def statistics(values: Sequence[float]) -> dict:
    """mean / median / std (ddof=0) / count of the values that are numbers; None where there is none."""
    numbers = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if not numbers.size:
        return {"mean": None, "median": None, "std": None, "count": 0}
    return {"mean": float(numbers.mean()), "median": float(np.median(numbers)), "std": float(numbers.std()),
            "count": int(numbers.size)}


def summarize(rows: list[dict], metric_names: Sequence[str], label_set, counts: dict, tolerances, pairs,
              suite: str | None) -> dict:
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    labels: dict[str, dict] = {}
    for name, values in label_set.labels.items():
        mine = by_name.get(name, [])
        empty = {"reference": [], "prediction": [], "both": []}
        for row in mine:
            ref_voxels, pred_voxels = counts.get((row["case"], name), (1, 1))
            if ref_voxels == 0 and pred_voxels == 0:
                empty["both"].append(row["case"])
            elif ref_voxels == 0:
                empty["reference"].append(row["case"])
            elif pred_voxels == 0:
                empty["prediction"].append(row["case"])
        labels[name] = {"label": ",".join(map(str, values)), "cases": len(mine),
                        **{m: statistics([r[m] for r in mine]) for m in metric_names},
                        "empty": empty}
    over = {m: statistics([entry[m]["mean"] for entry in labels.values()]) for m in metric_names}
    return {
        "stunet_version": __version__,
        "metrics": list(metric_names),
        "suite": suite,
        "nsd_tolerance_mm": tolerances.as_dict() if "nsd" in metric_names else None,
        "labels_from": label_set.source,
        "ignore_label": label_set.ignore,
        "cases": len(pairs.cases),
        "missing_predictions": pairs.missing,
        "unmatched_predictions": pairs.unmatched,
        "over_labels": over,
        "per_label": labels,
    }
