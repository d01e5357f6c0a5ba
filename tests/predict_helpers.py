"""A small STU-Net model folder and images with awkward geometry, for stunet-predict tests."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from stunet.nnunet.plans import CONFIGURATION, plans_for_pretrained
from stunet.nnunet_plugins.stunet_trainers import STUNetTrainer_small
from stunet.weights.pretrained import get_pretrained_config
from stunet.nnunet.synthetic import _rotation, make_case

LABELS = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4}


def make_model_folder(folder: Path, channels: int = 1, labels: dict = LABELS, seed: int = 0) -> Path:
    """An nnU-Net model folder (fold 0) of STUNetTrainer_small with 16×32×32 patches at 1.5 mm and random weights
    whose heads are scaled up, so that its logits rarely tie, and whose last head's biases are balanced, so that
    every class covers a good part of an image (unbalanced, one class took 90 % of the voxels)."""
    config = get_pretrained_config("stunet_small.totalseg104").with_preprocessing(patch_size=[16, 32, 32])
    plans = plans_for_pretrained(config, "Dataset999_Test", num_channels=channels)
    dataset_json = {"channel_names": {str(c): f"channel{c}" for c in range(channels)}, "labels": labels,
                    "numTraining": 0, "file_ending": ".nii.gz"}
    pm = PlansManager(plans)
    torch.manual_seed(seed)
    net = STUNetTrainer_small.build_network_architecture(pm, pm.get_configuration(CONFIGURATION), channels,
                                                         len(labels), False)
    with torch.no_grad():
        for head in net.seg_outputs:
            head.weight.mul_(20)
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    def save():
        torch.save({"network_weights": net.state_dict(), "trainer_name": "STUNetTrainer_small",
                    "init_args": {"configuration": CONFIGURATION}, "inference_allowed_mirroring_axes": (0, 1, 2)},
                   folder / "fold_0" / "checkpoint_final.pth")

    save()
    with torch.no_grad():
        net.seg_outputs[-1].bias.sub_(_mean_logits(folder, channels))  # measured with the saved model
    save()
    return folder


def _mean_logits(folder: Path, channels: int) -> torch.Tensor:
    """Each class's mean logit over a synthetic case (not one of write_cases'), predicted without mirroring."""
    from stunet.prediction.sliding_window import Predictor
    from stunet.prediction.model import load_model_folder

    model = load_model_folder(folder)
    predictor = Predictor(model, "cpu", mirroring=False)
    images, _ = make_case(np.random.default_rng(123), (14, 40, 36), channels)
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"calibration_{c:04d}.nii.gz" for c in range(channels)]
        for path, image in zip(files, images):
            write_image(path, image, seed=123)
        data, _ = predictor.preprocess(*predictor.read(files))
    features = predictor.blended_features(data)[0]
    with torch.no_grad():
        return model.networks[0].head(features[None])[0].flatten(1).mean(1)


def write_image(path: Path, array: np.ndarray, spacing=(0.8, 0.95, 3.2), seed: int = 0) -> sitk.Image:
    """An oblique, anisotropic, non-RAS image (array axes z, y, x; spacing x, y, z)."""
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(tuple(rng.uniform(-200, 200, 3)))
    flips = np.diag([1, -1, 1])  # a left-handed, LPS-unlike orientation
    image.SetDirection(tuple((_rotation(rng, np.deg2rad(25)) @ flips).ravel()))
    sitk.WriteImage(image, str(path))
    return image


def write_cases(folder: Path, n: int, channels: int = 1, shape=(14, 40, 36)) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    names = []
    for i in range(n):
        images, _ = make_case(rng, shape, channels)
        for c, img in enumerate(images):
            write_image(folder / f"case{i}_{c:04d}.nii.gz", img, seed=i)
        names.append(f"case{i}")
    return names


def predict(*args, check: bool = True) -> subprocess.CompletedProcess:
    """``stunet-predict ARGS`` run in this process (``stunet.cli.predict.main``, as the console script runs it): its
    exit status and what it printed (where a separate process is what is tested, run the console script)."""
    from stunet.cli.predict import main
    from stunet.cpu_memory import freed_memory_reused

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    # the command configures glibc's allocator for the rest of its process: here, for the run only
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), freed_memory_reused():
        try:
            main(argv)
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if stop.code is not None and not isinstance(stop.code, int):
                err.write(f"{stop.code}\n")
    done = subprocess.CompletedProcess(["stunet-predict", *argv], code, out.getvalue(), err.getvalue())
    if check and done.returncode != 0:
        raise AssertionError(f"stunet-predict failed:\n{done.stderr[-3000:]}")
    return done


def labels_of(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def dice_per_label(ours: np.ndarray, theirs: np.ndarray) -> dict[int, float]:
    """Dice of every foreground label present in either label map (background, most of the voxels, left out)."""
    present = (set(np.unique(ours).tolist()) | set(np.unique(theirs).tolist())) - {0}
    return {label: 2 * int(np.sum((ours == label) & (theirs == label)))
            / (int(np.sum(ours == label)) + int(np.sum(theirs == label))) for label in sorted(present)}
