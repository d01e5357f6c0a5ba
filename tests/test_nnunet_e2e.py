"""nnU-Net v2 end to end through its real console scripts: plan, train with an STU-Net trainer, predict, evaluate.

Runs on the CPU in a few minutes: a synthetic dataset (balls and boxes at random places, oblique geometry) is planned
for 2d and 3d_fullres (conftest.planned_dataset); the 3D model trains for 100 iterations and must segment held-out cases well.
"""
import json

import numpy as np
import SimpleITK as sitk

from nnunet_helpers import assert_same_geometry, run
from stunet.nnunet.synthetic import dice_per_label

DATASET = 990


def _dice_and_geometry(predictions, folder):
    scores = []
    for reference in sorted((folder / "labelsTs").glob("*.nii.gz")):
        output = predictions / reference.name
        assert_same_geometry(output, reference)
        assert_same_geometry(output, folder / "imagesTs" / reference.name.replace(".nii.gz", "_0000.nii.gz"))
        dice = dice_per_label(sitk.GetArrayFromImage(sitk.ReadImage(str(output))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(reference))), [1, 2])
        scores.extend(dice.values())
    return float(np.mean(scores))


def test_train_and_predict_3d_fullres(planned_dataset, tmp_path):
    root, folder, env = planned_dataset
    log = run(["nnUNetv2_train", str(DATASET), "3d_fullres", "0", "-tr", "STUNetTrainer_small_quick",
               "-device", "cpu"], env)
    assert "Using trainer 'STUNetTrainer_small_quick'" in log
    out = tmp_path / "pred"
    run(["nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(out), "-d", str(DATASET), "-c",
         "3d_fullres", "-f", "0", "-tr", "STUNetTrainer_small_quick", "-device", "cpu", "-npp", "1", "-nps", "1",
         "--disable_tta"], env)
    # an untrained network scores near 0; 100 iterations reach about 0.95
    assert _dice_and_geometry(out, folder) > 0.75


def test_2d_configuration_continue_and_validation_only(planned_dataset, tmp_path):
    root, folder, env = planned_dataset
    train = ["nnUNetv2_train", str(DATASET), "2d", "0", "-tr", "STUNetTrainer_small_smoke", "-device", "cpu"]
    run(train, env)
    fold = root / "results" / f"Dataset{DATASET}_STUNetSynthetic" / "STUNetTrainer_small_smoke__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file()
    log = run(train + ["--c"], env)  # continue: loads the final checkpoint, nothing left to train, validates
    assert "Using trainer" in log
    (fold / "validation" / "summary.json").unlink()
    run(train + ["--val"], env)
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    out = tmp_path / "pred2d"
    run(["nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(out), "-d", str(DATASET), "-c", "2d",
         "-f", "0", "-tr", "STUNetTrainer_small_smoke", "-device", "cpu", "-npp", "1", "-nps", "1"], env)
    _dice_and_geometry(out, folder)  # geometry only: 10 iterations do not make a good model
    log = run(["nnUNetv2_find_best_configuration", str(DATASET), "-c", "2d", "-tr", "STUNetTrainer_small_smoke",
               "-f", "0", "-np", "1"], env)
    assert "STUNetTrainer_small_smoke" in log
