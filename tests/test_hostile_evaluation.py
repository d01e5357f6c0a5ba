"""Hostile files met by stunet-evaluate, stunet-report and stunet.evaluate (issue 33, classes 3 and 5).

Every image file is read by the shared reader (stunet.io.reader), so a file is refused for the same reason, in one
line naming it, wherever it is met: data files outside the header's folder, a truncated .nii.gz, a header declaring a
huge image (refused before any voxel is allocated), an implausible spacing; names that are not valid UTF-8 are read.
Label names and statistics come only from the documented places, and only from bounded regular files.
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
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
