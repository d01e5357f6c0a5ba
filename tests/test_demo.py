"""stunet-demo: argument handling (fast) and the whole run (slow)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from stunet.cli.demo import main


def test_refuses_a_non_empty_workdir(tmp_path, capsys):
    (tmp_path / "something").write_text("x")
    with pytest.raises(SystemExit) as stop:
        main(["--workdir", str(tmp_path)])
    assert stop.value.code == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo") / "demo"
    demo = Path(sys.executable).parent / "stunet-demo"
    out = subprocess.run([str(demo), "--workdir", str(work)], capture_output=True, text=True, timeout=1200)
    return work, out


@pytest.mark.slow
def test_demo_runs_end_to_end_with_good_dice(demo_run):
    _, out = demo_run
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mean = re.search(r"mean\s+([\d.]+)\s+([\d.]+)", out.stdout)
    assert mean and min(map(float, mean.groups())) > 0.75, out.stdout


@pytest.mark.slow
def test_quality_control_flags_a_degraded_case(demo_run, tmp_path):
    """The signal of --qc is real: with the model stunet-demo trains, the same held-out case with strong noise and
    inverted intensities gets a lower confidence and more flags than the clean case."""
    import json

    import numpy as np
    import SimpleITK as sitk

    work, out = demo_run
    assert out.returncode == 0, out.stderr[-3000:]
    model = next((work / "nnUNet_results").glob("*/STUNetTrainer_small_quick__nnUNetPlans__3d_fullres"))
    source = sorted((work / "nnUNet_raw").glob("*/imagesTs/*_0000.nii.gz"))[0]
    clean, degraded = tmp_path / "clean", tmp_path / "degraded"
    clean.mkdir()
    degraded.mkdir()
    image = sitk.ReadImage(str(source))
    sitk.WriteImage(image, str(clean / "case_0000.nii.gz"))
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    noisy = -array + np.random.default_rng(0).normal(0, 3 * array.std(), array.shape).astype(np.float32)
    bad = sitk.GetImageFromArray(noisy)
    bad.CopyInformation(image)
    sitk.WriteImage(bad, str(degraded / "case_0000.nii.gz"))
    results = {}
    for name, folder in (("clean", clean), ("degraded", degraded)):
        exe = Path(sys.executable).parent / "stunet-predict"
        done = subprocess.run([str(exe), "-i", str(folder), "-o", str(tmp_path / f"{name}_out"), "-m", str(model),
                               "--qc", "--device", "cpu"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        stats = json.loads((tmp_path / f"{name}_out" / "case.statistics.json").read_text())
        confidences = [e["confidence"] for e in stats.values() if e["confidence"] is not None]
        results[name] = (float(np.mean(confidences)), sum(bool(e["flag"]) for e in stats.values()))
    assert results["degraded"][0] < results["clean"][0] - 0.05, results
    assert results["degraded"][1] > results["clean"][1], results
