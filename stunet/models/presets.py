"""The published STU-Net sizes as registered presets, and the scaling rules that generalise them.

A preset fixes the blocks per stage and the base width; stage ``i`` has ``base × min(2**i, 16)`` channels. The number of
stages follows from ``strides`` (default: five 2×2×2 downsamplings, as published), so any depth, width, stage count and
dimensionality can be built from a preset.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Iterator, NamedTuple, Sequence

from stunet.models.config import IntOrSeq
from stunet.models.registry import list_models, model_info, register_model

if TYPE_CHECKING:
    from stunet.models.network import STUNet

DEFAULT_STRIDES = ((2, 2, 2),) * 5
MAX_WIDTH_FACTOR = 16


class Preset(NamedTuple):
    depth: int  # residual blocks per stage
    base_width: int  # channels of the first stage
    size: str  # the size word of its trainers: STUNetTrainer_<size>


class _Presets(Mapping):
    """Preset name -> :class:`Preset`: the registered models that carry a preset's layout (:func:`preset`), read
    from the model registry (no table of its own)."""

    def __getitem__(self, name: str) -> Preset:
        info = model_info(name) if name in list_models() else {}
        if not all(key in info for key in Preset._fields):
            raise KeyError(name)
        return Preset(*(info[key] for key in Preset._fields))

    def __iter__(self) -> Iterator[str]:
        return (name for name in list_models() if all(key in model_info(name) for key in Preset._fields))

    def __len__(self) -> int:
        return sum(1 for _ in self)


PRESETS: Mapping[str, Preset] = _Presets()


def preset_widths(base_width: int, n_stages: int) -> list[int]:
    return [base_width * min(2 ** i, MAX_WIDTH_FACTOR) for i in range(n_stages)]


def build_stunet(depth: int, base_width: int, *, in_channels: int = 1, num_classes: int = 105,
                 strides: Sequence[IntOrSeq] = DEFAULT_STRIDES, kernel_sizes=3,
                 depths: Sequence[int] | None = None, widths: Sequence[int] | None = None,
                 depth_multiplier: float = 1.0, width_multiplier: float = 1.0, **network_kwargs) -> STUNet:
    """An STU-Net from a preset's ``depth`` and ``base_width``.

    Explicit ``depths``/``widths`` lists replace the preset's; the multipliers then scale them (rounded, at least 1).
    """
    from stunet.models.network import STUNet  # PyTorch: listing the presets does not load it

    n_stages = len(strides) + 1
    depths = list(depths) if depths is not None else [depth] * n_stages
    widths = list(widths) if widths is not None else preset_widths(base_width, n_stages)
    depths = [max(1, round(d * depth_multiplier)) for d in depths]
    widths = [max(1, round(w * width_multiplier)) for w in widths]
    return STUNet(in_channels, num_classes, depths, widths, strides, kernel_sizes, **network_kwargs)


def preset(depth: int, base_width: int, size: str):
    """Register a builder as a model that is a preset of ``depth`` blocks per stage and ``base_width`` channels."""
    return register_model(**Preset(depth, base_width, size)._asdict())


def preset_of(depths: Sequence[int], widths: Sequence[int]) -> str | None:
    """The preset whose layout these per-stage depths and widths are (any stage count), or None."""
    for name, (depth, base_width, _) in PRESETS.items():
        if list(depths) == [depth] * len(depths) and list(widths) == preset_widths(base_width, len(widths)):
            return name
    return None


@preset(1, 16, "small")
def stunet_small(**kwargs) -> STUNet:
    """STU-Net-S: 1 block per stage, base width 16 (14.6M parameters with 1 channel and 105 classes)."""
    return build_stunet(*PRESETS['stunet_small'][:2], **kwargs)


@preset(1, 32, "base")
def stunet_base(**kwargs) -> STUNet:
    """STU-Net-B: 1 block per stage, base width 32 (58.3M parameters)."""
    return build_stunet(*PRESETS['stunet_base'][:2], **kwargs)


@preset(2, 64, "large")
def stunet_large(**kwargs) -> STUNet:
    """STU-Net-L: 2 blocks per stage, base width 64 (440.3M parameters)."""
    return build_stunet(*PRESETS['stunet_large'][:2], **kwargs)


@preset(3, 96, "huge")
def stunet_huge(**kwargs) -> STUNet:
    """STU-Net-H: 3 blocks per stage, base width 96 (1457.3M parameters)."""
    return build_stunet(*PRESETS['stunet_huge'][:2], **kwargs)
