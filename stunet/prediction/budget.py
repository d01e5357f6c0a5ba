"""The voxel budget: how large an image may be, as stored and after resampling to the model's spacing (an absurd
spacing turns a 20³ image into a 600³ one), and whether its estimated memory fits the machine.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from pathlib import Path
from typing import Sequence

from stunet import settings
from stunet.errors import CaseError, numbers
from stunet.models.memory import GIB, PredictionMemory, available_memory
from stunet.prediction.resample import resampled_spacing

ENV_MAX_VOXELS = settings.MAX_VOXELS
DEFAULT_MAX_VOXELS = 200_000_000  # at the model's spacing: about 585³; a whole-body CT at 1.5 mm is under 1e8
INPUT_VOXELS = 1_500_000_000  # of the image as stored (at least; --max-voxels raises it too)


def max_voxels(option: int | float | None = None) -> int:
    """The voxel budget: ``option`` (--max-voxels, ``max_voxels=``), else $STUNET_MAX_VOXELS, else
    DEFAULT_MAX_VOXELS."""
    if option is None:
        return settings.max_voxels() or DEFAULT_MAX_VOXELS
    try:
        number = int(float(option))
    except (TypeError, ValueError):
        raise ValueError(f"the voxel budget {option!r} is not a number of voxels (e.g. 4e8)") from None
    if number < 1:
        raise ValueError(f"the voxel budget must be positive, got {option!r}")
    return number


@dataclass
class VoxelBudget:
    """The most voxels an image may have after resampling to ``target_spacing`` (the model's, in nnU-Net's axis order
    after ``transpose``), and as stored (at least INPUT_VOXELS)."""
    target_spacing: Sequence[float] | None = None
    transpose: Sequence[int] | None = None
    limit: int = DEFAULT_MAX_VOXELS
    memory: PredictionMemory | None = None  # checked against the memory available unless the budget was set
    explicit: bool = False  # by the user (--max-voxels or $STUNET_MAX_VOXELS): no memory check

    @classmethod
    def for_model(cls, model, limit: int | None = None, probability_maps: int = 0) -> "VoxelBudget":
        return cls(list(model.configuration_manager.spacing), list(model.plans_manager.transpose_forward),
                   max_voxels(limit), PredictionMemory.for_model(model, probability_maps),
                   limit is not None or settings.max_voxels() is not None)

    def resampled_shape(self, size_xyz: Sequence[int], spacing_xyz: Sequence[float]) -> list[int]:
        shape, spacing = list(size_xyz)[::-1], list(spacing_xyz)[::-1]  # nnU-Net's SimpleITK order: z, y, x
        if self.transpose:
            shape, spacing = [shape[i] for i in self.transpose], [spacing[i] for i in self.transpose]
        target = resampled_spacing(self.target_spacing, spacing)
        return [max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target)]

    def xyz(self, values: Sequence) -> list:
        """Values in nnU-Net's axis order (z, y, x after ``transpose``) in the image header's order: x, y, z."""
        zyx = list(values)
        if self.transpose:
            zyx = [None] * len(values)
            for position, axis in enumerate(self.transpose):
                zyx[axis] = values[position]
        return zyx[::-1]

    def check(self, path: Path, size_xyz: Sequence[int], spacing_xyz: Sequence[float]) -> None:
        stored = math.prod(size_xyz)
        if stored > max(INPUT_VOXELS, self.limit):
            raise CaseError(f"{path}: {stored:,} voxels ({' x '.join(map(str, size_xyz))}), over the budget of "
                            f"{max(INPUT_VOXELS, self.limit):,}; raise it with --max-voxels N or {ENV_MAX_VOXELS}=N "
                            f"if the machine has the memory")
        if self.target_spacing is None:
            return
        shape = self.resampled_shape(size_xyz, spacing_xyz)
        voxels = math.prod(shape)
        padded = self.memory.padded(shape) if self.memory is not None else shape
        size, target = " x ".join(map(str, size_xyz)), numbers(self.xyz(self.target_spacing))
        resampled, padded_xyz = " x ".join(map(str, self.xyz(shape))), " x ".join(map(str, self.xyz(padded)))
        if voxels <= self.limit < math.prod(padded):  # a thin image pads to whole tiles
            raise CaseError(f"{path}: at the model's spacing {target} mm its {size} voxels become {resampled}, "
                            f"padded to the patch size {padded_xyz} = {math.prod(padded):,} voxels (x, y, z as in "
                            f"the image header), over the budget of {self.limit:,} (a thin or tiny image: check its "
                            f"spacing and size; raise the budget with --max-voxels N or {ENV_MAX_VOXELS}=N)")
        if voxels > self.limit:
            raise CaseError(f"{path}: at the model's spacing {target} mm its {size} voxels of "
                            f"{numbers(spacing_xyz)} mm become {resampled} = {voxels:,} voxels (x, y, z as in the "
                            f"image header), over the budget of {self.limit:,} (check the spacing in its header; "
                            f"raise the budget with --max-voxels N or {ENV_MAX_VOXELS}=N)")
        if self.memory is None or self.explicit:
            return
        stored = list(size_xyz)[::-1]
        need, available = self.memory.estimate(stored, shape), available_memory()
        if available is not None and need > available:
            raise CaseError(f"{path}: predicting its {size} voxels ({resampled} at the model's spacing, x, y, z)"
                            f" takes about {need / GIB:.1f} GiB of memory (GiB by phase: "
                            f"{self.memory.describe(stored, shape)}), more than the {available / GIB:.1f} GiB "
                            f"available; free memory or use a machine with more, or crop or resample the image "
                            f"first (setting the budget with --max-voxels N or {ENV_MAX_VOXELS}=N skips this check)")
