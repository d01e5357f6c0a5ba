"""stunet-plans: a downstream dataset with the released models' preprocessing, preprocessed by nnU-Net."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from nnunet_helpers import run


def test_pretraining_preprocessing_for_a_dataset(planned_dataset):
    root, folder, env = planned_dataset
    log = run(["stunet-plans", "-d", "990", "--pretrained", "stunet_small.totalseg104", "--patch-size", "32", "32",
               "64", "--preprocess", "-np", "1"], env)
    assert "next: nnUNetv2_train 990 3d_fullres 0 -tr STUNetTrainer_small_ft -p STUNetPlans_totalseg104" in log
    preprocessed = root / "preprocessed" / folder.name
    plans = json.loads((preprocessed / "STUNetPlans_totalseg104.json").read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [1.5, 1.5, 1.5] and config["patch_size"] == [32, 32, 64]
    assert config["normalization_schemes"] == ["ZScoreNormalization"] and plans["transpose_forward"] == [0, 1, 2]
    assert config["architecture"]["arch_kwargs"]["strides"][1:] == [[2, 2, 2]] * 4 + [[1, 1, 2]]
    cases = sorted((preprocessed / "STUNetPlans_totalseg104_3d_fullres").glob("*.pkl"))
    assert len(cases) == 10
    # 24 x 32 x 32 voxels at (2.0, 0.9, 0.9) mm -> 1.5 mm
    import pickle
    properties = pickle.loads(cases[0].read_bytes())
    assert np.allclose(properties["spacing"], [2.0, 0.9, 0.9], atol=1e-4)


def test_refuses_an_indivisible_patch_and_existing_plans(planned_dataset):
    root, folder, env = planned_dataset
    exe = str(Path(sys.executable).parent / "stunet-plans")
    args = [exe, "-d", "990", "--pretrained", "stunet_small.totalseg104"]
    done = subprocess.run(args + ["--patch-size", "32", "32", "48", "--plans-name", "X"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "axis 2 (48 vs 32)" in done.stderr
    subprocess.run(args + ["--plans-name", "Y"], env=env, check=True, capture_output=True)
    done = subprocess.run(args + ["--plans-name", "Y"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "--overwrite" in done.stderr
