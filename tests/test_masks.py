"""One mask per structure (``--output-type masks``): a folder per case of uint8 0/1 masks on the input's grid, one
file per output label named as TotalSegmentator names it, written whole and skipped on rerun."""
import json

import numpy as np
import pytest
import SimpleITK as sitk

import stunet
from predict_helpers import LABELS, labels_of, predict, write_cases
from stunet.prediction import masks as masks_module
from stunet.prediction.masks import mask_file_names, write_masks

FOREGROUND = [name for name in LABELS if name != "background"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    root = tmp_path_factory.mktemp("masks")
    return root / "in", write_cases(root / "in", 2)


def _run(model_folder, source, out, *extra, check=True):
    return predict("-i", source, "-o", out, "-m", model_folder, "--device", "cpu", "--disable-tta", *extra,
                   check=check)


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing())
            and np.allclose(a.GetOrigin(), b.GetOrigin()) and np.allclose(a.GetDirection(), b.GetDirection()))


def test_masks_beside_the_label_map(model_folder, cases, tmp_path):
    """nifti,masks: each case's folder holds one uint8 0/1 file per label, on the input's grid, equal to that label
    of the label map written beside it; the folder is complete, nothing unfinished is left."""
    source, names = cases
    out = tmp_path / "out"
    _run(model_folder, source, out, "--output-type", "nifti,masks")
    for name in names:
        image = sitk.ReadImage(str(source / f"{name}_0000.nii.gz"))
        labels = labels_of(out / f"{name}.nii.gz")
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(f"{n}.nii.gz" for n in FOREGROUND)
        for label in FOREGROUND:
            mask = sitk.ReadImage(str(out / name / f"{label}.nii.gz"))
            assert mask.GetPixelID() == sitk.sitkUInt8 and _same_grid(mask, image)
            array = sitk.GetArrayFromImage(mask)
            assert set(np.unique(array).tolist()) <= {0, 1}
            np.testing.assert_array_equal(array, labels == LABELS[label])
    assert not (out / ".stunet-partial").exists()


def test_masks_only_selected_labels_and_rerun_skips(model_folder, cases, tmp_path):
    """masks alone with --labels: only the chosen labels' files, no label map; a rerun skips every case and leaves
    the files as they were; --overwrite writes them again."""
    source, names = cases
    out = tmp_path / "out"
    _run(model_folder, source, out, "--output-type", "masks", "--labels", "spleen,kidney_left")
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [*names, "labels.json", "provenance.json"])
    assert sorted(p.name for p in (out / names[0]).iterdir()) == ["kidney_left.nii.gz", "spleen.nii.gz"]
    before = (out / names[0] / "spleen.nii.gz").stat().st_mtime_ns
    again = _run(model_folder, source, out, "--output-type", "masks", "--labels", "spleen,kidney_left")
    assert "0 predicted, 2 skipped" in again.stderr
    assert (out / names[0] / "spleen.nii.gz").stat().st_mtime_ns == before
    (out / names[0] / "stale.nii.gz").write_bytes(b"")
    _run(model_folder, source, out, "--output-type", "masks", "--labels", "spleen,kidney_left", "--overwrite")
    assert sorted(p.name for p in (out / names[0]).iterdir()) == ["kidney_left.nii.gz", "spleen.nii.gz"]


def test_a_case_without_its_masks_is_not_done(model_folder, cases, tmp_path):
    """A folder of label maps predicted before gets the masks when they are asked for: a case is skipped only when
    every output that completes it exists."""
    source, names = cases
    out = tmp_path / "out"
    _run(model_folder, source, out)
    done = _run(model_folder, source, out, "--output-type", "nifti,masks")
    assert "2 predicted, 0 skipped" in done.stderr
    assert all((out / name / "liver.nii.gz").is_file() for name in names)


def test_predict_folder_writes_masks(model_folder, cases, tmp_path):
    source, names = cases
    run = stunet.Segmenter.from_path(model_folder, device="cpu", mirroring=False).predict_folder(
        source, tmp_path / "out", output_type="masks", progress=False)
    assert sorted(run.predicted) == names
    assert json.loads((tmp_path / "out" / "labels.json").read_text())["1"] == "liver"
    assert all((tmp_path / "out" / name / "kidney_right.nii.gz").is_file() for name in names)


def _label_image() -> sitk.Image:
    array = np.zeros((3, 4, 5), np.uint8)
    array[1, 1:3, 2:4] = 2
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((10.0, -3.0, 4.5))
    return image


def test_empty_labels_get_a_file_of_zeros(tmp_path):
    write_masks(tmp_path / "case", _label_image(), {0: "background", 1: "liver", 2: "spleen"}, tmp_path / "partial")
    liver = sitk.ReadImage(str(tmp_path / "case" / "liver.nii.gz"))
    assert not sitk.GetArrayFromImage(liver).any() and _same_grid(liver, _label_image())
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "case" / "spleen.nii.gz"))).sum() == 4
    assert list((tmp_path / "partial").iterdir()) == []


def test_a_failed_write_leaves_no_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    """A write that fails midway leaves the case's previous folder as it was (or none), and nothing unfinished."""
    names = {0: "background", 1: "liver", 2: "spleen"}
    written = []

    def fail_second(image, path, compress):
        written.append(path)
        if len(written) == 2:
            raise OSError("disk full")
        sitk.WriteImage(image, path, compress)

    monkeypatch.setattr(masks_module.sitk, "WriteImage", fail_second)
    with pytest.raises(OSError):
        write_masks(tmp_path / "case", _label_image(), names, tmp_path / "partial")
    assert not (tmp_path / "case").exists() and list((tmp_path / "partial").iterdir()) == []
    monkeypatch.undo()
    write_masks(tmp_path / "case", _label_image(), names, tmp_path / "partial")
    monkeypatch.setattr(masks_module.sitk, "WriteImage", fail_second)
    written.clear()
    with pytest.raises(OSError):
        write_masks(tmp_path / "case", _label_image(), names, tmp_path / "partial")
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]


def test_file_names(shared):
    """The released models' names are TotalSegmentator's file names as they are; other names become file names."""
    order = json.loads(shared("reference/stunet_totalseg104_label_order.json").read_text())
    released = {int(i): n for i, n in order.items()}
    assert mask_file_names(released) == {i: f"{n}.nii.gz" for i, n in released.items() if i}
    assert mask_file_names({0: "background", 1: "right kidney", 2: "prostate/uterus", 3: "Right-Kidney",
                            4: "right_kidney", 5: "..", 6: "liver"}) == {
        1: "right_kidney.nii.gz", 2: "prostate_uterus.nii.gz", 3: "Right-Kidney.nii.gz",
        4: "right_kidney_4.nii.gz", 5: "label.nii.gz", 6: "liver.nii.gz"}
