"""nnU-Net v2 plans with the released models' preprocessing: for running a released checkpoint through nnU-Net's
predictor, and for giving a downstream dataset the pretraining preprocessing (``stunet-plans``).

The released models were trained by nnU-Net v1 on images read with SimpleITK (array axes z, y, x) without
transposition, at 1.5 mm isotropic spacing, per-image z-score normalisation and 128³ patches, with strides
[2,2,2]×4 + [1,1,2] (the last one along x). These plans reproduce that: SimpleITKIO, transpose [0, 1, 2],
ZScoreNormalization for every channel, the config's patch size and strides, batch size 2.
"""
from __future__ import annotations

import numpy as np

from stunet.registry import create_model

CONFIGURATION = "3d_fullres"


def _architecture(config: dict) -> dict:
    arch = config["architecture"]
    with __import__("torch").device("meta"):
        net_config = create_model(config["model"], **arch).config
    return {"network_class_name": "stunet.network.STUNet",
            "arch_kwargs": {"n_stages": net_config.n_stages, "features_per_stage": list(net_config.widths),
                            "n_blocks_per_stage": list(net_config.depths),
                            "kernel_sizes": [list(k) for k in net_config.kernel_sizes],
                            "strides": [[1] * net_config.spatial_dims] + [list(s) for s in net_config.strides]},
            "_kw_requires_import": []}


def configuration(config: dict, num_channels: int, plans_name: str, median_shape=None) -> dict:
    """The ``3d_fullres`` configuration of plans with ``config``'s preprocessing."""
    pre = config["preprocessing"]
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
            "normalization_schemes": ["ZScoreNormalization"] * num_channels, "use_mask_for_norm": [False] * num_channels,
            **resampling, "architecture": _architecture(config), "batch_dice": False}


def plans_for_pretrained(config: dict, dataset_name: str, plans_name: str = "STUNetPlans", num_channels: int = 1,
                         fingerprint: dict | None = None) -> dict:
    """Complete nnU-Net v2 plans with one ``3d_fullres`` configuration. ``fingerprint`` (a dataset's
    ``dataset_fingerprint.json``) fills the dataset statistics; without it they describe the pretraining patch."""
    spacing, median_shape, intensities = list(config["preprocessing"]["spacing"]), None, {}
    if fingerprint:
        spacing = [float(s) for s in np.median(fingerprint["spacings"], axis=0)]
        original = np.median(fingerprint["shapes_after_crop"], axis=0)
        target = np.array(config["preprocessing"]["spacing"])
        median_shape = [int(round(s)) for s in original * np.array(spacing) / target]
        intensities = fingerprint.get("foreground_intensity_properties_per_channel", {})
    return {"dataset_name": dataset_name, "plans_name": plans_name,
            "original_median_spacing_after_transp": spacing,
            "original_median_shape_after_transp": median_shape or list(config["preprocessing"]["patch_size"]),
            "image_reader_writer": config["preprocessing"].get("reader", "SimpleITKIO"),
            "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {CONFIGURATION: configuration(config, num_channels, plans_name, median_shape)},
            "experiment_planner_used": f"stunet-plans --pretrained {config['name']}", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": intensities or {
                str(c): {} for c in range(num_channels)}}


def dataset_json_for_pretrained(config: dict) -> dict:
    labels = {name: int(index) for index, name in config["labels"].items()}
    return {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz",
            "name": config["name"], "description": config["description"]}
