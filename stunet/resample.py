"""Separable resampling of feature maps in torch, chunk by chunk, with the semantics of nnU-Net's export resampling
(``resample_data_or_seg_to_shape`` with ``is_seg=False``): half-voxel-centred coordinates, linear interpolation with
edge clamping (skimage ``resize(order=1, mode='edge')``), and nearest-neighbour along a separately treated anisotropic
axis (``map_coordinates(order=0, mode='nearest')``). Output chunks along the first axis only read the source slices
they need, so memory stays bounded for any image size."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis


def _axis_map(in_size: int, out_size: int, order: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lower index, upper index, weight of the upper) for each output position along one axis."""
    coords = (torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * (in_size / out_size) - 0.5
    if order == 0:
        index = torch.floor(coords + 0.5).clamp(0, in_size - 1).long()
        return index, index, torch.zeros(out_size, dtype=torch.float32, device=device)
    coords = coords.clamp(0, in_size - 1)
    lower = coords.floor().long()
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower, upper, (coords - lower).float()


def _along(x: torch.Tensor, axis: int, lower, upper, weight) -> torch.Tensor:
    a = x.index_select(axis, lower)
    if torch.equal(lower, upper):
        return a
    shape = [1] * x.ndim
    shape[axis] = -1
    return torch.lerp(a, x.index_select(axis, upper), weight.view(shape).to(a.dtype))


def axis_orders(current_spacing: Sequence[float], new_spacing: Sequence[float], kwargs: dict) -> list[int]:
    """Interpolation order per spatial axis, as nnU-Net's probability resampling decides it."""
    order, order_z = kwargs.get("order", 1), kwargs.get("order_z", 0)
    if order not in (0, 1) or order_z not in (0, 1):
        raise NotImplementedError(f"resampling order {order} / order_z {order_z}: only linear and nearest are "
                                  f"supported for probabilities")
    separate, axis = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), current_spacing, new_spacing)
    return [order_z if separate and a == axis else order for a in range(len(current_spacing))]


def resample_chunks(x: torch.Tensor, new_shape: Sequence[int], orders: Sequence[int],
                    chunk: int = 8) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(output slice along axis 0, resampled chunk)`` of ``x`` (channels, *spatial) at ``new_shape``."""
    maps = [_axis_map(i, o, order, x.device) for i, o, order in zip(x.shape[1:], new_shape, orders)]
    if tuple(x.shape[1:]) == tuple(new_shape):
        for start in range(0, new_shape[0], chunk):
            yield slice(start, min(start + chunk, new_shape[0])), x[:, start:start + chunk]
        return
    for start in range(0, new_shape[0], chunk):
        rows = slice(start, min(start + chunk, new_shape[0]))
        lower, upper, weight = (m[rows] for m in maps[0])
        part = _along(x, 1, lower, upper, weight)
        for axis, (lo, up, w) in enumerate(maps[1:], start=2):
            if x.shape[axis] != new_shape[axis - 1]:
                part = _along(part, axis, lo, up, w)
        yield rows, part
