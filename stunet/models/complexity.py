"""Size, compute and training-memory figures of an STU-Net, computed on the ``meta`` device (no memory, no time)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from stunet.models.config import STUNetConfig
from stunet.models.network import STUNet


GPU_OVERHEAD_BYTES = int(1.5 * 2 ** 30)


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

    def gpu_training_bytes(self, batch_size: int) -> int:
        """Estimated GPU memory of mixed-precision training (nnU-Net's default on CUDA): 16-bit stored activations
        (half the fp32 figure; InstanceNorm statistics and a few tensors stay in fp32, so slightly under), fp32
        weights, gradients and momentum, and :data:`GPU_OVERHEAD_BYTES` for the CUDA context, cuDNN workspaces and
        allocator slack. An estimate, not a measurement."""
        return int(batch_size * self.activation_bytes * 0.5) + self.weight_and_optimizer_bytes + GPU_OVERHEAD_BYTES


def _saved_bytes(model: STUNet, x: torch.Tensor, units: str) -> tuple[int, dict[int, int], int]:
    """fp32 bytes autograd keeps for backward: total, per checkpointing unit ('stage' or 'block'), and the MACs."""
    params = {id(p) for p in model.parameters()}
    stages = list(model.conv_blocks_context) + list(model.conv_blocks_localization)
    if units == "block":
        stages = [block for stage in stages for block in stage]
    saved: dict[int, tuple[int, int | None]] = {}
    current: list[int | None] = [None]
    hooks = [m.register_forward_pre_hook(lambda m, _: current.__setitem__(0, id(m))) for m in stages]
    hooks += [m.register_forward_hook(lambda m, _i, _o: current.__setitem__(0, None)) for m in stages]

    def pack(t: torch.Tensor):
        base = t if t._base is None else t._base  # a view shares its base's memory
        if id(base) not in params and t.is_floating_point() and id(base) not in saved:
            saved[id(base)] = (base.numel() * 4, current[0])
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), FlopCounterMode(display=False) as flops:
        model(x)
    for h in hooks:
        h.remove()
    per_stage: dict[int, int] = {}
    for size, stage in saved.values():
        if stage is not None:
            per_stage[stage] = per_stage.get(stage, 0) + size
    # convolutions and the matrix products of the 1x1 convolutions; one multiply-accumulate is two FLOPs
    return sum(size for size, _ in saved.values()), per_stage, flops.get_total_flops() // 2


def measure(config: STUNetConfig, patch_size: Sequence[int], activation_checkpointing: bool | str = False
            ) -> Complexity:
    """Parameters, convolution MACs and the peak of stored activations of one training step on ``patch_size``.

    With activation checkpointing ('stage' or True, or 'block'), each unit keeps only its input and is recomputed in
    the backward pass, one at a time: the peak is what is kept between units plus the largest unit's activations.
    """
    units = "block" if activation_checkpointing == "block" else "stage"
    with torch.device("meta"):
        model = STUNet(**vars(config), deep_supervision=True)
        x = torch.empty(1, config.in_channels, *patch_size)
    total, per_unit, macs = _saved_bytes(model, x, units)
    activations = total
    if activation_checkpointing:
        model.activation_checkpointing = units
        with torch.device("meta"):
            kept, _, _ = _saved_bytes(model, torch.empty(1, config.in_channels, *patch_size), units)
        activations = kept + max(per_unit.values())
    return Complexity(sum(p.numel() for p in model.parameters()), macs, activations)
