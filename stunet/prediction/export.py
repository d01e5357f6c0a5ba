"""Label maps on the original grid from blended features, computing the 105-class logits only where needed.

nnU-Net resamples every class's logits to the original grid and takes the argmax there. With features blended
instead of logits (see :mod:`stunet.prediction.sliding_window`) the logits at an output voxel are the head applied to
the linearly interpolated features, which equals the same interpolation of the logits at the 2–8 grid points around
it (the head is linear). Interpolation weights are non-negative and sum to one, so when one class has the largest
logit at all of those grid points, it also has the largest interpolated logit. Hence, for an output grid finer than
the network's:

1. the argmax at the network's grid (the head on ``Z·Y·X`` voxels instead of the output's many more);
2. per cell of that grid, its class if all its corners agree, else "undecided" (-1);
3. each output voxel takes its cell's class; only the voxels of undecided cells (along organ boundaries, a few per
   cent) get their features interpolated, the head and the argmax — the same computation as nnU-Net's, there.

The result equals the argmax of the resampled logits up to float rounding at near-ties. All of it runs in torch on
the device the features are on, in bounded chunks.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from stunet.models.blocks import runs_as_module
from stunet.prediction.resample import axis_map

UNDECIDED = -1


def _head(network) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(weight (C, K), bias) of the network's last head, or None where the module must run itself (hooks,
    parametrizations: :func:`stunet.models.blocks.runs_as_module`)."""
    conv = network.seg_outputs[-1]
    if runs_as_module(conv):
        return None
    return conv.weight.reshape(conv.out_channels, -1).T, conv.bias


def head_logits(networks, features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean over ``networks`` of their heads on ``features`` (one (voxels, channels) tensor each) -> (voxels,
    classes)."""
    total = None
    for network, f in zip(networks, features):
        f = f.to(next(network.parameters()).device)
        head = _head(network)
        if head is None:  # the module itself, on the voxels as a (1, C, N, 1[, 1]) image
            dims = len(network.seg_outputs[-1].kernel_size)
            out = network.head(f.T.reshape(1, f.shape[1], f.shape[0], *[1] * (dims - 1))).reshape(-1, f.shape[0]).T
        else:
            weight, bias = head
            out = f @ weight if bias is None else torch.addmm(bias, f, weight)
        out = out.float()
        total = out if total is None else total.add_(out)
    return total.div_(len(features)) if len(features) > 1 else total


class ConfidenceTally:
    """Per model class, over the voxels it wins: how many, the sum of their winning probability (the softmax of the
    mean logits), and how many of them won with a probability below 0.5 (``stunet-predict --qc``). Filled by
    :func:`argmax` from the logits it computes anyway, on the network's grid: no second pass over any logits."""

    def __init__(self):
        self.voxels = self.confidence = self.uncertain = None

    def add(self, winners: torch.Tensor, logits: torch.Tensor, top: torch.Tensor | None = None) -> None:
        """``winners``: each voxel's class; ``top``: its logit (the row's maximum), gathered when not given."""
        top = logits.gather(1, winners.long()[:, None]) if top is None else top[:, None]
        probability = (logits - top).exp_().sum(1).reciprocal_()  # the winner's softmax probability
        classes = logits.shape[1]
        winners = winners.long()
        counts = [torch.bincount(winners, minlength=classes).double(),
                  torch.bincount(winners, probability.double(), minlength=classes),
                  torch.bincount(winners[probability < 0.5], minlength=classes).double()]
        if self.voxels is None:
            self.voxels, self.confidence, self.uncertain = (c.cpu() for c in counts)
        else:
            for held, new in zip((self.voxels, self.confidence, self.uncertain), counts):
                held += new.cpu()


def argmax(networks, features: Sequence[torch.Tensor], voxels_per_chunk: int = 1 << 15,
           tally: ConfidenceTally | None = None) -> torch.Tensor:
    """The class with the largest mean logit at each voxel of ``features`` ((voxels, channels) each), as int16;
    in chunks whose logits stay in the CPU's cache. ``tally`` adds each voxel's winning probability."""
    labels = torch.empty(features[0].shape[0], dtype=torch.int16, device=features[0].device)
    for start in range(0, labels.numel(), voxels_per_chunk):
        part = slice(start, start + voxels_per_chunk)
        logits = head_logits(networks, [f[part] for f in features])
        if tally is None:
            winners = logits.argmax(1)
        else:  # max gives the winner and its logit in one pass (the probability needs both)
            top, winners = logits.max(1)
            tally.add(winners, logits, top)
        labels[part] = winners.to(labels.device, torch.int16)
    return labels


def coarse_labels(networks, features: Sequence[torch.Tensor], tally: ConfidenceTally | None = None) -> torch.Tensor:
    """:func:`argmax` at every voxel of the network's grid; ``features`` are channels-last (Z, Y, X, C)."""
    return argmax(networks, [f.reshape(-1, f.shape[-1]) for f in features], tally=tally).view(
        features[0].shape[:-1])


def cell_labels(labels: torch.Tensor, interpolated: Sequence[bool]) -> torch.Tensor:
    """Per grid cell (the voxel and its upper neighbour along each ``interpolated`` axis, the last voxel its own
    neighbour): the class its corners agree on, or UNDECIDED."""
    cells = labels
    for axis, mixed in enumerate(interpolated):
        if mixed and cells.shape[axis] > 1:
            upper = torch.cat([cells.narrow(axis, 1, cells.shape[axis] - 1), cells.narrow(axis, cells.shape[axis] - 1, 1)],
                              axis)
            cells = torch.where(cells == upper, cells, UNDECIDED)
    return cells


def _interpolate(flat: torch.Tensor, shape: Sequence[int], corners) -> torch.Tensor:
    """Trilinear features (N, C) from ``flat`` (Z·Y·X, C), given per axis (lower, upper, weight) of N voxels; lerps
    along z, then y, then x, as :func:`stunet.prediction.resample.resample_chunks` does."""
    (z0, z1, wz), (y0, y1, wy), (x0, x1, wx) = corners
    _, ny, nx = shape

    def at(z, y, x):
        return flat.index_select(0, (z * ny + y) * nx + x)

    def along_z(y, x):
        return torch.lerp(at(z0, y, x), at(z1, y, x), wz)

    def along_y(x):
        return torch.lerp(along_z(y0, x), along_z(y1, x), wy)

    return torch.lerp(along_y(x0), along_y(x1), wx)


def fine_labels(networks, slabs: Iterable[tuple[int, Sequence[torch.Tensor]]], shape: Sequence[int],
                new_shape: Sequence[int], orders: Sequence[int], rows_per_chunk: int = 8,
                voxels_per_batch: int = 1 << 18, tally: ConfidenceTally | None = None,
                on_fallback=None) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows along axis 0, class labels)`` on the output grid ``new_shape``, chunk by chunk, as the features
    on the network's grid ``shape`` arrive: ``slabs`` yields ``(first row, [channels-last (rows, Y, X, C) features of
    each network])`` in row order (views that may change after the next one; see the module's text). ``tally``
    collects the winning probabilities on the network's grid."""
    maps = [axis_map(n_in, n_out, order, "cpu") for n_in, n_out, order in zip(shape, new_shape, orders)]
    interpolated = [order > 0 and n_in != n_out for n_in, n_out, order in zip(shape, new_shape, orders)]
    maps = [m if mixed else (m[0], m[0], m[2]) for m, mixed in zip(maps, interpolated)]  # weight 0: one row read
    lower, upper = maps[0][0], maps[0][1]
    labels = cells = kept = None
    kept_start = cells_done = next_row = 0
    for first, slab in slabs:
        if labels is None:
            try:
                labels = torch.empty(tuple(shape), dtype=torch.int16, device=slab[0].device)
                cells = torch.empty_like(labels)
            except torch.cuda.OutOfMemoryError:  # no room on the GPU: the export runs on the CPU
                if on_fallback is not None:
                    on_fallback("the export")
                labels = torch.empty(tuple(shape), dtype=torch.int16)
                cells = torch.empty_like(labels)
            maps = [tuple(t.to(labels.device) for t in m) for m in maps]
        slab = [f.to(labels.device) for f in slab]
        end = first + slab[0].shape[0]
        labels[first:end] = coarse_labels(networks, slab, tally)
        known = end if end == shape[0] or not interpolated[0] else end - 1  # rows whose cells are known
        cells[cells_done:known] = cell_labels(labels[cells_done:min(known + 1, shape[0])], interpolated)[
            :known - cells_done]
        cells_done = known
        # output rows whose cells and features have all arrived; the first few may read rows of earlier slabs
        ready = new_shape[0] if end == shape[0] else min(int(torch.searchsorted(lower, known - 1, right=True)),
                                                         int(torch.searchsorted(upper, end - 1, right=True)))
        inside = max(next_row, min(ready, int(torch.searchsorted(lower, first - 1, right=True))))
        if inside > next_row:  # kept rows and the slab's first row (upper <= first there), not a copy of the slab
            joined = [torch.cat([k, f[:1]]) for k, f in zip(kept, slab)]
            yield from _chunks(networks, cells, joined, kept_start, maps, next_row, inside, rows_per_chunk,
                               voxels_per_batch)
        yield from _chunks(networks, cells, slab, first, maps, inside, ready, rows_per_chunk, voxels_per_batch)
        next_row = max(next_row, ready)
        if next_row < new_shape[0]:  # copies of the rows the next outputs read (the slab is a view)
            need = int(lower[next_row])
            parts = [f[max(need, first) - first:] for f in slab]
            kept = ([torch.cat([k[need - kept_start:], f]) for k, f in zip(kept, parts)] if need < first
                    else [f.clone() for f in parts])
            kept_start = need


def _chunks(networks, cells, source, source_start, maps, begin, stop, rows_per_chunk, voxels_per_batch):
    """(rows, labels) of output rows [begin, stop) whose features are the rows of ``source`` from ``source_start``."""
    if stop <= begin:
        return
    shape = source[0].shape[:-1]
    flat = [f.reshape(-1, f.shape[-1]) for f in source]  # a view, but for images cropped out of a padded canvas
    weights = [(lo, up, w[:, None]) for lo, up, w in maps]
    weights[0] = (weights[0][0] - source_start, weights[0][1] - source_start, weights[0][2])
    for start in range(begin, stop, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, stop))
        yield rows, _fine_chunk(networks, cells, flat, shape, maps, weights, rows, voxels_per_batch)


def _fine_chunk(networks, cells, flat, shape, maps, weights, rows, voxels_per_batch) -> torch.Tensor:
    """Labels of output ``rows``: their cells' classes, and for undecided cells the interpolated features' argmax."""
    out = cells.index_select(0, maps[0][0][rows]).index_select(1, maps[1][0]).index_select(2, maps[2][0])
    undecided = (out == UNDECIDED).nonzero()
    if not len(undecided):
        return out
    undecided[:, 0] += rows.start
    labels = []
    for batch in undecided.split(voxels_per_batch):
        corners = [tuple(t[batch[:, a]] for t in weights[a]) for a in range(3)]
        labels.append(argmax(networks, [_interpolate(f, shape, corners) for f in flat]))
    out[out == UNDECIDED] = torch.cat(labels)
    return out
