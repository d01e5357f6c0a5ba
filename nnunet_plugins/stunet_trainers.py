"""STU-Net trainers for nnU-Net v2: ``nnUNetv2_train DATASET CONFIG FOLD -tr STUNetTrainer_<size>[_<regime>][_<schedule>]``.

Each trainer is nnU-Net's own ``nnUNetTrainer`` with the network built by :mod:`stunet` (six stages, kernels 3, strides
from the plans: see :mod:`stunet.nnunet_network`), and ``-pretrained_weights FILE`` read safely in any format by
:mod:`stunet.checkpoint` and moved into the network by :func:`stunet.transfer.transfer_weights`.

``<size>``: small, base, large, huge.

``<regime>`` (what trains, at which learning rate; fine-tuning regimes require ``-pretrained_weights``):

======================  ===========================================================================================
(none)                  from scratch: lr 1e-2, SGD with nnU-Net's poly schedule
``_ft``                 fine-tuning: every layer at lr 1e-3 (the published STU-Net setting)
``_ft_paper``           heads at lr 1e-2, all other layers at 0.1x that (1e-3), as the STU-Net paper describes
``_ft_frozen_encoder``  encoder frozen; decoder and heads at lr 1e-3
``_ft_heads``           only the segmentation heads train, at lr 1e-2
``_mirroronly``         from scratch with mirroring as the only data augmentation (the released models' pretraining)
======================  ===========================================================================================

``<schedule>``: (none) nnU-Net's 1000 epochs of 250 iterations; ``_ep4k`` 4000 epochs (the released models'
pretraining: ``STUNetTrainer_<size>_mirroronly_ep4k``); ``_quick`` 5 epochs × 20 iterations (small datasets and demos
on a CPU); ``_smoke`` 2 epochs × 5 iterations (checks that a pipeline runs).

Options for any of them, through the environment (nnUNetv2_train has no flags of ours):

- ``STUNET_ACTIVATION_CHECKPOINTING=stage|block``: recompute activations in the backward pass (less memory, about a
  third more compute), per stage or per residual block;
- ``STUNET_PRECISION=bf16``: bfloat16 mixed precision on CUDA instead of nnU-Net's float16 with a GradScaler;
- ``STUNET_LABEL_MAP``: a label map name or JSON file matching downstream labels to pretrained classes (see
  :mod:`stunet.labels`);
- ``STUNET_TRUST_CHECKPOINT=1``: unpickle ``-pretrained_weights`` with full trust.
"""
import os

import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from stunet.checkpoint import load_checkpoint
from stunet.cpu_memory import reuse_freed_memory
from stunet.finetune import PolyLRPerGroup, env_flag, parameter_groups, route_pretrained_loading, unwrap
from stunet.labels import load_label_map, name_map_of
from stunet.nnunet_network import build_for_configuration, deep_supervision_scales, strides_for_plans
from stunet.pretrained import source_labels
from stunet.transfer import transfer_weights


class STUNetTrainer(nnUNetTrainer):
    """Base of all STU-Net trainers; a variant sets the class attributes below."""

    model_name = "stunet_small"
    #: trainer attributes set after nnU-Net's defaults (initial_lr, num_epochs, num_iterations_per_epoch, ...)
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
        for name, value in self.settings.items():
            setattr(self, name, value)
        if self.device.type == "cpu":
            reuse_freed_memory()  # about twice as fast on CPUs, see stunet.cpu_memory
        precision = os.environ.get("STUNET_PRECISION", "fp16")
        if precision not in ("fp16", "bf16"):
            raise ValueError(f"STUNET_PRECISION must be fp16 or bf16, got {precision!r}")
        if precision == "bf16" and self.device.type == "cuda":
            torch.set_autocast_dtype("cuda", torch.bfloat16)  # nnU-Net's autocast contexts take the default dtype
            self.grad_scaler = None  # bfloat16 has float32's range: no loss scaling
        self.pretrained_report = None
        route_pretrained_loading(self)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        checkpointing = os.environ.get("STUNET_ACTIVATION_CHECKPOINTING", "")
        if checkpointing not in ("", "0", "stage", "block", "1"):
            raise ValueError(f"STUNET_ACTIVATION_CHECKPOINTING must be stage or block, got {checkpointing!r}")
        mode = {"": False, "0": False, "1": "stage"}.get(checkpointing, checkpointing)
        return build_for_configuration(cls.model_name, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision, activation_checkpointing=mode)

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(strides_for_plans(self.configuration_manager.pool_op_kernel_sizes))

    def configure_optimizers(self):
        if self.trainable == "all" and self.body_lr_factor == 1.0:
            return super().configure_optimizers()
        groups = parameter_groups(self.network, self.initial_lr, self.trainable, self.body_lr_factor)
        optimizer = torch.optim.SGD(groups, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        return optimizer, PolyLRPerGroup(optimizer, self.initial_lr, self.num_epochs)

    def load_pretrained_weights(self, path: str) -> None:
        """``-pretrained_weights``: any supported checkpoint, read safely, transferred with a printed report."""
        checkpoint = load_checkpoint(path, trust=env_flag("STUNET_TRUST_CHECKPOINT"))
        labels = self.dataset_json["labels"]
        target = None if any(isinstance(v, (list, tuple)) for v in labels.values()) else {
            v: k for k, v in labels.items() if v != self.label_manager.ignore_label}
        label_map = os.environ.get("STUNET_LABEL_MAP")
        name_map = name_map_of(load_label_map(label_map)) if label_map else None
        source = source_labels(checkpoint)
        try:
            self.pretrained_report = transfer_weights(unwrap(self.network), checkpoint.state_dict, source, target,
                                                      name_map)
        except ValueError as e:
            raise RuntimeError(f"{path}: {e} (trainer {self.__class__.__name__})") from None
        self.print_to_log_file(f"Loaded pretrained weights from {path} ({checkpoint.format})\n"
                               + self.pretrained_report.summary(target, source))

    def on_train_start(self):
        if self.requires_pretrained and self.pretrained_report is None and self.current_epoch == 0:
            raise RuntimeError(f"{self.__class__.__name__} fine-tunes pretrained weights: add -pretrained_weights "
                               f"FILE (a released .model, an nnU-Net checkpoint_*.pth, a state_dict or .safetensors), "
                               f"or train from scratch with STUNetTrainer_{self.model_name.split('_')[1]}")
        super().on_train_start()


class MirroringOnly:
    """Data augmentation by random mirroring only: the loader crops final-size patches (no rotation margin) and the
    training pipeline is nnU-Net's validation pipeline (labels, deep supervision targets) after a MirrorTransform."""

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, _, mirror_axes = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        return rotation, dummy_2d, list(self.configuration_manager.patch_size), mirror_axes

    @staticmethod
    def get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, use_mask_for_norm=None, is_cascaded=False,
                                foreground_labels=None, regions=None, ignore_label=None):
        transforms = [MirrorTransform(allowed_axes=mirror_axes)] if mirror_axes else []
        if use_mask_for_norm is not None and any(use_mask_for_norm):
            transforms.append(MaskImageTransform(apply_to_channels=[i for i, m in enumerate(use_mask_for_norm) if m],
                                                 channel_idx_in_seg=0, set_outside_to=0))
        rest = nnUNetTrainer.get_validation_transforms(deep_supervision_scales, is_cascaded, foreground_labels,
                                                       regions, ignore_label)
        return ComposeTransforms(transforms + list(rest.transforms))


SIZES = ("small", "base", "large", "huge")
REGIMES = {
    "": {},
    "_ft": {"settings": {"initial_lr": 1e-3}, "requires_pretrained": True},
    "_ft_paper": {"settings": {"initial_lr": 1e-2}, "body_lr_factor": 0.1, "requires_pretrained": True},
    "_ft_frozen_encoder": {"settings": {"initial_lr": 1e-3}, "trainable": "decoder", "requires_pretrained": True},
    "_ft_heads": {"settings": {"initial_lr": 1e-2}, "trainable": "heads", "requires_pretrained": True},
    "_mirroronly": {"mixin": MirroringOnly},
}
SCHEDULES = {
    "": {},
    "_ep4k": {"num_epochs": 4000},
    "_quick": {"num_epochs": 5, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 5},
    "_smoke": {"num_epochs": 2, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 2},
}


def _define_trainers() -> None:
    """Define STUNetTrainer_<size><regime><schedule> in this module for every combination."""
    for size in SIZES:
        for regime, attributes in REGIMES.items():
            for schedule, schedule_settings in SCHEDULES.items():
                name = f"STUNetTrainer_{size}{regime}{schedule}"
                attributes = dict(attributes)
                bases = (attributes.pop("mixin"), STUNetTrainer) if "mixin" in attributes else (STUNetTrainer,)
                namespace = {**attributes, "model_name": f"stunet_{size}", "__module__": __name__,
                             "__qualname__": name,
                             "settings": {**attributes.get("settings", {}), **schedule_settings}}
                globals()[name] = type(name, bases, namespace)


_define_trainers()
