"""A small synthetic segmentation dataset in nnU-Net v2's raw layout, for demos and end-to-end tests.

Each case holds a ball (label 1, brighter than the background) and a box (label 2, darker) at random places and sizes,
in smooth background variation and noise, with anisotropic spacing and an oblique orientation. A network has to find
them: an untrained or broken one scores near zero Dice. Held-out cases go to ``imagesTs`` with their reference
segmentations in ``labelsTs``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

LABELS = {"background": 0, "ball": 1, "box": 2}


def _rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A direction matrix rotated by up to ``max_angle`` radians about a random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def make_case(rng: np.random.Generator, shape: Sequence[int], channels: int = 1):
    """Image channels (float32, z/y/x) and label map (uint8) of one case."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(np.float32)
    labels = np.zeros(shape, np.uint8)
    size = np.array(shape, np.float32)
    box_half = rng.uniform(0.12, 0.22, 3) * size
    box_center = rng.uniform(box_half + 1, size - box_half - 1)
    labels[np.all(np.abs(grid - box_center) <= box_half, axis=-1)] = 2
    radius = rng.uniform(0.15, 0.25) * size.min()
    ball_center = rng.uniform(radius + 1, size - radius - 1)
    labels[np.linalg.norm(grid - ball_center, axis=-1) <= radius] = 1
    slope = rng.normal(scale=0.6 / size.max(), size=3)
    background = (grid - size / 2) @ slope
    images = []
    for c in range(channels):
        contrast = {1: 1.5 + 0.5 * c, 2: -1.5}
        image = background + rng.normal(scale=0.5, size=shape)
        for label, value in contrast.items():
            image[labels == label] += value
        images.append((100 * image + 40).astype(np.float32))
    return images, labels


def _write(array: np.ndarray, path: Path, spacing, origin, direction) -> None:
    image = sitk.GetImageFromArray(array)  # array axes z, y, x
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction.ravel()])
    sitk.WriteImage(image, str(path), useCompression=True)


def write_dataset(raw_root: str | Path, dataset_id: int = 990, name: str = "STUNetSynthetic", num_train: int = 10,
                  num_test: int = 2, shape: Sequence[int] = (32, 40, 40), spacing: Sequence[float] = (0.9, 0.9, 2.0),
                  channels: int = 1, seed: int = 0) -> Path:
    """Write ``Dataset{id:03d}_{name}`` under ``raw_root`` and return its folder.

    ``shape`` is z, y, x in voxels; ``spacing`` is SimpleITK's x, y, z in mm.
    """
    rng = np.random.default_rng(seed)
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(num_train + num_test):
        split = "Tr" if i < num_train else "Ts"
        case = f"case_{i:03d}"
        images, labels = make_case(rng, shape, channels)
        direction = _rotation(rng, np.deg2rad(20))
        origin = rng.uniform(-100, 100, 3)
        for c, image in enumerate(images):
            _write(image, folder / f"images{split}" / f"{case}_{c:04d}.nii.gz", spacing, origin, direction)
        _write(labels, folder / f"labels{split}" / f"{case}.nii.gz", spacing, origin, direction)
    dataset_json = {"channel_names": {str(c): f"synthetic{c}" for c in range(channels)}, "labels": LABELS,
                    "numTraining": num_train, "file_ending": ".nii.gz", "name": name,
                    "description": "synthetic balls and boxes written by stunet.nnunet.synthetic"}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    return folder


def dice_per_label(prediction: np.ndarray, reference: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label (1.0 where both are empty)."""
    scores = {}
    for label in labels:
        p, r = prediction == label, reference == label
        denominator = p.sum() + r.sum()
        scores[label] = 1.0 if denominator == 0 else float(2 * np.logical_and(p, r).sum() / denominator)
    return scores
