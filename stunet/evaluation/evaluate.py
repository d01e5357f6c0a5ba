"""``stunet.evaluate``: reference and predicted label images of a cohort, paired by case name, compared label by label.

One pass per image finds every label's bounding box (:func:`.pairing.label_boxes`); each label is then cut to its
own box in the reference and in the prediction, and only those crops are compared (:func:`.metrics.compare`). That is
exact: a mask is empty outside its box, its surface lies within the box's corners, and the surface distances are
found between surface points (a k-d tree), so no margin is needed and no distance is cut off. The labels' crops are
compared in a process pool (``num_processes``, default ``min(2, cpu count)``) with a bounded number of crops in
flight, so memory stays near the two label images of one case and a few crops. The pool's workers ignore SIGINT:
Ctrl-C reaches the main process alone, which stops the run before anything is written.

The outputs of a run are one set: metrics.csv, summary.json and report.html are all made in memory first, then
written together (each atomically, :func:`stunet.atomic.atomic_write`, with SIGINT held back until the last is in
place), and a report.html of an earlier run is removed when this run writes none.
"""
from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from stunet.atomic import atomic_write
from stunet.errors import printable
from stunet.evaluation.metrics import Crop, Tolerances, compare, parse_metrics, parse_tolerances, suite_name, SUITES
from stunet.evaluation.pairing import (LabelSet, case_folds, default_name, find_images, find_label_set, label_boxes,
                                       pair_cases, parse_labels, read_label_file, read_pair)
from stunet.evaluation.summary import csv_columns, summarize, write_csv_text

FIXED = ("case", "label", "name")
OUTPUTS = ("metrics.csv", "summary.json", "report.html")


def default_processes() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _union(boxes: dict, values: Sequence[int]) -> tuple[slice, ...] | None:
    found = [boxes[v] for v in values if v in boxes]
    if not found:
        return None
    return tuple(slice(min(b[a].start for b in found), max(b[a].stop for b in found)) for a in range(len(found[0])))


def _crop(array: np.ndarray, boxes: dict, values: Sequence[int], exclude: np.ndarray | None = None) -> Crop:
    box = _union(boxes, values)
    if box is None:
        return Crop(None, (0,) * array.ndim)
    part = array[box]
    mask = part == values[0] if len(values) == 1 else np.isin(part, values)
    if exclude is not None:
        mask &= ~exclude[box]
        if not mask.any():
            return Crop(None, (0,) * array.ndim)
    return Crop(mask, tuple(s.start for s in box))


def _job(case: str, name: str, ref: Crop, pred: Crop, spacing, metrics, tolerance) -> tuple[str, str, dict, int, int]:
    return case, name, compare(ref, pred, spacing, metrics, tolerance), ref.voxels(), pred.voxels()


def _size(crop: Crop) -> int:
    return 0 if crop.mask is None else crop.mask.size


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Runner:
    """Runs jobs inline (one process) or in a pool, at most ``2 × processes`` crops in flight."""

    def __init__(self, processes: int):
        self.processes = processes
        self.pool = None
        if processes > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context(method),
                                            initializer=_quiet_worker)

    def run(self, jobs: Iterable[tuple]) -> Iterator[tuple]:
        if self.pool is None:
            for job in jobs:
                yield _job(*job)
            return
        pending = set()
        for job in jobs:
            with _sigint_held_back():  # a worker forked here starts with the held-back handler, not the default
                pending.add(self.pool.submit(_job, *job))
            if len(pending) >= 2 * self.processes:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        for future in pending:
            yield future.result()

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _case_jobs(case: str, ref: np.ndarray, pred: np.ndarray, ref_boxes: dict, pred_boxes: dict, spacing,
               labels: LabelSet, metrics: Sequence[str], tolerances: Tolerances) -> Iterator[tuple]:
    exclude = ref == labels.ignore if labels.ignore is not None else None
    # largest first, so the pool's last jobs are short ones
    order = sorted(labels.labels.items(), key=lambda item: -_box_size(ref_boxes, pred_boxes, item[1]))
    for name, values in order:
        yield (case, name, _crop(ref, ref_boxes, values), _crop(pred, pred_boxes, values, exclude), spacing, metrics,
               tolerances.of(name))


def _box_size(ref_boxes, pred_boxes, values) -> int:
    total = 0
    for boxes in (ref_boxes, pred_boxes):
        box = _union(boxes, values)
        total += 0 if box is None else math.prod(s.stop - s.start for s in box)
    return total


def _present_labels(ref_boxes: dict, pred_boxes: dict) -> LabelSet:
    values = set(ref_boxes) | set(pred_boxes)
    return LabelSet({default_name(v): (v,) for v in sorted(values)}, None, "the label images")


def _resolve_labels(labels, reference: Path, prediction: Path) -> LabelSet | None:
    if labels is None:
        return find_label_set(reference, prediction)
    if isinstance(labels, LabelSet):
        return labels
    if isinstance(labels, dict):
        if all(isinstance(v, (int, list, tuple)) for v in labels.values()) and "labels" not in labels:
            return parse_labels({"labels": labels}, "labels given")  # name -> value(s)
        return parse_labels(labels, "labels given")
    return read_label_file(labels)


def evaluate(reference, prediction, output=None, metrics: Iterable[str] | None = None, nsd_tolerance=None,
             suite: str | None = None, labels=None, num_processes: int | None = None, report: bool = True,
             progress: Callable[[str], None] | None = None, images=None, command: str | None = None) -> list[dict]:
    """Compare the label images of ``prediction`` with those of ``reference`` (folders; cases paired by name) and
    return the table: one dict per case and label with ``case``, ``label`` (its value, or the values of a region
    joined by commas), ``name`` and one float per metric (NaN where a distance is empty).

    ``metrics``: names or stems (see :data:`stunet.evaluation.metrics.METRICS`; default ``dice nsd hd95 assd
    volume``); ``suite``: ``flare``, ``kipa`` or ``autopet`` (its metrics, joined by ``metrics``); ``nsd_tolerance``:
    mm, a number or ``[1, "liver=2"]`` or ``{"default": 1, "liver": 2}`` (default 1 mm, FLARE's); ``labels``: a
    dataset.json or labels.json path, its contents, or ``{"liver": 1, ...}`` (default: the predictions' labels.json,
    the dataset.json of the reference's dataset folder or of the predictions' trainer folder, else every label found,
    named ``label_N``). With ``output``, writes
    ``metrics.csv``, ``summary.json`` and (``report``) ``report.html`` there; the page names the folders and
    ``command`` (the command line), and draws the worst and the quality-flagged cases over their images from
    ``images`` (a folder of ``case_0000.nii.gz`` or ``case.nii.gz`` files, or a dataset folder), else over the masks.
    """
    reference, prediction = Path(reference), Path(prediction)
    metric_names = parse_metrics(metrics, suite)
    suite_tolerance = SUITES[suite_name(suite)][1] if suite else None
    tolerances = parse_tolerances(nsd_tolerance, suite_tolerance)
    label_set = _resolve_labels(labels, reference, prediction)
    if label_set is not None:
        tolerances.check_names(label_set.labels, label_set.source)
    else:
        tolerances.check_names([n for n in tolerances.per_label if re.fullmatch(r"label_[1-9][0-9]*", n)],
                               "the label images (labels found there are named label_N)")
    pairs = pair_cases(reference, prediction)
    image_files = find_images(images) if images is not None and report and output is not None else None
    say = progress or (lambda message: None)
    processes = default_processes() if num_processes is None else max(1, int(num_processes))
    if pairs.missing:
        say(f"{len(pairs.missing)} reference case(s) without a prediction, left out: {', '.join(pairs.missing[:5])}"
            + (" ..." if len(pairs.missing) > 5 else ""))
    if pairs.unmatched:
        say(f"{len(pairs.unmatched)} prediction(s) without a reference, left out: {', '.join(pairs.unmatched[:5])}"
            + (" ..." if len(pairs.unmatched) > 5 else ""))
    rows: list[dict] = []
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    names_seen: dict[str, tuple[int, ...]] = {}
    runner = _Runner(processes)
    try:
        for number, (case, ref_path, pred_path) in enumerate(pairs.cases, start=1):
            ref, pred = read_pair(case, ref_path, pred_path, label_set)
            ref_boxes, pred_boxes = label_boxes(ref.array, ref_path), label_boxes(pred.array, pred_path)
            case_labels = label_set or _present_labels(ref_boxes, pred_boxes)
            names_seen.update(case_labels.labels)
            for name_case, name, values, ref_voxels, pred_voxels in runner.run(_case_jobs(
                    case, ref.array, pred.array, ref_boxes, pred_boxes, ref.spacing, case_labels, metric_names,
                    tolerances)):
                rows.append({"case": name_case, "label": ",".join(map(str, case_labels.labels[name])), "name": name,
                             **values})
                counts[(name_case, name)] = (ref_voxels, pred_voxels)
            say(f"case {number}/{len(pairs.cases)}: {case} ({len(case_labels.labels)} labels)")
            del ref, pred
    finally:
        runner.close()
    if label_set is None:  # labels found in the images: a label absent from a case is empty in both there
        label_set = LabelSet(dict(sorted(names_seen.items(), key=lambda kv: kv[1])), None, "the label images")
        tolerances.check_names(label_set.labels, label_set.source)
        empty = compare(Crop(None), Crop(None), (1.0,) * 3, metric_names)
        for case, _, _ in pairs.cases:
            for name, values in label_set.labels.items():
                if (case, name) not in counts:
                    rows.append({"case": case, "label": ",".join(map(str, values)), "name": name, **empty})
                    counts[(case, name)] = (0, 0)
    order = {name: i for i, name in enumerate(label_set.labels)}
    rows.sort(key=lambda r: (r["case"], order.get(r["name"], len(order))))
    rows = [{k: row.get(k, float("nan")) for k in (*FIXED, *metric_names)} for row in rows]
    if output is not None:
        summary = summarize(rows, metric_names, label_set, counts, tolerances, pairs, suite)
        page = None
        if report:
            say("drawing the report")
            page = report_page(rows, metric_names, summary, pairs, label_set, reference, prediction, images,
                               image_files, command)
        write_outputs(Path(output), rows, metric_names, summary, page)
    return rows


def report_page(rows: list[dict], metric_names: Sequence[str], summary: dict, pairs, label_set: LabelSet,
                reference: Path, prediction: Path, images, image_files: dict | None, command: str | None) -> str:
    """report.html's text: the folders, the command, the folds, and the thumbnails of the worst and the
    quality-flagged cases (:mod:`.thumbnails`)."""
    from stunet.evaluation.report import WORST_PER_LABEL, evaluation_report, primary_metric, read_quality
    from stunet.evaluation.thumbnails import chosen, draw

    quality = read_quality(prediction)
    primary = primary_metric(metric_names)
    flagged = {(q["case"], q["name"]) for q in quality if q["flagged"]}
    picked = chosen(rows, *(primary or (None, True)), flagged, WORST_PER_LABEL)
    thumbnails = draw(picked, {case: (ref, pred) for case, ref, pred in pairs.cases}, label_set, image_files)
    inputs = {"reference": reference.resolve(), "prediction": prediction.resolve(),
              "images": Path(images).resolve() if images is not None else None, "command": command,
              "folds": case_folds(prediction), "thumbnails": thumbnails}
    return evaluation_report(rows, metric_names, summary, quality, inputs=inputs)


def write_outputs(out: Path, rows: list[dict], metric_names: Sequence[str], summary: dict, page: str | None) -> None:
    """metrics.csv, summary.json and report.html (``page``; None: none) in ``out``, as one set: all made before any
    is written, written with SIGINT held back, and an earlier run's report.html removed when there is no page."""
    texts = {"metrics.csv": write_csv_text(rows, csv_columns(metric_names)),
             "summary.json": json.dumps(summary, indent=2, allow_nan=False)}
    if page is not None:
        texts["report.html"] = page
    with _sigint_held_back():
        out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            if name in texts:
                atomic_write(out / name, lambda tmp, text=texts[name]: tmp.write_text(
                    text, encoding="utf-8", errors="backslashreplace"))
            elif (out / name).is_file() or (out / name).is_symlink():
                (out / name).unlink()


@contextlib.contextmanager
def _sigint_held_back():
    """Ctrl-C during the block is raised as KeyboardInterrupt when the block ends (in the main thread; elsewhere no
    handler can be set and the block runs as it is)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def print_progress(message: str) -> None:
    """A progress line on stderr; names in it are escaped (:func:`stunet.errors.printable`), so none can forge a
    line."""
    print(f"stunet-evaluate: {printable(message)}", file=sys.stderr, flush=True)
