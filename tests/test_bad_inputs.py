"""Every kind of bad input, in one folder, through one ``stunet-predict`` run: each fails alone in one error line that
names its file and says what is wrong, is listed in the summary and in provenance.json as failed with that line,
writes nothing, and the valid cases of the same run are still predicted. ``stunet.Segmenter`` refuses each with the
very message the command printed (both run stunet.prediction.case.predict_case).

The corpus: files that are broken or careless before they are read (hostile_helpers.image_corpus), images the model
cannot read or whose spacing is implausible (unreadable_images), images ITK reads but no model should take
(careless_images), files damaged from a good case (damaged_files) and headers whose data file lies outside their folder
(escaping_headers)."""
from __future__ import annotations

import json
import time

import pytest

import stunet
from hostile_helpers import (SMALL_BUDGET, careless_images, damaged_files, escaping_headers, image_corpus,
                             synthetic_volume, unreadable_images)
from predict_helpers import predict, write_image
from stunet.errors import CaseError

PREFIX = "stunet-predict: error: "
GOOD = ["good", "UPPER"]


def _corpus(root):
    """The input folder, every bad case (name -> (file, what the message must say)) and the valid ones."""
    folder = root / "in"
    folder.mkdir()
    bad = {}
    for name, (path, words) in image_corpus(root / "images").items():
        for part in [path, *([path.with_suffix(".raw")] if path.suffix == ".mhd" else [])]:
            if part.exists():
                (folder / part.name).write_bytes(part.read_bytes())
        bad[path.name.split("_0000")[0]] = (folder / path.name, words)
    bad.update(unreadable_images(folder))
    bad.update(careless_images(folder))
    write_image(folder / "good_0000.nii.gz", synthetic_volume())
    write_image(root / "upper.nii.gz", synthetic_volume())
    (root / "upper.nii.gz").rename(folder / "UPPER_0000.NII.GZ")  # ITK itself refuses such a name
    bad.update(damaged_files(folder, folder / "good_0000.nii.gz"))
    bad.update(escaping_headers(folder, root / "secret.raw"))
    return folder, bad


@pytest.fixture(scope="module")
def run(model_folder, tmp_path_factory):
    """The corpus predicted once; (bad cases, output folder, the run, its error lines, its summary's failures,
    seconds)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    folder, bad = _corpus(root)
    out = root / "out"
    start = time.perf_counter()
    done = predict("-i", folder, "-o", out, "-m", model_folder, "--disable-tta", "--max-voxels", SMALL_BUDGET,
                   check=False)
    seconds = time.perf_counter() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith(PREFIX)]
    failures = done.stderr.split("failed:\n")[1].strip().splitlines() if "failed:\n" in done.stderr else []
    return bad, out, done, errors, failures, seconds


@pytest.fixture(scope="module")
def segmenter(model_folder):
    return stunet.Segmenter.from_model_folder(model_folder, device="cpu", mirroring=False, max_voxels=SMALL_BUDGET)


def test_the_run_fails_and_predicts_the_valid_cases(run):
    bad, out, done, errors, failures, seconds = run
    assert done.returncode == 1, done.stderr[-3000:]
    assert seconds < 180
    assert f"{len(GOOD)} predicted, 0 skipped (output exists; --overwrite to redo), {len(bad)} failed" in done.stderr, \
        done.stderr[-3000:]
    assert len(errors) == len(bad) and len(failures) == len(bad), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    record = json.loads((out / "provenance.json").read_text())["cases"]
    for name in GOOD:
        assert (out / f"{name}.nii.gz").is_file() and record[name]["status"] == "predicted", done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(f"{name}.nii.gz" for name in GOOD)
    assert not (out / ".stunet-partial").exists()


@pytest.mark.parametrize("name", sorted(["header_only", "header_only_gz", "cut_nii", "cut_gz", "cut_nrrd",
                                         "cut_nrrdgz", "cut_mha", "cut_mhaz", "cut_mhd", "nodata_mhd", "zero", "nan",
                                         "inf", "absurd", "huge", "complex", "rgb", "vector", "tiny", "flat",
                                         "all_nan", "all_inf", "four_d", "red", "over_budget", "truncated", "text",
                                         "plain", "fourd", "nan_voxels", "nrrd", "absolute", "list", "meta"]))
def test_each_bad_input_fails_alone_in_one_line_as_the_api_says(run, segmenter, name):
    bad, out, done, errors, failures, _ = run
    path, words = bad[name]
    mine = [line for line in errors if str(path) in line]
    assert len(mine) == 1 and words in mine[0] and "\n" not in mine[0], (name, mine, done.stderr[-3000:])
    message = mine[0][len(PREFIX):]
    assert message.startswith(f"{path}: ")
    assert len([line for line in failures if str(path) in line and words in line]) == 1, (name, failures)
    record = json.loads((out / "provenance.json").read_text())["cases"]
    assert record[name] == {"status": "failed", "error": message}
    assert not list(out.glob(f"{name}.*"))
    with pytest.raises(CaseError) as refused:
        segmenter(path)
    assert str(refused.value) == message

