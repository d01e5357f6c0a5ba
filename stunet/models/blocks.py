"""Building blocks of an STU-Net: the residual block and the nearest-neighbour upsampling layer."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules import module as _module

_OPS = {2: (nn.Conv2d, nn.InstanceNorm2d), 3: (nn.Conv3d, nn.InstanceNorm3d)}
_PLAIN_CONVS = (nn.Conv2d, nn.Conv3d)


def conv_and_norm(spatial_dims: int):
    """The convolution and normalisation classes for 2D or 3D networks."""
    return _OPS[spatial_dims]


def runs_as_module(conv: nn.Module) -> bool:
    """Whether ``conv(x)`` may do more than a plain 1×1 convolution of ``conv.weight``: forward or backward hooks
    (the module's own or global ones), parametrized parameters (``torch.nn.utils.parametrize``), a replaced
    ``forward``, or anything but an unpadded, ungrouped ``nn.Conv2d``/``nn.Conv3d`` with kernel 1 (subclasses, as
    parametrizations make, included). A few attribute lookups, well under a microsecond on the fast path."""
    return bool(conv._forward_pre_hooks or conv._forward_hooks or conv._backward_pre_hooks or conv._backward_hooks
                or _module._global_forward_pre_hooks or _module._global_forward_hooks
                or _module._global_backward_pre_hooks or _module._global_backward_hooks
                or type(conv) not in _PLAIN_CONVS or "parametrizations" in conv._modules or "forward" in conv.__dict__
                or conv.groups != 1 or max(conv.kernel_size) != 1 or any(conv.padding))  # padding: ints or a string


def pointwise(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1×1(×1) convolution as one batched matrix product over the channels.

    Same result as ``conv(x)``. On CPUs, oneDNN's convolution reorders channels-first tensors into its blocked
    layout; with stunet.cpu_memory.reuse_freed_memory, STU-Net-S's whole forward pass at 128³ was 1.39-1.47x faster
    this way on an AVX-512 CPU and 0.98-1.13x as fast on an AVX2 one (docs/performance.md).
    Calls ``conv(x)`` instead when hooks, parametrizations or anything else could make the module differ
    (:func:`runs_as_module`).
    """
    if runs_as_module(conv):
        return conv(x)
    stride = conv.stride
    if any(s != 1 for s in stride):
        x = x[(..., *[slice(None, None, s) for s in stride])]
    batch, channels, *spatial = x.shape
    flat = x.reshape(batch, channels, -1)
    weight = conv.weight.reshape(conv.out_channels, channels).expand(batch, -1, -1)
    if conv.bias is None:
        out = torch.bmm(weight, flat)
    else:
        out = torch.baddbmm(conv.bias.view(1, -1, 1).expand(batch, -1, flat.shape[-1]), weight, flat)
    return out.view(batch, conv.out_channels, *spatial)


class ResidualBlock(nn.Module):
    """conv(k, stride) → IN → LeakyReLU → conv(k) → IN, plus the shortcut, then LeakyReLU.

    The shortcut is the identity, or with ``project=True`` a 1×1 convolution with the block's stride (``conv3``).
    Attribute names match the published ``BasicResBlock`` so released weights load unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int],
                 stride: Sequence[int] | int = 1, project: bool = False):
        super().__init__()
        conv, norm = conv_and_norm(len(kernel_size))
        padding = [k // 2 for k in kernel_size]
        if not project and (in_channels != out_channels or any(s != 1 for s in _seq(stride))):
            raise ValueError("a block that changes channels or resolution needs the 1x1 projection (project=True)")
        self.conv1 = conv(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm1 = norm(out_channels, affine=True)
        self.act1 = nn.LeakyReLU(inplace=True)
        self.conv2 = conv(out_channels, out_channels, kernel_size, padding=padding)
        self.norm2 = norm(out_channels, affine=True)
        self.act2 = nn.LeakyReLU(inplace=True)
        self.conv3 = conv(in_channels, out_channels, 1, stride=stride) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        y += x if self.conv3 is None else pointwise(self.conv3, x)
        return self.act2(y)


class UpsampleConv(nn.Module):
    """Nearest-neighbour upsampling by ``scale`` and a 1×1 convolution (parameter ``conv``, as published).

    The 1×1 convolution runs before the upsampling: the two commute exactly for nearest-neighbour interpolation, and
    convolving at the coarse resolution costs ``prod(scale)`` times fewer operations and no upsampled input copy.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: Sequence[int]):
        super().__init__()
        conv, _ = conv_and_norm(len(scale))
        self.conv = conv(in_channels, out_channels, kernel_size=1)
        self.scale = tuple(int(s) for s in scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pointwise(self.conv, x)
        if all(s == 1 for s in self.scale):
            return x
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _seq(value):
    return (value,) if isinstance(value, int) else tuple(value)
