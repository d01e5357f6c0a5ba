"""Size, compute and training-memory figures of an STU-Net, computed on the ``meta`` device (no memory, no time)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from stunet.config import STUNetConfig
from stunet.network import STUNet


@dataclass(frozen=True)
class Complexity:
    parameters: int
    macs: int  # multiply-accumulates of all convolutions for one sample
    activation_bytes: int  # fp32 tensors kept for the backward pass, one sample

    @property
    def weight_and_optimizer_bytes(self) -> int:
        """fp32 weights, gradients and SGD momentum (nnU-Net's optimiser)."""
        return 3 * 4 * self.parameters

    def training_bytes(self, batch_size: int) -> int:
        """Estimated training memory: stored activations for the batch plus weights, gradients and momentum."""
        return batch_size * self.activation_bytes + self.weight_and_optimizer_bytes


def measure(config: STUNetConfig, patch_size: Sequence[int], activation_checkpointing: bool = False) -> Complexity:
    """Parameters, convolution MACs and stored-activation bytes of one training forward pass on ``patch_size``."""
    with torch.device("meta"):
        model = STUNet(**vars(config), deep_supervision=True, activation_checkpointing=activation_checkpointing)
        x = torch.empty(1, config.in_channels, *patch_size, requires_grad=activation_checkpointing)
    params = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        base = t if t._base is None else t._base  # a view shares its base's memory
        if id(base) not in params and t.is_floating_point():
            saved[id(base)] = base.numel() * 4
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FlopCounterMode(display=False) as flops:
        model(x)
    # convolutions and the matrix products of the 1x1 convolutions; one multiply-accumulate is two FLOPs
    return Complexity(sum(p.numel() for p in model.parameters()), flops.get_total_flops() // 2, sum(saved.values()))
