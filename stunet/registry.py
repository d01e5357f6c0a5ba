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


def create_model(name: str, pretrained: str | bool | None = None, **kwargs) -> nn.Module:
    """Build a registered model, or a released one by its tagged name ('stunet_large.totalseg104').

    ``kwargs`` go to the builder (for the STU-Net presets: in_channels, num_classes, strides, kernel_sizes, depths,
    widths, depth_multiplier, width_multiplier, deep_supervision, activation_checkpointing). With ``pretrained`` the
    architecture follows the released model's config unless overridden, the weights are loaded, and the config is
    attached as ``model.pretrained_config``: ``pretrained=True`` takes the released checkpoint from the cache,
    downloading it on first use (see :mod:`stunet.weights`); ``pretrained=FILE`` reads that file (any supported format).
    ``trust_checkpoint=True`` allows pickled objects beyond tensors (never implied by a download).
    """
    if pretrained is False:
        pretrained = None
    if name in _MODELS and pretrained is None:
        return _MODELS[name](**kwargs)
    from stunet.pretrained import create_pretrained, get_pretrained_config  # checkpoint I/O only when asked for
    if pretrained is not None and name in _MODELS:  # a model name: the release follows from the file, or is unique
        return create_pretrained(name, None, pretrained, **kwargs)
    try:
        config = get_pretrained_config(name)
    except ValueError as e:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}" if name not in _MODELS
                         else str(e)) from None
    if pretrained is None:
        return model_builder(config.model)(**{**config.architecture, **kwargs})
    return create_pretrained(config.name, model_builder(config.model), pretrained, **kwargs)
