"""The assembled STU-Net: a residual encoder, a residual decoder with nearest-neighbour upsampling, and one
segmentation head per decoder stage. Parameter names and shapes equal the published model's."""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from stunet.models.blocks import ResidualBlock, UpsampleConv, conv_and_norm, pointwise
from stunet.models.config import IntOrSeq, STUNetConfig


DECODER_PARTS = ("upsample_layers", "conv_blocks_localization", "seg_outputs")


class DecoderView:
    """The decoder of an STU-Net, seen from outside: the deep-supervision flag and the decoder's parameters.

    The published parameter names put the decoder's modules directly on the network (``upsample_layers.*``,
    ``conv_blocks_localization.*``, ``seg_outputs.*``), so the decoder cannot be a submodule without renaming them;
    this view gives nnU-Net (which sets ``network.decoder.deep_supervision``) and users (who freeze
    ``network.decoder.parameters()``) what they expect of a ``decoder`` attribute.
    """

    def __init__(self, network: "STUNet"):
        object.__setattr__(self, "_network", network)

    @property
    def deep_supervision(self) -> bool:
        return self._network.deep_supervision

    @deep_supervision.setter
    def deep_supervision(self, flag: bool) -> None:
        self._network.deep_supervision = flag

    def __setattr__(self, name, value):
        if name != "deep_supervision":
            raise AttributeError(f"the STU-Net decoder view only sets deep_supervision, not {name!r}")
        object.__setattr__(self, name, value)

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        for part in DECODER_PARTS:
            yield from getattr(self._network, part).named_parameters(prefix=f"{prefix}{part}", recurse=recurse)

    def parameters(self, recurse: bool = True):
        return (p for _, p in self.named_parameters(recurse=recurse))


def _stage(in_channels: int, out_channels: int, depth: int, kernel_size, stride) -> nn.Sequential:
    """``depth`` residual blocks; the first one carries the stride and the 1×1 projection (as published)."""
    blocks = [ResidualBlock(in_channels, out_channels, kernel_size, stride=stride, project=True)]
    blocks += [ResidualBlock(out_channels, out_channels, kernel_size) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


class STUNet(nn.Module):
    """Scalable residual U-Net (STU-Net), 2D or 3D.

    Args mirror :class:`~stunet.models.config.STUNetConfig`. ``deep_supervision`` makes ``forward`` return one logit map per
    decoder stage, highest resolution first; nnU-Net toggles it through ``network.decoder.deep_supervision``.
    ``activation_checkpointing`` recomputes activations in the backward pass instead of storing them: ``"stage"``
    (or True) per stage, ``"block"`` per residual block (less memory, the same extra compute of one forward pass).
    """

    def __init__(self, in_channels: int, num_classes: int, depths: Sequence[int], widths: Sequence[int],
                 strides: Sequence[IntOrSeq], kernel_sizes: Union[int, Sequence[IntOrSeq]] = 3,
                 deep_supervision: bool = True, activation_checkpointing: bool | str = False):
        super().__init__()
        cfg = STUNetConfig(in_channels, num_classes, depths, widths, strides, kernel_sizes)
        self.config = cfg
        self.deep_supervision = deep_supervision
        self.activation_checkpointing = activation_checkpointing
        conv, _ = conv_and_norm(cfg.spatial_dims)
        n = cfg.n_stages
        in_widths = (cfg.in_channels,) + cfg.widths[:-1]
        stage_strides = ((1,) * cfg.spatial_dims,) + cfg.strides
        self.conv_blocks_context = nn.ModuleList(
            _stage(in_widths[s], cfg.widths[s], cfg.depths[s], cfg.kernel_sizes[s], stage_strides[s]) for s in range(n))
        # decoder stage u works at the resolution of encoder stage s = n - 2 - u
        decoder_stages = range(n - 2, -1, -1)
        self.upsample_layers = nn.ModuleList(
            UpsampleConv(cfg.widths[s + 1], cfg.widths[s], cfg.strides[s]) for s in decoder_stages)
        self.conv_blocks_localization = nn.ModuleList(
            _stage(2 * cfg.widths[s], cfg.widths[s], cfg.depths[s], cfg.kernel_sizes[s], 1) for s in decoder_stages)
        self.seg_outputs = nn.ModuleList(conv(cfg.widths[s], cfg.num_classes, 1) for s in decoder_stages)

    @property
    def decoder(self) -> "DecoderView":
        """The decoder as nnU-Net addresses it: ``network.decoder.deep_supervision = flag`` switches deep supervision,
        and ``network.decoder.parameters()`` are the decoder's (upsampling, decoder stages, heads) only."""
        return DecoderView(self)

    def _run(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        mode = self.activation_checkpointing
        if not mode or not torch.is_grad_enabled():
            return stage(x)
        if mode == "block":
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        if mode not in (True, "stage"):
            raise ValueError(f"activation_checkpointing must be False, True, 'stage' or 'block', got {mode!r}")
        return checkpoint(stage, x, use_reentrant=False)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the problem if ``x`` cannot pass through this network."""
        cfg = self.config
        if x.ndim != cfg.spatial_dims + 2:
            raise ValueError(f"expected a {cfg.spatial_dims + 2}D input (batch, channels, {cfg.spatial_dims} spatial "
                             f"axes), got shape {tuple(x.shape)}")
        if x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected {cfg.in_channels} input channels, got {x.shape[1]} (shape {tuple(x.shape)})")
        for axis, (size, divisor) in enumerate(zip(x.shape[2:], cfg.total_stride)):
            if size % divisor:
                raise ValueError(f"input size {size} along spatial axis {axis} is not divisible by {divisor}, the "
                                 f"network's total stride on that axis; use a patch size that is a multiple of "
                                 f"{divisor} (input shape {tuple(x.shape[2:])}, total stride {cfg.total_stride})")
        if all(size == divisor for size, divisor in zip(x.shape[2:], cfg.total_stride)):
            raise ValueError(f"input shape {tuple(x.shape[2:])} leaves a single voxel at the coarsest stage (total "
                             f"stride {cfg.total_stride}), where instance normalisation has no statistics; use twice "
                             f"the total stride along at least one axis")

    def decode(self, x: torch.Tensor, all_stages: bool) -> list[torch.Tensor]:
        """Decoder stage outputs (the heads' inputs), coarsest first: all of them, or only the last."""
        self.check_input(x)
        skips = []
        for stage in self.conv_blocks_context[:-1]:
            x = self._run(stage, x)
            skips.append(x)
        x = self._run(self.conv_blocks_context[-1], x)
        features = []
        for u, (up, stage) in enumerate(zip(self.upsample_layers, self.conv_blocks_localization)):
            x = self._run(stage, torch.cat((up(x), skips[-1 - u]), dim=1))
            if all_stages:
                features.append(x)
        return features if all_stages else [x]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """The highest-resolution segmentation head: logits from the last decoder stage's features."""
        return pointwise(self.seg_outputs[-1], features)

    def forward(self, x: torch.Tensor):
        features = self.decode(x, all_stages=self.deep_supervision)
        if not self.deep_supervision:
            return self.head(features[0])
        return [pointwise(head, f) for head, f in zip(self.seg_outputs, features)][::-1]
