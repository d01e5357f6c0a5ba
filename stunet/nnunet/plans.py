"""nnU-Net v2 plans with the released models' preprocessing: for running a released checkpoint through nnU-Net's
predictor, and for giving a downstream dataset the pretraining preprocessing (``stunet-plans``).

The released models were trained by nnU-Net v1 on images read with SimpleITK (array axes z, y, x) without
transposition, at 1.5 mm isotropic spacing, per-image z-score normalisation and 128³ patches, with strides
[2,2,2]×4 + [1,1,2] (the last one along x). These plans reproduce that: SimpleITKIO, transpose [0, 1, 2],
ZScoreNormalization for every channel, the config's patch size and strides, batch size 2. A config completed from a
release's own nnU-Net v1 plans (:meth:`~stunet.weights.pretrained.PretrainedConfig.completed`) brings its normalization per
channel (CT with its intensity statistics), normalization masks, transposition and channel names.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from stunet.nnunet.network import architecture_for_plans
from stunet.weights.pretrained import PretrainedConfig

CONFIGURATION = "3d_fullres"


#: a config's normalization (``preprocessing.normalization``, one for all channels or one per channel) in nnU-Net v2
NORMALIZATION = {"zscore": "ZScoreNormalization", "ct": "CTNormalization", "none": "NoNormalization"}


def _per_channel(value, num_channels: int) -> list:
    """One value for each channel: a list of the right length as it is, otherwise its first entry (or the value) for
    every channel (a fine-tuning input with another channel count)."""
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == num_channels else [value[0]] * num_channels
    return [value] * num_channels


def configuration(config: PretrainedConfig, num_channels: int, plans_name: str, median_shape=None,
                  activation_checkpointing: bool | str = False) -> dict:
    """The ``3d_fullres`` configuration of plans with ``config``'s preprocessing and architecture."""
    pre = config.preprocessing
    net = replace(config.network_config(), in_channels=num_channels)
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    return {"data_identifier": f"{plans_name}_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": list(pre["patch_size"]),
            "median_image_size_in_voxels": list(median_shape or pre["patch_size"]), "spacing": list(pre["spacing"]),
            "normalization_schemes": [NORMALIZATION[n] for n in _per_channel(pre.get("normalization", "zscore"),
                                                                             num_channels)],
            "use_mask_for_norm": [bool(m) for m in _per_channel(pre.get("use_mask_for_norm", False), num_channels)],
            **resampling, "architecture": architecture_for_plans(net, activation_checkpointing), "batch_dice": False}


def plans_for_pretrained(config: PretrainedConfig, dataset_name: str, plans_name: str = "STUNetPlans",
                         num_channels: int = 1, fingerprint: dict | None = None,
                         activation_checkpointing: bool | str = False) -> dict:
    """Complete nnU-Net v2 plans with one ``3d_fullres`` configuration. ``fingerprint`` (a dataset's
    ``dataset_fingerprint.json``) fills the dataset statistics; without it they describe the pretraining patch."""
    spacing, median_shape, intensities = list(config.preprocessing["spacing"]), None, {}
    if fingerprint:
        spacing = [float(s) for s in np.median(fingerprint["spacings"], axis=0)]
        original = np.median(fingerprint["shapes_after_crop"], axis=0)
        target = np.array(config.preprocessing["spacing"])
        median_shape = [int(round(s)) for s in original * np.array(spacing) / target]
        intensities = fingerprint.get("foreground_intensity_properties_per_channel", {})
    elif num_channels == config.in_channels:
        intensities = config.preprocessing.get("intensity_properties", {})  # CT normalization's statistics
    transpose = [int(a) for a in config.preprocessing.get("transpose_forward", [0, 1, 2])]
    return {"dataset_name": dataset_name, "plans_name": plans_name,
            "original_median_spacing_after_transp": spacing,
            "original_median_shape_after_transp": median_shape or list(config.preprocessing["patch_size"]),
            "image_reader_writer": config.preprocessing.get("reader", "SimpleITKIO"),
            "transpose_forward": transpose, "transpose_backward": [int(a) for a in np.argsort(transpose)],
            "configurations": {CONFIGURATION: configuration(config, num_channels, plans_name, median_shape,
                                                             activation_checkpointing)},
            "experiment_planner_used": f"stunet-plans --pretrained {config.name}", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": intensities or {
                str(c): {} for c in range(num_channels)}}


def dataset_json_for_pretrained(config: PretrainedConfig, num_channels: int | None = None) -> dict:
    """A dataset.json with the released model's labels and ``num_channels`` input channels (default: the model's)."""
    channels = config.in_channels if num_channels is None else num_channels
    names = {0: "CT"} if channels == 1 else {c: f"channel_{c}" for c in range(channels)}
    if channels == config.in_channels and "channel_names" in config.preprocessing:
        names = {int(c): n for c, n in config.preprocessing["channel_names"].items()}
    return {"channel_names": {str(c): n for c, n in names.items()},
            "labels": {name: index for index, name in config.labels.items()}, "numTraining": 0,
            "file_ending": ".nii.gz", "name": config.name, "description": config.description}
