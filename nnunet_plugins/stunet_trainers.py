"""STU-Net trainers for nnU-Net v2: ``nnUNetv2_train DATASET CONFIG FOLD -tr STUNetTrainer_<size>[_<variant>]``.

Each trainer is nnU-Net's own ``nnUNetTrainer`` with the network built by :mod:`stunet` (six stages, kernels 3, strides
from the plans: see :mod:`stunet.nnunet_network`). Variants change only what their name says:

============================  =================================================================================
``STUNetTrainer_<size>``      from scratch: lr 1e-2, SGD with nnU-Net's poly schedule, 1000 epochs
``..._<size>_ft``             fine-tuning from ``-pretrained_weights FILE`` (any checkpoint format): lr 1e-3
``..._<size>_smoke``          2 epochs × 5 iterations: checks that a pipeline runs
``..._<size>_quick``          5 epochs × 20 iterations: small datasets and demos on a CPU
============================  =================================================================================

``<size>`` is one of small, base, large, huge.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from stunet.nnunet_network import build_for_configuration, deep_supervision_scales, strides_for_plans


class STUNetTrainer(nnUNetTrainer):
    """Base of all STU-Net trainers; a variant sets ``model_name`` and/or ``settings``."""

    model_name = "stunet_small"
    #: trainer attributes set after nnU-Net's defaults (initial_lr, num_epochs, num_iterations_per_epoch, ...)
    settings: dict = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        for name, value in self.settings.items():
            setattr(self, name, value)

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        return build_for_configuration(cls.model_name, configuration_manager, num_input_channels,
                                       num_output_channels, enable_deep_supervision)

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(strides_for_plans(self.configuration_manager.pool_op_kernel_sizes))


FINE_TUNING = {"initial_lr": 1e-3}
SMOKE = {"num_epochs": 2, "num_iterations_per_epoch": 5, "num_val_iterations_per_epoch": 2}
QUICK = {"num_epochs": 5, "num_iterations_per_epoch": 20, "num_val_iterations_per_epoch": 5}


class STUNetTrainer_small(STUNetTrainer):
    model_name = "stunet_small"


class STUNetTrainer_base(STUNetTrainer):
    model_name = "stunet_base"


class STUNetTrainer_large(STUNetTrainer):
    model_name = "stunet_large"


class STUNetTrainer_huge(STUNetTrainer):
    model_name = "stunet_huge"


class STUNetTrainer_small_ft(STUNetTrainer_small):
    settings = FINE_TUNING


class STUNetTrainer_base_ft(STUNetTrainer_base):
    settings = FINE_TUNING


class STUNetTrainer_large_ft(STUNetTrainer_large):
    settings = FINE_TUNING


class STUNetTrainer_huge_ft(STUNetTrainer_huge):
    settings = FINE_TUNING


class STUNetTrainer_small_smoke(STUNetTrainer_small):
    settings = SMOKE


class STUNetTrainer_base_smoke(STUNetTrainer_base):
    settings = SMOKE


class STUNetTrainer_large_smoke(STUNetTrainer_large):
    settings = SMOKE


class STUNetTrainer_huge_smoke(STUNetTrainer_huge):
    settings = SMOKE


class STUNetTrainer_small_quick(STUNetTrainer_small):
    settings = QUICK


class STUNetTrainer_base_quick(STUNetTrainer_base):
    settings = QUICK


class STUNetTrainer_large_quick(STUNetTrainer_large):
    settings = QUICK


class STUNetTrainer_huge_quick(STUNetTrainer_huge):
    settings = QUICK
