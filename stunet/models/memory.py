"""How much host memory predicting one image takes, and how much the machine has: so that an image too large is
refused before it is read, with the estimate, instead of the process being killed by the OS halfway.

The model follows :mod:`stunet.prediction.case`'s phases; each term is the memory that phase adds to the loaded model:

- reading: the reader's image and its float32 array (8 bytes per stored voxel and channel);
- preprocessing: the float32 array, the first resampling pass and the resampled image;
- network and export: the resampled image, the feature canvas (the rows of one tile, or the whole image when the
  export cannot stream: probabilities asked for, or an output grid no finer than the network's), a forward pass
  (about nine tensors of the first stage's width over one tile: 1.1 GiB for STU-Net-S at 128³ measured), and the
  label map (and probability maps) on the input's grid.

The largest phase, plus a quarter for the allocator's fragmentation, is the estimate: for the 512×512×600 whole-body
CT of benchmarks/pipeline.py with STU-Net-S it is 2.8 GiB; the measured peak was 2.6 GiB above the loaded model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

GIB = 2 ** 30
_FORWARD_TENSORS = 9  # tensors of the first stage's width over a tile alive at a forward pass's peak
_FRAGMENTATION = 1.25


def available_memory() -> int | None:
    """Bytes this process can still allocate: the kernel's MemAvailable, or less under a cgroup (container) limit;
    None where neither can be read."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            limits.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


@dataclass
class PredictionMemory:
    """The memory model of one loaded model (see the module's text)."""
    channels: int
    widths: Sequence[int]  # first-stage width of each network (fold)
    patch: Sequence[int]
    probability_maps: int = 0  # output labels whose probabilities are written (--save-probabilities)

    @classmethod
    def for_model(cls, model, probability_maps: int = 0) -> "PredictionMemory":
        return cls(model.num_input_channels, [n.config.widths[0] for n in model.networks],
                   list(model.configuration_manager.patch_size), probability_maps)

    def padded(self, resampled: Sequence[int]) -> list[int]:
        """The network's grid after padding to the patch size (what the sliding window allocates)."""
        if len(self.patch) != len(resampled):  # 2D: the slices keep their first axis
            return [resampled[0], *(max(r, p) for r, p in zip(resampled[1:], self.patch))]
        return [max(r, p) for r, p in zip(resampled, self.patch)]

    def phases(self, stored: Sequence[int], resampled: Sequence[int]) -> dict[str, int]:
        """Bytes each phase adds, for an image of ``stored`` voxels (z, y, x) at ``resampled`` voxels on the
        network's grid (padded to the patch where it is smaller: a thin image pads to whole tiles)."""
        padded = self.padded(resampled)
        voxels, grid = math.prod(stored), math.prod(padded)
        streams = not self.probability_maps and voxels > math.prod(resampled)
        rows = min(self.patch[0], padded[0]) if len(self.patch) == len(padded) else 1
        canvas_voxels = grid * rows / padded[0] if streams else grid
        canvas = canvas_voxels * (sum(self.widths) + 1) * 4
        forward = _FORWARD_TENSORS * max(self.widths) * math.prod(self.patch) * 4
        output = voxels * (2 + 2 * self.probability_maps)
        return {"reading": voxels * self.channels * 8,
                "preprocessing": voxels * self.channels * 8 + grid * self.channels * 4,
                "network and export": grid * self.channels * 4 + canvas + forward + output}

    def estimate(self, stored: Sequence[int], resampled: Sequence[int]) -> int:
        return int(max(self.phases(stored, resampled).values()) * _FRAGMENTATION)

    def describe(self, stored: Sequence[int], resampled: Sequence[int]) -> str:
        return ", ".join(f"{name} {size / GIB:.1f}" for name, size in self.phases(stored, resampled).items())
