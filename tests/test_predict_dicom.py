"""stunet-predict on a DICOM series: NIfTI and DICOM-SEG agreeing voxel for voxel, statistics, preview and
provenance beside them; and a NIfTI run whose labels --statistics leaves unchanged."""
import csv
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from dicom_helpers import write_series
from predict_helpers import LABELS, labels_of, make_model_folder, predict, write_image
from stunet.nnunet.synthetic import make_case

pytest.importorskip("highdicom")

NAMES = {v: k for k, v in LABELS.items()}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_folder(tmp_path_factory.mktemp("model"))


def test_dicom_series_to_nifti_seg_statistics_preview(model, tmp_path):
    from stunet.clinical.dicom import read_dicom
    from stunet.clinical.dicom_seg import read_dicom_seg

    rng = np.random.default_rng(7)
    volume = (rng.normal(0, 200, (12, 28, 30)) - 300).astype(np.int16)
    volume[3:9, 6:20, 8:24] += 900  # something for the labels to find
    write_series(tmp_path / "in" / "patient1", volume, origin=(-40, 25, 100), row_dir=(1, 0, 0), col_dir=(0, 1, 0),
                 pixel_spacing=(1.6, 1.4), slice_step=(0, 0, 3.0), file_order=list(range(12))[::-1])
    out = tmp_path / "out"
    done = predict("-i", tmp_path / "in" / "patient1", "-o", out, "-m", model, "--disable-tta",
                   "--output-type", "both", "--statistics", "--preview")
    assert "1 predicted" in done.stderr
    series = read_dicom(tmp_path / "in" / "patient1")

    nifti = sitk.ReadImage(str(out / "patient1.nii.gz"))
    labels = sitk.GetArrayFromImage(nifti)
    assert labels.shape == volume.shape and len(np.unique(labels)) > 1
    assert np.allclose(nifti.GetOrigin(), series.image.GetOrigin(), atol=1e-3)
    assert np.allclose(nifti.GetDirection(), series.image.GetDirection(), atol=1e-5)
    assert np.allclose(nifti.GetSpacing(), series.image.GetSpacing(), atol=1e-4)
    header = nib.load(str(out / "patient1.nii.gz")).header
    assert header["descrip"].tobytes().startswith(b"stunet labels 1=liver;2=spleen")
    assert json.loads(header.extensions[0].get_content()) == {str(i): n for i, n in sorted(NAMES.items())}

    back = read_dicom_seg(out / "patient1.seg.dcm", series.files, NAMES)  # highdicom, on the source slices
    np.testing.assert_array_equal(back, labels)

    stats = json.loads((out / "patient1.statistics.json").read_text())
    assert set(stats) == {n for i, n in NAMES.items() if i}
    hu = sitk.GetArrayFromImage(series.image)
    for name, entry in stats.items():
        mask = labels == entry["label"]
        assert entry["voxels"] == int(mask.sum())
        assert entry["volume_ml"] == pytest.approx(mask.sum() * 1.6 * 1.4 * 3.0 / 1000)
        if mask.any():
            assert entry["mean"] == pytest.approx(float(hu[mask].mean()), rel=1e-5, abs=1e-3)
    with open(out / "statistics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["name"], int(r["voxels"])) for r in rows] == \
        [("patient1", n, stats[n]["voxels"]) for n in stats]
    assert (out / "patient1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    record = json.loads((out / "provenance.json").read_text())
    checkpoint = model / "fold_0" / "checkpoint_final.pth"
    assert record["checkpoints"] == [{"file": str(checkpoint),
                                      "sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest()}]
    assert record["options"]["output_type"] == "both" and record["stunet_version"]
    assert not (out / ".stunet-partial").exists()


def test_nifti_run_with_statistics_keeps_the_labels(model, tmp_path):
    import stunet
    images, _ = make_case(np.random.default_rng(5), (10, 24, 20), 1)
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "c_0000.nii.gz", images[0], seed=3)
    predict("-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model, "--disable-tta", "--statistics")
    labels = labels_of(tmp_path / "out" / "c.nii.gz")
    seg = stunet.Segmenter.from_model_folder(model, device="cpu", mirroring=False)
    np.testing.assert_array_equal(labels, sitk.GetArrayFromImage(seg(tmp_path / "in" / "c_0000.nii.gz")))
    stats = json.loads((tmp_path / "out" / "c.statistics.json").read_text())
    assert {n: e["voxels"] for n, e in stats.items()} == {n: int((labels == i).sum()) for i, n in NAMES.items() if i}
    assert (tmp_path / "out" / "statistics.csv").is_file() and (tmp_path / "out" / "provenance.json").is_file()
    assert not (tmp_path / "out" / "c.png").exists()
    # a SEG needs DICOM input: one line, usage status
    done = predict("-i", tmp_path / "in", "-o", tmp_path / "out2", "-m", model, "--output-type", "dicom_seg",
                   check=False)
    assert done.returncode == 2 and "needs DICOM input" in done.stderr and len(done.stderr.strip().splitlines()) == 1
