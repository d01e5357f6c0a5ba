"""Released models: one :class:`PretrainedConfig` per tagged set of weights, read from ``pretrained_configs/*.json``.

A config names the weights (``stunet_large.totalseg104``: registered model ``stunet_large``, tag ``totalseg104``) and
says everything needed to use them apart from the weights themselves: the architecture's arguments, the preprocessing,
the label names, which tensors read the input channels and which are the classifier, the checkpoint's file names and
format, where to get it and its checksum when known. Everything that needs to know about released models (building
them, weight transfer, conversion, prediction) reads these objects; nothing parses model names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

from torch import nn

from stunet.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from stunet.config import STUNetConfig
from stunet.registry import list_models, model_builder
from stunet.transfer import CLASSIFIER, FIRST_LAYER, IncompatibleWeightsError, architecture_of, transfer_weights


@dataclass(frozen=True)
class PretrainedConfig:
    """A released set of weights and how to use it."""

    name: str  # "<model>.<tag>"
    model: str  # the registered builder, e.g. "stunet_large"
    description: str
    architecture: dict  # the builder's keyword arguments: in_channels, num_classes, strides, kernel_sizes
    preprocessing: dict  # spacing (axis order of the arrays), normalization, patch_size, axis_order, reader
    labels: dict  # output index -> structure name
    checkpoint_file: str
    checkpoint_format: str  # "nnunet-v1", "nnunet-v2", "state-dict" or "safetensors"
    trainer: str  # the nnU-Net trainer of this size
    companion_file: str | None = None  # nnU-Net v1 .model.pkl
    sha256: str | None = None  # of checkpoint_file, where a citable source states it
    sources: tuple = ()  # where to get the file, in order: {"hub": repo, "file": name} or {"url": link}
    license: str | None = None
    project: str | None = None
    paper: str | None = None
    first_conv: tuple = FIRST_LAYER
    classifier: str = CLASSIFIER
    origin: str = field(default="", compare=False)  # the file it was read from

    @property
    def tag(self) -> str:
        return self.name[len(self.model) + 1:]

    @property
    def in_channels(self) -> int:
        return int(self.architecture["in_channels"])

    @property
    def num_classes(self) -> int:
        return int(self.architecture["num_classes"])

    def network_config(self) -> STUNetConfig:
        """The architecture as an :class:`~stunet.config.STUNetConfig` (built on the meta device: no memory)."""
        import torch
        with torch.device("meta"):
            return model_builder(self.model)(**self.architecture).config

    def with_preprocessing(self, **changes) -> "PretrainedConfig":
        """A copy with some preprocessing entries changed (e.g. ``patch_size``)."""
        return replace(self, preprocessing={**self.preprocessing, **changes})

    @classmethod
    def from_dict(cls, data: dict, origin: str = "") -> "PretrainedConfig":
        where = origin or data.get("name", "a pretrained config")
        try:
            checkpoint = data["checkpoint"]
            config = cls(name=data["name"], model=data["model"], description=data.get("description", ""),
                         architecture=dict(data["architecture"]), preprocessing=dict(data["preprocessing"]),
                         labels={int(k): str(v) for k, v in data["labels"].items()},
                         checkpoint_file=checkpoint["file"], checkpoint_format=checkpoint["format"],
                         trainer=checkpoint["trainer"], companion_file=checkpoint.get("companion"),
                         sha256=checkpoint.get("sha256"), sources=tuple(data.get("sources", ())),
                         license=data.get("license"), project=data.get("project"), paper=data.get("paper"),
                         origin=origin)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{where}: not a pretrained config ({type(e).__name__}: {e}); see "
                             f"pretrained_configs/*.json for the layout") from None
        if config.model not in list_models():
            raise ValueError(f"{where}: model {config.model!r} is not registered; known: {', '.join(list_models())}")
        if not config.name.startswith(config.model + ".") or not config.tag:
            raise ValueError(f"{where}: the name must be '<model>.<tag>', e.g. '{config.model}.mydata', got "
                             f"{config.name!r}")
        if len(config.labels) != config.num_classes:
            raise ValueError(f"{where}: {len(config.labels)} label names for {config.num_classes} classes")
        return config


_EXTRA: dict[str, PretrainedConfig] = {}


@lru_cache(maxsize=None)
def _shipped() -> dict[str, PretrainedConfig]:
    files = resources.files("stunet.pretrained_configs")
    configs = [PretrainedConfig.from_dict(json.loads(f.read_text()), f"pretrained_configs/{f.name}")
               for f in files.iterdir() if f.name.endswith(".json")]
    return {c.name: c for c in configs}


def _configs() -> dict[str, PretrainedConfig]:
    return dict(sorted({**_shipped(), **_EXTRA}.items()))


def register_pretrained_config(config: PretrainedConfig | dict | str | Path) -> PretrainedConfig:
    """Add a released model (a config object, a dict in the JSON layout, or a JSON file) for this process."""
    if isinstance(config, (str, Path)):
        path = Path(config)
        try:
            config = PretrainedConfig.from_dict(json.loads(path.read_text()), str(path))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read the pretrained config ({e})") from None
    elif isinstance(config, dict):
        config = PretrainedConfig.from_dict(config)
    if config.name in _configs():
        raise ValueError(f"a pretrained config called {config.name!r} exists already ({_configs()[config.name].origin})")
    _EXTRA[config.name] = config
    return config


def unregister_pretrained_config(name: str) -> None:
    _EXTRA.pop(name, None)


def list_pretrained(model: str | None = None) -> list[str]:
    """Names of the released models (of one registered ``model``), e.g. 'stunet_large.totalseg104'."""
    return [n for n, c in _configs().items() if model is None or c.model == model]


def get_pretrained_config(name: str) -> PretrainedConfig:
    """A released model's config by its name, or by its model name when that model has exactly one release."""
    configs = _configs()
    if name in configs:
        return configs[name]
    matches = [c for c in configs.values() if c.model == name]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{name!r} has {len(matches)} released weights: {', '.join(c.name for c in matches)}; "
                         f"name one of them")
    raise ValueError(f"no released weights called {name!r}; known: {', '.join(configs)}")


def configs_matching(state_dict) -> list[PretrainedConfig]:
    """The released models whose architecture (depths, widths, kernels, channels, classes) a state_dict has."""
    arch = architecture_of(state_dict)
    found = []
    for config in _configs().values():
        net = config.network_config()
        if (list(net.depths), list(net.widths), [list(k) for k in net.kernel_sizes], net.in_channels,
                net.num_classes) == (arch["depths"], arch["widths"], arch["kernel_sizes"], arch["in_channels"],
                                     arch["num_classes"]):
            found.append(config)
    return found


def released_config_for(checkpoint: Checkpoint, name: str | None = None) -> PretrainedConfig | None:
    """The released model named ``name``, or the only one whose architecture the checkpoint has (None if none;
    a ValueError listing the candidates if several)."""
    if name:
        return get_pretrained_config(name)
    matches = configs_matching(checkpoint.state_dict)
    if len(matches) > 1:
        raise ValueError(f"{checkpoint.path}: the weights fit {len(matches)} released models "
                         f"({', '.join(c.name for c in matches)}); name one with --pretrained")
    return matches[0] if matches else None


def source_labels(checkpoint: Checkpoint) -> dict[int, str] | None:
    """The class names of a checkpoint's outputs: from the file, else from the released models of its architecture
    when they agree on them."""
    if checkpoint.label_names:
        return checkpoint.label_names
    label_sets = {tuple(sorted(c.labels.items())) for c in configs_matching(checkpoint.state_dict)}
    return dict(label_sets.pop()) if len(label_sets) == 1 else None


def create_pretrained(name: str, builder: Callable[..., nn.Module], checkpoint: str | Path,
                      trust_checkpoint: bool = False, **overrides) -> nn.Module:
    """``create_model(name, pretrained=FILE, **overrides)``: the released architecture (unless overridden) with the
    checkpoint's weights; heads and first layer follow :func:`stunet.transfer.transfer_weights` when the overrides
    change classes or input channels. The config is attached as ``model.pretrained_config``."""
    config = get_pretrained_config(name)
    model = builder(**{**config.architecture, **overrides})
    ckpt = load_checkpoint(checkpoint, trust=trust_checkpoint)
    try:
        model.transfer_report = transfer_weights(model, ckpt.state_dict, source_labels(ckpt) or config.labels)
    except IncompatibleWeightsError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None
    model.pretrained_config = config
    return model
