"""The model registry: one table of model names, each with its builder and plain data about it, filled by the
``@register_model`` decorator (the STU-Net presets register their layout and size word with it). Released weights of
a model are declared apart from it (``pretrained_configs/*.json``, read by :mod:`stunet.weights.pretrained`);
``create_model`` (:mod:`stunet.weights.factory`) is the one door to both."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and plain data about it (for a preset: depth, base_width, size)."""

    name: str
    builder: Callable[..., nn.Module]
    info: dict = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, **info):
    """Register a model builder under its function name: ``@register_model``, or ``@register_model(key=value, ...)``
    to record plain data with it (:func:`model_info`)."""
    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if builder.__name__ in _MODELS:
            raise ValueError(f"model {builder.__name__!r} is registered twice")
        _MODELS[builder.__name__] = ModelEntry(builder.__name__, builder, dict(info))
        return builder
    return register(fn) if fn is not None else register


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered models matching a shell-style ``pattern``, in registration order."""
    return [name for name in _MODELS if fnmatch.fnmatchcase(name, pattern)]


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def model_builder(name: str) -> Callable[..., nn.Module]:
    return model_entry(name).builder


def model_info(name: str) -> dict:
    """The plain data registered with a model (empty when none was)."""
    return dict(model_entry(name).info)
