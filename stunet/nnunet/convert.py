"""Writing checkpoints in the formats others read: nnU-Net v2 ``checkpoint_final.pth`` (alone or in a complete model
folder that ``nnUNetv2_predict_from_modelfolder`` and ``stunet-predict -m`` take) and ``.safetensors`` with a JSON
config."""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from stunet.atomic import atomic_write
from stunet.weights.checkpoint import Checkpoint
from stunet.errors import CheckpointError
from stunet.nnunet.plans import CONFIGURATION, dataset_json_for_pretrained, plans_for_pretrained
from stunet.models.presets import PRESETS, preset_of
from stunet.weights.loading import Weights
from stunet.weights.transfer import describe


def _weights(checkpoint: Checkpoint | Weights) -> Weights:
    return checkpoint if isinstance(checkpoint, Weights) else Weights.of(checkpoint)


def nnunet_v2_parts(checkpoint: Checkpoint | Weights,
                    pretrained: str | None = None) -> tuple[dict, dict | None, dict | None]:
    """(checkpoint dict as nnU-Net v2 saves it, plans, dataset.json) for any readable checkpoint (read by
    :func:`stunet.weights.loading.read_weights`, which also gives its mirroring axes)."""
    weights = _weights(checkpoint)
    weights.check_complete()
    checkpoint, arch = weights.checkpoint, weights.architecture
    plans, dataset_json, trainer = checkpoint.plans, checkpoint.dataset_json, checkpoint.trainer_name
    if checkpoint.format != "nnunet-v2":
        config = weights.release(pretrained)
        if config is not None:
            config = config.completed(checkpoint.plans, f"{checkpoint.path}.pkl")
            missing = config.missing_for_prediction()
            if missing:
                raise CheckpointError(f"{checkpoint.path}: {config.name}'s {', '.join(missing)} are not known without "
                                      f"its companion {config.companion_file} (nnU-Net v1 plans) beside the "
                                      f"checkpoint; put it there")
            channels = arch["in_channels"]
            plans = plans_for_pretrained(config, dataset_name=config.name, num_channels=channels)
            dataset_json = dataset_json_for_pretrained(config, channels)
            trainer = config.trainer
        else:
            plans = dataset_json = None
            preset = preset_of(arch["depths"], arch["widths"])
            trainer = f"STUNetTrainer_{PRESETS[preset].size}" if preset else None
    saved = {"network_weights": checkpoint.state_dict, "optimizer_state": None, "grad_scaler_state": None,
             "logging": None, "_best_ema": None, "current_epoch": 0, "trainer_name": trainer,
             "init_args": {"plans": plans, "configuration": checkpoint.configuration or CONFIGURATION, "fold": "all",
                           "dataset_json": dataset_json, "device": "cpu"},
             "inference_allowed_mirroring_axes": weights.mirror_axes}
    return saved, plans, dataset_json


def write_nnunet_checkpoint(checkpoint: Checkpoint | Weights, out: Path, pretrained: str | None = None) -> None:
    saved, _, _ = nnunet_v2_parts(checkpoint, pretrained)
    atomic_write(out, lambda tmp: torch.save(saved, tmp))


def write_model_folder(checkpoint: Checkpoint | Weights, out: Path, pretrained: str | None = None) -> None:
    """``out/plans.json``, ``out/dataset.json`` and ``out/fold_all/checkpoint_final.pth``."""
    weights = _weights(checkpoint)
    saved, plans, dataset_json = nnunet_v2_parts(weights, pretrained)
    if plans is None or dataset_json is None:
        raise ValueError(f"{weights.path}: the checkpoint does not say its preprocessing and labels (not an "
                         f"nnU-Net v2 checkpoint nor a released architecture); name them with --pretrained NAME")
    for name, content in (("plans.json", plans), ("dataset.json", dataset_json)):
        atomic_write(out / name, lambda tmp, c=content: tmp.write_text(json.dumps(c, indent=2)))
    atomic_write(out / "fold_all" / "checkpoint_final.pth", lambda tmp: torch.save(saved, tmp))


def write_safetensors(checkpoint: Checkpoint | Weights, out: Path, pretrained: str | None = None) -> Path:
    """``out`` (.safetensors, metadata included) and its JSON config beside it; returns the config's path."""
    from safetensors.torch import save_file

    weights = _weights(checkpoint)
    checkpoint, arch = weights.checkpoint, weights.architecture
    config = weights.release(pretrained)
    if config is not None:
        config = config.completed(checkpoint.plans, f"{checkpoint.path}.pkl")
    labels = weights.labels(config)
    description = {"model": describe(arch), "architecture": {**arch, **(
        {"strides": config.architecture["strides"]} if config and "strides" in config.architecture else {})},
        "labels": labels, "pretrained": config.name if config else None, "converted_from": checkpoint.format}
    metadata = {"format": "stunet", "architecture": json.dumps(description["architecture"]),
                **({"labels": json.dumps(labels)} if labels else {})}
    tensors = {k: v.contiguous() for k, v in checkpoint.state_dict.items()}
    atomic_write(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    config_path = out.with_suffix(".json")
    text = re.sub(r"\[[\d,\s]*\]", lambda m: re.sub(r"\s+", " ", m.group(0)).replace("[ ", "[").replace(" ]", "]"),
                  json.dumps(description, indent=2))  # lists of numbers on one line
    atomic_write(config_path, lambda tmp: tmp.write_text(text + "\n"))
    return config_path
