"""Hostile inputs met by stunet-evaluate, stunet-report and stunet.evaluate (issue 33).

Every image file is read by the shared reader (stunet.io.reader), so a file is refused for the same reason, in one
line naming it, wherever it is met: data files outside the header's folder, a truncated .nii.gz, a header declaring a
huge image (refused before any voxel is allocated), an implausible spacing; names that are not valid UTF-8 are read.
Label names and statistics come only from the documented places, and only from bounded regular files.

Labels that would score perfectly are refused (NaN, fractions, negatives, bad or duplicate label values and names, a
DICOM-SEG frame pointing at no segment); a huge label value costs no table of its size. A run's outputs are one set
(no stale report beside new metrics), and Ctrl-C ends it in one line with nothing written. Names cannot break the
report or forge a terminal line, label tables are bounded, and per-label NSD tolerances name existing labels.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from stunet.errors import CaseError
from stunet.io.reader import ImageFile
from stunet.paths import image_ending

BIN = Path(sys.executable).parent
NOT_UTF8 = os.fsdecode(b"caf\xe9")


def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), compress: bool = True) -> Path:
    """Written under a plain name, then renamed: ITK itself cannot be handed a hostile name."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    plain = path.parent / f".plain{image_ending(path)}"
    sitk.WriteImage(image, str(plain), compress)
    os.replace(plain, path)
    return path


def _labels(seed: int = 0) -> np.ndarray:
    array = np.zeros((8, 10, 12), np.uint8)
    array[2:6, 3:7, 4:9] = 1
    array[1:3, 1:3, 1:3] = 2 if seed == 0 else 0
    return array


def _cohort(root: Path, name: str = "case0") -> tuple[Path, Path]:
    ref, pred = root / "ref", root / "pred"
    ref.mkdir(parents=True)
    pred.mkdir(parents=True)
    _write(ref / f"{name}.nii.gz", _labels())
    _write(pred / f"{name}.nii.gz", _labels(1))
    return ref, pred


def _run(command: str, *args) -> subprocess.CompletedProcess:
    """A command run in this process (its ``main``, as the console script runs it): exit status and output."""
    from stunet.cli import evaluate, report

    main = {"stunet-evaluate": evaluate.main, "stunet-report": report.main}[command]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
    return subprocess.CompletedProcess([command, *args], code, out.getvalue(), err.getvalue())


def _refused(done: subprocess.CompletedProcess, path: Path, rule: str) -> None:
    """Exit status 1 and one error line naming the file and the rule."""
    errors = [line for line in done.stderr.splitlines() if ": error: " in line]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    assert str(path) in errors[0] and rule in errors[0], errors[0]


def _both_refuse(root: Path, ref: Path, pred: Path, bad: Path, rule: str) -> None:
    out = root / "eval"
    _refused(_run("stunet-evaluate", "-ref", ref, "-pred", pred, "-o", out, "-np", 1, "--quiet"), bad, rule)
    assert not out.exists()  # nothing written
    _refused(_run("stunet-report", pred, "--quiet"), bad, rule)
    assert not (pred / "report.html").exists()


@pytest.mark.parametrize("kind", ["mhd", "nrrd"])
def test_data_files_outside_the_folder_are_refused(tmp_path, kind):
    ref, pred = _cohort(tmp_path)
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(8 * 10 * 12))
    (pred / "case0.nii.gz").unlink()
    if kind == "mhd":
        bad = pred / "case0.mhd"
        bad.write_text("ObjectType = Image\nNDims = 3\nDimSize = 12 10 8\nElementType = MET_UCHAR\n"
                       "ElementDataFile = ../secret.raw\n")
    else:
        bad = pred / "case0.nrrd"
        bad.write_text(f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 12 10 8\nencoding: raw\n"
                       f"data file: {secret}\n")
    _both_refuse(tmp_path, ref, pred, bad, "outside the header's folder")


def test_a_truncated_nii_gz_is_refused(tmp_path):
    ref, pred = _cohort(tmp_path)
    bad = pred / "case0.nii.gz"
    _write(bad, np.random.default_rng(0).integers(0, 3, (40, 50, 60)).astype(np.uint8))
    _write(ref / "case0.nii.gz", np.zeros((40, 50, 60), np.uint8))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _both_refuse(tmp_path, ref, pred, bad, "truncated gzip file")


def test_a_huge_header_is_refused_before_anything_is_allocated(tmp_path):
    """A 266-byte MetaImage header declaring 1600 x 1600 x 1000 16-bit voxels (5 GB): refused from the header, in
    well under a second, without a large allocation (numpy's through tracemalloc, ITK's through the peak RSS)."""
    from stunet.evaluation.evaluate import evaluate

    ref, pred = _cohort(tmp_path)
    bad = pred / "case0.mha"
    (pred / "case0.nii.gz").unlink()
    bad.write_text("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                   "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
                   "ElementSpacing = 1 1 1\nDimSize = 1600 1600 1000\nElementType = MET_USHORT\n"
                   "ElementDataFile = LOCAL\n")
    assert bad.stat().st_size < 300
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(CaseError, match="1600 x 1600 x 1000\\), over the limit") as error:
            evaluate(ref, pred, num_processes=1)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bad) in str(error.value) and seconds < 1.0, seconds
    assert peak < 50 << 20, peak
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 200 << 10  # KiB: under 200 MiB more
    _both_refuse(tmp_path, ref, pred, bad, "over the limit")


@pytest.mark.parametrize("spacing", [1e-30, 1e30])
def test_spacings_outside_the_range_are_refused(tmp_path, spacing):
    ref, pred = _cohort(tmp_path)
    bad = _write(pred / "case0.nii.gz", _labels(1), (1.0, spacing, 1.0))
    _both_refuse(tmp_path, ref, pred, bad, "outside the plausible 0.01-50 mm")


def test_names_that_are_not_utf8_are_read(tmp_path):
    """As the installed commands, each in a process of its own: ITK would abort the process on such a name."""
    ref, pred = _cohort(tmp_path, NOT_UTF8)
    out = tmp_path / "eval"
    for command, args in (("stunet-evaluate", ["-ref", ref, "-pred", pred, "-o", out, "-np", "1", "--quiet"]),
                          ("stunet-report", [pred, "--quiet"])):
        done = subprocess.run([str(BIN / command), *map(str, args)], capture_output=True, text=True,
                              errors="backslashreplace", timeout=300)
        assert done.returncode == 0, (command, done.returncode, done.stderr[-2000:])
    metrics = (out / "metrics.csv").read_text(encoding="utf-8")
    assert "caf\\udce9,1,label_1" in metrics, metrics
    assert "caf\\udce9" in (pred / "report.html").read_text(encoding="utf-8")


class _Sentinel(CaseError):
    pass


def _door(name: str, tmp_path: Path, model_folder: Path):
    ref, pred = _cohort(tmp_path)
    image = _write(tmp_path / "ct_0000.nii.gz", np.random.default_rng(0).normal(size=(10, 24, 20)).astype(np.float32),
                   (1.5, 1.5, 1.5))
    if name == "stunet-predict":
        from predict_helpers import predict

        done = predict("-i", image, "-o", tmp_path / "segs", "-m", model_folder, "--device", "cpu",
                       "--disable-tta", check=False)
        assert done.returncode != 0 and "sentinel: the shared reader" in done.stderr, done.stderr
        return
    if name == "Segmenter":
        import stunet

        stunet.Segmenter.from_model_folder(model_folder, device="cpu", mirroring=False)(image)
    elif name == "stunet.evaluate":
        import stunet

        stunet.evaluate(ref, pred, num_processes=1)
    elif name == "stunet-evaluate":
        done = _run("stunet-evaluate", "-ref", ref, "-pred", pred, "-o", tmp_path / "eval", "-np", 1)
        _refused(done, ref / "case0.nii.gz", "sentinel: the shared reader")
        return
    else:
        done = _run("stunet-report", pred)
        _refused(done, pred / "case0.nii.gz", "sentinel: the shared reader")
        return


@pytest.mark.parametrize("door", ["stunet-predict", "Segmenter", "stunet-evaluate", "stunet-report",
                                  "stunet.evaluate"])
def test_every_door_reads_through_the_shared_reader(door, tmp_path, model_folder, monkeypatch):
    def sentinel(self, path, workdir=None, name=None):
        raise _Sentinel(f"{path}: sentinel: the shared reader")

    monkeypatch.setattr(ImageFile, "__init__", sentinel)
    if door in ("Segmenter", "stunet.evaluate"):
        with pytest.raises(_Sentinel):
            _door(door, tmp_path, model_folder)
    else:
        _door(door, tmp_path, model_folder)


def test_label_names_come_only_from_the_documented_places(tmp_path):
    """A labels.json in the predictions' parent folder, or one in the reference folder, names nothing."""
    from stunet.evaluation.evaluate import evaluate
    from stunet.evaluation.predictions import report_predictions

    ref, pred = _cohort(tmp_path / "root")
    for stray in (tmp_path / "root" / "labels.json", ref / "labels.json"):
        stray.write_text('{"0": "background", "1": "forged", "2": "forged_too"}')
    rows = evaluate(ref, pred, num_processes=1)
    assert {r["name"] for r in rows} == {"label_1", "label_2"}
    page = report_predictions(pred).read_text()
    assert "forged" not in page and "label_1" in page
    (pred / "labels.json").write_text('{"0": "background", "1": "liver", "2": "spleen"}')  # the documented place
    assert {r["name"] for r in evaluate(ref, pred, num_processes=1)} == {"liver", "spleen"}


def test_statistics_files_that_are_not_bounded_regular_files_are_skipped(tmp_path):
    """A FIFO and a link to /dev/zero named case.statistics.json: both commands finish (a hang fails the timeout)."""
    ref, pred = _cohort(tmp_path)
    os.mkfifo(pred / "case0.statistics.json")
    (pred / "case1.statistics.json").symlink_to("/dev/zero")
    out = tmp_path / "eval"
    for command, args in (("stunet-evaluate", ["-ref", ref, "-pred", pred, "-o", out, "-np", "1", "--quiet"]),
                          ("stunet-report", [pred, "--quiet"])):
        done = subprocess.run([str(BIN / command), *map(str, args)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (command, done.stderr[-2000:])
    assert (out / "report.html").is_file() and (pred / "report.html").is_file()


# -- label values that would score perfectly -------------------------------------------------------------------------
def _refused_everywhere(root: Path, ref: Path, pred: Path, bad: Path, rule: str, *extra) -> None:
    """stunet-evaluate refuses in one line, with nothing written; stunet-report too where the file is a prediction."""
    out = root / "eval"
    _refused(_run("stunet-evaluate", "-ref", ref, "-pred", pred, "-o", out, "-np", 1, "--quiet", *extra), bad, rule)
    assert not out.exists()
    folder = bad.parent
    if folder == ref and bad.name.endswith(".json"):
        return
    _refused(_run("stunet-report", folder, "--quiet"), bad, rule)
    assert not (folder / "report.html").exists()


@pytest.mark.parametrize("kind, rule", [
    ("nan", "NaN or infinite values"), ("negative", "negative values"), ("fraction", "not whole numbers"),
    ("empty_list", "not an integer index"), ("fraction_value", "not an integer index"),
    ("boolean_value", "not an integer index"), ("negative_value", "outside 0 to"),
    ("two_names", "two labels are named 'liver'"), ("one_name_twice", "the key 'liver' appears twice"),
    ("dicom_seg", "frames point at segment 7")])
def test_label_values_that_would_score_perfectly_are_refused(tmp_path, kind, rule):
    """Each of these scored Dice 1 (or dropped a label) before: an all-NaN reference against an empty prediction, a
    negative label, a dataset.json label of [], 1.7 or true, two labels of one name, a DICOM-SEG frame of segment 7
    where the file describes 1 and 2."""
    ref, pred = _cohort(tmp_path)
    bad = ref / "case0.nii.gz"
    if kind in ("nan", "negative", "fraction"):
        array = _labels().astype(np.float32 if kind != "negative" else np.int16)
        array[array == 2] = {"nan": np.nan, "negative": -2, "fraction": 1.5}[kind]
        if kind == "nan":
            array[:] = np.nan
            _write(pred / "case0.nii.gz", np.zeros(array.shape, np.uint8))
        _write(bad, array)
    elif kind == "dicom_seg":
        pytest.importorskip("highdicom")
        import pydicom
        from dicom_helpers import write_series
        from stunet.clinical.dicom_seg import write_dicom_seg

        files = write_series(tmp_path / "series", np.zeros(_labels().shape, np.int16))
        (ref / "case0.nii.gz").unlink()
        write_dicom_seg(ref / "case0.seg.dcm", _labels(), files, {0: "background", 1: "liver", 2: "spleen"})
        seg = pydicom.dcmread(ref / "case0.seg.dcm")
        for frame in seg.PerFrameFunctionalGroupsSequence:
            item = frame.SegmentIdentificationSequence[0]
            item.ReferencedSegmentNumber = 7 if item.ReferencedSegmentNumber == 2 else item.ReferencedSegmentNumber
        bad = ref / "case0.seg.dcm"
        seg.save_as(bad)
        geometry = sitk.ReadImage(str(files[0]))
        (pred / "case0.nii.gz").unlink()
        image = sitk.GetImageFromArray(_labels())
        image.SetSpacing(geometry.GetSpacing()[:2] + (2.5,))
        sitk.WriteImage(image, str(pred / "case0.nii.gz"))
    else:
        bad = pred / ("labels.json" if kind == "two_names" else "dataset.json")
        value = {"empty_list": "[]", "fraction_value": "1.7", "boolean_value": "true", "negative_value": "-1"}
        bad.write_text({"two_names": '{"0": "background", "1": "liver", "2": "liver"}',
                        "one_name_twice": '{"labels": {"background": 0, "liver": 1, "liver": 2}}'}.get(
            kind, f'{{"labels": {{"background": 0, "liver": {value.get(kind)}}}}}'))
    _refused_everywhere(tmp_path, ref, pred, bad, rule)


def test_a_huge_label_value_costs_no_table_of_its_size(tmp_path):
    """Labels 50,000,000 and 2^31-1 in a file of a few hundred bytes: compared correctly (Dice 1), in well under a
    second of work and a few MiB, where a table indexed by label value would take gigabytes."""
    from stunet.evaluation.evaluate import evaluate
    from stunet.evaluation.predictions import report_predictions

    ref, pred = _cohort(tmp_path)
    array = np.zeros((10, 10, 10), np.int32)
    array[2:4, 2:4, 2:4] = 50_000_000
    array[6, 6, 6] = 2**31 - 1
    for folder in (ref, pred):
        _write(folder / "case0.nii.gz", array)
    assert (ref / "case0.nii.gz").stat().st_size < 600
    evaluate(ref, pred, num_processes=1)  # imports and caches warmed
    tracemalloc.start()
    start = time.perf_counter()
    try:
        rows = evaluate(ref, pred, num_processes=1)
        statistics = report_predictions(pred)
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(r["label"], r["dice"]) for r in rows] == [("50000000", 1.0), ("2147483647", 1.0)]
    assert "label_50000000" in statistics.read_text()
    assert seconds < 10 and peak < 50 << 20, (seconds, peak)


# -- outputs that lie by omission --------------------------------------------------------------------------------------
def _big_cohort(root: Path, cases: int) -> tuple[Path, Path]:
    """Cases with a few large balls, several seconds of surface metrics in all."""
    ref, pred = root / "ref", root / "pred"
    shape = (48, 64, 64)
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    for case in range(cases):
        array = np.zeros(shape, np.uint8)
        for label, centre in enumerate(((16, 20, 20), (30, 40, 40), (24, 20, 44)), start=1):
            array[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 12 ** 2] = label
        (ref / "x").parent.mkdir(parents=True, exist_ok=True)
        (pred / "x").parent.mkdir(parents=True, exist_ok=True)
        _write(ref / f"case{case}.nii.gz", array)
        _write(pred / f"case{case}.nii.gz", np.roll(array, 2 + case % 3, axis=2))
    return ref, pred


def test_a_runs_outputs_are_one_set_and_an_interrupt_writes_nothing(tmp_path):
    """--no-report after a run with a report removes the old report.html (Dice 1 beside new metrics of Dice 0);
    Ctrl-C (SIGINT to the process group, as a terminal sends it, workers included) ends in one line, exit status 130,
    with the earlier set untouched and nothing partial left."""
    ref, pred = _cohort(tmp_path)
    _write(pred / "case0.nii.gz", _labels())
    out = tmp_path / "eval"
    assert _run("stunet-evaluate", "-ref", ref, "-pred", pred, "-o", out, "-np", 1, "--quiet").returncode == 0
    assert "dice: mean" in (out / "report.html").read_text() and ",1.0," in (out / "metrics.csv").read_text()
    _write(pred / "case0.nii.gz", np.zeros(_labels().shape, np.uint8))
    done = _run("stunet-evaluate", "-ref", ref, "-pred", pred, "-o", out, "-np", 1, "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv", "summary.json"]
    assert json.loads((out / "summary.json").read_text())["per_label"]["label_1"]["dice"]["mean"] == 0.0

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    big_ref, big_pred = _big_cohort(tmp_path / "big", 8)
    run = subprocess.Popen([str(BIN / "stunet-evaluate"), "-ref", str(big_ref), "-pred", str(big_pred), "-o",
                            str(out), "-np", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        lines = []
        while not any(line.startswith("stunet-evaluate: case 1/8") for line in lines):
            line = run.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        os.killpg(run.pid, signal.SIGINT)
        start = time.perf_counter()
        stdout, stderr = run.communicate(timeout=120)
        seconds = time.perf_counter() - start
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    after = [line for line in stderr.splitlines() if not line.startswith("stunet-evaluate: case ")]
    assert run.returncode == 130 and after == ["stunet-evaluate: interrupted"], (run.returncode, stderr)
    assert stdout == "" and seconds < 60
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing partial, no temporary file left


# -- words and names that break or forge output ------------------------------------------------------------------------
FORGED = "stunet-evaluate: 1 case(s), FORGED"


@pytest.mark.parametrize("kind", ["mathtext", "line_break", "many_labels", "unknown_tolerance", "empty_name"])
def test_names_cannot_break_or_forge_output(tmp_path, kind):
    """Label names in matplotlib's mathtext are drawn as they are written; a line break in a case name is escaped
    wherever it is printed; 150,000 label names are refused at once; an NSD tolerance of a label that does not exist,
    or of an empty name, is refused naming the labels."""
    ref, pred = _cohort(tmp_path, "a\n" + FORGED if kind == "line_break" else "case0")
    out = tmp_path / "eval"
    labels = pred / "labels.json"
    if kind == "mathtext":
        labels.write_text(json.dumps({"0": "background", "1": "$\\frac{1}{", "2": "x$^{$"}))
        for command, args in (("stunet-evaluate", ["-ref", ref, "-pred", pred, "-o", out]), ("stunet-report", [pred])):
            done = _run(command, *args, "--quiet")
            assert done.returncode == 0 and done.stderr == "", done.stderr
        for page in (out / "report.html", pred / "report.html"):
            assert "$\\frac{1}{" in page.read_text()
        return
    if kind == "line_break":
        done = _run("stunet-evaluate", "-ref", ref, "-pred", pred, "-o", out, "-np", 1)
        lines = (done.stdout + done.stderr).splitlines()
        assert done.returncode == 0 and not any(line.startswith(FORGED) for line in lines), lines
        assert any("case 1/1: a\\n" + FORGED in line for line in lines), lines
        done = _run("stunet-report", ref)
        lines = (done.stdout + done.stderr).splitlines()
        assert done.returncode == 0 and not any(line.startswith(FORGED) for line in lines), lines
        return
    if kind == "many_labels":
        labels.write_text(json.dumps({str(i): f"label {i}" for i in range(150_000)}))
        start = time.perf_counter()
        _refused_everywhere(tmp_path, ref, pred, labels, "150,000 labels, more than the 10,000")
        assert time.perf_counter() - start < 10
        return
    labels.write_text(json.dumps({"0": "background", "1": "liver", "2": "spleen"}))
    tolerance, rule = {"unknown_tolerance": ("livr=2", "no label 'livr' in"), "empty_name": ("=5", "empty label")}[kind]
    done = _run("stunet-evaluate", "-ref", ref, "-pred", pred, "-o", out, "--nsd-tolerance", tolerance)
    _refused(done, "" if kind == "empty_name" else labels, rule)
    assert kind == "empty_name" or "known labels: liver, spleen" in done.stderr
    assert not out.exists()
