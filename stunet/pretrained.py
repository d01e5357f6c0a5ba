"""The released models' declarative configs (``pretrained_configs/*.json``) and building models from checkpoints."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

from torch import nn

from stunet.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from stunet.transfer import IncompatibleWeightsError, architecture_of, describe, transfer_weights


@lru_cache(maxsize=None)
def _configs() -> dict[str, dict]:
    files = resources.files("stunet.pretrained_configs")
    configs = [json.loads(f.read_text()) for f in files.iterdir() if f.name.endswith(".json")]
    return {c["name"]: c for c in sorted(configs, key=lambda c: c["name"])}


def list_pretrained() -> list[str]:
    """Names of the released models, e.g. 'stunet_large.totalseg104'."""
    return list(_configs())


def get_pretrained_config(name: str) -> dict:
    """A released model's config by its name, or by its model name ('stunet_large' -> its only released weights)."""
    configs = _configs()
    if name in configs:
        return configs[name]
    matches = [c for c in configs.values() if c["model"] == name]
    if len(matches) == 1:
        return matches[0]
    raise ValueError(f"no released weights called {name!r}; known: {', '.join(configs)}")


def label_names(config: dict) -> dict[int, str]:
    return {int(k): v for k, v in config["labels"].items()}


def source_labels(checkpoint: Checkpoint) -> dict[int, str] | None:
    """The class names of a checkpoint's outputs: from the file, else from the released model of its architecture."""
    if checkpoint.label_names:
        return checkpoint.label_names
    arch = architecture_of(checkpoint.state_dict)
    for config in _configs().values():
        if config["model"] == describe(arch) and config["architecture"]["num_classes"] == arch["num_classes"]:
            return label_names(config)
    return None


def create_pretrained(name: str, builder: Callable[..., nn.Module], checkpoint: str | Path,
                      trust_checkpoint: bool = False, **overrides) -> nn.Module:
    """``create_model(name, pretrained=FILE, **overrides)``: the released architecture (unless overridden) with the
    checkpoint's weights; heads and first layer follow :func:`stunet.transfer.transfer_weights` when the overrides
    change classes or input channels. The config is attached as ``model.pretrained_config``."""
    config = get_pretrained_config(name.split(".")[0] if "." not in name else name)
    model = builder(**{**config["architecture"], **overrides})
    ckpt = load_checkpoint(checkpoint, trust=trust_checkpoint)
    try:
        model.transfer_report = transfer_weights(model, ckpt.state_dict, source_labels(ckpt))
    except IncompatibleWeightsError as e:
        raise CheckpointError(f"{ckpt.path}: {e}") from None
    model.pretrained_config = config
    return model
