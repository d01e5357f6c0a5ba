"""Surfaces of binary masks on an anisotropic voxel grid, as DeepMind's ``surface-distance`` package defines them.

A mask's surface is a set of points on the grid of voxel *corners*: a corner lies on the surface when the 2×2×2 voxels
around it (2×2 in 2D) are neither all inside nor all outside the mask (voxels beyond the array count as outside).
Each such corner carries the area (mm², in 2D the length in mm) of the marching-cubes surface that cuts its 2×2×2
cell: a table of the 256 cell configurations. That table is built here from scikit-image's marching cubes (method
"lorensen", the classic Lorensen & Cline triangulation with its vertices on the edges' midpoints), applied to the
configuration's minority side: a cell with more than four corners inside is triangulated as its complement, so a cell
and its complement have the same surface. With the triangles' area vectors scaled per axis by the spacing, the areas
equal surface-distance's lookup table to rounding (tests/test_evaluation.py compares all 256 at several spacings).

The distance from a surface point to the other mask's surface is the exact Euclidean distance in mm to its nearest
surface point. It is found with a k-d tree over the surface points (memory proportional to the surfaces, not to the
masks' bounding box) and computed from the integer corner offsets the way scipy's distance transform computes it,
so a distance equal to a tolerance compares as it does there.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from scipy.spatial import cKDTree


@functools.lru_cache(maxsize=None)
def _cell_area_vectors() -> tuple[np.ndarray, ...]:
    """For each of the 256 configurations of a 2×2×2 cell (bit ``4a + 2b + c`` set when corner (a, b, c) is inside),
    the area vectors (half the cross product, per axis, at unit spacing) of its marching-cubes triangles."""
    from skimage.measure import marching_cubes

    vectors = [np.zeros((0, 3))]
    for code in range(1, 255):
        minority = code if bin(code).count("1") <= 4 else 255 - code
        cell = np.array([(minority >> (4 * a + 2 * b + c)) & 1 for a, b, c in itertools.product((0, 1), repeat=3)],
                        dtype=np.float64).reshape(2, 2, 2)
        vertices, faces, _, _ = marching_cubes(cell, 0.5, method="lorensen")
        corners = vertices.astype(np.float64)[faces]
        vectors.append(0.5 * np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]))
    vectors.append(np.zeros((0, 3)))
    return tuple(vectors)


def _surface_area_table_3d(spacing: Sequence[float]) -> np.ndarray:
    s0, s1, s2 = (float(s) for s in spacing)
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])  # an area vector's component along an axis scales with the other two
    return np.array([np.linalg.norm(v * scale, axis=1).sum() for v in _cell_area_vectors()])


def _contour_length_table_2d(spacing: Sequence[float]) -> np.ndarray:
    """Contour length in a 2×2 cell (bit ``2a + b`` for corner (a, b)): a corner alone (or all but one) is cut by half
    a diagonal, two corners of one row by a segment along axis 1, of one column along axis 0, two opposite corners by
    two half diagonals."""
    s0, s1 = (float(s) for s in spacing)
    half_diagonal = 0.5 * math.sqrt(s0 * s0 + s1 * s1)
    table = np.zeros(16)
    for code in range(16):
        inside = [(a, b) for a, b in itertools.product((0, 1), repeat=2) if code >> (2 * a + b) & 1]
        if len(inside) in (1, 3):
            table[code] = half_diagonal
        elif len(inside) == 2:
            (a0, b0), (a1, b1) = inside
            table[code] = s1 if a0 == a1 else s0 if b0 == b1 else 2 * half_diagonal
    return table


@functools.lru_cache(maxsize=64)
def area_table(spacing: tuple[float, ...]) -> np.ndarray:
    """Area (mm², 3D) or length (mm, 2D) of the surface in each cell configuration, for this spacing."""
    if len(spacing) == 3:
        return _surface_area_table_3d(spacing)
    if len(spacing) == 2:
        return _contour_length_table_2d(spacing)
    raise ValueError(f"surface metrics need 2D or 3D masks, not {len(spacing)}D")


@dataclass
class Surface:
    """The surface points of a mask: ``points`` (n, ndim) corner indices on the full image's corner grid (corner i
    lies between voxels i - 1 and i) and ``areas`` (n,) their surface areas in mm² (mm in 2D)."""
    points: np.ndarray
    areas: np.ndarray

    def __len__(self) -> int:
        return len(self.areas)


def surface(mask: np.ndarray, spacing: Sequence[float], offset: Sequence[int] | None = None) -> Surface:
    """The surface of ``mask`` (bool, the crop of a larger image that starts at voxel ``offset``; the mask must be
    empty outside the crop, as a crop to its bounding box is)."""
    mask = np.asarray(mask, dtype=bool)
    ndim = mask.ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} does not match the mask's {ndim} dimensions")
    padded = np.pad(mask, 1)
    shape = tuple(n + 1 for n in mask.shape)
    code = np.zeros(shape, dtype=np.uint8)
    for corner in itertools.product((0, 1), repeat=ndim):
        window = padded[tuple(slice(c, c + n) for c, n in zip(corner, shape))]
        code |= window.view(np.uint8) << _bit(corner)
    full = 2 ** (2 ** ndim) - 1
    border = (code != 0) & (code != full)
    points = np.argwhere(border)
    areas = area_table(spacing)[code[border]]
    if offset is not None:
        points += np.asarray(offset, dtype=points.dtype)
    return Surface(points, areas)


def _bit(corner: tuple[int, ...]) -> int:
    """Bit of a cell corner: 4a + 2b + c in 3D, 2a + b in 2D (the tables' convention)."""
    return sum(c << (len(corner) - 1 - i) for i, c in enumerate(corner))


def directed_distances(source: Surface, target: Surface, spacing: Sequence[float], tree=None,
                       shared: np.ndarray | None = None) -> np.ndarray:
    """Distance in mm from each point of ``source`` to the nearest point of ``target`` (both non-empty). ``tree``: a
    k-d tree of ``target``'s points in mm, ``shared``: which source points are target points too (distance 0)."""
    scale = np.asarray(spacing, dtype=np.float64)
    if tree is None:
        tree = _tree(target, scale)
    distances = np.zeros(len(source), dtype=np.float64)
    ask = np.flatnonzero(~shared) if shared is not None else np.arange(len(source))
    if ask.size:
        _, nearest = tree.query(source.points[ask] * scale, k=1)
        # recomputed from the integer offsets as scipy's distance_transform_edt does (per axis offset x spacing,
        # squared, summed in axis order, square root), so equal distances round alike
        offsets = (target.points[nearest] - source.points[ask]).astype(np.float64) * scale
        squared = offsets[:, 0] * offsets[:, 0]
        for axis in range(1, offsets.shape[1]):
            squared = squared + offsets[:, axis] * offsets[:, axis]
        distances[ask] = np.sqrt(squared)
    return distances


def _tree(surface_: Surface, scale: np.ndarray) -> cKDTree:
    from scipy.spatial import cKDTree  # here: stunet-evaluate --help reads the metric names without SciPy

    return cKDTree(surface_.points * scale, balanced_tree=False, compact_nodes=False)  # faster to build, as exact


def _keys(points: np.ndarray, shape: np.ndarray) -> np.ndarray:
    return np.ravel_multi_index(tuple(points.T), tuple(int(n) for n in shape))


def weighted_percentile(distances: np.ndarray, areas: np.ndarray, percent: float) -> float:
    """The smallest distance at which the area-weighted share of surface points at or below it reaches ``percent``:
    surface-distance's robust Hausdorff distance for one direction."""
    order = np.argsort(distances, kind="stable")
    cumulative = np.cumsum(areas[order]) / np.sum(areas)
    index = int(np.searchsorted(cumulative, percent / 100.0))
    return float(distances[order][min(index, len(distances) - 1)])


@dataclass
class SurfaceDistances:
    """Both directions: reference surface to prediction surface and back, with the surface areas."""
    ref_to_pred: np.ndarray
    ref_areas: np.ndarray
    pred_to_ref: np.ndarray
    pred_areas: np.ndarray

    def nsd(self, tolerance_mm: float) -> float:
        """Normalised surface Dice: the area of both surfaces within ``tolerance_mm`` of the other, over both areas."""
        within = self.ref_areas[self.ref_to_pred <= tolerance_mm].sum() + \
            self.pred_areas[self.pred_to_ref <= tolerance_mm].sum()
        return float(within / (self.ref_areas.sum() + self.pred_areas.sum()))

    def hausdorff(self, percent: float = 100.0) -> float:
        if percent >= 100:
            return float(max(self.ref_to_pred.max(), self.pred_to_ref.max()))
        return max(weighted_percentile(self.ref_to_pred, self.ref_areas, percent),
                   weighted_percentile(self.pred_to_ref, self.pred_areas, percent))

    def average(self) -> tuple[float, float]:
        """Area-weighted mean distance, reference to prediction and prediction to reference."""
        return (float(np.sum(self.ref_to_pred * self.ref_areas) / np.sum(self.ref_areas)),
                float(np.sum(self.pred_to_ref * self.pred_areas) / np.sum(self.pred_areas)))

    def assd(self) -> float:
        """Average symmetric surface distance: the mean of the two directed averages."""
        return float(np.mean(self.average()))


def surface_distances(ref: Surface, pred: Surface, spacing: Sequence[float]) -> SurfaceDistances:
    """Both directions. Points that lie on both surfaces (often half of them) are at distance 0 and are not looked
    up in the trees."""
    if not len(ref) or not len(pred):
        raise ValueError("surface distances need two non-empty surfaces")
    scale = np.asarray(spacing, dtype=np.float64)
    low = np.minimum(ref.points.min(axis=0), pred.points.min(axis=0))
    shape = np.maximum(ref.points.max(axis=0), pred.points.max(axis=0)) - low + 1
    ref_keys, pred_keys = _keys(ref.points - low, shape), _keys(pred.points - low, shape)
    ref_shared = np.isin(ref_keys, pred_keys, assume_unique=True)
    pred_shared = np.isin(pred_keys, ref_keys, assume_unique=True)
    return SurfaceDistances(directed_distances(ref, pred, spacing, _tree(pred, scale), ref_shared), ref.areas,
                            directed_distances(pred, ref, spacing, _tree(ref, scale), pred_shared), pred.areas)
