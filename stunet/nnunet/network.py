"""How an nnU-Net v2 configuration becomes an STU-Net.

Two kinds of plans:

- **STU-Net plans** (written by :mod:`stunet.nnunet.planner` / ``stunet-plans``) hold the whole architecture:
  ``network_class_name`` is :class:`STUNetFromPlans` and ``arch_kwargs`` list stages, widths, blocks per stage,
  kernels, strides and our options (``activation_checkpointing``). nnU-Net's own ``get_network_from_plans`` builds the
  network, so any trainer, the stock ``nnUNetTrainer`` included, trains an STU-Net from them, and ``nnUNetv2_predict``
  rebuilds it from the ``plans.json`` of the results folder.
- **Plain nnU-Net plans** (``nnUNetPlans``) describe nnU-Net's own U-Net. ``STUNetTrainer_<size>`` then builds the
  published six-stage layout of its size (kernels 3) with strides taken from the plans:

  - the network takes the first five downsampling strides of the configuration (``pool_op_kernel_sizes[1:6]``);
  - plans with more than five downsamplings (large 2D patches, say) lose the coarsest ones: the patch stays
    divisible, the network's bottleneck is just less coarse;
  - plans with fewer than five are padded with unit strides ([1, 1, 1]): the extra stages work at the coarsest
    resolution, like the last stage of the published model (whose last stride is [1, 1, 2] in the released plans).

The weights do not depend on the strides (only the resolution at which they are applied), so any of these networks
loads released weights of the same size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from stunet.models.config import STUNetConfig
from stunet.models.network import STUNet
from stunet.weights.factory import create_model

N_DOWNSAMPLINGS = 5
CHECKPOINTING_MODES = (False, "stage", "block")


class STUNetFromPlans(STUNet):
    """An STU-Net with the keyword arguments nnU-Net's ``get_network_from_plans`` passes (``input_channels``,
    ``num_classes``, ``deep_supervision``) and those of STU-Net plans' ``arch_kwargs``. Same modules, same parameter
    names as :class:`~stunet.models.network.STUNet`; ``strides`` include the first stage's unit stride, as in nnU-Net."""

    def __init__(self, input_channels: int, num_classes: int, n_stages: int, features_per_stage: Sequence[int],
                 n_blocks_per_stage: Sequence[int], kernel_sizes, strides: Sequence[Sequence[int]],
                 deep_supervision: bool = True, activation_checkpointing: bool | str = False):
        first, *downsamplings = [list(map(int, s)) for s in strides]
        if any(s != 1 for s in first):
            raise ValueError(f"STU-Net plans: the first stage's stride must be 1 (it works at full resolution), got "
                             f"{first}")
        if n_stages != len(features_per_stage):
            raise ValueError(f"STU-Net plans: n_stages is {n_stages} but features_per_stage has "
                             f"{len(features_per_stage)} entries")
        if activation_checkpointing not in CHECKPOINTING_MODES + (True,):
            raise ValueError(f"STU-Net plans: activation_checkpointing must be false, 'stage' or 'block', got "
                             f"{activation_checkpointing!r}")
        super().__init__(input_channels, num_classes, n_blocks_per_stage, features_per_stage, downsamplings,
                         kernel_sizes, deep_supervision=deep_supervision,
                         activation_checkpointing=activation_checkpointing)


NETWORK_CLASS_NAME = f"{STUNetFromPlans.__module__}.{STUNetFromPlans.__qualname__}"
# where plans written by stunet 0.1 (before the package had rooms) name the class; they still build through our trainers
FORMER_CLASS_NAMES = ("stunet.nnunet_network.STUNetFromPlans",)


def architecture_for_plans(config: STUNetConfig, activation_checkpointing: bool | str = False) -> dict:
    """The ``architecture`` entry of an STU-Net plans configuration (what nnU-Net's get_network_from_plans reads)."""
    return {"network_class_name": NETWORK_CLASS_NAME,
            "arch_kwargs": {"n_stages": config.n_stages, "features_per_stage": list(config.widths),
                            "n_blocks_per_stage": list(config.depths),
                            "kernel_sizes": [list(k) for k in config.kernel_sizes],
                            "strides": [[1] * config.spatial_dims] + [list(s) for s in config.strides],
                            "activation_checkpointing": activation_checkpointing},
            "_kw_requires_import": []}


def is_stunet_configuration(configuration_manager) -> bool:
    """Whether a configuration's plans describe an STU-Net (rather than nnU-Net's own U-Net)."""
    try:
        return configuration_manager.network_arch_class_name in (NETWORK_CLASS_NAME, *FORMER_CLASS_NAMES)
    except (AttributeError, KeyError):
        return False


def strides_for_plans(pool_op_kernel_sizes: Sequence[Sequence[int]], n_downsamplings: int = N_DOWNSAMPLINGS):
    """The network's strides from nnU-Net's ``pool_op_kernel_sizes`` (whose first entry is the stem's unit stride)."""
    first, *downsamplings = [list(map(int, s)) for s in pool_op_kernel_sizes]
    if any(s != 1 for s in first):
        raise ValueError(f"nnU-Net plans with a strided first stage ({first}) are not supported: an STU-Net's first "
                         f"stage works at full resolution")
    strides = downsamplings[:n_downsamplings]
    return strides + [[1] * len(first)] * (n_downsamplings - len(strides))


def network_strides(configuration_manager) -> list[list[int]]:
    """The downsampling strides of the STU-Net a configuration gives: the plans' own for STU-Net plans, else the
    published layout's mapping of nnU-Net's (:func:`strides_for_plans`)."""
    if is_stunet_configuration(configuration_manager):
        return [list(s) for s in configuration_manager.pool_op_kernel_sizes[1:]]
    return strides_for_plans(configuration_manager.pool_op_kernel_sizes)


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Relative resolution of each deep-supervision output (highest first), in nnU-Net's format."""
    ndim = len(strides[0])
    cumulative = np.cumprod(np.vstack([[1] * ndim] + [list(s) for s in strides]), axis=0)[:-1]
    return [list(1 / c) for c in cumulative]


def build_for_configuration(model_name: str, configuration_manager, num_input_channels: int,
                            num_output_channels: int, deep_supervision: bool, **model_kwargs) -> STUNet:
    """The published layout of ``model_name`` for a plain nnU-Net configuration (see the module docstring)."""
    strides = strides_for_plans(configuration_manager.pool_op_kernel_sizes)
    return create_model(model_name, in_channels=num_input_channels, num_classes=num_output_channels,
                        strides=strides, kernel_sizes=3, deep_supervision=deep_supervision, **model_kwargs)


def build_from_plans(configuration_manager, num_input_channels: int, num_output_channels: int,
                     deep_supervision: bool) -> STUNet:
    """The STU-Net of STU-Net plans, built by nnU-Net's own ``get_network_from_plans``."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    cm = configuration_manager
    name = NETWORK_CLASS_NAME if cm.network_arch_class_name in FORMER_CLASS_NAMES else cm.network_arch_class_name
    return get_network_from_plans(name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, num_input_channels, num_output_channels,
                                  allow_init=True, deep_supervision=deep_supervision)
