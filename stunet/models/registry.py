"""The model registry: presets register themselves with ``@register_model``; ``create_model`` (:mod:`stunet.weights.factory`)
is the one door."""
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
