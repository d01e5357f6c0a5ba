"""The model registry: presets register themselves with ``@register_model``; ``create_model`` is the one door."""
from __future__ import annotations

import fnmatch
from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a model builder under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching a shell-style ``pattern``, in registration order."""
    return [name for name in _MODELS if fnmatch.fnmatchcase(name, pattern)]


def model_builder(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(name: str, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model.

    ``kwargs`` go to the builder (for the STU-Net presets: in_channels, num_classes, strides, kernel_sizes, depths,
    widths, depth_multiplier, width_multiplier, deep_supervision, activation_checkpointing). With ``pretrained`` (a
    checkpoint file in any supported format), the architecture follows the released model's config
    (``name`` may carry its tag: 'stunet_large.totalseg104') unless overridden, the weights are loaded, and the config
    is attached as ``model.pretrained_config``; ``trust_checkpoint=True`` allows pickled objects beyond tensors.
    """
    builder = model_builder(name.split(".")[0])
    if pretrained is None:
        return builder(**kwargs)
    from stunet.pretrained import create_pretrained  # checkpoint I/O only when asked for
    return create_pretrained(name, builder, pretrained, **kwargs)
