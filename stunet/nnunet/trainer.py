"""STU-Net trainers for nnU-Net v2: the behaviour behind ``nnUNetv2_train ... -tr STUNetTrainer_<size>[_<regime>]
[_mirroronly][_bf16][_<schedule>]``. The classes nnU-Net finds by those names are listed one by one in
``nnunet_plugins/stunet_trainers.py``, generated from :data:`NAME_PARTS` (``python -m stunet.nnunet.trainer``).

Each trainer is nnU-Net's own ``nnUNetTrainer``; what STU-Net changes:

- the network: from STU-Net plans (``-p STUNetPlans_<size>``, see :mod:`stunet.nnunet.network`) nnU-Net's
  ``get_network_from_plans`` builds what the plans say; from nnU-Net's own plans, the published layout of the size;
- ``-pretrained_weights``: any supported checkpoint, read safely (:mod:`stunet.checkpoint`) and moved into the
  network by :func:`stunet.weights.transfer.transfer_weights` with a report in the log (see :mod:`stunet.nnunet.finetune`);
- the name parts below: learning rates and what trains, augmentation, precision, schedule.

Every option is in the trainer name or the plans. The environment variables STUNET_ACTIVATION_CHECKPOINTING,
STUNET_PRECISION, STUNET_LABEL_MAP and STUNET_TRUST_CHECKPOINT only override them for one run, and the log, like
``debug.json`` (``stunet_options``), states each option in force and where it came from.
"""
from __future__ import annotations

import contextlib
import os

import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from stunet.errors import CheckpointError
from stunet.weights.checkpoint import load_checkpoint
from stunet.cpu_memory import freed_memory_reused
from stunet.nnunet.finetune import PolyLRPerGroup, parameter_groups, route_pretrained_loading, unwrap
from stunet.labels import load_label_map, name_map_of
from stunet.nnunet.network import (CHECKPOINTING_MODES, build_for_configuration, build_from_plans, deep_supervision_scales, is_stunet_configuration, network_strides)
from stunet.models.presets import PRESETS, preset_of
from stunet.weights.pretrained import source_labels
from stunet.weights.transfer import IncompatibleWeightsError, transfer_weights

ENV_CHECKPOINTING = "STUNET_ACTIVATION_CHECKPOINTING"
ENV_PRECISION = "STUNET_PRECISION"
ENV_LABEL_MAP = "STUNET_LABEL_MAP"
ENV_TRUST = "STUNET_TRUST_CHECKPOINT"
#: the plans configuration entry naming a label map for label-aware fine-tuning (``stunet-plans --label-map``)
PLANS_LABEL_MAP = "stunet_label_map"


def _env_checkpointing() -> bool | str | None:
    value = os.environ.get(ENV_CHECKPOINTING)
    if value is None:
        return None
    mode = {"": False, "0": False, "false": False, "1": "stage"}.get(value.lower(), value)
    if mode not in CHECKPOINTING_MODES:
        raise ValueError(f"{ENV_CHECKPOINTING} must be stage or block (or 0 to switch it off), got {value!r}")
    return mode


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "t")


class STUNetTrainer(nnUNetTrainer):
    """Base of all STU-Net trainers. Alone it trains the STU-Net that STU-Net plans describe, whatever its size."""

    #: the preset a trainer of a size builds on nnU-Net's own plans (None: STU-Net plans required)
    model_name: str | None = None
    #: trainer attributes set after nnU-Net's defaults (initial_lr, num_epochs, ...); merged over the class hierarchy
    settings: dict = {}
    #: 'all', 'decoder' (encoder frozen) or 'heads'
    trainable = "all"
    #: learning rate of all non-head parameters, relative to initial_lr (the heads')
    body_lr_factor = 1.0
    #: refuse to start without -pretrained_weights
    requires_pretrained = False
    #: mixed precision on CUDA: 'fp16' (nnU-Net's, with a GradScaler) or 'bf16'
    precision = "fp16"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name, value in self.merged_settings().items():
            setattr(self, name, value)
        self.stunet_options = self._options()
        if self.stunet_options["precision"][0] == "bf16" and self.device.type == "cuda":
            self.grad_scaler = None  # bfloat16 has float32's range: no loss scaling
        self.pretrained_report = None

    @classmethod
    def merged_settings(cls) -> dict:
        """The ``settings`` of every class of this trainer, the name parts' over the base's."""
        merged = {}
        for klass in reversed(cls.__mro__):
            merged.update(vars(klass).get("settings", {}))
        return merged

    def _options(self) -> dict:
        """Each STU-Net option in force and where it comes from (written to the log and debug.json)."""
        name = type(self).__name__
        precision = (os.environ.get(ENV_PRECISION), "environment") if os.environ.get(ENV_PRECISION) else (
            self.precision, f"trainer {name}")
        if precision[0] not in ("fp16", "bf16"):
            raise ValueError(f"{ENV_PRECISION} must be fp16 or bf16, got {precision[0]!r}")
        arch = self.configuration_manager.configuration.get("architecture", {}).get("arch_kwargs", {})
        checkpointing = (_env_checkpointing(), "environment") if _env_checkpointing() is not None else (
            arch.get("activation_checkpointing", False), "plans") if is_stunet_configuration(
            self.configuration_manager) else (False, "default")
        in_plans = self.configuration_manager.configuration.get(PLANS_LABEL_MAP)
        label_map = (os.environ.get(ENV_LABEL_MAP), "environment") if os.environ.get(ENV_LABEL_MAP) else (
            (in_plans, "plans") if in_plans else (None, "default"))
        trust = (True, "environment") if _env_flag(ENV_TRUST) else (False, "default")
        return {"precision": precision, "activation_checkpointing": checkpointing, "label_map": label_map,
                "trust_checkpoint": trust, "trainable": (self.trainable, f"trainer {name}"),
                "body_lr_factor": (self.body_lr_factor, f"trainer {name}")}

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        if is_stunet_configuration(configuration_manager):
            network = build_from_plans(configuration_manager, num_input_channels, num_output_channels,
                                       enable_deep_supervision)
            built = preset_of(network.config.depths, network.config.widths)
            if cls.model_name is not None and built != cls.model_name:
                raise ValueError(f"the plans describe {built or 'a custom STU-Net'} but {cls.__name__} trains "
                                 f"{cls.model_name}: pick the trainer of the plans' size, STUNetTrainer (any size), "
                                 f"or other plans")
        elif cls.model_name is None:
            raise ValueError(f"{cls.__name__} builds the STU-Net that STU-Net plans describe, and these plans are "
                             f"nnU-Net's own: write STU-Net plans with stunet-plans, or pick STUNetTrainer_<size>")
        else:
            network = build_for_configuration(cls.model_name, configuration_manager, num_input_channels,
                                              num_output_channels, enable_deep_supervision)
        override = _env_checkpointing()
        if override is not None:
            network.activation_checkpointing = override
        return network

    def initialize(self):
        super().initialize()
        route_pretrained_loading(self)
        net = unwrap(self.network)
        config = net.config
        options = ", ".join(f"{k} {v!r} ({source})" for k, (v, source) in self.stunet_options.items())
        self.print_to_log_file(
            f"STU-Net: {preset_of(config.depths, config.widths) or 'custom layout'}, "
            f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters, {config.in_channels} input channel(s), "
            f"{config.num_classes} outputs; depths {list(config.depths)}, widths {list(config.widths)}, strides "
            f"{[list(s) for s in config.strides]}, kernels {[list(k) for k in config.kernel_sizes]}; built from "
            f"{'the STU-Net plans' if is_stunet_configuration(self.configuration_manager) else 'the preset (plans are nnU-Net’s own)'}"
            f"\nSTU-Net options: {options}", also_print_to_console=True)

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(network_strides(self.configuration_manager))

    def configure_optimizers(self):
        if self.trainable == "all" and self.body_lr_factor == 1.0:
            return super().configure_optimizers()
        groups = parameter_groups(self.network, self.initial_lr, self.trainable, self.body_lr_factor)
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRPerGroup(optimizer, self.initial_lr, self.num_epochs)

    # -- on CPUs, glibc keeps freed memory for reuse while the trainer works (about twice as fast, stunet.cpu_memory)
    def _cpu_allocator(self):
        return freed_memory_reused() if self.device.type == "cpu" else contextlib.nullcontext()

    def run_training(self):
        with self._cpu_allocator():
            return super().run_training()

    # -- precision: nnU-Net's autocast contexts take their dtype from an enclosing autocast, for this call only ----
    def _autocast(self):
        if self.stunet_options["precision"][0] == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batch: dict) -> dict:
        with self._autocast():
            return super().train_step(batch)

    def validation_step(self, batch: dict) -> dict:
        with self._autocast():
            return super().validation_step(batch)

    def perform_actual_validation(self, save_probabilities: bool = False):
        with self._autocast(), self._cpu_allocator():
            return super().perform_actual_validation(save_probabilities)

    # -- fine-tuning ---------------------------------------------------------------------------------------------
    def load_pretrained_weights(self, path: str) -> None:
        """``-pretrained_weights``: any supported checkpoint, read safely, transferred with a report in the log. A
        released model's name (``stunet_large.totalseg104``) instead of a file takes its weights from the cache,
        downloading them on first use (:func:`stunet.weights.hub.weights_path`)."""
        shown = path
        if not os.path.exists(path):
            from stunet.weights.pretrained import get_pretrained_config, list_pretrained
            from stunet.weights.hub import weights_path
            if path not in list_pretrained():
                raise CheckpointError(f"{path}: no such checkpoint file, nor the name of a released model "
                                      f"({', '.join(list_pretrained())})")
            path = str(weights_path(get_pretrained_config(path)))
            shown = f"{shown} ({path})"
        checkpoint = load_checkpoint(path, trust=self.stunet_options["trust_checkpoint"][0])
        labels = self.dataset_json["labels"]
        target = None if any(isinstance(v, (list, tuple)) for v in labels.values()) else {
            v: k for k, v in labels.items() if v != self.label_manager.ignore_label}
        label_map = self.stunet_options["label_map"][0]
        name_map = name_map_of(load_label_map(label_map)) if label_map else None
        source = source_labels(checkpoint)
        try:
            self.pretrained_report = transfer_weights(unwrap(self.network), checkpoint.state_dict, source, target,
                                                      name_map)
        except IncompatibleWeightsError as e:
            raise CheckpointError(f"{path}: {e} (trainer {type(self).__name__})") from None
        self.print_to_log_file(f"Loaded pretrained weights from {shown} ({checkpoint.format})\n"
                               + self.pretrained_report.summary(target, source), also_print_to_console=True)

    def on_train_start(self):
        if self.requires_pretrained and self.pretrained_report is None and self.current_epoch == 0:
            scratch = f"STUNetTrainer_{PRESETS[self.model_name].size}" if self.model_name else "STUNetTrainer"
            raise RuntimeError(f"{type(self).__name__} fine-tunes pretrained weights: add -pretrained_weights "
                               f"FILE (a released .model, an nnU-Net checkpoint_*.pth, a state_dict or .safetensors), "
                               f"or train from scratch with {scratch}")
        super().on_train_start()


# -- the parts of a trainer name --------------------------------------------------------------------------------
class FineTune:
    """fine-tuning: every layer at lr 1e-3 (the published STU-Net setting); needs -pretrained_weights"""
    settings = {"initial_lr": 1e-3}
    requires_pretrained = True


class FineTunePaper:
    """fine-tuning: heads at lr 1e-2, all other layers at 0.1x that (1e-3), as the STU-Net paper describes"""
    settings = {"initial_lr": 1e-2}
    body_lr_factor = 0.1
    requires_pretrained = True


class FineTuneFrozenEncoder:
    """fine-tuning: encoder frozen; decoder and heads at lr 1e-3"""
    settings = {"initial_lr": 1e-3}
    trainable = "decoder"
    requires_pretrained = True


class FineTuneHeads:
    """fine-tuning: only the segmentation heads train, at lr 1e-2"""
    settings = {"initial_lr": 1e-2}
    trainable = "heads"
    requires_pretrained = True


class MirroringOnly:
    """mirroring as the only data augmentation (the released models' pretraining)"""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        return rotation, dummy_2d, list(self.configuration_manager.patch_size), mirror_axes  # no rotation margin

    @staticmethod
    def get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        """nnU-Net's validation pipeline (labels, deep supervision targets) after a MirrorTransform."""
        transforms = [MirrorTransform(allowed_axes=mirror_axes)] if mirror_axes else []
        if use_mask_for_norm is not None and any(use_mask_for_norm):
            transforms.append(MaskImageTransform(apply_to_channels=[i for i, m in enumerate(use_mask_for_norm) if m],
                                                 channel_idx_in_seg=0, set_outside_to=0))
        rest = nnUNetTrainer.get_validation_transforms(deep_supervision_scales, is_cascaded, foreground_labels,
                                                       regions, ignore_label)
        return ComposeTransforms(transforms + list(rest.transforms))


class BFloat16:
    """bfloat16 mixed precision on CUDA instead of float16 with a GradScaler"""
    precision = "bf16"


class Epochs4000:
    """4000 epochs of 250 iterations (the released models' pretraining)"""
    settings = {"num_epochs": 4000}


class Quick:
    """5 epochs of 20 iterations (small datasets and demos on a CPU)"""
    settings = {"num_epochs": 5, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 5}


class Smoke:
    """2 epochs of 5 iterations (checks that a pipeline runs)"""
    settings = {"num_epochs": 2, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 2}


#: the name grammar, in name order: each group is optional, at most one part of each
NAME_PARTS = (
    ("regime", {"_ft": FineTune, "_ft_paper": FineTunePaper, "_ft_frozen_encoder": FineTuneFrozenEncoder,
                "_ft_heads": FineTuneHeads}),
    ("augmentation", {"_mirroronly": MirroringOnly}),
    ("precision", {"_bf16": BFloat16}),
    ("schedule", {"_ep4k": Epochs4000, "_quick": Quick, "_smoke": Smoke}),
)


def trainer_variants() -> list[tuple[str, str, list[type]]]:
    """(trainer name, its size trainer's name, the part classes in MRO order) for every name of the grammar."""
    combos = [("", [])]
    for _, parts in NAME_PARTS:
        combos = [(name + suffix, mixins + [part]) for name, mixins in combos
                  for suffix, part in [("", None), *parts.items()]]
    variants = []
    for model_name, preset in PRESETS.items():
        size_trainer = f"STUNetTrainer_{preset.size}"
        for suffix, mixins in combos:
            variants.append((size_trainer + suffix, size_trainer, [m for m in reversed(mixins) if m]))
    return variants


def describe_trainer(name: str) -> str:
    """What a trainer name changes against nnU-Net's nnUNetTrainer, one line."""
    for variant, size_trainer, mixins in trainer_variants():
        if variant == name:
            model = next(m for m, p in PRESETS.items() if f"STUNetTrainer_{p.size}" == size_trainer)
            return "; ".join([f"{model} (from scratch, lr 1e-2)" if not any(
                m in NAME_PARTS[0][1].values() for m in mixins) else model] + [m.__doc__ for m in reversed(mixins)])
    if name == "STUNetTrainer":
        return "the STU-Net of STU-Net plans, any size"
    raise ValueError(f"no STU-Net trainer called {name!r}")


def render_trainer_module() -> str:
    """The text of nnunet_plugins/stunet_trainers.py."""
    parts = sorted({m.__name__ for _, _, mixins in trainer_variants() for m in mixins})
    lines = ['"""nnU-Net v2 trainers of STU-Net: one class for each name that ``nnUNetv2_train -tr`` accepts.',
             "",
             "Generated by ``python -m stunet.nnunet.trainer`` from the name grammar in stunet/nnunet_trainer.py, "
             "where the",
             "behaviour lives; tests/test_trainers.py checks that this file is up to date. "
             "``stunet-info --trainers`` lists",
             'what each name changes."""',
             "# flake8: noqa: E701",
             "from stunet.nnunet.trainer import (",
             *[f"    {name}," for name in ["STUNetTrainer"] + parts], ")", ""]
    for model_name, preset in PRESETS.items():
        size_trainer = f"STUNetTrainer_{preset.size}"
        lines += ["", f"class {size_trainer}(STUNetTrainer):", f'    """{PRESETS_DOC.format(model=model_name)}"""',
                  f"    model_name = {model_name!r}", "", ""]
        for name, size, mixins in trainer_variants():
            if size == size_trainer and name != size_trainer:
                lines.append(f"class {name}({', '.join([m.__name__ for m in mixins] + [size])}): pass")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


PRESETS_DOC = "{model} from scratch (lr 1e-2, SGD with nnU-Net's poly schedule, 1000 epochs of 250 iterations)"

if __name__ == "__main__":
    print(render_trainer_module(), end="")
