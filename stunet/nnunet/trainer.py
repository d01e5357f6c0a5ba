"""STU-Net trainers for nnU-Net v2: the behaviour behind ``nnUNetv2_train ... -tr STUNetTrainer_<size>[_<variant>]``.
The names nnU-Net finds are hand-written classes in ``nnunet_plugins/stunet_trainers.py``, each a small subclass
that adds one of the parts below (``stunet-info --trainers`` lists them with what each changes).

Each trainer is nnU-Net's own ``nnUNetTrainer``; what STU-Net changes:

- the network: from STU-Net plans (``-p STUNetPlans_<size>``, see :mod:`stunet.nnunet.network`) nnU-Net's
  ``get_network_from_plans`` builds what the plans say; from nnU-Net's own plans, the published layout of the size;
- ``-pretrained_weights``: any supported checkpoint, read safely and moved into the network by
  :func:`stunet.weights.loading.load_pretrained` with a report in the log (see :mod:`stunet.nnunet.finetune`);
- the parts below: learning rates and what trains, augmentation, schedule.

What trains and how long is in the trainer name; the network and its activation checkpointing in the plans. The
settings of :mod:`stunet.settings` apply to any trainer for one run: ``STUNET_PRECISION`` (fp16 or bf16; precision is
in no trainer name), ``STUNET_ACTIVATION_CHECKPOINTING``, ``STUNET_LABEL_MAP`` and ``STUNET_TRUST_CHECKPOINT``. The log,
like ``debug.json`` (``stunet_options``), states each option in force and where it came from.
"""
from __future__ import annotations

import contextlib
import os

import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from stunet import settings as stunet_settings
from stunet.errors import CheckpointError
from stunet.cpu_memory import freed_memory_reused
from stunet.nnunet.finetune import (PolyLRPerGroup, close_pretrained_route, open_pretrained_route, parameter_groups,
                                    unwrap)
from stunet.labels import is_region_based, label_names_of, load_label_map, name_map_of
from stunet.nnunet.network import (build_for_configuration, build_from_plans, deep_supervision_scales,
                                   is_stunet_configuration, network_strides)
from stunet.models.presets import PRESETS, preset_of
from stunet.weights.loading import load_pretrained

#: the plans configuration entry naming a label map for label-aware fine-tuning (``stunet-plans --label-map``)
PLANS_LABEL_MAP = "stunet_label_map"
#: mixed precision on CUDA when STUNET_PRECISION is not set (nnU-Net's float16 autocast with a GradScaler)
DEFAULT_PRECISION = "fp16"


def precision_in_force(device: torch.device) -> tuple[str, str]:
    """(precision the trainer trains in on ``device``, where it comes from): STUNET_PRECISION or the default on CUDA;
    fp32 elsewhere, where nnU-Net trains without autocast whatever STUNET_PRECISION says."""
    asked = stunet_settings.precision()
    if torch.device(device).type != "cuda":
        ignored = f"; {stunet_settings.PRECISION}={asked} applies on CUDA only" if asked else ""
        return "fp32", f"{torch.device(device).type}: nnU-Net trains in float32{ignored}"
    return (asked, stunet_settings.PRECISION) if asked else (DEFAULT_PRECISION, "default")


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
        """Each STU-Net option in force and where it comes from (written to the log and debug.json): a setting of
        :mod:`stunet.settings` (named by its variable), the plans, the trainer name or the default."""
        name = type(self).__name__
        precision = precision_in_force(self.device)
        checkpointing = stunet_settings.activation_checkpointing()
        if checkpointing is not None:
            checkpointing = (checkpointing, stunet_settings.ACTIVATION_CHECKPOINTING)
        elif is_stunet_configuration(self.configuration_manager):
            arch = self.configuration_manager.configuration.get("architecture", {}).get("arch_kwargs", {})
            checkpointing = (arch.get("activation_checkpointing", False), "plans")
        else:
            checkpointing = (False, "default")
        label_map = stunet_settings.label_map()
        in_plans = self.configuration_manager.configuration.get(PLANS_LABEL_MAP)
        label_map = (label_map, stunet_settings.LABEL_MAP) if label_map else (
            (in_plans, "plans") if in_plans else (None, "default"))
        trust = (True, stunet_settings.TRUST_CHECKPOINT) if stunet_settings.trust_checkpoint() else (
            False, "default")
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
        override = stunet_settings.activation_checkpointing()
        if override is not None:
            network.activation_checkpointing = override
        return network

    def initialize(self):
        super().initialize()
        # nnUNetv2_train -pretrained_weights calls nnU-Net's loader right after this returns: until that call is
        # done (or the trainer's next step, at the latest), it reaches self.load_pretrained_weights
        open_pretrained_route(self)
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

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        close_pretrained_route(self)  # --c or --val: no -pretrained_weights follows

    # -- precision (STUNET_PRECISION): nnU-Net's autocast contexts take their dtype from an enclosing autocast ------
    def _autocast(self):
        """bf16 on CUDA: an autocast of dtype bfloat16 around one of nnU-Net's calls, whose own ``autocast(device,
        enabled=True)`` then inherits that dtype; left when the call returns. Otherwise nothing (fp16 is nnU-Net's
        default; on the CPU nnU-Net trains in float32)."""
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
        close_pretrained_route(self)
        with self._autocast(), self._cpu_allocator():
            return super().perform_actual_validation(save_probabilities)

    # -- fine-tuning ---------------------------------------------------------------------------------------------
    def load_pretrained_weights(self, path: str) -> None:
        """``-pretrained_weights``: any supported checkpoint, read safely, transferred with a report in the log. A
        released model's name (``stunet_large.totalseg104``) instead of a file takes its weights from the cache,
        downloading them on first use (:func:`stunet.weights.hub.weights_path`)."""
        shown, release = path, None
        if not os.path.exists(path):
            from stunet.weights.pretrained import get_pretrained_config, list_pretrained
            if path not in list_pretrained():
                raise CheckpointError(f"{path}: no such checkpoint file, nor the name of a released model "
                                      f"({', '.join(list_pretrained())})")
            release = get_pretrained_config(path)
        target = None if is_region_based(self.dataset_json) else label_names_of(self.dataset_json)
        label_map = self.stunet_options["label_map"][0]
        name_map = name_map_of(load_label_map(label_map)) if label_map else None
        report = load_pretrained(unwrap(self.network), release, True if release else path,
                                 trust=self.stunet_options["trust_checkpoint"][0], target_labels=target,
                                 name_map=name_map, network=f"trainer {type(self).__name__}")
        if release is not None:
            shown = f"{shown} ({report.path})"
        self.pretrained_report = report.transfer
        self.print_to_log_file(f"Loaded pretrained weights from {shown} ({report.format})\n" + report.summary(target),
                               also_print_to_console=True)

    def on_train_start(self):
        try:
            if self.requires_pretrained and self.pretrained_report is None and self.current_epoch == 0:
                scratch = f"STUNetTrainer_{PRESETS[self.model_name].size}" if self.model_name else "STUNetTrainer"
                raise SystemExit(f"nnUNetv2_train: error: {type(self).__name__} fine-tunes pretrained weights: add "
                                 f"-pretrained_weights FILE (a released .model, an nnU-Net checkpoint_*.pth, a "
                                 f"state_dict or .safetensors) or a released model's name, or train from scratch "
                                 f"with {scratch}")
            super().on_train_start()
        finally:
            close_pretrained_route(self)


# -- the parts: each trainer of nnunet_plugins/stunet_trainers.py adds one to the trainer it extends --------------
class FineTune:
    """fine-tuning: every layer at lr 1e-3 (the published STU-Net setting)"""
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


class Epochs4000:
    """4000 epochs of 250 iterations"""
    settings = {"num_epochs": 4000}


class Quick:
    """5 epochs of 20 iterations (small datasets and demos on a CPU)"""
    settings = {"num_epochs": 5, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 5}


class Smoke:
    """2 epochs of 5 iterations (checks that a pipeline runs)"""
    settings = {"num_epochs": 2, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 2}


#: the parts, in the order of a trainer's name: regime, augmentation, schedule
REGIMES = (FineTune, FineTunePaper, FineTuneFrozenEncoder, FineTuneHeads)
SCHEDULES = (Epochs4000, Quick, Smoke)
PARTS = REGIMES + (MirroringOnly,) + SCHEDULES
FROM_SCRATCH = "from scratch (lr 1e-2, SGD with nnU-Net's poly schedule)"
FULL_SCHEDULE = "1000 epochs of 250 iterations"
NEEDS_PRETRAINED = "needs -pretrained_weights (a checkpoint file or a released model's name)"


def parts_of(trainer: type) -> list[type]:
    """The parts in force in a trainer class, in name order: of two schedules (``_smoke`` of a ``_ep4k`` trainer),
    the one nearer the class."""
    mro = [klass for klass in trainer.__mro__ if klass in PARTS]
    regime = [p for p in mro if p in REGIMES][:1]
    schedule = [p for p in mro if p in SCHEDULES][:1]
    return regime + [p for p in mro if p is MirroringOnly] + schedule


def describe_trainer(trainer: type) -> str:
    """What a trainer class changes against nnU-Net's nnUNetTrainer, one line."""
    parts = parts_of(trainer)
    model = trainer.model_name or "the STU-Net of STU-Net plans (any size)"
    lines = [model] + ([] if any(p in REGIMES for p in parts) else [FROM_SCRATCH]) + [p.__doc__ for p in parts]
    if getattr(trainer, "requires_pretrained", False):
        lines.insert(2, NEEDS_PRETRAINED)
    if not any(p in SCHEDULES for p in parts):
        lines.append(FULL_SCHEDULE)
    return "; ".join(lines)

