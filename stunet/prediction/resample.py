"""Resampling in torch with the semantics of nnU-Net's (``resample_data_or_seg_to_shape`` with ``is_seg=False``):
half-voxel-centred coordinates (skimage ``resize(mode='edge', anti_aliasing=False)``, scipy ``zoom(grid_mode=True)``),
linear interpolation with edge clamping, cubic B-splines with scipy's prefilter, and nearest-neighbour along a
separately treated anisotropic axis (``map_coordinates(order=0, mode='nearest')``).

One definition of the interpolation along an axis: :func:`linear_taps` (nearest and linear) and
:func:`resampling_matrix` (which builds its nearest and linear rows from those taps, and adds the cubic B-spline).
Two ways of applying it, kept for what they cost:

- images (preprocessing, cubic): :func:`resample_image`, one banded matrix product per axis over the whole image;
- feature maps (export, linear): :func:`resample_chunks`, two taps gathered and blended per axis, output chunk by output
  chunk along the first axis, each reading only the source rows it needs (and :mod:`stunet.prediction.export`, which
  evaluates the same taps at scattered voxels only).

Why the feature maps are not matrix products too: the whole-image product holds the resampled features at once,
16 (S) to 96 (H) channels on the original grid, e.g. 10 GB for the 157M-voxel CT of ``benchmarks/pipeline.py`` with
STU-Net-S, whose whole prediction peaks at 3.2-3.4 GiB (``benchmarks/results/pipeline_cpu.md``) because the chunks are
consumed as they come. On 16 channels resampled from 64×96×96 to 128×192×192 (CPU, 2 threads) the chunks took 0.82 s
and 205 MiB above the input, the matrix products 0.99 s and 544 MiB.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis


def linear_taps(n_in: int, n_out: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, float64 weight of the upper) for each of ``n_out`` positions along an axis of
    ``n_in`` samples: nearest (0; the weight is 0) or linear with edge clamping (1)."""
    coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    if order == 0:
        index = np.clip(np.floor(coords + 0.5), 0, n_in - 1).astype(np.int64)
        return index, index, np.zeros(n_out)
    if order != 1:
        raise NotImplementedError(f"taps of order {order}: only nearest (0) and linear (1)")
    coords = np.clip(coords, 0, n_in - 1)
    lower = np.floor(coords).astype(np.int64)
    return lower, np.minimum(lower + 1, n_in - 1), coords - lower


def axis_map(in_size: int, out_size: int, order: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`linear_taps` as torch tensors on ``device`` (the weight in float32)."""
    lower, upper, weight = linear_taps(in_size, out_size, order)
    return (torch.from_numpy(lower).to(device), torch.from_numpy(upper).to(device),
            torch.from_numpy(weight).float().to(device))


def _along(x: torch.Tensor, axis: int, lower, upper, weight) -> torch.Tensor:
    a = x.index_select(axis, lower)
    if torch.equal(lower, upper):
        return a
    shape = [1] * x.ndim
    shape[axis] = -1
    return torch.lerp(a, x.index_select(axis, upper), weight.view(shape).to(a.dtype))


def resampled_spacing(configuration_spacing: Sequence[float], image_spacing: Sequence[float]) -> list[float]:
    """The spacing a configuration resamples an image to, both in the plans' axis order: the configuration's, and for a
    2D configuration of a 3D image the image's own spacing along the first axis (its slices stay slices)."""
    if len(configuration_spacing) < len(image_spacing):
        return [image_spacing[0], *configuration_spacing]
    return list(configuration_spacing)


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
    """Yield ``(output slice along axis 0, resampled chunk)`` of channels-last ``x`` (*spatial, channels) at
    ``new_shape``."""
    maps = [axis_map(i, o, order, x.device) for i, o, order in zip(x.shape[:-1], new_shape, orders)]
    if tuple(x.shape[:-1]) == tuple(new_shape):
        for start in range(0, new_shape[0], chunk):
            yield slice(start, min(start + chunk, new_shape[0])), x[start:start + chunk]
        return
    for start in range(0, new_shape[0], chunk):
        rows = slice(start, min(start + chunk, new_shape[0]))
        lower, upper, weight = (m[rows] for m in maps[0])
        part = _along(x, 0, lower, upper, weight)
        for axis, (lo, up, w) in enumerate(maps[1:], start=1):
            if x.shape[axis] != new_shape[axis]:
                part = _along(part, axis, lo, up, w)
        yield rows, part


# -- image resampling (nnU-Net's preprocessing: ``resample_data_or_seg`` with ``is_seg=False``) -------------------
_PAD = 12  # scipy's ndimage pads this many edge values before its spline prefilter (mode 'nearest')
_POLE = 3 ** 0.5 - 2  # the cubic B-spline prefilter's pole
_TAIL = 30  # prefilter terms kept on each side (|pole|^30 < 1e-17)


def _cubic_bspline(t: np.ndarray) -> np.ndarray:
    """Weights of the four taps floor(c)-1 .. floor(c)+2 for fractional parts ``t`` (n,) -> (n, 4)."""
    return np.stack([(1 - t) ** 3, 3 * t ** 3 - 6 * t ** 2 + 4, -3 * t ** 3 + 3 * t ** 2 + 3 * t + 1, t ** 3], 1) / 6


def resampling_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """(n_out, n_in) float64 matrix taking a signal to ``n_out`` samples as skimage's ``resize(order, mode='edge',
    anti_aliasing=False)`` does along one axis (half-voxel-centred coordinates; scipy's ``zoom(grid_mode=True)``):
    nearest (0), linear (1) or cubic B-spline with its prefilter on the edge-padded signal (3)."""
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if order in (0, 1):
        lower, upper, weight = linear_taps(n_in, n_out, order)
        np.add.at(matrix, (rows, lower), 1 - weight)
        np.add.at(matrix, (rows, upper), weight)
    elif order == 3:  # taps of the edge-padded signal's spline coefficients, each the prefilter (mirror boundary,
        n = n_in + 2 * _PAD  # truncated) over the padded signal, whose samples are clamped input samples
        coords = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        period = 2 * n - 2
        start = np.floor(coords + _PAD).astype(int) - 1
        weights = _cubic_bspline(coords + _PAD - start - 1)
        for k in range(4):
            for offset in range(-_TAIL, _TAIL + 1):
                j = np.abs(start + k + offset) % period
                column = np.clip(np.where(j >= n, period - j, j) - _PAD, 0, n_in - 1)
                np.add.at(matrix, (rows, column), weights[:, k] * (3 ** 0.5 * _POLE ** abs(offset)))
    else:
        raise NotImplementedError(f"resampling order {order}: only 0, 1 and 3 are supported")
    return matrix


def _banded_blocks(matrix: np.ndarray, block: int = 64, tolerance: float = 1e-9):
    """(output rows, input rows, block of the matrix) covering ``matrix``, leaving out weights under ``tolerance``."""
    keep = np.abs(matrix) > tolerance
    for start in range(0, matrix.shape[0], block):
        rows = slice(start, min(start + block, matrix.shape[0]))
        columns = np.flatnonzero(keep[rows].any(0))
        if len(columns):
            yield rows, slice(int(columns[0]), int(columns[-1]) + 1), matrix[rows, columns[0]:columns[-1] + 1]


def resample_axis(x: torch.Tensor, axis: int, matrix: np.ndarray) -> torch.Tensor:
    """``x`` with ``axis`` taken through ``matrix`` (n_out, n_in), block by block along the band."""
    shape = list(x.shape)
    before, after = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    source = x.reshape(before, shape[axis], after)
    out = torch.empty((before, matrix.shape[0], after), dtype=x.dtype, device=x.device)
    for rows, columns, part in _banded_blocks(matrix):
        weights = torch.as_tensor(part, dtype=x.dtype, device=x.device)
        if after == 1:
            out[:, rows, 0] = source[:, columns, 0] @ weights.T
        else:
            out[:, rows] = torch.matmul(weights, source[:, columns])
    shape[axis] = matrix.shape[0]
    return out.view(shape)


def resample_image(x: torch.Tensor, new_shape: Sequence[int], order: int = 3, order_z: int = 0,
                   separate_axis: int | None = None) -> torch.Tensor:
    """nnU-Net's image resampling (``resample_data_or_seg(is_seg=False)``) of ``x`` (channels, *spatial), in torch.

    Without ``separate_axis``: one resize of each channel with ``order``, clipped to the channel's range (skimage's
    ``clip=True``). With it (anisotropic spacing): every slice across that axis resized in-plane with ``order`` and
    clipped to the slice's range, then that axis resampled with ``order_z`` (0 or 1). Each axis is one banded matrix
    product (:func:`resampling_matrix`), the shrinking axes first.
    """
    shape = list(x.shape[1:])
    if shape == list(new_shape):
        return x
    in_plane = [a for a in range(len(shape)) if a != separate_axis]
    low = x.amin(dim=tuple(a + 1 for a in in_plane), keepdim=True)
    high = x.amax(dim=tuple(a + 1 for a in in_plane), keepdim=True)
    for a in sorted(in_plane, key=lambda a: new_shape[a] / shape[a]):
        if new_shape[a] == shape[a]:
            continue  # identity (the cubic spline interpolates its nodes)
        x = resample_axis(x, a + 1, resampling_matrix(shape[a], new_shape[a], order))
    if order > 1:
        x = torch.maximum(torch.minimum(x, high, out=x), low, out=x)
    if separate_axis is not None and new_shape[separate_axis] != shape[separate_axis]:
        x = resample_axis(x, separate_axis + 1, resampling_matrix(shape[separate_axis], new_shape[separate_axis],
                                                                  order_z))
    return x
