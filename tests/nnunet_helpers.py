"""Running nnU-Net's console scripts on a temporary dataset, as a user would in a new shell."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

BIN = Path(sys.executable).parent


def nnunet_env(root: Path) -> dict:
    """Environment of a fresh shell: nnU-Net's folders under ``root``, one worker per pool (2 cores), no nnUNet_extTrainer
    (the installed package's start-up hook must set it)."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "preprocessed"),
               nnUNet_results=str(root / "results"), nnUNet_n_proc_DA="1", nnUNet_def_n_proc="1",
               nnUNet_compile="false")
    return env


def run(command: list[str], env: dict, timeout: float = 1200) -> str:
    """Run a console script from this environment; fail with its output when it fails."""
    done = subprocess.run([str(BIN / command[0])] + command[1:], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
                             f"\n--- stderr\n{done.stderr[-4000:]}")
    return done.stdout + done.stderr


def assert_same_geometry(output: Path, reference: Path) -> None:
    out, ref = sitk.ReadImage(str(output)), sitk.ReadImage(str(reference))
    assert out.GetSize() == ref.GetSize(), output
    np.testing.assert_allclose(out.GetSpacing(), ref.GetSpacing(), rtol=1e-5, err_msg=str(output))
    np.testing.assert_allclose(out.GetOrigin(), ref.GetOrigin(), atol=1e-4, err_msg=str(output))
    np.testing.assert_allclose(out.GetDirection(), ref.GetDirection(), atol=1e-5, err_msg=str(output))
