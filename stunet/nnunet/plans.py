"""The released models' preprocessing in nnU-Net v2's terms, stated once (:func:`released_preprocessing`), and the
nnU-Net v2 plans of a released checkpoint built on it (:func:`plans_for_pretrained`).

Three readers, which therefore cannot disagree (``tests/test_plans.py`` checks it for every shipped config):

- prediction with a released model (:func:`stunet.prediction.model.load_pretrained`): :func:`plans_for_pretrained`;
- conversion of a released checkpoint to an nnU-Net model folder (:mod:`stunet.nnunet.convert`): the same plans;
- ``stunet-plans --pretrained`` (:class:`stunet.nnunet.planner.STUNetPlanner` with ``pretrained=``): nnU-Net's planner
  on a downstream dataset, which takes reader, transposition, target spacing, normalisation, masks, CT intensity
  statistics (where the config states them) and resampling from :func:`released_preprocessing` instead of its
  dataset analysis.

The TotalSegmentator releases were trained by nnU-Net v1 on images read with SimpleITK (array axes z, y, x) without
transposition, at 1.5 mm isotropic spacing, per-image z-score normalisation and 128³ patches, with strides
[2,2,2]×4 + [1,1,2] (the last one along x): their configs say so, and these plans follow. A config completed from a
release's own nnU-Net v1 plans (:meth:`~stunet.models.release.PretrainedConfig.completed`) brings its normalization
per channel (CT with its intensity statistics), normalization masks, transposition and channel names.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from stunet.models.registry import release_network_config
from stunet.models.release import PretrainedConfig
from stunet.nnunet.network import architecture_for_plans

CONFIGURATION = "3d_fullres"


#: a config's normalization (``preprocessing.normalization``, one for all channels or one per channel) in nnU-Net v2
NORMALIZATION = {"zscore": "ZScoreNormalization", "ct": "CTNormalization", "none": "NoNormalization"}

#: nnU-Net's default resampling (its ExperimentPlanner's ``determine_resampling`` and
#: ``determine_segmentation_softmax_export_fn``), which is nnU-Net v1's as well: cubic images, linear segmentations and
#: probabilities, nearest along the separate axis of anisotropic images
RESAMPLING = {"resampling_fn_data": "resample_data_or_seg_to_shape",
              "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                     "force_separate_z": None}}


def _per_channel(value, num_channels: int) -> list:
    """One value for each channel: a list of the right length as it is, otherwise its first entry (or the value) for
    every channel (a fine-tuning input with another channel count)."""
    if isinstance(value, (list, tuple)):
        return list(value) if len(value) == num_channels else [value[0]] * num_channels
    return [value] * num_channels


@dataclass(frozen=True)
class ReleasedPreprocessing:
    """A released model's preprocessing as nnU-Net v2 plans state it, for a number of input channels."""

    #: entries of the plans themselves: ``image_reader_writer``, ``transpose_forward``, ``transpose_backward`` and,
    #: where the config states them (CT normalization), ``foreground_intensity_properties_per_channel``
    plans: dict
    #: entries of a configuration: ``spacing`` (in the transposed axis order, as nnU-Net's), ``normalization_schemes``,
    #: ``use_mask_for_norm`` and the ``resampling_fn_*`` entries
    configuration: dict


def released_preprocessing(config: PretrainedConfig, num_channels: int) -> ReleasedPreprocessing:
    """The preprocessing of ``config`` (complete for prediction: see
    :meth:`~stunet.models.release.PretrainedConfig.missing_for_prediction`) for ``num_channels`` input channels.
    With another channel count than the release's, every channel takes the first channel's normalization, mask and
    intensity statistics."""
    pre = config.preprocessing
    spacing = [float(s) for s in pre["spacing"]]
    transpose = [int(a) for a in pre.get("transpose_forward", range(len(spacing)))]
    if sorted(transpose) != list(range(len(spacing))):
        raise ValueError(f"{config.name}: transpose_forward {transpose} is not an order of the {len(spacing)} axes")
    plans = {"image_reader_writer": pre.get("reader", "SimpleITKIO"), "transpose_forward": transpose,
             "transpose_backward": [int(a) for a in np.argsort(transpose)]}
    if pre.get("intensity_properties"):  # CT normalization's statistics, per channel
        stats = pre["intensity_properties"]
        same = num_channels == config.in_channels
        plans["foreground_intensity_properties_per_channel"] = {
            str(c): dict(stats.get(str(c if same else 0), {})) for c in range(num_channels)}
    schemes = _per_channel(pre.get("normalization", "zscore"), num_channels)
    unknown = sorted(set(schemes) - set(NORMALIZATION))
    if unknown:
        raise ValueError(f"{config.name}: normalization {', '.join(map(repr, unknown))} is none of "
                         f"{', '.join(NORMALIZATION)}")
    configuration = {"spacing": spacing, "normalization_schemes": [NORMALIZATION[n] for n in schemes],
                     "use_mask_for_norm": [bool(m) for m in _per_channel(pre.get("use_mask_for_norm", False),
                                                                          num_channels)],
                     **{key: dict(value) if isinstance(value, dict) else value for key, value in RESAMPLING.items()}}
    return ReleasedPreprocessing(plans, configuration)


def plans_for_pretrained(config: PretrainedConfig, dataset_name: str, plans_name: str = "STUNetPlans",
                         num_channels: int = 1, activation_checkpointing: bool | str = False) -> dict:
    """Complete nnU-Net v2 plans of the released checkpoint ``config`` with ``num_channels`` input channels: one
    ``3d_fullres`` configuration with its preprocessing (:func:`released_preprocessing`), patch size and architecture,
    batch size 2. The dataset statistics nnU-Net's planner would write (median spacing and shape) describe the
    pretraining patch; prediction does not read them."""
    released = released_preprocessing(config, num_channels)
    patch = [int(p) for p in config.preprocessing["patch_size"]]
    net = replace(release_network_config(config), in_channels=num_channels)
    configuration = {"data_identifier": f"{plans_name}_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
                     "batch_size": 2, "patch_size": patch, "median_image_size_in_voxels": list(patch),
                     **released.configuration, "architecture": architecture_for_plans(net, activation_checkpointing),
                     "batch_dice": False}
    return {"dataset_name": dataset_name, "plans_name": plans_name,
            "original_median_spacing_after_transp": list(released.configuration["spacing"]),
            "original_median_shape_after_transp": list(patch),
            "image_reader_writer": released.plans["image_reader_writer"],
            "transpose_forward": released.plans["transpose_forward"],
            "transpose_backward": released.plans["transpose_backward"],
            "configurations": {CONFIGURATION: configuration},
            "experiment_planner_used": f"stunet-plans --pretrained {config.name}", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": released.plans.get(
                "foreground_intensity_properties_per_channel", {str(c): {} for c in range(num_channels)})}


def dataset_json_for_pretrained(config: PretrainedConfig, num_channels: int | None = None) -> dict:
    """A dataset.json with the released model's labels and ``num_channels`` input channels (default: the model's)."""
    channels = config.in_channels if num_channels is None else num_channels
    names = {0: "CT"} if channels == 1 else {c: f"channel_{c}" for c in range(channels)}
    if channels == config.in_channels and "channel_names" in config.preprocessing:
        names = {int(c): n for c, n in config.preprocessing["channel_names"].items()}
    return {"channel_names": {str(c): n for c, n in names.items()},
            "labels": {name: index for index, name in config.labels.items()}, "numTraining": 0,
            "file_ending": ".nii.gz", "name": config.name, "description": config.description}
