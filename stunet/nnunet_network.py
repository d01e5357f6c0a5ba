"""How an nnU-Net v2 configuration maps onto an STU-Net.

The trainers always build the published six-stage layout (five downsamplings, kernels 3), whatever the dataset's
plans say, so that every trained model can start from, and be compared with, the released weights:

- the network takes the first five downsampling strides of the configuration (``pool_op_kernel_sizes[1:6]``);
- plans with more than five downsamplings (large 2D patches, say) lose the coarsest ones: the patch stays divisible,
  the network's bottleneck is just less coarse;
- plans with fewer than five are padded with unit strides ([1, 1, 1]): the extra stages work at the coarsest
  resolution, like the last stage of the published model (whose last stride is [1, 1, 2] in the released plans).

The weights do not depend on the strides (only the resolution at which they are applied), so any of these networks
loads released weights of the same size.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from stunet.network import STUNet
from stunet.registry import create_model

N_DOWNSAMPLINGS = 5


def strides_for_plans(pool_op_kernel_sizes: Sequence[Sequence[int]], n_downsamplings: int = N_DOWNSAMPLINGS):
    """The network's strides from nnU-Net's ``pool_op_kernel_sizes`` (whose first entry is the stem's unit stride)."""
    first, *downsamplings = [list(map(int, s)) for s in pool_op_kernel_sizes]
    if any(s != 1 for s in first):
        raise ValueError(f"nnU-Net plans with a strided first stage ({first}) are not supported: an STU-Net's first "
                         f"stage works at full resolution")
    strides = downsamplings[:n_downsamplings]
    return strides + [[1] * len(first)] * (n_downsamplings - len(strides))


def deep_supervision_scales(strides: Sequence[Sequence[int]]) -> list[list[float]]:
    """Relative resolution of each deep-supervision output (highest first), in nnU-Net's format."""
    ndim = len(strides[0])
    cumulative = np.cumprod(np.vstack([[1] * ndim] + [list(s) for s in strides]), axis=0)[:-1]
    return [list(1 / c) for c in cumulative]


def build_for_configuration(model_name: str, configuration_manager, num_input_channels: int,
                            num_output_channels: int, deep_supervision: bool, **model_kwargs) -> STUNet:
    strides = strides_for_plans(configuration_manager.pool_op_kernel_sizes)
    return create_model(model_name, in_channels=num_input_channels, num_classes=num_output_channels,
                        strides=strides, kernel_sizes=3, deep_supervision=deep_supervision, **model_kwargs)
