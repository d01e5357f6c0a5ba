"""report.html: one self-contained page (plots embedded as PNG data URIs, styles inline, nothing fetched) for a
cohort, of an evaluation (``stunet-evaluate``) or of unlabelled predictions (``stunet-report``).

An evaluation's page: the settings, a table of each label's mean / std / median / count per metric, each metric's
distribution across cases per label (box plots with the cases as dots), the worst cases of each label, the empty
masks, and the quality flags of the predictions where their ``case.statistics.json`` files carry them. A predictions'
page: per-label volumes across cases (table and box plot), which labels touch the image border, and the quality flags.

Quality-control fields, read per label from ``case.statistics.json`` when present: ``confidence``,
``uncertain_fraction``, ``components``, ``largest_component_fraction`` and ``flag`` (flagged when it is a non-empty
string or list, or true).

Names are the user's words: escaped in the page, drawn as plain text in the plots (no mathtext: a ``$`` is a dollar
sign), on one line and cut to PLOTTED_NAME_CHARACTERS; a plot shows at most PLOTTED_LABELS labels. A statistics file
of more than MAX_LABELS labels is skipped like an unreadable one.
"""
from __future__ import annotations

import base64
import html
import io
import math
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from stunet.clinical.quality import QC_FIELDS
from stunet.errors import printable
from stunet.evaluation.pairing import MAX_LABELS
from stunet.io.json_file import read_json
from stunet.version import __version__

MAX_STATISTICS_BYTES = 16 << 20  # a case.statistics.json of 1000 labels with every field is under 1 MiB
WORST_PER_LABEL = 3
PLOTTED_LABELS = 300  # rows of a plot: 0.2 inch each, and matplotlib draws at most 2^16 pixels a side
PLOTTED_NAME_CHARACTERS = 60

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; text-align: right; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
tr.flagged td { background: #fff1e6; }
.settings td { text-align: left; }
.note { color: #666; font-size: 0.9em; }
.value { white-space: nowrap; } small { color: #666; white-space: nowrap; }
.scroll { overflow-x: auto; } img.plot { max-width: none; }
"""


# -- reading what stunet-predict wrote ------------------------------------------------------------------------------
def read_statistics(folder: Path | str) -> dict[str, dict[str, dict]]:
    """case -> label name -> fields, from the folder's ``case.statistics.json`` files; unreadable ones, and any that
    is not a regular file of bounded size (:func:`stunet.io.json_file.read_json`) or holds more than MAX_LABELS
    labels, are skipped."""
    out = {}
    for path in sorted(Path(folder).glob("*.statistics.json")):
        try:
            data = read_json(path, MAX_STATISTICS_BYTES)
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and len(data) <= MAX_LABELS:
            out[path.name[:-len(".statistics.json")]] = {str(k): v for k, v in data.items() if isinstance(v, dict)}
    return out


def is_flagged(flag) -> bool:
    if isinstance(flag, str):
        return flag.strip().lower() not in ("", "ok", "none", "false", "pass")
    if isinstance(flag, (list, tuple, set, dict)):
        return len(flag) > 0
    return bool(flag)


def flag_text(flag) -> str:
    if isinstance(flag, (list, tuple, set)):
        return "; ".join(str(f) for f in flag)
    if isinstance(flag, dict):
        return "; ".join(f"{k}: {v}" for k, v in flag.items())
    return "flagged" if flag is True else str(flag)


def quality_rows(statistics: dict[str, dict[str, dict]]) -> list[dict]:
    """One row per case and label whose statistics carry any quality-control field."""
    rows = []
    for case, labels in sorted(statistics.items()):
        for name, fields in labels.items():
            if any(f in fields for f in QC_FIELDS):
                rows.append({"case": case, "name": name, **{f: fields.get(f) for f in QC_FIELDS},
                             "flagged": is_flagged(fields.get("flag"))})
    return rows


def read_quality(folder: Path | str) -> list[dict]:
    folder = Path(folder)
    return quality_rows(read_statistics(folder)) if folder.is_dir() else []


# -- pieces ----------------------------------------------------------------------------------------------------------
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _number(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}g}"
    return _e(value)


def _table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]], text_columns: int = 1, css: str = "",
           row_classes: Sequence[str] | None = None) -> str:
    """Cells are HTML already (escaped by the caller); the first ``text_columns`` columns align left; no header row
    when ``headers`` is None. Wide tables scroll sideways."""
    head = "".join(f'<th class="text">{_e(h)}</th>' if i < text_columns else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers or []))
    body = []
    for n, row in enumerate(rows):
        cells = "".join(f'<td class="text">{c}</td>' if i < text_columns else f"<td>{c}</td>"
                        for i, c in enumerate(row))
        klass = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{klass}>{cells}</tr>")
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    return f'<div class="scroll"><table class="{css}">{thead}<tbody>{"".join(body)}</tbody></table></div>'


def _figure_uri(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # a glyph missing from the font is drawn as a box, not reported
        warnings.simplefilter("ignore", UserWarning)
        figure.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_text(text: str, limit: int = PLOTTED_NAME_CHARACTERS) -> str:
    text = printable(text)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _box_statistics(points: np.ndarray) -> tuple[float, float, float, float, float]:
    """(lower whisker, first quartile, median, third quartile, upper whisker): the whiskers reach the furthest values
    within 1.5 interquartile ranges of the box, as matplotlib's box plots draw them."""
    q1, median, q3 = np.percentile(points, [25, 50, 75])
    reach = 1.5 * (q3 - q1)
    low = points[points >= q1 - reach].min(initial=q1)
    high = points[points <= q3 + reach].max(initial=q3)
    return float(min(low, q1)), float(q1), float(median), float(q3), float(max(high, q3))


def distribution_plot(panels: dict[str, dict[str, list[float]]], title: str = "") -> str | None:
    """Horizontal box plots (cases as dots), one row per label and one panel per metric (``panels``: panel title ->
    label name -> values), side by side so each label's row reads across the metrics; a PNG data URI, None when no
    label has a value; the first PLOTTED_LABELS labels that have one. Drawn as a few collections per panel and the
    names once, so a hundred labels and ten metrics take a second or two (matplotlib lays out each text slowly)."""
    from matplotlib.collections import LineCollection, PolyCollection
    from matplotlib.figure import Figure

    found: dict[str, None] = {}  # names in order of appearance
    for values in panels.values():
        found.update((n, None) for n, v in values.items() if n not in found and any(not math.isnan(x) for x in v))
    names = list(found)
    if not names:
        return None
    if len(names) > PLOTTED_LABELS:
        title = (f"{title}: " if title else "") + f"the first {PLOTTED_LABELS} of {len(names)} labels"
        names = names[:PLOTTED_LABELS]
    shown = {name: _plot_text(name) for name in names}
    rows = {name: float(r) for name, r in zip(names, range(len(names) - 1, -1, -1))}
    margin = 0.3 + 0.062 * max(len(n) for n in shown.values())  # inches for the names, at 7 points
    width = margin + 2.6 * len(panels) + 0.2
    height = max(2.4, 0.9 + 0.2 * len(names))
    figure = Figure(figsize=(width, height))
    axes_list = figure.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    figure.subplots_adjust(left=margin / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.35 / height,
                           wspace=0.12)
    rng = np.random.default_rng(0)
    for axes, (panel, values) in zip(axes_list, panels.items()):
        data = {n: np.array([x for x in values.get(n, []) if not math.isnan(x)], dtype=np.float64) for n in names}
        data = {n: v for n, v in data.items() if v.size}
        axes.set_title(_plot_text(panel), fontsize=9, parse_math=False)
        axes.tick_params(axis="x", labelsize=7)
        axes.grid(axis="x", alpha=0.3)
        if not data:
            continue
        r = np.array([rows[n] for n in data])
        low, q1, median, q3, high = np.array([_box_statistics(v) for v in data.values()]).T
        axes.add_collection(PolyCollection([[(a, y - 0.3), (b, y - 0.3), (b, y + 0.3), (a, y + 0.3)]
                                            for y, a, b in zip(r, q1, q3)], facecolors="none", edgecolors="#333333",
                                           linewidths=0.8))
        whiskers = [[(a, y), (b, y)] for y, a, b in zip(r, low, q1)]
        whiskers += [[(a, y), (b, y)] for y, a, b in zip(r, q3, high)]
        whiskers += [[(x, y - 0.15), (x, y + 0.15)] for y, x in zip(np.concatenate([r, r]),
                                                                     np.concatenate([low, high]))]
        axes.add_collection(LineCollection(whiskers, colors="#333333", linewidths=0.8))
        axes.add_collection(LineCollection([[(m, y - 0.3), (m, y + 0.3)] for y, m in zip(r, median)],
                                           colors="#d62728", linewidths=1.6, zorder=4))
        xs = np.concatenate(list(data.values()))
        ys = np.concatenate([np.full(v.size, rows[n]) for n, v in data.items()]) + rng.uniform(-0.18, 0.18, xs.size)
        axes.scatter(xs, ys, s=10, color="#1f77b4", alpha=0.7, zorder=3, linewidths=0)
        if panel in ("dice", "iou", "nsd"):  # scores: always on [0, 1]
            axes.set_xlim(-0.04, 1.04)
        else:
            span = float(xs.max() - xs.min()) or max(abs(float(xs.max())), 1.0)
            axes.set_xlim(float(xs.min()) - 0.04 * span, float(xs.max()) + 0.04 * span)
    first = axes_list[0]
    first.set_ylim(-0.7, len(names) - 0.3)
    first.set_yticks([])
    for name, row in rows.items():  # plain texts: cheaper than tick labels
        first.text(-0.02, row, shown[name], transform=first.get_yaxis_transform(), ha="right", va="center",
                   fontsize=7, parse_math=False)
    if title:
        figure.suptitle(_plot_text(title, 200), fontsize=10, parse_math=False)
    return _figure_uri(figure)


def _page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body>\n<h1>{_e(title)}</h1>\n" + "\n".join(sections)
            + f'\n<p class="note">Written by stunet {_e(__version__)} on {_e(time.strftime("%Y-%m-%d %H:%M"))}.</p>'
            "\n</body></html>\n")


def _quality_section(quality: list[dict]) -> str:
    if not quality:
        return ('<h2 id="quality">Quality flags</h2><p class="note">No quality-control fields in the predictions\' '
                "statistics (stunet-predict --statistics with quality control writes them).</p>")
    flagged = [q for q in quality if q["flagged"]]
    per_label: dict[str, list[str]] = {}
    for q in flagged:
        per_label.setdefault(q["name"], []).append(q["case"])
    parts = [f'<h2 id="quality">Quality flags</h2><p>{len(flagged)} of {len(quality)} case-label pairs with '
             f"quality-control fields are flagged.</p>"]
    if per_label:
        parts.append(_table(["label", "flagged cases", "cases"],
                            [[_e(n), str(len(c)), _e(", ".join(c[:10]) + (" ..." if len(c) > 10 else ""))]
                             for n, c in sorted(per_label.items(), key=lambda kv: -len(kv[1]))], 1, "quality-labels"))
    if flagged:
        parts.append(_table(["case", "label", *QC_FIELDS],
                            [[_e(q["case"]), _e(q["name"]), *[_number(q[f]) for f in QC_FIELDS[:-1]],
                              _e(flag_text(q["flag"]))] for q in flagged], 2, "quality",
                            ["flagged"] * len(flagged)))
    return "\n".join(parts)


# -- an evaluation ---------------------------------------------------------------------------------------------------
def _primary(metric_names: Sequence[str]) -> tuple[str, bool] | None:
    """The metric that orders the worst cases, and whether higher is better."""
    for metric in ("dice", "nsd", "iou"):
        if metric in metric_names:
            return metric, True
    for metric in ("hd95", "assd", "hd", "fn_volume_ml", "fp_volume_ml"):
        if metric in metric_names:
            return metric, False
    return None


def evaluation_report(rows: list[dict], metric_names: Sequence[str], summary: dict,
                      quality: list[dict] | None = None, title: str = "Segmentation evaluation") -> str:
    per_label = summary["per_label"]
    tolerance = summary.get("nsd_tolerance_mm")
    settings = [["cases", str(summary["cases"])], ["labels", f"{len(per_label)} (from {_e(summary['labels_from'])})"],
                ["metrics", _e(", ".join(metric_names))]]
    if summary.get("suite"):
        settings.append(["suite", _e(summary["suite"])])
    if tolerance:
        settings.append(["NSD tolerance (mm)", _e(", ".join([f"{tolerance['default']:g}"] + [
            f"{k}={v:g}" for k, v in tolerance.get("per_label", {}).items()]))])
    for key, what in (("missing_predictions", "references without a prediction (left out)"),
                      ("unmatched_predictions", "predictions without a reference (left out)")):
        if summary.get(key):
            cases = summary[key]
            settings.append([what, _e(f"{len(cases)}: " + ", ".join(cases[:20]) + (" ..." if len(cases) > 20 else ""))])
    sections = ['<h2 id="settings">Settings</h2>' + _table(None, settings, 2, "settings")]

    headers = ["label", "name", "cases"] + [f"{m}: mean ± std" for m in metric_names]

    def cell(stats):
        if not stats["count"]:
            return ""
        spread = stats["std"] if stats["std"] > 1e-9 * abs(stats["mean"]) else 0.0
        return (f'<span class="value">{_number(stats["mean"])} ± {_number(spread, 3)}</span><br><small>median '
                f'{_number(stats["median"])}, n {stats["count"]}</small>')

    table_rows = [[_e(entry["label"]), _e(name), str(entry["cases"]), *[cell(entry[m]) for m in metric_names]]
                  for name, entry in per_label.items()]
    table_rows.append(["", "<b>over labels</b>", "", *[cell(summary["over_labels"][m]) for m in metric_names]])
    sections.append('<h2 id="summary">Per label</h2><p class="note">Over labels: the statistics of the per-label '
                    "means. Empty distances (a mask empty in the reference or the prediction) are not counted.</p>"
                    + _table(headers, table_rows, 2, "summary"))

    panels = {}
    for metric in metric_names:
        values = {name: [] for name in per_label}
        for row in rows:
            values.setdefault(row["name"], []).append(float(row[metric]))
        unit = "mm" if metric in ("hd95", "hd", "assd") else "ml" if metric.endswith("_ml") else ""
        panels[f"{metric} ({unit})" if unit and not metric.endswith("_ml") else metric] = values
    uri = distribution_plot(panels)
    sections.append('<h2 id="distributions">Distributions</h2><p class="note">Per label, each metric across the '
                    "cases: the box spans the quartiles, the red line is the median, the whiskers reach 1.5 "
                    "interquartile ranges, the dots are the cases.</p>" + (
                        f'<div class="scroll"><img class="plot" alt="each metric per label" src="{uri}"></div>'
                        if uri else '<p class="note">No values.</p>'))

    primary = _primary(metric_names)
    if primary:
        metric, higher = primary
        worst_rows = []
        by_name: dict[str, list[dict]] = {}
        for row in rows:
            if not math.isnan(float(row[metric])):
                by_name.setdefault(row["name"], []).append(row)
        for name in per_label:
            mine = by_name.get(name, [])
            mine.sort(key=lambda r: (float(r[metric]) if higher else -float(r[metric]), r["case"]))
            for rank, row in enumerate(mine[:WORST_PER_LABEL], start=1):
                worst_rows.append([_e(name) if rank == 1 else "", _e(row["case"]),
                                   *[_number(row[m]) for m in metric_names]])
        sections.append(f'<h2 id="worst">Worst cases per label</h2><p class="note">The {WORST_PER_LABEL} cases with '
                        f"the {'lowest' if higher else 'highest'} {_e(metric)} of each label.</p>"
                        + _table(["label", "case", *metric_names], worst_rows, 2, "worst"))

    empty_rows = [[_e(name), *[_e(f"{len(entry['empty'][k])}" + (": " + ", ".join(entry["empty"][k][:8]) + (
        " ..." if len(entry["empty"][k]) > 8 else "") if entry["empty"][k] else "")) for k in
        ("reference", "prediction", "both")]] for name, entry in per_label.items()
        if any(entry["empty"].values())]
    sections.append('<h2 id="empty">Empty masks</h2><p class="note">Both empty: Dice, IoU and NSD 1; one empty: 0; '
                    "distances empty in both cases.</p>" + (
                        _table(["label", "empty in reference only", "empty in prediction only", "empty in both"],
                               empty_rows, 4, "empty") if empty_rows else "<p>None.</p>"))
    sections.append(_quality_section(quality or []))
    return _page(title, sections)


# -- unlabelled predictions ------------------------------------------------------------------------------------------
def prediction_report(statistics: dict[str, dict[str, dict]], source: str, computed: Sequence[str] = (),
                      title: str = "Predictions") -> str:
    """``statistics``: case -> label name -> fields (volume_ml, voxels, touches_border, and the QC fields where
    present); ``computed``: the cases whose statistics were computed from their label maps."""
    found: dict[str, None] = {}  # names in order of appearance
    for labels in statistics.values():
        found.update(dict.fromkeys(labels))
    names = list(found)
    settings = [["folder", _e(source)], ["cases", str(len(statistics))], ["labels", str(len(names))]]
    if computed:
        settings.append(["statistics computed from the label maps (no case.statistics.json)",
                         _e(f"{len(computed)}: " + ", ".join(list(computed)[:20]) + (" ..." if len(computed) > 20
                                                                                      else ""))])
    sections = ['<h2 id="settings">Settings</h2>' + _table(None, settings, 2, "settings")]
    rows, volumes = [], {}
    for name in names:
        entries = [labels[name] for labels in statistics.values() if name in labels]
        present = [e for e in entries if (e.get("voxels") or 0) > 0]
        vols = [float(e["volume_ml"]) for e in present if e.get("volume_ml") is not None]
        volumes[name] = vols
        border = sum(1 for e in present if e.get("touches_border"))
        means = [float(e["mean"]) for e in present if isinstance(e.get("mean"), (int, float))]
        rows.append([_e(name), f"{len(present)}/{len(statistics)}",
                     _number(float(np.median(vols))) if vols else "", _number(float(np.mean(vols))) if vols else "",
                     _number(min(vols)) if vols else "", _number(max(vols)) if vols else "", str(border),
                     _number(float(np.median(means))) if means else ""])
    headers = ["label", "present in", "volume median (ml)", "mean", "min", "max", "touches border",
               "median of mean value"]
    if not any(row[-1] for row in rows):  # no intensities (statistics computed from the label maps alone)
        headers, rows = headers[:-1], [row[:-1] for row in rows]
    sections.append('<h2 id="summary">Per label</h2>' + _table(headers, rows, 1, "summary"))
    uri = distribution_plot({"volume (ml)": volumes})
    sections.append('<h2 id="distributions">Distributions</h2><p class="note">Volume per label across the cases '
                    "that hold it.</p>" + (f'<div class="scroll"><img class="plot" alt="volume per label" src="{uri}">'
                                           f"</div>" if uri else '<p class="note">No values.</p>'))
    sections.append(_quality_section(quality_rows(statistics)))
    return _page(title, sections)
