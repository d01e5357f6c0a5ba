"""Hostile file names and the one-line failures of every command (issue 25, points 8 and 12).

ITK aborts the process (SIGABRT) on a file name that is not valid UTF-8: ``stunet-totalseg`` reads such sources through
links (stunet.paths.itk_readable), refuses subject names that would name the dataset's files in one line each, and a
worker that dies anyway fails its subject instead of hanging the pool. A line break in a name forges no log line.
Every console script ends a foreseeable failure (a missing input, a bad value, an unwritable output) in one line.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from stunet.nnunet.totalseg import label_order

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent
LIVER = {name: index for index, name in label_order("totalseg104").items()}["liver"]
NOT_UTF8 = os.fsdecode(b"caf\xe9")  # the byte 0xe9 does not decode: Python holds it as '\udce9'
FORGED = "stunet-totalseg: error: forged"


def _write(image: sitk.Image, path: Path, scratch: Path) -> None:
    """Written under a plain name, then renamed: ITK itself cannot be handed the hostile path."""
    scratch.mkdir(parents=True, exist_ok=True)
    plain = scratch / "plain.nii.gz"
    sitk.WriteImage(image, str(plain))
    os.replace(plain, path)


def _subject(root: Path, name: str, scratch: Path, seed: int = 0) -> np.ndarray:
    """A TotalSegmentator-layout subject: ct.nii.gz and segmentations/liver.nii.gz (the other masks missing)."""
    folder = root / name
    (folder / "segmentations").mkdir(parents=True)
    ct = sitk.GetImageFromArray(np.random.default_rng(seed).integers(-100, 100, (8, 10, 12)).astype(np.int16))
    ct.SetSpacing((1.5, 1.5, 3.0))
    _write(ct, folder / "ct.nii.gz", scratch)
    liver = np.zeros((8, 10, 12), np.uint8)
    liver[2:6, 3:7, 4:9] = 1
    mask = sitk.GetImageFromArray(liver)
    mask.CopyInformation(ct)
    _write(mask, folder / "segmentations" / "liver.nii.gz", scratch)
    return liver


def _totalseg(*args) -> subprocess.CompletedProcess:
    """stunet-totalseg as a user runs it; a hang fails the test (timeout) instead of holding it."""
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_preprocessed", "nnUNet_results")}
    return subprocess.run([str(BIN / "stunet-totalseg"), *map(str, args)], capture_output=True, text=True,
                          errors="backslashreplace", timeout=300, env=env)


def _log_lines(text: str) -> list[str]:
    """The lines a terminal or a log shows (tqdm's carriage returns split them too)."""
    return [line for line in text.replace("\r", "\n").split("\n") if line.strip()]


# -- 8. names that are not UTF-8 ---------------------------------------------------------------------------------
def test_a_source_path_that_is_not_utf8_is_converted_through_links(tmp_path):
    root = tmp_path / f"data-{NOT_UTF8}"
    liver = _subject(root, "s0001", tmp_path / "scratch")
    _subject(root, "s0002", tmp_path / "scratch", seed=1)
    done = _totalseg(root, "-d", "611", "--raw", tmp_path / "raw", "-np", "1")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "data-caf\\udce9" in done.stderr  # escaped where it is printed
    folder = tmp_path / "raw" / "Dataset611_TotalSegmentator"
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "s0001.nii.gz")))
    assert np.array_equal(labels == LIVER, liver.astype(bool)) and set(np.unique(labels)) == {0, LIVER}
    assert sitk.ReadImage(str(folder / "imagesTr" / "s0002_0000.nii.gz")).GetSpacing() == (1.5, 1.5, 3.0)
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 2
    assert not (folder / ".stunet-partial").exists()


def test_hostile_subject_names_are_refused_in_one_line_each_and_forge_no_log_line(tmp_path):
    root = tmp_path / "ts"
    for name in ("s0001", NOT_UTF8, f"evil\n{FORGED}"):
        _subject(root, name, tmp_path / "scratch")
    done = _totalseg(root, "-d", "612", "--raw", tmp_path / "raw", "-np", "2")
    assert done.returncode == 1, done.stderr
    lines = _log_lines(done.stderr)
    errors = [line for line in lines if line.startswith("stunet-totalseg: error:")]
    assert len(errors) == 2 and "Traceback" not in done.stderr, done.stderr
    assert not any(line.startswith(FORGED) for line in lines), done.stderr
    undecodable = next(line for line in errors if "caf\\udce9" in line)
    assert "not valid UTF-8" in undecodable and "rename the folder" in undecodable
    broken = next(line for line in errors if f"evil\\n{FORGED}" in line)
    assert "control character" in broken
    assert "1 converted, 2 failed" in done.stderr
    folder = tmp_path / "raw" / "Dataset612_TotalSegmentator"
    written = sorted(p.name for p in folder.rglob("*") if p.is_file())
    assert "s0001.nii.gz" in written and "s0001_0000.nii.gz" in written
    assert all(name.isprintable() and name.isascii() for name in written), written
    assert json.loads((folder / "dataset.json").read_text())["numTraining"] == 1
    assert not (folder / ".stunet-partial").exists()


def abort_on_crash(job):
    """A stand-in for convert_subject, run in the spawned workers: the subject called 'crash' kills its process as
    ITK does (SIGABRT)."""
    if job[0].name == "crash":
        os.abort()
    return job[0].name, [], None


def test_a_worker_that_dies_fails_its_subject_and_never_hangs():
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r})\n"
              "from pathlib import Path\n"
              "from stunet.cli.totalseg import convert_all\n"
              "from test_hostile_names import abort_on_crash\n"
              "jobs = [(Path(n), None, None, None) for n in ('a', 'crash', 'b', 'c', 'd')]\n"
              "for result in convert_all(jobs, 2, abort_on_crash):\n"
              "    print(repr(result), flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=TESTS)
    assert done.returncode == 0, done.stderr
    results = {r[0]: r for r in map(ast.literal_eval, done.stdout.splitlines())}
    assert sorted(results) == ["a", "b", "c", "crash", "d"]
    assert all(results[n] == (n, [], None) for n in "abcd")
    assert results["crash"][2].startswith("crash: the process converting it died without a Python error")


# -- 12. every command: one line ---------------------------------------------------------------------------------
def _commands(tmp_path: Path) -> list[tuple[str, list, str]]:
    """(console script, arguments, what its one line must say): a missing input, a bad value or an unwritable
    output for each."""
    a_file = tmp_path / "a_file"  # where a folder is expected: nothing can be written below it
    a_file.write_text("")
    (tmp_path / "cases").mkdir()
    missing = tmp_path / "missing"
    return [
        ("stunet-train", ["999", "3d_fullres", "0", "-device", "cpu"], "999"),
        ("stunet-demo", ["--workdir", a_file / "demo", "--device", "cpu"], "Not a directory"),
        ("stunet-env", ["--bogus"], "unrecognized arguments: --bogus"),
        ("stunet-download", ["stunet_small.totalseg104", "--cache-dir", a_file / "cache"], "cannot be written"),
        ("stunet-info", ["stunet_small", "--batch-size", "x"], "invalid int value"),
        ("stunet-plans", ["-d", "999", "--model", "stunet_small"], "no dataset '999'"),
        ("stunet-convert", [missing / "x.model", tmp_path / "x.pth"], "no such checkpoint file"),
        ("stunet-totalseg", [missing, "-d", "613", "--raw", tmp_path / "raw"], "not a folder"),
        ("stunet-predict", ["-i", tmp_path / "cases", "-o", a_file / "out", "--pretrained", "stunet_small.totalseg104",
                            "--checkpoint", missing / "x.model"], "cannot write the outputs there"),
    ]


COMMANDS = ["stunet-train", "stunet-demo", "stunet-env", "stunet-download", "stunet-info", "stunet-plans",
            "stunet-convert", "stunet-totalseg", "stunet-predict"]


@pytest.mark.parametrize("prog", COMMANDS)
def test_every_command_ends_a_foreseeable_failure_in_one_line(prog, tmp_path):
    _, args, expected = next(c for c in _commands(tmp_path) if c[0] == prog)
    env = {k: v for k, v in os.environ.items() if k not in ("STUNET_DEBUG", "HF_HUB_OFFLINE")}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / name).mkdir()
        env[name] = str(tmp_path / name)
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_DISABLE_PROGRESS_BARS="1", nnUNet_n_proc_DA="1")
    done = subprocess.run([str(BIN / prog), *map(str, args)], capture_output=True, text=True,
                          errors="backslashreplace", timeout=300, env=env, cwd=tmp_path)
    lines = _log_lines(done.stderr)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), done.stderr
    assert expected in lines[0], lines[0]
