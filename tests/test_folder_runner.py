"""The folder runner (stunet.prediction.folder): provenance.json keeps every case of every part and rerun once, and
the Python API's folder run writes what stunet-predict writes."""
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import stunet
from predict_helpers import labels_of, predict, write_cases
from stunet.prediction.folder import Reporter, predict_folder
from stunet.prediction.outputs import PROVENANCE_LOCK, record_cases


def _record_many(folder, first, count):
    for i in range(first, first + count):
        record_cases(folder, {"run": first}, {f"case{i}": {"status": "predicted", "notes": []}})


def test_concurrent_records_are_all_kept(tmp_path):
    """Four processes each merge 25 records, one at a time, into one provenance.json: all 100 are there."""
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_record_many, args=(tmp_path, 25 * k, 25)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cases = json.loads((tmp_path / "provenance.json").read_text())["cases"]
    assert sorted(cases) == sorted(f"case{i}" for i in range(100))
    assert not (tmp_path / PROVENANCE_LOCK).exists()
    record_cases(tmp_path, {"run": "latest"}, {"case3": {"status": "failed", "error": "x"}})
    record = json.loads((tmp_path / "provenance.json").read_text())
    assert record["run"] == "latest" and len(record["cases"]) == 100 and record["cases"]["case3"]["status"] == "failed"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    return root, write_cases(root / "in", 4)


def _part(model, source, out, part):
    command = [Path(sys.executable).parent / "stunet-predict", "-i", source, "-o", out, "-m", model, "--disable-tta",
               "--device", "cpu", "--num-parts", "2", "--part-id", str(part)]
    return subprocess.Popen([str(c) for c in command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "nnUNet_n_proc_DA": "1"})


def test_parts_and_reruns_keep_every_record_once(model_folder, cohort, tmp_path):
    """Two parts predict into one folder at once, then a rerun through the API overwrites one case: provenance.json
    holds the four cases once each, the rerun's status the latest."""
    root, names = cohort
    out = tmp_path / "out"
    parts = [_part(model_folder, root / "in", out, k) for k in range(2)]
    for process in parts:
        log, _ = process.communicate(timeout=600)
        assert process.returncode == 0, log[-3000:]
    record = json.loads((out / "provenance.json").read_text())
    assert sorted(record["cases"]) == names
    assert {case["status"] for case in record["cases"].values()} == {"predicted"}

    (root / "rerun").mkdir()
    (root / "rerun" / "case1_0000.nii.gz").write_bytes((root / "in" / "case1_0000.nii.gz").read_bytes())
    (root / "rerun" / "case9_0000.nii.gz").write_bytes(b"not an image")
    seg = stunet.Segmenter.from_path(model_folder, device="cpu", mirroring=False)
    run = seg.predict_folder(root / "rerun", out, overwrite=True, progress=False)
    assert run.predicted == ["case1"] and list(run.failed) == ["case9"] and run.timings["case1"]["network"] > 0
    record = json.loads((out / "provenance.json").read_text())
    assert sorted(record["cases"]) == sorted([*names, "case9"])
    assert record["cases"]["case9"] == {"status": "failed", "error": run.failed["case9"]}
    again = seg.predict_folder(root / "in", out, progress=False)
    assert again.skipped == names and not again.predicted
    assert json.loads((out / "provenance.json").read_text())["cases"] == record["cases"]


def test_the_api_writes_what_the_command_writes(model_folder, cohort, tmp_path):
    root, names = cohort
    done = predict("-i", root / "in", "-o", tmp_path / "cli", "-m", model_folder, "--disable-tta", "--statistics")
    seg = stunet.Segmenter.from_path(model_folder, device="cpu", mirroring=False)
    said = []

    class Lines(Reporter):
        def predicted(self, name, phases, tiles):
            said.append(name)

    run = predict_folder(seg, root / "in", tmp_path / "api", statistics=True, reporter=Lines())
    assert run.predicted == names == said and not run.failed
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(p.name for p in (tmp_path / "cli").iterdir())
    for name in names:
        np.testing.assert_array_equal(labels_of(tmp_path / "api" / f"{name}.nii.gz"),
                                      labels_of(tmp_path / "cli" / f"{name}.nii.gz"))
    cli, api = (json.loads((tmp_path / f / "provenance.json").read_text()) for f in ("cli", "api"))
    assert cli["cases"] == api["cases"] and cli["checkpoints"] == api["checkpoints"]
    assert (tmp_path / "api" / "statistics.csv").read_text() == (tmp_path / "cli" / "statistics.csv").read_text()
    assert f"{len(names)} predicted, 0 skipped" in done.stderr


def test_from_path_takes_what_the_command_takes(model_folder, tmp_path):
    seg = stunet.Segmenter.from_path(model_folder, ["0"], device="cpu")
    assert seg.options["backend"] == "torch" and seg.options["device"] == "cpu"
    assert seg.model.checkpoints == [model_folder / "fold_0" / "checkpoint_final.pth"]
    with pytest.raises(ValueError, match="goes with a released model"):
        stunet.Segmenter.from_path(model_folder, checkpoint=tmp_path / "x.pth")
    with pytest.raises(ValueError, match="folds go with a model folder"):
        stunet.Segmenter.from_path(tmp_path / "model.onnx", ["0"])
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        stunet.Segmenter.from_path(tmp_path / "model.onnx")
