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
======================  ===========================================================================================

``<schedule>``: (none) nnU-Net's 1000 epochs of 250 iterations; ``_quick`` 5 epochs × 20 iterations (small datasets
and demos on a CPU); ``_smoke`` 2 epochs × 5 iterations (checks that a pipeline runs).

Options for any of them, through the environment (nnUNetv2_train has no flags of ours): ``STUNET_LABEL_MAP`` (a label
map name or JSON file matching downstream labels to pretrained classes, see :mod:`stunet.labels`) and
``STUNET_TRUST_CHECKPOINT=1`` (unpickle ``-pretrained_weights`` with full trust).
"""
import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from stunet.checkpoint import load_checkpoint
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
        self.pretrained_report = None
        route_pretrained_loading(self)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return build_for_configuration(cls.model_name, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision)

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


SIZES = ("small", "base", "large", "huge")
REGIMES = {
    "": {},
    "_ft": {"settings": {"initial_lr": 1e-3}, "requires_pretrained": True},
    "_ft_paper": {"settings": {"initial_lr": 1e-2}, "body_lr_factor": 0.1, "requires_pretrained": True},
    "_ft_frozen_encoder": {"settings": {"initial_lr": 1e-3}, "trainable": "decoder", "requires_pretrained": True},
    "_ft_heads": {"settings": {"initial_lr": 1e-2}, "trainable": "heads", "requires_pretrained": True},
}
SCHEDULES = {
    "": {},
    "_quick": {"num_epochs": 5, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 5},
    "_smoke": {"num_epochs": 2, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 2},
}


def _define_trainers() -> None:
    """Define STUNetTrainer_<size><regime><schedule> in this module for every combination."""
    for size in SIZES:
        for regime, attributes in REGIMES.items():
            for schedule, schedule_settings in SCHEDULES.items():
                name = f"STUNetTrainer_{size}{regime}{schedule}"
                namespace = {**attributes, "model_name": f"stunet_{size}", "__module__": __name__,
                             "__qualname__": name,
                             "settings": {**attributes.get("settings", {}), **schedule_settings}}
                globals()[name] = type(name, (STUNetTrainer,), namespace)


_define_trainers()
