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
.scroll { overflow-x: auto; max-width: 100%; } img { max-width: 100%; height: auto; }
th.sortable { cursor: pointer; } th.sortable:hover { background: #e6eefc; }
.thumbs { display: flex; flex-wrap: wrap; gap: 10px; } figure { margin: 0; font-size: 0.8em; max-width: 240px; }
figcaption { color: #444; overflow-wrap: anywhere; } .key-ref { color: #2ca02c; } .key-pred { color: #d62728; }
"""
SORT_SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("thead th").forEach(function (th, column) {
    th.classList.add("sortable"); th.title = "sort";
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows), up = th.dataset.order !== "up";
      th.dataset.order = up ? "up" : "down";
      function key(row) { var c = row.cells[column], v = c ? (c.dataset.v !== undefined ? c.dataset.v : c.textContent) : "";
        var n = parseFloat(v); return isNaN(n) ? v : n; }
      rows.sort(function (a, b) { var x = key(a), y = key(b), t = typeof x === "number" && typeof y === "number";
        var r = t ? x - y : String(x).localeCompare(String(y)); return up ? r : -r; });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""
UNITS = {"hd95": "mm", "hd": "mm", "assd": "mm"}
MAX_FIGURE_INCHES = 14.0  # at 100 dpi: 1400 pixels, the width of a laptop's window
PANELS_PER_ROW = 4


def metric_header(metric: str) -> str:
    """A metric's column name with its unit: ``hd95 (mm)``, ``volume_ref_ml (ml)``; scores have none."""
    unit = UNITS.get(metric) or ("ml" if metric.endswith("_ml") else "")
    return f"{metric} ({unit})" if unit else metric


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
    label name -> values), side by side so each label's row reads across the metrics (PANELS_PER_ROW to a line, the
    figure at most MAX_FIGURE_INCHES wide); a PNG data URI, None when no
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
    columns = min(len(panels), PANELS_PER_ROW)
    lines = math.ceil(len(panels) / columns)
    panel_width = min(2.6, (MAX_FIGURE_INCHES - margin - 0.2) / columns)
    width = min(MAX_FIGURE_INCHES, margin + panel_width * columns + 0.2)
    line_height = max(1.5, 0.2 * len(names))
    height = 0.9 + line_height * lines + 0.45 * (lines - 1)
    figure = Figure(figsize=(width, height))
    grid = figure.subplots(lines, columns, sharey=True, squeeze=False)
    for spare in grid.ravel()[len(panels):]:
        spare.set_visible(False)
    axes_list = grid.ravel()[:len(panels)]
    figure.subplots_adjust(left=margin / width, right=1 - 0.2 / width, bottom=0.55 / height, top=1 - 0.35 / height,
                           wspace=0.12, hspace=0.45 / line_height)
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
    for first in grid[:, 0]:
        first.set_ylim(-0.7, len(names) - 0.3)
        first.set_yticks([])
        for name, row in rows.items():  # plain texts: cheaper than tick labels
            first.text(-0.02, row, shown[name], transform=first.get_yaxis_transform(), ha="right", va="center",
                       fontsize=7, parse_math=False)
    if title:
        figure.suptitle(_plot_text(title, 200), fontsize=10, parse_math=False)
    return _figure_uri(figure)


def volume_plot(rows: list[dict]) -> str | None:
    """Reference against predicted volume (ml), one dot per case and label (a colour per label, the first
    PLOTTED_LABELS), with the identity line; log axes when the volumes span more than a hundredfold. A PNG data URI
    (700 pixels wide), None without both volumes."""
    from matplotlib.figure import Figure

    points: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        a, b = float(row.get("volume_ref_ml", math.nan)), float(row.get("volume_pred_ml", math.nan))
        if not (math.isnan(a) or math.isnan(b)):
            points.setdefault(row["name"], []).append((a, b))
    if not points:
        return None
    names = list(points)[:PLOTTED_LABELS]
    every = np.array([p for n in names for p in points[n]], dtype=np.float64)
    positive = every[every > 0]
    logarithmic = positive.size > 1 and positive.max() > 100 * positive.min()
    figure = Figure(figsize=(7.0, 5.6))
    axes = figure.add_axes((0.11, 0.1, 0.6 if len(names) <= 20 else 0.85, 0.82))
    from matplotlib import colormaps
    palette = colormaps["tab20"]
    for i, name in enumerate(names):
        xy = np.array(points[name])
        axes.scatter(xy[:, 0], xy[:, 1], s=14, color=palette(i % 20), label=_plot_text(name, 30), alpha=0.8,
                     linewidths=0)
    low = positive.min() * 0.8 if logarithmic else 0.0
    high = max(float(every.max()), 1e-9) * 1.05
    axes.plot([low, high], [low, high], color="#555555", linewidth=1, linestyle="--", label="identity")
    if logarithmic:
        axes.set_xscale("log")
        axes.set_yscale("log")
    axes.set_xlim(low, high)
    axes.set_ylim(low, high)
    axes.set_xlabel("reference volume (ml)", fontsize=9)
    axes.set_ylabel("predicted volume (ml)", fontsize=9)
    axes.tick_params(labelsize=7)
    axes.grid(alpha=0.3)
    if len(names) <= 20:
        legend = axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
        for text in legend.get_texts():  # names as written: a $ is a dollar sign
            text.set_parse_math(False)
    return _figure_uri(figure)


def _page(title: str, sections: list[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body>\n<h1>{_e(title)}</h1>\n" + "\n".join(sections)
            + f'\n<p class="note">Written by stunet {_e(__version__)} on {_e(time.strftime("%Y-%m-%d %H:%M"))}.</p>'
            f"\n<script>{SORT_SCRIPT}</script>\n</body></html>\n")


def _sortable(headers: Sequence[str], rows: Sequence[Sequence[tuple[str, object]]], text_columns: int, css: str,
              row_classes: Sequence[str] | None = None) -> str:
    """A table whose header cells sort it (SORT_SCRIPT): each cell is (HTML, sort key or None)."""
    head = "".join(f'<th class="text">{_e(h)}</th>' if i < text_columns else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for n, row in enumerate(rows):
        cells = []
        for i, (content, key) in enumerate(row):
            data = "" if key is None else f' data-v="{_e(key)}"'
            cells.append(f'<td class="text"{data}>{content}</td>' if i < text_columns else f"<td{data}>{content}</td>")
        klass = f' class="{row_classes[n]}"' if row_classes and row_classes[n] else ""
        body.append(f"<tr{klass}>{''.join(cells)}</tr>")
    return (f'<div class="scroll"><table class="{css} sortable"><thead><tr>{head}</tr></thead><tbody>'
            f'{"".join(body)}</tbody></table></div>')


def _key(value) -> object:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else repr(number)


def _thumbnails(pairs: Sequence[tuple[str, str]], thumbnails: dict[tuple[str, str], str], rows_by_key: dict,
                metric: str | None) -> str:
    figures = []
    for case, name in pairs:
        uri = thumbnails.get((case, name))
        if uri is None:
            continue
        value = rows_by_key.get((case, name), {}).get(metric) if metric else None
        caption = f"{_e(case)} · {_e(name)}" + (f" · {_e(metric)} {_number(value)}" if value is not None else "")
        figures.append(f'<figure><img alt="{_e(case)} {_e(name)}" src="{uri}" width="220" height="220">'
                       f"<figcaption>{caption}</figcaption></figure>")
    if not figures:
        return ""
    return ('<p class="note">The plane where the two masks differ most: <span class="key-ref">reference</span> and '
            '<span class="key-pred">prediction</span> contours.</p><div class="thumbs">' + "".join(figures) + "</div>")


def _quality_section(quality: list[dict], thumbnails: dict | None = None) -> str:
    if not quality:
        return ('<h2 id="quality">Quality flags</h2><p class="note">No quality-control fields in the predictions\' '
                "statistics: run <code>stunet-predict --qc</code> to write them (case.statistics.json, one entry per "
                "label), then evaluate or report that folder again.</p>")
    flagged = [q for q in quality if q["flagged"]]
    parts = [f'<h2 id="quality">Quality flags</h2><p>{len(flagged)} of {len(quality)} case-label pairs with '
             f"quality-control fields are flagged.</p>"]
    per_label: dict[str, list[dict]] = {}
    for q in quality:
        per_label.setdefault(q["name"], []).append(q)

    def numbers(entries, field):
        return [float(e[field]) for e in entries if isinstance(e.get(field), (int, float))
                and not isinstance(e.get(field), bool) and not math.isnan(float(e[field]))]

    summary_rows = []
    for name, entries in per_label.items():
        conf, uncertain = numbers(entries, "confidence"), numbers(entries, "uncertain_fraction")
        case_conf, border = numbers(entries, "case_confidence"), numbers(entries, "border_section")
        outside, largest = numbers(entries, "outside_intensity_fraction"), numbers(entries, "largest_component_fraction")
        cases = [e["case"] for e in entries if e["flagged"]]
        summary_rows.append([_e(name), str(len(entries)), str(len(cases)),
                             _number(float(np.mean(conf))) if conf else "", _number(min(conf)) if conf else "",
                             _number(max(uncertain)) if uncertain else "", _number(min(case_conf)) if case_conf else "",
                             _number(min(largest)) if largest else "", _number(max(border)) if border else "",
                             _number(max(outside)) if outside else "",
                             _e(", ".join(cases[:10]) + (" ..." if len(cases) > 10 else ""))])
    parts.append('<p class="note">Per label over the cases (rules and thresholds: docs/evaluation.md, Quality '
                 "control).</p>" + _table(["label", "cases", "flagged", "confidence mean", "confidence min",
                                           "uncertain fraction max", "case confidence min",
                                           "largest component fraction min", "border section max",
                                           "outside intensity fraction max", "flagged cases"], summary_rows, 1,
                                          "quality-labels"))
    if flagged:
        parts.append(_table(["case", "label", *QC_FIELDS],
                            [[_e(q["case"]), _e(q["name"]), *[_number(q[f]) for f in QC_FIELDS[:-1]],
                              _e(flag_text(q["flag"]))] for q in flagged], 2, "quality",
                            ["flagged"] * len(flagged)))
        if thumbnails:
            parts.append(_thumbnails([(q["case"], q["name"]) for q in flagged], thumbnails, {}, None))
    return "\n".join(parts)


# -- an evaluation ---------------------------------------------------------------------------------------------------
def primary_metric(metric_names: Sequence[str]) -> tuple[str, bool] | None:
    """The metric that orders the worst cases, and whether higher is better."""
    for metric in ("dice", "nsd", "iou"):
        if metric in metric_names:
            return metric, True
    for metric in ("hd95", "assd", "hd", "fn_volume_ml", "fp_volume_ml"):
        if metric in metric_names:
            return metric, False
    return None


def _fold_section(rows: list[dict], metric_names: Sequence[str], folds: dict[str, str], names: Sequence[str],
                  primary: tuple[str, bool] | None) -> str:
    by_fold: dict[str, list[dict]] = {}
    for row in rows:
        by_fold.setdefault(folds.get(row["case"], "(no fold)"), []).append(row)
    order = sorted(by_fold, key=lambda f: (len(f), f))

    def label_means(mine, metric):
        out = {}
        for name in names:
            values = [float(r[metric]) for r in mine if r["name"] == name and not math.isnan(float(r[metric]))]
            if values:
                out[name] = float(np.mean(values))
        return out

    overall = [[_e(fold), str(len({r["case"] for r in by_fold[fold]})),
                *[_number(float(np.mean(list(m.values())))) if (m := label_means(by_fold[fold], metric)) else ""
                  for metric in metric_names]] for fold in order]
    parts = ['<h2 id="folds">Per fold</h2><p class="note">The cross-validation\'s folds apart (each fold_N/validation '
             "holds that fold's held-out cases): per metric, the mean over labels of each label's mean in the "
             "fold.</p>" + _table(["fold", "cases", *[metric_header(m) for m in metric_names]], overall, 1, "folds")]
    if primary:
        metric = primary[0]
        means = {fold: label_means(by_fold[fold], metric) for fold in order}
        parts.append(f'<p class="note">{_e(metric_header(metric))}: each label\'s mean per fold.</p>' + _table(
            ["label", *order], [[_e(name), *[_number(means[f].get(name)) for f in order]] for name in names], 1,
            "fold-labels"))
    return "\n".join(parts)


def evaluation_report(rows: list[dict], metric_names: Sequence[str], summary: dict,
                      quality: list[dict] | None = None, title: str = "Segmentation evaluation",
                      inputs: dict | None = None) -> str:
    """The page of an evaluation. ``inputs`` (all optional): ``reference``, ``prediction``, ``images`` (folders),
    ``command`` (the command line), ``folds`` (case -> fold), ``thumbnails`` ((case, label name) -> PNG data URI)."""
    inputs = inputs or {}
    per_label = summary["per_label"]
    tolerance = summary.get("nsd_tolerance_mm")
    folds = inputs.get("folds") or {}
    thumbnails = inputs.get("thumbnails") or {}
    settings = [[what, _e(inputs[key])] for key, what in (
        ("reference", "reference folder"), ("prediction", "prediction folder"), ("images", "image folder (--images)"),
        ("command", "command")) if inputs.get(key)]
    settings += [["cases", str(summary["cases"])],
                 ["labels", f"{len(per_label)} (from {_e(summary['labels_from'])})"],
                 ["metrics", _e(", ".join(metric_header(m) for m in metric_names))]]
    if summary.get("suite"):
        settings.append(["suite", _e(summary["suite"])])
    if tolerance:
        settings.append(["NSD tolerance (mm)", _e(", ".join([f"{tolerance['default']:g}"] + [
            f"{k}={v:g}" for k, v in tolerance.get("per_label", {}).items()]))])
    if folds:
        settings.append(["folds", _e(", ".join(sorted(set(folds.values()), key=lambda f: (len(f), f))))])
    for key, what in (("missing_predictions", "references without a prediction (left out)"),
                      ("unmatched_predictions", "predictions without a reference (left out)")):
        if summary.get(key):
            cases = summary[key]
            settings.append([what, _e(f"{len(cases)}: " + ", ".join(cases[:20]) + (" ..." if len(cases) > 20 else ""))])
    sections = ['<p class="note">Sections: <a href="#summary">per label</a> · <a href="#distributions">distributions'
                '</a> · <a href="#volumes">volumes</a> · <a href="#worst">worst cases</a> · <a href="#quality">quality'
                '</a> · <a href="#cases">every case</a> · <a href="#empty">empty masks</a>'
                + (' · <a href="#folds">per fold</a>' if folds else "") + "</p>",
                '<h2 id="settings">Settings</h2>' + _table(None, settings, 2, "settings")]

    headers = ["label", "name", "cases"] + [f"{metric_header(m)}: mean ± std" for m in metric_names]

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
    primary = primary_metric(metric_names)
    if folds:
        sections.append(_fold_section(rows, metric_names, folds, list(per_label), primary))

    panels = {}
    for metric in metric_names:
        values = {name: [] for name in per_label}
        for row in rows:
            values.setdefault(row["name"], []).append(float(row[metric]))
        panels[metric_header(metric)] = values
    uri = distribution_plot(panels)
    sections.append('<h2 id="distributions">Distributions</h2><p class="note">Per label, each metric across the '
                    "cases: the box spans the quartiles, the red line is the median, the whiskers reach 1.5 "
                    "interquartile ranges, the dots are the cases.</p>" + (
                        f'<img class="plot" alt="each metric per label" src="{uri}">'
                        if uri else '<p class="note">No values.</p>'))
    volumes = volume_plot(rows)
    sections.append('<h2 id="volumes">Volumes</h2>' + (
        '<p class="note">Reference against predicted volume, one dot per case and label; on the dashed identity line '
        f'they agree.</p><img class="plot" alt="reference against predicted volume" src="{volumes}">' if volumes else
        '<p class="note">No volumes: evaluate with the <code>volume</code> metric (a default) to see them.</p>'))

    rows_by_key = {(r["case"], r["name"]): r for r in rows}
    if primary:
        metric, higher = primary
        worst_rows, worst_pairs = [], []
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
                worst_pairs.append((row["case"], name))
        worst_pairs.sort(key=lambda key: (float(rows_by_key[key][metric]) if higher
                                          else -float(rows_by_key[key][metric])))
        sections.append(f'<h2 id="worst">Worst cases per label</h2><p class="note">The {WORST_PER_LABEL} cases with '
                        f"the {'lowest' if higher else 'highest'} {_e(metric)} of each label.</p>"
                        + _table(["label", "case", *[metric_header(m) for m in metric_names]], worst_rows, 2, "worst")
                        + _thumbnails(worst_pairs, thumbnails, rows_by_key, metric))

    sections.append(_quality_section(quality or [], thumbnails))

    by_pair = {(q["case"], q["name"]): q for q in quality or []}
    case_headers = ["case", *(["fold"] if folds else []), "label", *[metric_header(m) for m in metric_names]]
    if by_pair:
        case_headers += ["confidence", "QC flag"]
    case_rows, classes = [], []
    for row in rows:
        cells = [(_e(row["case"]), None), *([(_e(folds.get(row["case"], "")), None)] if folds else []),
                 (_e(row["name"]), None), *[(_number(row[m]), _key(row[m])) for m in metric_names]]
        q = by_pair.get((row["case"], row["name"]))
        if by_pair:
            cells += [(_number(q["confidence"]) if q else "", _key(q["confidence"]) if q else None),
                      (_e(flag_text(q["flag"])) if q and q["flagged"] else "", None)]
        case_rows.append(cells)
        classes.append("flagged" if q and q["flagged"] else "")
    sections.append(f'<h2 id="cases">Every case</h2><p class="note">{len(rows)} rows, one per case and label, as '
                    "metrics.csv holds them; click a column's header to sort by it.</p>"
                    + _sortable(case_headers, case_rows, 3 if folds else 2, "cases", classes))

    empty_rows = [[_e(name), *[_e(f"{len(entry['empty'][k])}" + (": " + ", ".join(entry["empty"][k][:8]) + (
        " ..." if len(entry["empty"][k]) > 8 else "") if entry["empty"][k] else "")) for k in
        ("reference", "prediction", "both")]] for name, entry in per_label.items()
        if any(entry["empty"].values())]
    sections.append('<h2 id="empty">Empty masks</h2><p class="note">Both empty: Dice, IoU and NSD 1; one empty: 0; '
                    "distances empty in both cases.</p>" + (
                        _table(["label", "empty in reference only", "empty in prediction only", "empty in both"],
                               empty_rows, 4, "empty") if empty_rows else "<p>None.</p>"))
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
