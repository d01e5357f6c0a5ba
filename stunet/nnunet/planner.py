"""nnU-Net experiment planners that write STU-Net plans: one per size (``STUNetPlanner_small`` ... ``_huge``).

nnU-Net's own planner decides spacing, normalisation, resampling and patch size for its U-Net; these subclasses keep
its dataset analysis (target spacing, normalisation, resampling, 2D/3D/low-res configurations) and replace what
depends on the network:

- the architecture: the published layout of the size (six stages, kernels 3) with strides from nnU-Net's pooling for
  the patch (:func:`stunet.nnunet.network.strides_for_plans`), written as STU-Net plans that nnU-Net's
  ``get_network_from_plans`` builds (:func:`stunet.nnunet.network.architecture_for_plans`);
- patch and batch size: the largest patch (shrinking the axis longest relative to the median image first, as nnU-Net
  does) and then the largest batch (at least 2, at most 5 % of the dataset's voxels, as nnU-Net does) whose estimated
  GPU memory (:meth:`stunet.models.complexity.Complexity.gpu_training_bytes`, the model of ``stunet-info``) fits the
  budget.

With a released model's config (``pretrained=``) the plans take the pretraining preprocessing instead, as
:func:`stunet.nnunet.plans.released_preprocessing` states it for the predictor and the converter too: reader,
transposition, target spacing, normalisation and its masks, CT intensity statistics (where the config has them) and
resampling; the patch size and strides are the release's (unless ``patch_size=`` is given), and no low-resolution
configuration is planned. Fine-tuned weights thus see data like their pretraining data.

nnU-Net's ``nnUNetv2_plan_experiment -pl`` only looks for planners inside its own package; ``stunet-plans`` runs these.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import torch
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name
from nnunetv2.preprocessing.resampling.utils import recursive_find_resampling_fn_by_name

from stunet.errors import rounded
from stunet.labels import check_label_map
from stunet.models.complexity import measure
from stunet.nnunet.network import architecture_for_plans, strides_for_plans
from stunet.nnunet.plans import ReleasedPreprocessing, released_preprocessing
from stunet.nnunet.trainer import PLANS_LABEL_MAP
from stunet.models.presets import PRESETS
from stunet.models.registry import release_network_config
from stunet.models.release import PretrainedConfig
from stunet.weights.factory import create_model

GIB = 2 ** 30
MIN_FEATURE_MAP_EDGE = 4  # nnU-Net's: the coarsest feature map keeps at least 4 voxels along an axis


class STUNetPlanner(ExperimentPlanner):
    """Writes STU-Net plans of :attr:`model_name` for a dataset (see the module docstring)."""

    model_name = "stunet_small"

    def __init__(self, dataset_name_or_id, gpu_memory_target_in_gb: float = 24,
                 preprocessor_name: str = "DefaultPreprocessor", plans_name: str | None = None,
                 overwrite_target_spacing=None, suppress_transpose: bool = False,
                 pretrained: PretrainedConfig | None = None, activation_checkpointing: bool | str = False,
                 patch_size: Sequence[int] | None = None, label_map: str | None = None,
                 batch_size: int | None = None):
        if pretrained is not None and pretrained.model != self.model_name:
            raise ValueError(f"{type(self).__name__} plans {self.model_name}, but {pretrained.name} is a "
                             f"{pretrained.model}")
        if pretrained is not None and pretrained.missing_for_prediction():
            raise ValueError(f"{pretrained.name}: {', '.join(pretrained.missing_for_prediction())} are not known; "
                             f"plan with {type(self).__name__} without a pretrained config")
        size = PRESETS[self.model_name].size
        default_name = f"STUNetPlans_{size}" + (f"_{pretrained.tag}" if pretrained else "")
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name or default_name,
                         overwrite_target_spacing, suppress_transpose)
        self.pretrained = pretrained
        if pretrained is not None:
            self.released()  # a config that states its preprocessing wrongly fails here, not halfway through planning
        self.activation_checkpointing = activation_checkpointing
        self.fixed_patch_size = list(patch_size) if patch_size else (
            list(pretrained.preprocessing["patch_size"]) if pretrained else None)
        if label_map:
            check_label_map(label_map, self.dataset_json)
        self.label_map = label_map
        self.fixed_batch_size = batch_size
        if pretrained is not None:
            self.lowres_creation_threshold = 0  # the released models are full-resolution models
        self._estimates: dict = {}

    # -- the pretraining preprocessing ------------------------------------------------------------------------------
    def released(self) -> ReleasedPreprocessing:
        """The released model's preprocessing for this dataset's channels."""
        return released_preprocessing(self.pretrained, len(self.dataset_json["channel_names"]))

    def determine_fullres_target_spacing(self) -> np.ndarray:
        if self.pretrained is None:
            return super().determine_fullres_target_spacing()
        released = self.released()  # nnU-Net transposes this spacing by transpose_forward; the release's is transposed
        return np.array(released.configuration["spacing"], dtype=float)[released.plans["transpose_backward"]]

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self):
        if self.pretrained is None:
            return super().determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        configuration = self.released().configuration
        return configuration["normalization_schemes"], configuration["use_mask_for_norm"]

    def determine_transpose(self):
        if self.pretrained is None:
            return super().determine_transpose()
        plans = self.released().plans
        return plans["transpose_forward"], plans["transpose_backward"]

    def determine_reader_writer(self):
        if self.pretrained is None:
            return super().determine_reader_writer()
        return recursive_find_reader_writer_by_name(self.released().plans["image_reader_writer"])

    def determine_resampling(self, *args, **kwargs):
        if self.pretrained is None:
            return super().determine_resampling(*args, **kwargs)
        c = self.released().configuration
        return (recursive_find_resampling_fn_by_name(c["resampling_fn_data"]), c["resampling_fn_data_kwargs"],
                recursive_find_resampling_fn_by_name(c["resampling_fn_seg"]), c["resampling_fn_seg_kwargs"])

    def determine_segmentation_softmax_export_fn(self, *args, **kwargs):
        if self.pretrained is None:
            return super().determine_segmentation_softmax_export_fn(*args, **kwargs)
        c = self.released().configuration
        return (recursive_find_resampling_fn_by_name(c["resampling_fn_probabilities"]),
                c["resampling_fn_probabilities_kwargs"])

    def save_plans(self, plans):
        """nnU-Net's, with the release's CT intensity statistics (where it has them) in place of the dataset's: CT
        normalization then clips and scales the dataset as it did the pretraining data. Spacings are written
        :func:`~stunet.errors.rounded` (``0.9``, not float32's ``0.8999999761581421``)."""
        for configuration in plans["configurations"].values():
            if "spacing" in configuration:
                configuration["spacing"] = [rounded(s) for s in configuration["spacing"]]
        if "original_median_spacing_after_transp" in plans:
            plans["original_median_spacing_after_transp"] = [
                rounded(s) for s in plans["original_median_spacing_after_transp"]]
        if self.pretrained is not None:
            released = self.released().plans
            if "foreground_intensity_properties_per_channel" in released:
                plans["foreground_intensity_properties_per_channel"] = \
                    released["foreground_intensity_properties_per_channel"]
        super().save_plans(plans)

    # -- architecture, patch and batch ------------------------------------------------------------------------------
    def _network(self, strides, num_input_channels: int, num_classes: int):
        kwargs = dict(in_channels=num_input_channels, num_classes=num_classes, strides=strides, kernel_sizes=3)
        with torch.device("meta"):
            return create_model(self.model_name, **kwargs).config

    def estimate_bytes(self, config, patch_size: Sequence[int], batch_size: int) -> int:
        """Estimated GPU memory of training ``config`` on ``patch_size`` at ``batch_size`` (mixed precision).

        Stored activations are counted once per network on a patch of twice its total stride and scaled by the
        voxel count: every stage's feature maps grow linearly with the patch when it is divisible by the strides.
        """
        if config not in self._estimates:
            reference = [2 * d for d in config.total_stride]
            self._estimates[config] = (measure(config, reference, self.activation_checkpointing), np.prod(reference))
        complexity, voxels = self._estimates[config]
        scaled = replace(complexity, activation_bytes=int(complexity.activation_bytes * np.prod(patch_size) / voxels))
        return scaled.gpu_training_bytes(batch_size)

    def _topology(self, spacing, patch_size):
        """(strides of the network, patch made divisible, per-axis step to shrink the patch by)."""
        _, pools, _, patch, divisible = get_pool_and_conv_props(spacing, patch_size, MIN_FEATURE_MAP_EDGE, 999999)
        return strides_for_plans(pools), [int(p) for p in patch], divisible

    def _fit_patch(self, spacing, median_shape, num_input_channels: int, num_classes: int):
        """The largest patch (and its network) whose batch of 2 fits the budget, nnU-Net's way."""
        budget = self.UNet_vram_target_GB * GIB
        if self.fixed_patch_size is not None and len(self.fixed_patch_size) == len(spacing):
            strides = [list(s) for s in release_network_config(self.pretrained).strides] if self.pretrained else \
                self._topology(spacing, self.fixed_patch_size)[0]
            config = self._network(strides, num_input_channels, num_classes)
            bad = [a for a, (p, d) in enumerate(zip(self.fixed_patch_size, config.total_stride)) if p % d]
            if bad:
                raise ValueError(f"patch size {self.fixed_patch_size} is not a multiple of the network's total stride "
                                 f"{config.total_stride} along axis {bad[0]}")
            return config, list(self.fixed_patch_size)
        ratio = 1 / np.array(spacing)
        volume = 256 ** 3 if len(spacing) == 3 else 2048 ** 2
        initial = [round(r) for r in ratio * (volume / np.prod(ratio)) ** (1 / len(spacing))]
        patch = [min(i, int(m)) for i, m in zip(initial, median_shape)]
        strides, patch, divisible = self._topology(spacing, patch)
        config = self._network(strides, num_input_channels, num_classes)
        while self.estimate_bytes(config, patch, self.UNet_min_batch_size) > budget:
            shrinkable = [a for a in range(len(patch)) if patch[a] > divisible[a]]
            if not shrinkable:
                break  # the smallest patch: training may not fit, the printed estimate says so
            axis = max(shrinkable, key=lambda a: patch[a] / median_shape[a])
            patch[axis] -= divisible[axis]
            strides, patch, divisible = self._topology(spacing, patch)
            config = self._network(strides, num_input_channels, num_classes)
        return config, patch

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        num_input_channels = len(self.dataset_json["channel_names"])
        num_classes = len(self.dataset_json["labels"])  # an upper bound on the heads: fine for memory
        config, patch = self._fit_patch([float(s) for s in spacing], [float(s) for s in median_shape],
                                        num_input_channels, num_classes)
        budget = self.UNet_vram_target_GB * GIB
        batch = self.UNet_min_batch_size
        while self.estimate_bytes(config, patch, batch + 1) <= budget:
            batch += 1
        five_percent = round(approximate_n_voxels_dataset * self.max_dataset_covered / np.prod(patch, dtype=float))
        batch = max(min(batch, five_percent), self.UNet_min_batch_size)
        if self.fixed_batch_size:
            batch = self.fixed_batch_size
        resampling_data, data_kwargs, resampling_seg, seg_kwargs = self.determine_resampling()
        resampling_probabilities, probabilities_kwargs = self.determine_segmentation_softmax_export_fn()
        normalization, use_mask = self.determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        plan = {"data_identifier": data_identifier, "preprocessor_name": self.preprocessor_name,
                "batch_size": int(batch), "patch_size": [int(p) for p in patch],
                "median_image_size_in_voxels": median_shape, "spacing": spacing,  # nnU-Net computes on these
                "normalization_schemes": normalization, "use_mask_for_norm": use_mask,
                "resampling_fn_data": resampling_data.__name__, "resampling_fn_seg": resampling_seg.__name__,
                "resampling_fn_data_kwargs": data_kwargs, "resampling_fn_seg_kwargs": seg_kwargs,
                "resampling_fn_probabilities": resampling_probabilities.__name__,
                "resampling_fn_probabilities_kwargs": probabilities_kwargs,
                "architecture": architecture_for_plans(config, self.activation_checkpointing),
                "stunet_estimated_gpu_memory_gb": round(self.estimate_bytes(config, patch, batch) / GIB, 2)}
        if self.label_map:
            plan[PLANS_LABEL_MAP] = self.label_map
        return plan


class STUNetPlanner_small(STUNetPlanner):
    model_name = "stunet_small"


class STUNetPlanner_base(STUNetPlanner):
    model_name = "stunet_base"


class STUNetPlanner_large(STUNetPlanner):
    model_name = "stunet_large"


class STUNetPlanner_huge(STUNetPlanner):
    model_name = "stunet_huge"


PLANNERS = {cls.model_name: cls for cls in (STUNetPlanner_small, STUNetPlanner_base, STUNetPlanner_large,
                                            STUNetPlanner_huge)}
