"""nnU-Net's preprocessing of one case (``DefaultPreprocessor.run_case_npy``), the same steps at a lower cost.

nnU-Net's steps, in its order: transpose, crop to the non-zero region, normalise each channel (nnU-Net's own
normalisation classes, run here unchanged), resample to the configuration's spacing. Three steps are done differently
because they dominate a large image (on a 512×512×600 CT: 19.5 s and a 6.7 GB peak through nnU-Net):

- the crop's bounding box comes from the non-zero voxels directly; nnU-Net fills the holes of the mask first, which
  never moves its bounding box. The filled mask itself is computed, inside the box, only when a channel's
  normalisation uses it (``use_mask_for_norm``);
- the image is normalised in place rather than copied (the caller hands it over);
- resampling is :func:`stunet.prediction.resample.resample_image`: the same interpolation as nnU-Net's skimage/scipy calls (cubic
  B-spline with its prefilter, edge handling and clipping; the separate-z rule), in float32 torch on the prediction
  device, falling back to the CPU when the GPU has no room.

Other preprocessors, resampling functions or normalisation classes go through nnU-Net's own ``run_case_npy``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from nnunetv2.preprocessing.cropping.cropping import create_nonzero_mask
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, determine_do_sep_z_and_axis
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from stunet.prediction.resample import resample_image, resampled_spacing

# nnU-Net's normalisation classes that read the mask only when use_mask_for_norm is set
_MASK_ONLY_WHEN_ASKED = {"CTNormalization", "ZScoreNormalization", "NoNormalization", "RescaleTo01Normalization",
                         "RGBTo01Normalization"}
_RESAMPLING_KWARGS = {"is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold"}


def supported(configuration_manager: ConfigurationManager) -> bool:
    """Whether :func:`preprocess` reproduces this configuration's preprocessing (else nnU-Net's runs)."""
    config = configuration_manager.configuration
    kwargs = config.get("resampling_fn_data_kwargs", {})
    return (configuration_manager.preprocessor_class is DefaultPreprocessor
            and config.get("resampling_fn_data") == "resample_data_or_seg_to_shape"
            and set(kwargs) <= _RESAMPLING_KWARGS and not kwargs.get("is_seg", False)
            and kwargs.get("order", 3) in (0, 1, 3) and kwargs.get("order_z", 0) in (0, 1))


def bounding_box(data: np.ndarray) -> list[list[int]]:
    """[[start, stop], ...] of the voxels non-zero in any channel (nnU-Net's crop box), the whole image if none."""
    nonzero = np.zeros(data.shape[1:], dtype=bool)
    for channel in data:
        nonzero |= channel != 0
    box = []
    for axis in range(nonzero.ndim):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(nonzero.ndim) if a != axis)))
        box.append([int(hits[0]), int(hits[-1]) + 1] if len(hits) else [0, nonzero.shape[axis]])
    return box


def _resample(data: torch.Tensor, new_shape, original_spacing, target_spacing, kwargs: dict,
              device: torch.device, on_fallback: Callable[[str], None] | None = None) -> torch.Tensor:
    separate, axis = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), original_spacing, target_spacing,
                                                 *([kwargs["separate_z_anisotropy_threshold"]]
                                                   if "separate_z_anisotropy_threshold" in kwargs else []))
    args = (list(new_shape), kwargs.get("order", 3), kwargs.get("order_z", 0), axis if separate else None)
    if device.type != "cpu":
        try:
            return resample_image(data.to(device), *args)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if on_fallback is not None:
                on_fallback("resampling the image")
    return resample_image(data, *args)


def preprocess(image: np.ndarray, properties: dict, plans_manager: PlansManager,
               configuration_manager: ConfigurationManager, dataset_json: dict,
               device: str | torch.device = "cpu",
               on_fallback: Callable[[str], None] | None = None) -> tuple[torch.Tensor, dict]:
    """(preprocessed float32 tensor (channels, *spatial), properties with nnU-Net's crop and shape entries) of the
    reader's ``image`` (channels, *spatial). ``image`` is normalised in place: the caller must not reuse it.
    ``on_fallback(what)`` is told when the GPU has no room and the CPU does the work instead."""
    device = torch.device(device)
    if not supported(configuration_manager):
        preprocessor = configuration_manager.preprocessor_class(verbose=False)
        data, _, properties = preprocessor.run_case_npy(image, None, properties, plans_manager,
                                                        configuration_manager, dataset_json)
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), properties
    if image.dtype != np.float32:
        image = image.astype(np.float32)
    data = image.transpose([0, *[i + 1 for i in plans_manager.transpose_forward]])
    original_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    properties["shape_before_cropping"] = data.shape[1:]
    box = bounding_box(data)
    properties["bbox_used_for_cropping"] = box
    data = data[(slice(None), *[slice(a, b) for a, b in box])]
    properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]
    target_spacing = resampled_spacing(configuration_manager.spacing, original_spacing)
    new_shape = compute_new_shape(data.shape[1:], original_spacing, target_spacing)
    schemes = configuration_manager.normalization_schemes
    needs_mask = any(configuration_manager.use_mask_for_norm) or not set(schemes) <= _MASK_ONLY_WHEN_ASKED
    seg = (np.where(create_nonzero_mask(data), np.int8(0), np.int8(-1))[None] if needs_mask
           else np.zeros((1,) + (1,) * (data.ndim - 1), dtype=np.int8))  # read only with use_mask_for_norm
    data = DefaultPreprocessor(verbose=False)._normalize(
        data, seg, configuration_manager, plans_manager.foreground_intensity_properties_per_channel)
    tensor = torch.from_numpy(np.ascontiguousarray(data))
    del data, image, seg
    return _resample(tensor, new_shape, original_spacing, target_spacing,
                     configuration_manager.configuration.get("resampling_fn_data_kwargs", {}), device,
                     on_fallback), properties
