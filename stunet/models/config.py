"""The architecture description of an STU-Net: per-stage depths, widths, strides and kernel sizes."""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Sequence, Union

IntOrSeq = Union[int, Sequence[int]]
#: the parameters of every STU-Net that read the input channels, and the prefix of its segmentation heads (the
#: classifier)
FIRST_LAYER = ("conv_blocks_context.0.0.conv1.weight", "conv_blocks_context.0.0.conv3.weight")
CLASSIFIER = "seg_outputs."


def _as_tuple(value: IntOrSeq, ndim: int, what: str) -> tuple[int, ...]:
    values = (value,) * ndim if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != ndim or any(v < 1 for v in values):
        raise ValueError(f"{what} must be a positive int or {ndim} positive ints, got {value!r}")
    return values


def _spatial_dims(entries: Sequence[IntOrSeq]) -> int:
    dims = {len(e) for e in entries if not isinstance(e, int)}
    if len(dims) > 1:
        raise ValueError(f"strides and kernel sizes mix 2D and 3D entries: {list(entries)!r}")
    ndim = dims.pop() if dims else 3
    if ndim not in (2, 3):
        raise ValueError(f"strides and kernel sizes must be 2D or 3D, got {ndim}D entries")
    return ndim


@dataclass(frozen=True)
class STUNetConfig:
    """Everything that determines an STU-Net's parameters.

    ``depths``, ``widths`` and ``kernel_sizes`` have one entry per resolution stage; ``strides`` has one entry per
    downsampling, i.e. ``n_stages - 1`` (the published ``pool_op_kernel_sizes``). The decoder stage at a resolution
    reuses the depth, width and kernel size of the encoder stage at that resolution. Strides and kernel sizes may be
    ints (isotropic) or per-axis sequences; 2D networks come from 2-element entries.
    """

    in_channels: int
    num_classes: int
    depths: Sequence[int]
    widths: Sequence[int]
    strides: Sequence[IntOrSeq]
    kernel_sizes: Union[int, Sequence[IntOrSeq]] = 3

    def __post_init__(self):
        n_stages = len(self.widths)
        kernel_sizes = [self.kernel_sizes] * n_stages if isinstance(self.kernel_sizes, int) else list(self.kernel_sizes)
        if n_stages < 2:
            raise ValueError(f"an STU-Net needs at least 2 stages, got widths={list(self.widths)!r}")
        for name, values, expected in (("depths", self.depths, n_stages), ("kernel_sizes", kernel_sizes, n_stages),
                                       ("strides", self.strides, n_stages - 1)):
            if len(values) != expected:
                raise ValueError(f"{name} needs {expected} entries for {n_stages} stages "
                                 f"(widths={list(self.widths)!r}), got {len(values)}: {list(values)!r}")
        for name, values in (("depths", self.depths), ("widths", self.widths)):
            if any(int(v) < 1 for v in values):
                raise ValueError(f"{name} must be positive, got {list(values)!r}")
        if self.in_channels < 1 or self.num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be positive, got {self.in_channels}, {self.num_classes}")
        ndim = _spatial_dims(list(self.strides) + kernel_sizes)
        set_ = object.__setattr__
        set_(self, "in_channels", int(self.in_channels))
        set_(self, "num_classes", int(self.num_classes))
        set_(self, "depths", tuple(int(d) for d in self.depths))
        set_(self, "widths", tuple(int(w) for w in self.widths))
        set_(self, "strides", tuple(_as_tuple(s, ndim, "each stride") for s in self.strides))
        set_(self, "kernel_sizes", tuple(_as_tuple(k, ndim, "each kernel size") for k in kernel_sizes))
        if any(k % 2 == 0 for ks in self.kernel_sizes for k in ks):
            raise ValueError(f"kernel sizes must be odd (same padding), got {self.kernel_sizes!r}")

    @property
    def n_stages(self) -> int:
        return len(self.widths)

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel_sizes[0])

    @property
    def total_stride(self) -> tuple[int, ...]:
        """Per-axis product of all strides: every input size must be a multiple of it."""
        return tuple(prod(axis) for axis in zip(*self.strides)) if self.strides else (1,) * self.spatial_dims

    def to_dict(self) -> dict:
        return {"in_channels": self.in_channels, "num_classes": self.num_classes, "depths": list(self.depths),
                "widths": list(self.widths), "strides": [list(s) for s in self.strides],
                "kernel_sizes": [list(k) for k in self.kernel_sizes]}

    @classmethod
    def from_published(cls, cfg: dict) -> "STUNetConfig":
        """From the keyword arguments of the published ``STUNet`` class (input_channels, depth, dims, ...)."""
        return cls(in_channels=cfg["input_channels"], num_classes=cfg["num_classes"], depths=cfg["depth"],
                   widths=cfg["dims"], strides=cfg["pool_op_kernel_sizes"],
                   kernel_sizes=cfg.get("conv_kernel_sizes", 3))
