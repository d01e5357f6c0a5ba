"""Where the body is in a CT, found from the image itself: which tiles of the sliding window need the network.

A CT's field of view holds air around the body. The network sees only its tile, so a tile holding nothing but air gives
the features of an all-air tile, whatever its position; :class:`~stunet.prediction.sliding_window.Predictor` computes
those once and blends them in for every tile the body mask misses, mirrorings included. The rule, on the preprocessed
image (the network's grid; CTNormalization is monotonic, so a threshold in Hounsfield units is a threshold there):

1. voxels above ``THRESHOLD_HU`` (-500 HU: skin, fat and everything denser; air and lung-like densities are below),
   normalised as the plans normalise the image: with CTNormalization by the plans' statistics (where their clipping
   floor lies above -500 HU, every voxel above the floor), with ZScoreNormalization by the image's own mean and
   standard deviation (estimated on every second voxel along each axis of the image as read);
2. the connected components holding at least ``MIN_COMPONENT_FRACTION`` of the largest one's voxels: the body, and
   arms or legs apart from it, and a table as large; tubes, leads and noise apart from the body are dropped;
3. a tile runs when the mask grown by ``MARGIN`` voxels (a cube) meets it; padding added around a small image counts
   as body (it is not air).

Only for single-channel CT models: normalisation ``CTNormalization``, or ``ZScoreNormalization`` over the whole image
with the channel named CT (the released TotalSegmentator models). In MR and other images the background has no fixed
value, so nothing is skipped there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

THRESHOLD_HU = -500.0
MIN_COMPONENT_FRACTION = 0.01
MARGIN = 4  # voxels of the network's grid


@dataclass(frozen=True)
class AirRule:
    """The body threshold of a CT model: ``normalised`` is -500 HU in the preprocessed image's units, or None where
    each image's own z-score sets it."""
    normalised: float | None

    def threshold(self, image: np.ndarray) -> float:
        """-500 HU in the preprocessed units of ``image``, the first channel as read (before normalisation)."""
        if self.normalised is not None:
            return self.normalised
        sample = image[(slice(None, None, 2),) * image.ndim]
        return (THRESHOLD_HU - float(sample.mean(dtype=np.float64))) / max(float(sample.std(dtype=np.float64)), 1e-8)

    def describe(self) -> str:
        return (f"tiles missing the body (> {THRESHOLD_HU:g} HU, components of at least {MIN_COMPONENT_FRACTION:.0%} "
                f"of the largest, grown by {MARGIN} voxels) get the network's features of an all-air tile")


def air_rule(model) -> AirRule | None:
    """The rule for ``model`` (a :class:`stunet.prediction.model.Model`), or None where it does not apply: not a
    single-channel CT model."""
    schemes = list(model.configuration_manager.normalization_schemes)
    names = [str(n).upper() for n in (model.dataset_json.get("channel_names") or {}).values()]
    if schemes == ["ZScoreNormalization"] and names == ["CT"] \
            and not any(model.configuration_manager.use_mask_for_norm):
        return AirRule(None)
    if schemes != ["CTNormalization"]:
        return None
    properties = model.plans_manager.foreground_intensity_properties_per_channel.get("0")
    if not properties:
        return None
    lower, upper = properties["percentile_00_5"], properties["percentile_99_5"]
    mean, std = properties["mean"], max(properties["std"], 1e-8)
    threshold = (float(np.clip(THRESHOLD_HU, lower, upper)) - mean) / std
    if THRESHOLD_HU <= lower:  # air and -500 HU are both clipped to the floor: anything above the floor
        threshold += 1e-4
    return AirRule(threshold)


def body_mask(image: torch.Tensor, threshold: float, inside: Sequence[slice]) -> np.ndarray:
    """Rules 1-2 and the padding of rule 3 on a padded image's first channel (spatial shape); ``inside`` is the
    region of the image within the padding."""
    dense = (image[tuple(inside)] > threshold).cpu().numpy()
    components, count = ndimage.label(dense)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        keep = sizes >= MIN_COMPONENT_FRACTION * sizes.max()
        dense = keep[components]
    mask = np.ones(image.shape, dtype=bool)  # padding is body
    mask[tuple(inside)] = dense
    return mask


def tiles_to_run(mask: np.ndarray, tiles: Sequence[tuple], margin: int = MARGIN) -> list[bool]:
    """Per tile (a tuple of slices, or an index then slices for 2D tiles), whether the mask grown by ``margin``
    meets it."""
    def grown(index):
        if isinstance(index, slice):
            return slice(max(index.start - margin, 0), index.stop + margin)
        return slice(max(index - margin, 0), index + margin + 1)
    return [bool(mask[tuple(grown(i) for i in tile)].any()) for tile in tiles]


def air_value(image: torch.Tensor, mask: np.ndarray) -> float:
    """The image's air: the median of the voxels outside the body mask (every fourth along each axis)."""
    step = (slice(None, None, 4),) * image.ndim
    outside = image[step].cpu().numpy()[~mask[step]]
    return float(np.median(outside)) if outside.size else float(image.min())
