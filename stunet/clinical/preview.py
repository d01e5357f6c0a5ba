"""A PNG preview of a segmentation (``stunet-predict --preview``): three orthogonal slices through the centroid of
the labelled voxels (the image centre when nothing is labelled), the image in grey on the top row and the labels
painted opaquely over it on the bottom row, displayed with the voxel spacing's aspect ratio, and a legend of the label
names present in the image.

Palette (fixed, so that a label has the same colour in every preview): label ``i`` (1, 2, ...) gets ``PALETTE[(i - 1)
% 20]``, the 20 colours of matplotlib's ``tab20`` in its order (label 1 blue ``#1f77b4``, 2 light blue ``#aec7e8``,
3 orange ``#ff7f0e``, ...). The figure is ``SIZE`` pixels (1200 x 900). Orientation: views are slices of the array
axes, not resampled to patient axes, and titled axial, coronal and sagittal (with the slice shown) as they are for
an image stored in axial slices (ITK's z, y, x).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

PALETTE = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
           "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d",
           "#17becf", "#9edae5"]
SIZE = (1200, 900)  # width, height in pixels
VIEWS = ("axial", "coronal", "sagittal")  # the panels fixing array axis 0 (z), 1 (y), 2 (x)
_DPI = 100


def colour(label: int) -> tuple[int, int, int]:
    """The RGB (0-255) colour of a label (> 0)."""
    h = PALETTE[(int(label) - 1) % len(PALETTE)]
    return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))


def write_preview(path: Path, image: np.ndarray, seg: np.ndarray, spacing: Sequence[float],
                  names: dict[int, str], title: str = "") -> None:
    """``image`` and ``seg`` (z, y, x) with ``spacing`` (z, y, x) in mm."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    labelled = np.argwhere(seg > 0)
    centre = labelled.mean(0).round().astype(int) if len(labelled) else np.array(seg.shape) // 2
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0, 1)
    if hi <= lo:
        hi = lo + 1
    table = np.zeros((int(max(seg.max(), 0)) + 1, 3), dtype=np.uint8)
    for label in range(1, len(table)):
        table[label] = colour(label)
    fig = Figure(figsize=(SIZE[0] / _DPI, SIZE[1] / _DPI), dpi=_DPI)
    axes = fig.subplots(2, 3)
    views = [(0, (1, 2)), (1, (0, 2)), (2, (0, 1))]  # fixed axis, (rows, cols) axes
    for column, (axis, (r, c)) in enumerate(views):
        index = [slice(None)] * 3
        index[axis] = int(centre[axis])
        grey = np.clip((image[tuple(index)].astype(np.float64) - lo) / (hi - lo), 0, 1)
        labels = seg[tuple(index)]
        rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=-1)
        painted = np.where((labels > 0)[..., None], table[labels], rgb)
        aspect = float(spacing[r]) / float(spacing[c])
        for row, picture in enumerate((rgb, painted)):
            ax = axes[row][column]
            ax.imshow(picture, interpolation="nearest", aspect=aspect, origin="lower" if axis != 0 else "upper")
            ax.set_axis_off()
        axes[0][column].set_title(f"{VIEWS[axis]} (slice {int(centre[axis]) + 1} of {seg.shape[axis]})", fontsize=9)
    present = sorted(int(v) for v in np.unique(seg) if v > 0)
    handles = [Patch(color=np.array(colour(i)) / 255, label=f"{i}: {names.get(i, str(i))}") for i in present]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(str(path), dpi=_DPI, format="png")


THUMBNAIL_PIXELS = 220  # the side of a disagreement thumbnail
REFERENCE_COLOUR, PREDICTION_COLOUR = "#2ca02c", "#d62728"


def disagreement_slice(reference: np.ndarray, prediction: np.ndarray) -> int:
    """The index along the first axis of the plane where two masks of one label differ in the most voxels (where
    they agree everywhere, the plane of the most reference voxels, else of the most predicted ones)."""
    planes = tuple(range(1, reference.ndim))
    for counts in (np.count_nonzero(reference ^ prediction, axis=planes), np.count_nonzero(reference, axis=planes),
                   np.count_nonzero(prediction, axis=planes)):
        if counts.size and counts.max() > 0:
            return int(counts.argmax())
    return reference.shape[0] // 2


def disagreement_png(reference: np.ndarray, prediction: np.ndarray, image: np.ndarray | None = None,
                     aspect: float = 1.0, title: str = "") -> bytes:
    """A small PNG (THUMBNAIL_PIXELS square) of one plane: the reference's contour in green and the prediction's in
    red over the image in grey (windowed to its 1st-99th percentiles), or, without an image, over the two masks
    (reference light, prediction darker, both grey); ``aspect``: the rows' spacing over the columns'."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    size = THUMBNAIL_PIXELS / _DPI
    figure = Figure(figsize=(size, size), dpi=_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 0.88 if title else 1))
    if image is not None:
        lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        axes.imshow(np.clip((image - lo) / ((hi - lo) or 1.0), 0, 1), cmap="gray", vmin=0, vmax=1,
                    interpolation="nearest", aspect=aspect)
    else:
        axes.imshow(0.45 * reference + 0.3 * prediction, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
                    aspect=aspect)
    for mask, colour_ in ((reference, REFERENCE_COLOUR), (prediction, PREDICTION_COLOUR)):
        if mask.any() and not mask.all():
            axes.contour(mask.astype(np.float32), levels=[0.5], colors=[colour_], linewidths=1.2)
    axes.set_axis_off()
    if title:
        figure.text(0.5, 0.99, title, ha="center", va="top", fontsize=7, parse_math=False)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()
