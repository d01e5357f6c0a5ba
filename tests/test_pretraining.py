"""The pretraining recipe end to end: TotalSegmentator layout -> nnU-Net raw dataset (stunet-totalseg) -> the
released preprocessing (stunet-plans) -> a few iterations of the published trainer -> a checkpoint with the released
105-class layout."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import stunet
from nnunet_helpers import run
from stunet.nnunet.synthetic import make_case
from stunet.nnunet.totalseg import label_order

V2 = label_order("totalseg_v2_117")
CROP = (slice(0, 30), slice(20, 80), slice(30, 90))  # z, y, x of the example CT: 60 x 60 x 30 voxels at 3 mm


def _subject(folder: Path, ct: sitk.Image, seg: np.ndarray):
    (folder / "segmentations").mkdir(parents=True)
    sitk.WriteImage(ct, str(folder / "ct.nii.gz"))
    for index in np.unique(seg):
        if index:
            mask = sitk.GetImageFromArray((seg == index).astype(np.uint8))
            mask.CopyInformation(ct)
            sitk.WriteImage(mask, str(folder / "segmentations" / f"{V2[int(index)]}.nii.gz"))


def _example_or_synthetic():
    """(CT array, v2 label array, spacing): the shared example CT cut down, or a synthetic stand-in."""
    from conftest import SHARED
    example = SHARED / "data" / "totalsegmentator_examples"
    if (example / "example_ct_sm.nii.gz").is_file():
        ct = sitk.GetArrayFromImage(sitk.ReadImage(str(example / "example_ct_sm.nii.gz")))[CROP]
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(example / "example_seg.nii.gz")))[CROP]
        return ct.astype(np.int16), seg, (3.0, 3.0, 3.0)
    images, labels = make_case(np.random.default_rng(0), (30, 60, 60))
    return images[0].astype(np.int16), np.select([labels == 1, labels == 2], [5, 1], 0), (3.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def totalseg_layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("totalseg")
    ct_array, seg, spacing = _example_or_synthetic()
    for i, (flip, split) in enumerate([(False, "train"), (True, "val"), (False, "test")]):
        array, labels = (ct_array[:, :, ::-1], seg[:, :, ::-1]) if flip else (ct_array, seg)
        ct = sitk.GetImageFromArray(np.ascontiguousarray(array))
        ct.SetSpacing(spacing)
        _subject(root / f"s{i:04d}", ct, np.ascontiguousarray(labels))
    # an overlap: a small mask inside the liver must win over it
    liver = sitk.ReadImage(str(root / "s0000" / "segmentations" / "liver.nii.gz"))
    small = np.zeros(sitk.GetArrayFromImage(liver).shape, np.uint8)
    small[10:14, 25:30, 25:30] = 1
    gland = sitk.GetImageFromArray(small)
    gland.CopyInformation(liver)
    sitk.WriteImage(gland, str(root / "s0000" / "segmentations" / "adrenal_gland_left.nii.gz"))
    big = sitk.GetImageFromArray(np.maximum(sitk.GetArrayFromImage(liver), small))
    big.CopyInformation(liver)
    sitk.WriteImage(big, str(root / "s0000" / "segmentations" / "liver.nii.gz"))
    (root / "meta.csv").write_text("image_id;age;split\ns0000;60;train\ns0001;61;val\ns0002;62;test\n")
    return root


def _totalseg(*args):
    exe = Path(sys.executable).parent / "stunet-totalseg"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=600)


def test_conversion_orders_splits_overlaps_and_resumes(totalseg_layout, tmp_path):
    done = _totalseg(totalseg_layout, "-d", "601", "--raw", tmp_path, "-np", "1")
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "Dataset601_TotalSegmentator"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["s0000_0000.nii.gz", "s0001_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTs").iterdir()) == ["s0002.nii.gz"]
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"]["liver"] == 40 and len(dataset["labels"]) == 105
    assert json.loads((folder / "official_split.json").read_text())["val"] == ["s0001"]
    assert "became background" in done.stderr  # e.g. brain, face: no mask in these subjects
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "s0000.nii.gz")))
    assert (labels[10:14, 25:30, 25:30] == 1).all()  # adrenal_gland_left (1) inside the liver (40): smaller wins
    image = sitk.ReadImage(str(folder / "imagesTr" / "s0000_0000.nii.gz"))
    assert sitk.ReadImage(str(folder / "labelsTr" / "s0000.nii.gz")).GetSpacing() == image.GetSpacing()
    again = _totalseg(totalseg_layout, "-d", "601", "--raw", tmp_path, "-np", "1")
    assert "3 subjects" in again.stderr and "3 already converted" in again.stderr
    v2 = _totalseg(totalseg_layout, "-d", "602", "--raw", tmp_path, "--labels", "totalseg_v2_117", "-np", "1")
    assert v2.returncode == 0
    assert json.loads((tmp_path / "Dataset602_TotalSegmentator" / "dataset.json").read_text())["labels"]["liver"] == 5


def test_pretraining_recipe_gives_the_released_layout(totalseg_layout, tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != "nnUNet_extTrainer"}
    env.update(nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"),
               nnUNet_results=str(tmp_path / "results"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1")
    done = _totalseg(totalseg_layout, "-d", "603", "--raw", tmp_path / "raw", "-np", "1")
    assert done.returncode == 0, done.stderr
    run(["stunet-plans", "-d", "603", "--pretrained", "stunet_small.totalseg104", "--patch-size", "32", "64", "64",
         "--preprocess", "-np", "1"], env)
    log = run(["nnUNetv2_train", "603", "3d_fullres", "all", "-tr", "STUNetTrainer_small_mirroronly_smoke", "-p",
               "STUNetPlans_small_totalseg104", "-device", "cpu"], env)
    assert "Using trainer 'STUNetTrainer_small_mirroronly_smoke'" in log
    checkpoint = (tmp_path / "results" / "Dataset603_TotalSegmentator" /
                  "STUNetTrainer_small_mirroronly_smoke__STUNetPlans_small_totalseg104__3d_fullres" / "fold_all" /
                  "checkpoint_final.pth")
    model = stunet.create_model("stunet_small", pretrained=checkpoint)
    assert model.transfer_report.reinitialised == [] and len(model.transfer_report.transferred) == 130
    assert model.config.num_classes == 105 and model.config.strides[-1] == (1, 1, 2)
