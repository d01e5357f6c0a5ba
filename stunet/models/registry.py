"""The model registry, in the manner of timm's: one table of model names, each entry holding its builder, plain data
about it (a preset's depth, base_width and size word) and its releases, the tagged sets of published weights
(:class:`~stunet.models.release.PretrainedConfig`, ``<model>.<tag>``).

Builders enter the table through ``@register_model``. Releases enter it on the first lookup of any of them, from the
package's ``pretrained_configs/*.json`` and then from ``STUNET_PRETRAINED_CONFIGS`` (JSON files or folders of them,
separated by ``os.pathsep``; read in every process that sets it, e.g. ``nnUNetv2_train``, and taking the place of a
shipped release of the same name); :func:`register_release` adds one to the running process.
``list_models(pretrained=True)`` lists the releases as timm does; ``create_model`` (:mod:`stunet.weights.factory`) is
the one door to both.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from stunet import settings
from stunet.io.json_file import read_json
from stunet.models.release import PretrainedConfig

if TYPE_CHECKING:
    from torch import nn

    from stunet.models.config import STUNetConfig


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, plain data about it (for a preset: depth, base_width, size) and its releases
    by tag."""

    name: str
    builder: Callable[..., nn.Module]
    info: dict = field(default_factory=dict)
    releases: dict[str, PretrainedConfig] = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}
_releases_read = False  # whether the shipped and the environment's release files are in the table


def register_model(fn: Callable[..., nn.Module] | None = None, **info):
    """Register a model builder under its function name: ``@register_model``, or ``@register_model(key=value, ...)``
    to record plain data with it (:func:`model_info`)."""
    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if builder.__name__ in _MODELS:
            raise ValueError(f"model {builder.__name__!r} is registered twice")
        _MODELS[builder.__name__] = ModelEntry(builder.__name__, builder, dict(info))
        return builder
    return register(fn) if fn is not None else register


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names of the registered models matching a shell-style ``pattern``, in registration order; with
    ``pretrained=True`` the names of their releases instead ('stunet_large.totalseg104'), sorted."""
    names = list_releases() if pretrained else list(_MODELS)
    return [name for name in names if fnmatch.fnmatchcase(name, pattern)]


def model_entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _MODELS[name]


def model_builder(name: str) -> Callable[..., nn.Module]:
    return model_entry(name).builder


def model_info(name: str) -> dict:
    """The plain data registered with a model (empty when none was)."""
    return dict(model_entry(name).info)


def _read_release(path, where: str) -> PretrainedConfig:
    try:
        return PretrainedConfig.from_dict(read_json(path), where)
    except OSError as e:
        raise ValueError(f"{where}: cannot read the pretrained config ({e})") from e


def _release_files() -> list[PretrainedConfig]:
    """The shipped releases, then those of ``STUNET_PRETRAINED_CONFIGS``."""
    found = []
    for file in sorted(resources.files("stunet.pretrained_configs").iterdir(), key=lambda f: f.name):
        if file.name.endswith(".json"):
            with resources.as_file(file) as path:
                found.append(_read_release(path, f"pretrained_configs/{file.name}"))
    for entry in filter(None, settings.pretrained_configs().split(os.pathsep)):
        path = Path(entry).expanduser()
        for file in sorted(path.glob("*.json")) if path.is_dir() else [path]:
            found.append(_read_release(file, f"{settings.PRETRAINED_CONFIGS}: {file}"))
    return found


def _add(release: PretrainedConfig) -> None:
    if release.model not in _MODELS:
        raise ValueError(f"{release.origin or release.name}: model {release.model!r} is not registered; known: "
                         f"{', '.join(list_models())}")
    _MODELS[release.model].releases[release.tag] = release


def _entries() -> list[ModelEntry]:
    """The entries, their releases read from the files on first use."""
    global _releases_read
    if not _releases_read:
        for release in _release_files():
            _add(release)
        _releases_read = True
    return list(_MODELS.values())


def _all_releases() -> dict[str, PretrainedConfig]:
    return dict(sorted((r.name, r) for entry in _entries() for r in entry.releases.values()))


def register_release(config: PretrainedConfig | dict | str | Path) -> PretrainedConfig:
    """Add a release (a config object, a dict in the JSON layout, or a JSON file) to the table for this process."""
    if isinstance(config, (str, Path)):
        config = _read_release(config, str(config))
    elif isinstance(config, dict):
        config = PretrainedConfig.from_dict(config)
    known = _all_releases()
    if config.name in known:
        raise ValueError(f"a pretrained config called {config.name!r} exists already ({known[config.name].origin})")
    _add(config)
    return config


def unregister_release(name: str) -> None:
    """Remove a release from the table of this process (nothing when there is none of that name)."""
    release = _all_releases().get(name)
    if release is not None:
        _MODELS[release.model].releases.pop(release.tag, None)


def list_releases(model: str | None = None) -> list[str]:
    """Names of the releases (of one registered ``model``), sorted, e.g. 'stunet_large.totalseg104'."""
    return [n for n, r in _all_releases().items() if model is None or r.model == model]


def get_release(name: str) -> PretrainedConfig:
    """A release by its name, or by its model's name when that model has exactly one release."""
    releases = _all_releases()
    if name in releases:
        return releases[name]
    matches = [r for r in releases.values() if r.model == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{name!r} has {len(matches)} released weights: {', '.join(r.name for r in matches)}; "
                         f"name one of them")
    raise ValueError(f"no released weights called {name!r}; known: {', '.join(releases)}")


def release_network_config(release: PretrainedConfig) -> STUNetConfig:
    """A release's architecture as an :class:`~stunet.models.config.STUNetConfig` (built on the meta device: no
    memory)."""
    import torch  # listing models and releases does not load PyTorch
    with torch.device("meta"):
        return model_builder(release.model)(**release.architecture).config
